import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { inspect } from "node:util";
import { unpack } from "msgpackr";
import { decode, DecodeError, encode, Keyring, SealError } from "../../src/index.js";
import { repoRoot } from "../support/paths.js";

interface SealedVector {
  name: string;
  hex: string;
  compression: string | null;
  key_id: string | null;
  sequence: number;
  value?: Record<string, unknown>;
  before?: Record<string, unknown>;
  error?: string;
  no_keys_error?: string;
}

const doc: { keys: string; vectors: SealedVector[] } = JSON.parse(readFileSync(join(repoRoot(), "docs", "vectors", "sealed.json"), "utf8"));
const bytes = (h: string) => new Uint8Array(Buffer.from(h, "hex"));

test("docs/vectors/sealed.json: each vector opens to its rows with the test key ring, or fails as documented", () => {
  const keys = Keyring.parse(doc.keys);
  assert.equal(doc.vectors.length, 5);
  for (const v of doc.vectors) {
    // A generic MessagePack decoder reads every envelope (a sealed row is plain bin).
    const generic = unpack(Buffer.from(v.hex, "hex")) as Record<string, unknown>;
    assert.equal(generic.sequence, v.sequence, v.name);
    if (v.error !== undefined) {
      assert.throws(() => decode(bytes(v.hex), { keys }), (e: Error) => e instanceof DecodeError && e.message.includes(v.error!), v.name);
      continue;
    }
    const env = decode(bytes(v.hex), { keys });
    assert.deepEqual(env.value, v.value, v.name);
    assert.deepEqual(env.before, v.before, v.name);
    assert.equal(env.compression, v.compression ?? undefined, v.name);
    assert.equal(env.keyId, v.key_id ?? undefined, v.name);
    if (v.no_keys_error !== undefined) {
      assert.throws(
        () => decode(bytes(v.hex)),
        (e: Error) => e instanceof DecodeError && e.message.includes(v.no_keys_error!) && e.message.includes(JSON.stringify(v.key_id)),
        v.name,
      );
    } else {
      assert.deepEqual(decode(bytes(v.hex)), env, `${v.name}: opens without keys`);
    }
    // Encoding writes the plain form, which decodes to the same rows.
    const plain = decode(encode(env));
    assert.deepEqual([plain.value, plain.compression, plain.keyId], [env.value, undefined, undefined]);
  }
});

test("a key ring missing the id, or with other material under it, is a clear error", () => {
  const encrypted = doc.vectors[1]!;
  const onlyK1 = Keyring.parse(doc.keys.split("\n")[0]!);
  assert.throws(() => decode(bytes(encrypted.hex), { keys: onlyK1 }), /key id "k2", which is not in this consumer's key ring \(it has: k1\)/);
  const wrong = Keyring.parse(`k2:${"44".repeat(32)}`);
  assert.throws(() => decode(bytes(encrypted.hex), { keys: wrong }), /does not authenticate under key id "k2"/);
});

test("the key ring never shows its material", () => {
  const secret = "5ec2e7".repeat(10) + "5ec2";
  const keys = Keyring.parse(`# a comment\nk1:${secret}; k2:${"0".repeat(64)}`);
  assert.deepEqual(keys.ids(), ["k1", "k2"]);
  for (const shown of [inspect(keys, { depth: 5, showHidden: true }), String(keys), JSON.stringify(keys)]) {
    assert.ok(!shown.includes("5ec2e7"), shown);
  }
  for (const bad of [`k1:${secret.slice(1)}`, `k1 ${secret}`, `k1:${secret}\nk1:${secret}`, `k/1:${secret}`]) {
    assert.throws(
      () => Keyring.parse(bad),
      (e: Error) => e instanceof SealError && /line \d/.test(e.message) && !e.message.includes("5ec2e7"),
    );
  }
});
