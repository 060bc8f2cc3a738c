/**
 * A small, exact MessagePack writer with the choices of Rust's `rmpv::encode`, so that
 * an envelope encoded here is byte-identical to what walcast publishes: the smallest
 * integer form (unsigned families for non-negative values), `str8`, the fixext forms
 * for timestamps, maps and arrays in the order given.
 *
 * JavaScript → MessagePack: `null`/`undefined` → nil; boolean; an integral `number`
 * within ±2^53 (not -0) → int, any other number → float 64; `bigint` → int (i64/u64 range);
 * {@link Float32} / {@link Float64} force a float width; string → str; `Uint8Array`
 * → bin; {@link Timestamp} → timestamp ext (-1); array → array; `Map` → map; any other
 * object → map of its own enumerable string keys in order.
 */
import { Timestamp } from "./timestamp.js";

/** Encode this number as a MessagePack float 32 (as walcast does for `float4`). */
export class Float32 {
  constructor(readonly value: number) {}
}

/** Encode this number as a MessagePack float 64 even when it is integral. */
export class Float64 {
  constructor(readonly value: number) {}
}

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const textEncoder = new TextEncoder();

class Writer {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf[this.len++] = v;
  }
  u16(v: number): void {
    this.reserve(2);
    this.view.setUint16(this.len, v);
    this.len += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.len, v);
    this.len += 4;
  }
  u64(v: bigint): void {
    this.reserve(8);
    this.view.setBigUint64(this.len, v);
    this.len += 8;
  }
  i64(v: bigint): void {
    this.reserve(8);
    this.view.setBigInt64(this.len, v);
    this.len += 8;
  }
  f32(v: number): void {
    this.reserve(4);
    this.view.setFloat32(this.len, v);
    this.len += 4;
  }
  f64(v: number): void {
    this.reserve(8);
    this.view.setFloat64(this.len, v);
    this.len += 8;
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

function writeInt(w: Writer, v: bigint): void {
  if (v > U64_MAX || v < I64_MIN) throw new RangeError(`integer ${v} does not fit 64 bits`);
  if (v >= 0n) {
    if (v < 128n) w.u8(Number(v));
    else if (v < 256n) {
      w.u8(0xcc);
      w.u8(Number(v));
    } else if (v < 65536n) {
      w.u8(0xcd);
      w.u16(Number(v));
    } else if (v < 4294967296n) {
      w.u8(0xce);
      w.u32(Number(v));
    } else {
      w.u8(0xcf);
      w.u64(v);
    }
  } else if (v >= -32n) {
    w.u8(0xe0 | (Number(v) & 0x1f));
  } else if (v >= -128n) {
    w.u8(0xd0);
    w.u8(Number(v) & 0xff);
  } else if (v >= -32768n) {
    w.u8(0xd1);
    w.u16(Number(v) & 0xffff);
  } else if (v >= -2147483648n) {
    w.u8(0xd2);
    w.u32(Number(v) >>> 0);
  } else {
    w.u8(0xd3);
    w.i64(v);
  }
}

function writeLen(w: Writer, n: number, fix: number | null, fixMax: number, m8: number | null, m16: number, m32: number): void {
  if (fix !== null && n <= fixMax) w.u8(fix | n);
  else if (m8 !== null && n < 256) {
    w.u8(m8);
    w.u8(n);
  } else if (n < 65536) {
    w.u8(m16);
    w.u16(n);
  } else {
    w.u8(m32);
    w.u32(n);
  }
}

function writeExt(w: Writer, type: number, data: Uint8Array): void {
  const n = data.length;
  const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
  const marker = fixed[n];
  if (marker !== undefined) w.u8(marker);
  else if (n < 256) {
    w.u8(0xc7);
    w.u8(n);
  } else if (n < 65536) {
    w.u8(0xc8);
    w.u16(n);
  } else {
    w.u8(0xc9);
    w.u32(n);
  }
  w.u8(type & 0xff);
  w.bytes(data);
}

function writeValue(w: Writer, v: unknown, depth: number): void {
  if (depth > 512) throw new RangeError("value nested too deeply");
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case "boolean":
      return w.u8(v ? 0xc3 : 0xc2);
    case "number":
      if (Number.isInteger(v) && Math.abs(v) <= 2 ** 53 && !Object.is(v, -0)) return writeInt(w, BigInt(v));
      w.u8(0xcb);
      return w.f64(v);
    case "bigint":
      return writeInt(w, v);
    case "string": {
      const b = textEncoder.encode(v);
      writeLen(w, b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
      return w.bytes(b);
    }
    case "object":
      break;
    default:
      throw new TypeError(`cannot encode a ${typeof v} as MessagePack`);
  }
  if (v instanceof Float32) {
    w.u8(0xca);
    return w.f32(v.value);
  }
  if (v instanceof Float64) {
    w.u8(0xcb);
    return w.f64(v.value);
  }
  if (v instanceof Timestamp) return writeExt(w, -1, v.toExtBytes());
  if (v instanceof Uint8Array) {
    writeLen(w, v.length, null, 0, 0xc4, 0xc5, 0xc6);
    return w.bytes(v);
  }
  if (Array.isArray(v)) {
    writeLen(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
    for (const item of v) writeValue(w, item, depth + 1);
    return;
  }
  if (v instanceof Map) {
    writeLen(w, v.size, 0x80, 15, null, 0xde, 0xdf);
    for (const [k, item] of v) {
      writeValue(w, k, depth + 1);
      writeValue(w, item, depth + 1);
    }
    return;
  }
  const entries = Object.entries(v as Record<string, unknown>);
  writeLen(w, entries.length, 0x80, 15, null, 0xde, 0xdf);
  for (const [k, item] of entries) {
    writeValue(w, k, 1);
    writeValue(w, item, depth + 1);
  }
}

/** Encode one value. */
export function pack(value: unknown): Uint8Array {
  const w = new Writer();
  writeValue(w, value, 0);
  return w.result();
}
