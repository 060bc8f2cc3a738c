// JSON as walcast maps it: integer literals that fit i64/u64 are integers (a bigint
// beyond ±2^53), every other number is a float 64. JSON.parse would round big ones.
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
      if (m[1] === undefined && m[2] === undefined) {
        const b = BigInt(m[0]);
        if (b >= -(2n ** 63n) && b < 2n ** 64n) return b >= -(2n ** 53n) && b <= 2n ** 53n ? Number(b) : b;
      }
      return Number(m[0]);
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
