/**
 * Canonical row keys and the NATS subjects derived from them: a line-by-line port of
 * walcast's `src/wire/key.rs` (see `docs/envelope.md`, "Keys" and "Subjects").
 *
 * **Key** (the envelope's `key`): `<schema>.<table>:<v1>[,<v2>…]`; inside each part
 * `%` `.` `:` `,` are written `%25` `%2E` `%3A` `%2C`.
 *
 * **Subject token**: every byte (of the UTF-8 form) outside `[A-Za-z0-9_-]` becomes `~`
 * and two upper-case hex digits; an empty part is `~_`; the key's values are joined
 * with `,`. A key token longer than {@link MAX_TOKEN_LEN} bytes is replaced by `~H` and
 * the upper-case hex SHA-256 of the full token.
 */
import { createHash } from "node:crypto";

/** Longest key token published as is; longer ones are hashed. */
export const MAX_TOKEN_LEN = 200;

/** The subject token of table-level truncate events. */
export const TRUNCATE_TOKEN = "~truncate";

/** The default subject prefix of walcast. */
export const DEFAULT_PREFIX = "walcast";

/** Why a key, subject or token could not be parsed back. */
export class KeyError extends Error {
  constructor(
    readonly kind: "BadKey" | "BadEscape" | "Hashed" | "BadSubject",
    readonly input: string,
    message: string,
  ) {
    super(message);
    this.name = "KeyError";
  }
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });
const HEX = "0123456789ABCDEF";

function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

function fromUtf8(bytes: Uint8Array, onError: () => KeyError): string {
  try {
    return strictDecoder.decode(bytes);
  } catch {
    throw onError();
  }
}

function pushKeyPart(part: string): string {
  let out = "";
  for (const c of part) {
    switch (c) {
      case "%":
        out += "%25";
        break;
      case ".":
        out += "%2E";
        break;
      case ":":
        out += "%3A";
        break;
      case ",":
        out += "%2C";
        break;
      default:
        out += c;
    }
  }
  return out;
}

/** Value of one hex digit (`0-9a-fA-F`), or -1. */
function hexDigit(b: number): number {
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x41 && b <= 0x46) return b - 0x41 + 10;
  if (b >= 0x61 && b <= 0x66) return b - 0x61 + 10;
  return -1;
}

/**
 * Rust's `u8::from_str_radix(two_bytes, 16)`: an optional leading `+`, then hex digits
 * of either case. Returns -1 when it would fail.
 */
function fromStrRadix16(b0: number, b1: number): number {
  if (b0 === 0x2b /* + */) return hexDigit(b1);
  const hi = hexDigit(b0);
  const lo = hexDigit(b1);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

function unescapeKeyPart(part: string): string {
  const bad = () => new KeyError("BadEscape", part, `bad escape in ${JSON.stringify(part)}`);
  const b = utf8(part);
  const out: number[] = [];
  let i = 0;
  while (i < b.length) {
    if (b[i] === 0x25 /* % */) {
      if (i + 3 > b.length) throw bad();
      const v = fromStrRadix16(b[i + 1]!, b[i + 2]!);
      if (v < 0) throw bad();
      out.push(v);
      i += 3;
    } else {
      out.push(b[i]!);
      i += 1;
    }
  }
  return fromUtf8(Uint8Array.from(out), bad);
}

/** `<schema>.<table>:` with both names escaped: the prefix every key of a table shares. */
export function tableKeyPrefix(schema: string, table: string): string {
  return `${pushKeyPart(schema)}.${pushKeyPart(table)}:`;
}

/** The canonical key of a row from its schema, table and primary-key values (text form). */
export function makeKey(schema: string, table: string, values: readonly string[]): string {
  return tableKeyPrefix(schema, table) + values.map(pushKeyPart).join(",");
}

/** A key split back into its parts. */
export interface ParsedKey {
  schema: string;
  table: string;
  values: string[];
}

/** Split a canonical key into schema, table and primary-key values. */
export function parseKey(key: string): ParsedKey {
  const bad = () =>
    new KeyError("BadKey", key, `key ${JSON.stringify(key)} is not of the form <schema>.<table>:<values>`);
  const colon = key.indexOf(":");
  if (colon < 0) throw bad();
  const tablePart = key.slice(0, colon);
  const values = key.slice(colon + 1);
  const dot = tablePart.indexOf(".");
  if (dot < 0) throw bad();
  return {
    schema: unescapeKeyPart(tablePart.slice(0, dot)),
    table: unescapeKeyPart(tablePart.slice(dot + 1)),
    values: values.split(",").map(unescapeKeyPart),
  };
}

function pushTokenPart(part: string): string {
  if (part.length === 0) return "~_";
  let out = "";
  for (const b of utf8(part)) {
    const alnum = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
    if (alnum || b === 0x2d /* - */ || b === 0x5f /* _ */) {
      out += String.fromCharCode(b);
    } else {
      out += "~" + HEX[b >> 4] + HEX[b & 15];
    }
  }
  return out;
}

/** The subject token of a schema or table name. */
export function nameToken(name: string): string {
  return pushTokenPart(name);
}

/** The subject token of a row's primary-key values (hashed when longer than 200 bytes). */
export function keyToken(values: readonly string[]): string {
  const out = values.map(pushTokenPart).join(",");
  if (out.length > MAX_TOKEN_LEN) {
    // `out` is pure ASCII here, so its length is its byte length.
    return "~H" + createHash("sha256").update(out, "ascii").digest("hex").toUpperCase();
  }
  return out;
}

function unescapeTokenPart(part: string): string {
  if (part === "~_") return "";
  const bad = () => new KeyError("BadEscape", part, `bad escape in ${JSON.stringify(part)}`);
  const b = utf8(part);
  const out: number[] = [];
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    if (c === 0x7e /* ~ */) {
      if (i + 3 > b.length) throw bad();
      const upperHex = (x: number) => (x >= 0x30 && x <= 0x39) || (x >= 0x41 && x <= 0x46);
      if (!upperHex(b[i + 1]!) || !upperHex(b[i + 2]!)) throw bad();
      out.push(hexDigit(b[i + 1]!) * 16 + hexDigit(b[i + 2]!));
      i += 3;
    } else if (
      (c >= 0x30 && c <= 0x39) ||
      (c >= 0x41 && c <= 0x5a) ||
      (c >= 0x61 && c <= 0x7a) ||
      c === 0x2d ||
      c === 0x5f
    ) {
      out.push(c);
      i += 1;
    } else {
      throw bad();
    }
  }
  return fromUtf8(Uint8Array.from(out), bad);
}

/** A schema or table name back from its token. */
export function parseNameToken(token: string): string {
  return unescapeTokenPart(token);
}

/** Is this key token a hashed long key (`~H` + 64 hex digits)? */
export function isHashedToken(token: string): boolean {
  return token.startsWith("~H") && token.length === 66;
}

/** Primary-key values back from a key token. A hashed token cannot be reversed. */
export function parseKeyToken(token: string): string[] {
  if (isHashedToken(token)) {
    throw new KeyError(
      "Hashed",
      token,
      `token ${JSON.stringify(token)} is a hashed long key: the subject alone cannot be reversed`,
    );
  }
  return token.split(",").map(unescapeTokenPart);
}

/** The subject of a key: `<prefix>.<schema token>.<table token>.<key token>`. */
export function subjectOf(prefix: string, key: string): string {
  const k = parseKey(key);
  return `${prefix}.${nameToken(k.schema)}.${nameToken(k.table)}.${keyToken(k.values)}`;
}

/** Same as {@link subjectOf} (the Rust name). */
export const subjectForKey = subjectOf;

/** The wildcard subject of every key of one table: `<prefix>.<schema>.<table>.*`. */
export function subjectForTable(prefix: string, schema: string, table: string): string {
  return `${prefix}.${nameToken(schema)}.${nameToken(table)}.*`;
}

/** The subject of a table's `truncate` envelopes: `<prefix>.<schema>.<table>.~truncate`. */
export function truncateSubject(prefix: string, schema: string, table: string): string {
  return `${prefix}.${nameToken(schema)}.${nameToken(table)}.${TRUNCATE_TOKEN}`;
}

/** A subject split into its parts. */
export interface ParsedSubject {
  prefix: string;
  schema: string;
  table: string;
  /** The key token as it appears in the subject. */
  token: string;
}

/**
 * Split a walcast subject. With `prefix`, the subject must start with `prefix.`;
 * without, the prefix is everything before the last three tokens.
 */
export function parseSubject(subject: string, prefix?: string): ParsedSubject {
  const bad = (why: string) => new KeyError("BadSubject", subject, `subject ${JSON.stringify(subject)}: ${why}`);
  let rest: string;
  let pfx: string;
  if (prefix !== undefined) {
    if (!subject.startsWith(prefix + ".")) throw bad(`does not start with ${JSON.stringify(prefix + ".")}`);
    pfx = prefix;
    rest = subject.slice(prefix.length + 1);
  } else {
    const tokens = subject.split(".");
    if (tokens.length < 4) throw bad("expected <prefix>.<schema>.<table>.<key>");
    pfx = tokens.slice(0, -3).join(".");
    rest = tokens.slice(-3).join(".");
  }
  const parts = rest.split(".");
  if (parts.length !== 3) throw bad("expected <prefix>.<schema>.<table>.<key>");
  return {
    prefix: pfx,
    schema: parseNameToken(parts[0]!),
    table: parseNameToken(parts[1]!),
    token: parts[2]!,
  };
}

/**
 * The key a subject was made from (the reverse of {@link subjectOf}). Throws a
 * {@link KeyError}: `Hashed` for a long key's hashed token (read the envelope's `key`
 * instead), `BadEscape` for `~truncate` and anything a key cannot produce.
 */
export function keyOf(subject: string, prefix?: string): string {
  const s = parseSubject(subject, prefix);
  return makeKey(s.schema, s.table, parseKeyToken(s.token));
}
