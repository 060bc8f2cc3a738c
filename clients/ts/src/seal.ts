/**
 * Compressed and encrypted rows (docs/envelope.md, "Compressed and encrypted rows";
 * docs/encryption.md): an envelope with `compression: "zstd"` carries its `value` and
 * `before` as one zstd frame (inflated with fzstd, to at most `MAX_INFLATED` bytes:
 * inflate.ts), one with `key_id` as AES-256-GCM sealed bytes (nonce ‖ ciphertext ‖
 * tag, opened with node:crypto) under that key of the {@link Keyring}. {@link decode} opens them transparently; without the key, or
 * with the wrong one, it throws a {@link DecodeError} that says so — never garbage.
 */
import { createDecipheriv, createSecretKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { inflateBounded } from "./inflate.js";

/** The `compression` value of zstd frames. */
export const ZSTD = "zstd";
const NONCE_LEN = 12;
const TAG_LEN = 16;

/** Which row of an envelope a sealed value is (part of the associated data). */
export type SealedField = "value" | "before";

/** A row that could not be opened, or a key ring that could not be read. */
export class SealError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SealError";
  }
}

/**
 * The encryption keys, oldest first (the newest is the one walcast seals with; every
 * one opens). Key material is held as `KeyObject`s and never printed.
 */
export class Keyring {
  readonly #keys: Map<string, KeyObject>;

  private constructor(keys: Map<string, KeyObject>) {
    this.#keys = keys;
  }

  /**
   * Parse the key ring text walcast reads (`--encryption-keys-file`): one
   * `<id>:<64 hex digits>` a line (or separated by `;`), `#` comments. Errors name the
   * line, never the key.
   */
  static parse(text: string): Keyring {
    const keys = new Map<string, KeyObject>();
    text.split(/[\n;]/).forEach((raw, i) => {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) return;
      const bad = (why: string) => new SealError(`encryption keys line ${i + 1}: ${why}`);
      const colon = line.indexOf(":");
      if (colon < 0) throw bad("not <id>:<64 hex digits>");
      const id = line.slice(0, colon);
      const hex = line.slice(colon + 1).trim();
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(id)) throw bad("the id must be 1 to 64 of [A-Za-z0-9_.-]");
      if (keys.has(id)) throw bad(`key id ${JSON.stringify(id)} appears twice`);
      if (!/^[0-9A-Fa-f]{64}$/.test(hex)) throw bad(`key ${JSON.stringify(id)}: not 64 hex digits (32 bytes)`);
      keys.set(id, createSecretKey(Buffer.from(hex, "hex")));
    });
    if (keys.size === 0) throw new SealError("encryption keys: no key in the key ring");
    return new Keyring(keys);
  }

  /** Read the key ring from a file. */
  static fromFile(path: string): Keyring {
    return Keyring.parse(readFileSync(path, "utf8"));
  }

  /** The key ids, oldest first. */
  ids(): string[] {
    return [...this.#keys.keys()];
  }

  /** @internal The key of this id. */
  key(id: string): KeyObject | undefined {
    return this.#keys.get(id);
  }

  toString(): string {
    return `Keyring(${this.ids().join(", ")})`;
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  toJSON(): { ids: string[] } {
    return { ids: this.ids() };
  }
}

/** The associated data a sealed row is bound to (see docs/encryption.md). */
export function associatedData(keyId: string, key: string, op: string, field: string, sequence: number | bigint): Uint8Array {
  const parts = [keyId, key, op, field].map((p) => Buffer.from(p, "utf8"));
  const seq = Buffer.alloc(8);
  seq.writeBigUInt64BE(BigInt(sequence));
  const zero = Buffer.from([0]);
  return Buffer.concat([Buffer.from("walcast-seal-v1"), ...parts.flatMap((p) => [zero, p]), zero, seq]);
}

/** How an envelope's rows travel: its `compression` and `key_id` fields. */
export interface Sealing {
  compression?: string;
  keyId?: string;
  /** `sealed_columns`: only these columns are sealed, each on its own. */
  columns?: string[];
}

/** The envelope a sealed row belongs to. */
export interface RowOf {
  key: string;
  op: string;
  sequence: number;
  field: SealedField;
}

/**
 * The MessagePack bytes of a sealed row: `sealed` opened with `keys` (when encrypted)
 * and inflated (when compressed). Throws {@link SealError}.
 */
export function openRow(sealed: unknown, sealing: Sealing, row: RowOf, keys: Keyring | undefined): Uint8Array {
  if (!(sealed instanceof Uint8Array)) throw new SealError(`the ${row.field} of ${row.key} is sealed but is not MessagePack bin`);
  let bytes: Uint8Array = sealed;
  if (sealing.keyId !== undefined && sealing.columns === undefined) bytes = openAead(bytes, sealing.keyId, row, keys, row.field);
  if (sealing.compression === undefined) return bytes;
  if (sealing.compression !== ZSTD) {
    throw new SealError(`the ${row.field} of ${row.key} is compressed with ${JSON.stringify(sealing.compression)}, which this consumer does not know`);
  }
  try {
    return inflateBounded(bytes);
  } catch (e) {
    throw new SealError(`the ${row.field} of ${row.key} does not decompress: ${(e as Error).message}`);
  }
}

/** The MessagePack bytes of one sealed column (`sealed_columns`) of a row. */
export function openColumn(sealed: unknown, keyId: string, column: string, row: RowOf, keys: Keyring | undefined): Uint8Array {
  if (!(sealed instanceof Uint8Array)) throw new SealError(`the ${row.field} of ${row.key} is sealed but is not MessagePack bin`);
  return openAead(sealed, keyId, row, keys, `${row.field}.${column}`);
}

function openAead(sealed: Uint8Array, keyId: string, row: RowOf, keys: Keyring | undefined, field: string): Uint8Array {
  const id = JSON.stringify(keyId);
  if (keys === undefined) {
    throw new SealError(
      `the envelope of ${row.key} is encrypted under key id ${id} and this consumer has no encryption keys (give it the key ring: decode(bytes, { keys }))`,
    );
  }
  const key = keys.key(keyId);
  if (key === undefined) {
    throw new SealError(`the envelope of ${row.key} is encrypted under key id ${id}, which is not in this consumer's key ring (it has: ${keys.ids().join(", ")})`);
  }
  const failed = () => new SealError(`the ${row.field} of ${row.key} does not authenticate under key id ${id}: the key material for that id is wrong, or the envelope was altered`);
  if (sealed.length < NONCE_LEN + TAG_LEN) throw failed();
  const nonce = sealed.subarray(0, NONCE_LEN);
  const body = sealed.subarray(NONCE_LEN, sealed.length - TAG_LEN);
  const tag = sealed.subarray(sealed.length - TAG_LEN);
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, nonce);
    decipher.setAAD(associatedData(keyId, row.key, row.op, field, row.sequence));
    decipher.setAuthTag(tag);
    return new Uint8Array(Buffer.concat([decipher.update(body), decipher.final()]));
  } catch {
    throw failed();
  }
}
