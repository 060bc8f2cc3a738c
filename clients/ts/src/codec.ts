/**
 * The walcast envelope (docs/envelope.md, wire format v1): decode with msgpackr,
 * encode byte-identically to walcast (see ./msgpack.ts).
 *
 * Decoded row values (`Envelope.value`), by PostgreSQL type:
 *
 * | PostgreSQL | TypeScript |
 * |---|---|
 * | NULL | `null` |
 * | bool | `boolean` |
 * | int2/int4/int8/oid | `number`, or `bigint` beyond ±2^53 (no precision lost) |
 * | float4, float8 | `number` (NaN, ±Infinity kept; a float4 is its exact binary value) |
 * | numeric, text, uuid, date, time, enums, other types | `string` |
 * | bytea | `Uint8Array` (a fresh copy) |
 * | json/jsonb | plain objects / arrays / strings / numbers (bigint beyond ±2^53) / booleans / null |
 * | timestamp, timestamptz | {@link Timestamp} (incl. `Timestamp.INFINITY` / `NEG_INFINITY`) |
 * | interval | `{ months: number, days: number, microseconds: number \| bigint }` |
 * | arrays | arrays (nested for several dimensions, `null` elements) |
 *
 * Maps decode as plain objects. Two JavaScript limits: a column or JSON key named
 * `__proto__` arrives as `__proto_` (msgpackr's guard against prototype pollution), and
 * integer-like keys (`"1"`) are enumerated first by JavaScript, so re-encoding such a
 * map can reorder it.
 */
import { Unpackr, addExtension } from "msgpackr";
import { pack } from "./msgpack.js";
import { Timestamp } from "./timestamp.js";
import { openColumn, openRow, type Keyring, type SealedField } from "./seal.js";

export type Op = "insert" | "update" | "delete" | "snapshot" | "truncate";
export const OPS: readonly Op[] = ["insert", "update", "delete", "snapshot", "truncate"];

/** A decoded walcast envelope. */
export interface Envelope {
  /** Canonical key of the row (`<schema>.<table>:<values>`). */
  key: string;
  op: Op;
  /** The full row after the change (column → value); `null` for delete and truncate. */
  value: Record<string, unknown> | null;
  /** `"major.minor"` of the table's shape. */
  schemaVersion: string;
  /** Per-key dense sequence 1, 2, 3… */
  sequence: number;
  /** Commit LSN of the transaction (always a bigint: LSNs are 64-bit). */
  lsn: bigint;
  /** Commit time of the transaction. */
  commitTs: Timestamp;
  /** The transaction's id (PostgreSQL's xid); absent on snapshot envelopes. */
  xid?: number;
  /** The envelope's index in its transaction (0, 1, 2 …); absent on snapshot envelopes. */
  txIndex?: number;
  /**
   * The row before the change: updates and deletes of tables with `REPLICA IDENTITY
   * FULL` only; absent elsewhere.
   */
  before?: Record<string, unknown>;
  /** How the rows travelled (already inflated here): `"zstd"`; absent when plain. */
  compression?: string;
  /** The id of the key the rows were encrypted under (already opened here). */
  keyId?: string;
}

/** What {@link decode} opens encrypted rows with. */
export interface DecodeOptions {
  /** The key ring (`Keyring.parse` / `Keyring.fromFile`). */
  keys?: Keyring;
}

/**
 * The seed's (`@lyku/para-sync`) change envelope: what its `SyncTransport` and
 * `createClientReplica` read. Note the snake_case `schema_version`, as in the seed.
 */
export interface SyncEnvelope {
  value: unknown;
  schema_version: string;
  sequence: number;
}

/** The seed's view of a walcast envelope. */
export function toSyncEnvelope(env: Envelope): SyncEnvelope {
  return { value: env.value, schema_version: env.schemaVersion, sequence: env.sequence };
}

/** Bytes that are not a walcast envelope. */
export class DecodeError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DecodeError";
  }
}

// msgpackr keeps its extension table per process. The timestamp extension is taken
// over so that walcast's decoder gets exact Timestamps (nanoseconds, ±infinity, the
// whole i64 range) while any other msgpackr user in the process still gets a Date, as
// msgpackr does by default.
let decoding = 0;
addExtension({
  type: 0xff,
  unpack(data: Uint8Array) {
    const ts = Timestamp.fromExtBytes(data);
    if (decoding > 0) return ts;
    const ms = ts.toEpochMillis();
    return new Date(Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? ms : NaN);
  },
} as never);

// `int64AsType: "auto"` (msgpackr ≥ 1.10, missing from its type declarations): 64-bit
// encodings decode as numbers within ±2^53 and as bigints beyond.
const unpackr = new Unpackr({
  useRecords: false,
  mapsAsObjects: true,
  int64AsType: "auto",
  copyBuffers: true,
} as unknown as ConstructorParameters<typeof Unpackr>[0]);

/** Decode any MessagePack value with walcast's mapping (see the module comment). */
export function decodeValue(bytes: Uint8Array): unknown {
  // A plain Uint8Array view, so that bytea values come out as plain Uint8Arrays (not
  // Node Buffers) whatever the caller passed.
  const src = Object.getPrototypeOf(bytes) === Uint8Array.prototype ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  decoding++;
  try {
    return unpackr.unpack(src);
  } finally {
    decoding--;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== "object") return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function asSafeNumber(v: unknown): number | undefined {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return v;
  if (typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return undefined;
}

/**
 * Decode an envelope. Unknown fields are ignored. Compressed rows are inflated;
 * encrypted ones are opened with `options.keys`. Throws {@link DecodeError} (with a
 * clear message for an encrypted row without its key or with the wrong one).
 */
export function decode(bytes: Uint8Array, options: DecodeOptions = {}): Envelope {
  let v: unknown;
  try {
    v = decodeValue(bytes);
  } catch (e) {
    throw new DecodeError(`not MessagePack: ${(e as Error).message}`, { cause: e });
  }
  if (!isPlainObject(v)) throw new DecodeError("envelope is not a map");
  const field = (name: string) => new DecodeError(`envelope field ${JSON.stringify(name)} is missing or has the wrong type`);
  const { key, op, schema_version, sequence, lsn, commit_ts, xid, tx_index, compression, key_id, sealed_columns } = v;
  let { value, before } = v;
  if (typeof key !== "string") throw field("key");
  if (typeof op !== "string") throw field("op");
  if (!OPS.includes(op as Op)) throw new DecodeError(`unknown op ${JSON.stringify(op)}`);
  if (typeof schema_version !== "string") throw field("schema_version");
  const seq = asSafeNumber(sequence);
  if (seq === undefined) throw field("sequence");
  if (compression !== undefined && typeof compression !== "string") throw field("compression");
  if (key_id !== undefined && typeof key_id !== "string") throw field("key_id");
  if (sealed_columns !== undefined && !(Array.isArray(sealed_columns) && sealed_columns.every((c) => typeof c === "string"))) {
    throw field("sealed_columns");
  }
  if (compression !== undefined || key_id !== undefined) {
    const columns = sealed_columns as string[] | undefined;
    const sealing = { compression, keyId: key_id, columns };
    const open = (row: unknown, f: SealedField) => {
      if (row === null || row === undefined) return row;
      const of = { key, op, sequence: seq, field: f };
      try {
        let opened = compression !== undefined || columns === undefined ? decodeValue(openRow(row, sealing, of, options.keys)) : row;
        if (key_id !== undefined && columns !== undefined && isPlainObject(opened)) {
          opened = { ...opened };
          for (const c of columns) {
            if (c in (opened as object)) {
              (opened as Record<string, unknown>)[c] = decodeValue(openColumn((opened as Record<string, unknown>)[c], key_id, c, of, options.keys));
            }
          }
        }
        return opened;
      } catch (e) {
        if (e instanceof DecodeError) throw e;
        throw new DecodeError((e as Error).message, { cause: e });
      }
    };
    value = open(value, "value");
    before = open(before, "before");
  }
  if (value !== null && value !== undefined && !isPlainObject(value)) throw field("value");
  let lsnBig: bigint;
  if (typeof lsn === "number" && Number.isSafeInteger(lsn) && lsn >= 0) lsnBig = BigInt(lsn);
  else if (typeof lsn === "bigint" && lsn >= 0n) lsnBig = lsn;
  else throw field("lsn");
  if (!(commit_ts instanceof Timestamp)) throw field("commit_ts");
  const env: Envelope = {
    key,
    op: op as Op,
    value: (value ?? null) as Record<string, unknown> | null,
    schemaVersion: schema_version,
    sequence: seq,
    lsn: lsnBig,
    commitTs: commit_ts,
  };
  // The optional fields: absent stays absent (not undefined-valued keys).
  if (xid !== undefined) env.xid = uint32(xid, "xid");
  if (tx_index !== undefined) env.txIndex = uint32(tx_index, "tx_index");
  if (before !== undefined) {
    if (!isPlainObject(before)) throw field("before");
    env.before = before;
  }
  if (typeof compression === "string") env.compression = compression;
  if (typeof key_id === "string") env.keyId = key_id;
  return env;
}

function uint32(v: unknown, name: string): number {
  if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff) return v;
  throw new DecodeError(`envelope field ${JSON.stringify(name)} is missing or has the wrong type`);
}

/**
 * Encode an envelope as walcast does: a map of the seven fields in wire order, then
 * the optional ones present (`xid`, `tx_index`, `before`). Rows are written in the
 * clear: an envelope that travelled compressed or encrypted encodes as its plain form
 * (`compression` and `keyId` are not written). The row values follow
 * ./msgpack.ts (use `Float32`/`Float64` to force float widths).
 */
export function encode(env: Envelope): Uint8Array {
  const fields: Record<string, unknown> = {
    key: env.key,
    op: env.op,
    value: env.value,
    schema_version: env.schemaVersion,
    sequence: env.sequence,
    lsn: env.lsn,
    commit_ts: env.commitTs,
  };
  if (env.xid !== undefined) fields.xid = env.xid;
  if (env.txIndex !== undefined) fields.tx_index = env.txIndex;
  if (env.before !== undefined) fields.before = env.before;
  return pack(fields);
}

/** An LSN in PostgreSQL's text form, e.g. `16/B374D848`. */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}

/** Parse PostgreSQL's `X/Y` LSN text. */
export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (!m) throw new RangeError(`not an LSN: ${JSON.stringify(text)}`);
  return (BigInt("0x" + m[1]) << 32n) | BigInt("0x" + m[2]);
}
