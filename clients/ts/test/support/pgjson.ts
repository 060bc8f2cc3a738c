// JSON as walcast maps it (docs/envelope.md, "Exact JSON numbers"): integer literals
// that fit i64/u64 are integers (a bigint beyond ±2^53); a number whose float 64's
// shortest text is the same decimal is that float; any other number is its exact
// text, a string. JSON.parse would round big ones.

/** [negative, significant digits, exponent of the first digit]; zero is [false, "", 0]. */
function normalizeDecimal(text: string): [boolean, string, number] {
  const neg = text.startsWith("-");
  const body = text.replace(/^[-+]/, "");
  const [mant, exp = "0"] = body.split(/[eE]/);
  const [int, frac = ""] = mant!.split(".");
  const all = int! + frac;
  const lead = all.length - all.replace(/^0+/, "").length;
  const digits = all.slice(lead).replace(/0+$/, "");
  if (digits === "") return [false, "", 0];
  return [neg, digits, int!.length - lead + Number(exp)];
}

export function jsonNumberAsWalcastSends(text: string): number | bigint | string {
  if (/^-?\d+$/.test(text)) {
    const b = BigInt(text);
    if (b >= -(2n ** 63n) && b < 2n ** 64n) return b >= -(2n ** 53n) && b <= 2n ** 53n ? Number(b) : b;
  }
  const f = Number(text);
  if (Number.isFinite(f) && JSON.stringify(normalizeDecimal(String(f))) === JSON.stringify(normalizeDecimal(text))) {
    return f;
  }
  return text;
}
export function parseJsonExact(text: string): unknown {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i]!)) i++;
  };
  const value = (): unknown => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out: Record<string, unknown> = {};
      ws();
      if (text[i] === "}") return i++, out;
      for (;;) {
        ws();
        const k = value() as string;
        ws();
        if (text[i++] !== ":") throw new SyntaxError(`expected : at ${i}`);
        out[k] = value();
        ws();
        if (text[i] === ",") i++;
        else if (text[i++] === "}") return out;
        else throw new SyntaxError(`expected , or } at ${i}`);
      }
    }
    if (c === "[") {
      i++;
      const out: unknown[] = [];
      ws();
      if (text[i] === "]") return i++, out;
      for (;;) {
        out.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i++] === "]") return out;
        else throw new SyntaxError(`expected , or ] at ${i}`);
      }
    }
    if (c === '"') {
      const m = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i));
      if (!m) throw new SyntaxError(`bad string at ${i}`);
      i += m[0].length;
      return JSON.parse(m[0]);
    }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (m) {
      i += m[0].length;
      return jsonNumberAsWalcastSends(m[0]);
    }
    for (const [lit, v] of [
      ["true", true],
      ["false", false],
      ["null", null],
    ] as const) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return v;
      }
    }
    throw new SyntaxError(`unexpected ${JSON.stringify(text.slice(i, i + 10))} at ${i}`);
  };
  const v = value();
  ws();
  if (i !== text.length) throw new SyntaxError(`trailing text at ${i}`);
  return v;
}
