import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { inspect } from "node:util";
import { unpack } from "msgpackr";
import {
  decode,
  decodeValue,
  DecodeError,
  encode,
  Float32,
  Float64,
  formatLsn,
  pack,
  parseLsn,
  Timestamp,
  toSyncEnvelope,
  type Envelope,
} from "../../src/index.js";
import { repoRoot } from "../support/paths.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const bytes = (h: string) => new Uint8Array(Buffer.from(h, "hex"));

/** The hex vectors printed in docs/envelope.md, read from the document itself. */
function documentedVectors(): string[] {
  const doc = readFileSync(join(repoRoot(), "docs", "envelope.md"), "utf8");
  return [...doc.matchAll(/```\n([0-9a-f]+)\n```/g)].map((m) => m[1]!);
}

const INSERT_HEX =
  "87a36b6579af7075626c69632e75736572733a3432a26f70a6696e73657274a576616c756584a269642aa46e616d65a3416461a573636f7265cb7ff8000000000000a47461677392a161c0ae736368656d615f76657273696f6ea3312e30a873657175656e636501a36c736ecf00000016b374d848a9636f6d6d69745f7473d7ff1d6f28006553f100";
const DELETE_HEX =
  "87a36b6579af7075626c69632e75736572733a3432a26f70a664656c657465a576616c7565c0ae736368656d615f76657273696f6ea3322e31a873657175656e636507a36c736e01a9636f6d6d69745f7473c70cff000000007fffffffffffffff";

const UPDATE_FULL_HEX =
  "8aa36b6579af7075626c69632e75736572733a3432a26f70a6757064617465a576616c756582a269642aa46e616d65a3416461ae736368656d615f76657273696f6ea3312e30a873657175656e636502a36c736ecf00000016b374d848a9636f6d6d69745f7473d7ff1d6f28006553f100a3786964cd02eea874785f696e64657803a66265666f726582a269642aa46e616d65a24164";

test("the documentation carries exactly the three vectors checked here", () => {
  assert.deepEqual(documentedVectors(), [INSERT_HEX, DELETE_HEX, UPDATE_FULL_HEX]);
});

test("optional fields vector: before, xid and tx_index decode and encode back byte for byte", () => {
  const env = decode(bytes(UPDATE_FULL_HEX));
  assert.equal(env.op, "update");
  assert.deepEqual(env.value, { id: 42, name: "Ada" });
  assert.deepEqual(env.before, { id: 42, name: "Ad" });
  assert.equal(env.xid, 750);
  assert.equal(env.txIndex, 3);
  assert.equal(hex(encode(env)), UPDATE_FULL_HEX);
  // Without them (a table without FULL identity, a snapshot) they are absent, not
  // undefined-valued keys, and the encoding is the seven-field one.
  const plain = decode(bytes(INSERT_HEX));
  assert.ok(!("before" in plain) && !("xid" in plain) && !("txIndex" in plain));
  const { before: _b, xid: _x, txIndex: _t, ...seven } = env;
  assert.equal(bytes(hex(encode(seven)))[0], 0x87);
  // A wrong type is an error.
  const bad = bytes(UPDATE_FULL_HEX.replace("a3786964cd02ee", "a3786964a178"));
  assert.throws(() => decode(bad), /"xid"/);
});

test("insert vector: decodes to the documented envelope and encodes back byte for byte", () => {
  const env = decode(bytes(INSERT_HEX));
  assert.equal(env.key, "public.users:42");
  assert.equal(env.op, "insert");
  assert.equal(env.schemaVersion, "1.0");
  assert.equal(env.sequence, 1);
  assert.equal(env.lsn, 0x16b374d848n);
  assert.equal(formatLsn(env.lsn), "16/B374D848");
  assert.ok(env.commitTs.equals(new Timestamp(1_700_000_000n, 123_456_000)));
  assert.equal(env.commitTs.toString(), "2023-11-14T22:13:20.123456Z");
  assert.equal(env.value!.id, 42);
  assert.equal(env.value!.name, "Ada");
  assert.ok(Number.isNaN(env.value!.score));
  assert.deepEqual(env.value!.tags, ["a", null]);
  assert.equal(hex(encode(env)), INSERT_HEX);

  // The same envelope built by hand encodes to the vector too.
  const built: Envelope = {
    key: "public.users:42",
    op: "insert",
    value: { id: 42, name: "Ada", score: NaN, tags: ["a", null] },
    schemaVersion: "1.0",
    sequence: 1,
    lsn: parseLsn("16/B374D848"),
    commitTs: new Timestamp(1_700_000_000n, 123_456_000),
  };
  assert.equal(hex(encode(built)), INSERT_HEX);
});

test("delete vector: value nil, commit time infinity (96-bit timestamp)", () => {
  const env = decode(bytes(DELETE_HEX));
  assert.equal(env.op, "delete");
  assert.equal(env.value, null);
  assert.equal(env.schemaVersion, "2.1");
  assert.equal(env.sequence, 7);
  assert.equal(env.lsn, 1n);
  assert.ok(env.commitTs.isInfinity);
  assert.ok(env.commitTs.equals(Timestamp.INFINITY));
  assert.equal(env.commitTs.toString(), "infinity");
  assert.equal(hex(encode(env)), DELETE_HEX);
  assert.deepEqual(toSyncEnvelope(env), { value: null, schema_version: "2.1", sequence: 7 });
});

test("decoding accepts a Node Buffer and yields plain Uint8Array binaries", () => {
  const env: Envelope = {
    ...decode(bytes(INSERT_HEX)),
    value: { by: new Uint8Array([0, 255, 0, 1]) },
  };
  const back = decode(Buffer.from(encode(env)));
  assert.equal(Object.getPrototypeOf(back.value!.by), Uint8Array.prototype);
  assert.deepEqual(back.value!.by, new Uint8Array([0, 255, 0, 1]));
});

test("64-bit integers: numbers within ±2^53, bigints beyond, nothing lost", () => {
  const cases: Array<[number | bigint, string]> = [
    [0, "00"],
    [127, "7f"],
    [128, "cc80"],
    [255, "ccff"],
    [256, "cd0100"],
    [65535, "cdffff"],
    [65536, "ce00010000"],
    [4294967295, "ceffffffff"],
    [4294967296, "cf0000000100000000"],
    [2 ** 53, "cf0020000000000000"],
    [2n ** 53n + 1n, "cf0020000000000001"],
    [2n ** 63n - 1n, "cf7fffffffffffffff"],
    [2n ** 64n - 1n, "cfffffffffffffffff"],
    [-1, "ff"],
    [-32, "e0"],
    [-33, "d0df"],
    [-128, "d080"],
    [-129, "d1ff7f"],
    [-32768, "d18000"],
    [-32769, "d2ffff7fff"],
    [-2147483648, "d280000000"],
    [-2147483649, "d3ffffffff7fffffff"],
    [-(2 ** 53), "d3ffe0000000000000"],
    [-(2n ** 53n) - 1n, "d3ffdfffffffffffff"],
    [-(2n ** 63n), "d38000000000000000"],
  ];
  for (const [v, h] of cases) {
    assert.equal(hex(pack(v)), h, `encoding ${v}`);
    const back = decodeValue(bytes(h));
    const big = typeof v === "bigint" ? v : BigInt(v);
    const safe = big >= -(2n ** 53n) && big <= 2n ** 53n;
    assert.equal(typeof back, safe ? "number" : "bigint", `type of ${v}`);
    assert.equal(BigInt(back as number | bigint), big, `value of ${v}`);
  }
  assert.throws(() => pack(2n ** 64n), RangeError);
});

test("floats: float 32 and float 64 kept exactly, NaN and infinities included", () => {
  assert.equal(hex(pack(new Float32(1.5))), "ca3fc00000");
  assert.equal(hex(pack(new Float64(2))), "cb4000000000000000");
  assert.equal(hex(pack(0.1)), "cb3fb999999999999a");
  assert.equal(hex(pack(-0)), "cb8000000000000000");
  assert.equal(hex(pack(Infinity)), "cb7ff0000000000000");
  assert.equal(decodeValue(bytes("ca3dcccccd")), Math.fround(0.1));
  assert.equal(decodeValue(bytes("ca7f800000")), Infinity);
  assert.equal(decodeValue(bytes("caff800000")), -Infinity);
  assert.ok(Number.isNaN(decodeValue(bytes("ca7fc00000"))));
  assert.equal(decodeValue(bytes("cbfff0000000000000")), -Infinity);
});

test("timestamps: 32-, 64- and 96-bit forms, the infinity sentinels, BC instants", () => {
  const cases: Array<[Timestamp, string]> = [
    [new Timestamp(0n, 0), "d6ff00000000"],
    [new Timestamp(1_700_000_000n, 0), "d6ff6553f100"],
    [new Timestamp(1_700_000_000n, 123_456_000), "d7ff1d6f28006553f100"],
    [new Timestamp(2n ** 34n - 1n, 999_999_000), "d7ffee6b1863ffffffff"],
    [new Timestamp(2n ** 34n, 0), "c70cff000000000000000400000000"],
    [new Timestamp(-1n, 500_000_000), "c70cff1dcd6500ffffffffffffffff"],
    [Timestamp.INFINITY, "c70cff000000007fffffffffffffff"],
    [Timestamp.NEG_INFINITY, "c70cff000000008000000000000000"],
  ];
  for (const [ts, h] of cases) {
    assert.equal(hex(pack(ts)), h, ts.toString());
    const back = decodeValue(bytes(h));
    assert.ok(back instanceof Timestamp);
    assert.ok(back.equals(ts), `${back} != ${ts}`);
  }
  assert.equal(inspect(new Timestamp(1_700_000_000n, 123_456_789)), "Timestamp(2023-11-14T22:13:20.123456Z +789ns)");
  assert.equal(inspect({ at: Timestamp.INFINITY }), "{ at: Timestamp(infinity) }");
  assert.ok(Timestamp.NEG_INFINITY.isNegInfinity);
  assert.equal(Timestamp.NEG_INFINITY.toString(), "-infinity");
  assert.equal(Timestamp.INFINITY.toEpochMillis(), Infinity);
  assert.throws(() => Timestamp.INFINITY.toDate(), RangeError);
  assert.equal(new Timestamp(-1n, 500_000_000).toString(), "1969-12-31T23:59:59.500000Z");
  assert.equal(new Timestamp(1_709_210_096n, 789_012_000).toString(), "2024-02-29T12:34:56.789012Z");
  assert.equal(new Timestamp(1_709_210_096n, 789_012_000).toEpochMicros(), 1_709_210_096_789_012n);
  assert.equal(
    new Timestamp(1_709_210_096n, 789_012_000).toDate().toISOString(),
    "2024-02-29T12:34:56.789Z",
  );
  // 0001-01-01T00:00:00Z and one second before it (1 BC is year 0).
  assert.equal(new Timestamp(-62_135_596_800n, 0).toString(), "0001-01-01T00:00:00.000000Z");
  assert.equal(new Timestamp(-62_135_596_801n, 0).toString(), "0000-12-31T23:59:59.000000Z");
  assert.ok(Timestamp.fromEpochMicros(-1n).equals(new Timestamp(-1n, 999_999_000)));
});

test("other msgpackr users in the process still get Dates for timestamps", () => {
  const d = unpack(Buffer.from("d7ff1d6f28006553f100", "hex"));
  assert.ok(d instanceof Date);
  assert.equal(d.toISOString(), "2023-11-14T22:13:20.123Z");
});

test("row values: strings, binaries, nested maps and arrays", () => {
  const value = {
    num: "-999999999999999999999999999999.000000000000000000001",
    t: "héllo \"w\" ✓",
    by: new Uint8Array([0, 255, 0, 1]),
    j: { a: [1, 2.5, null, "x"], big: 2n ** 63n - 1n },
    ia2: [
      [1, 2],
      [3, null],
    ],
    iv: { months: 14, days: 3, microseconds: 14_706_500_000 },
    ts: new Timestamp(1_709_210_096n, 789_012_000),
  };
  const env: Envelope = { ...decode(bytes(INSERT_HEX)), value };
  const back = decode(encode(env));
  assert.deepEqual(back.value, value);
  assert.equal(hex(encode(back)), hex(encode(env)));
});

test("unknown fields are ignored; what is not an envelope is refused", () => {
  const withExtra = pack({
    key: "public.t:1",
    op: "update",
    value: { id: 1 },
    schema_version: "1.0",
    sequence: 3,
    lsn: 5,
    commit_ts: new Timestamp(1n, 0),
    future_field: [1, 2, 3],
  });
  const env = decode(withExtra);
  assert.equal(env.sequence, 3);
  assert.equal(env.lsn, 5n);
  assert.throws(() => decode(bytes("d9")), DecodeError); // truncated
  assert.throws(() => decode(bytes("01")), /not a map/);
  assert.throws(() => decode(Uint8Array.from(Buffer.from("\x81\xa3key\xa1k", "latin1"))), /"op"/);
  assert.throws(
    () => decode(pack({ key: "k", op: "upsert", value: null, schema_version: "1.0", sequence: 1, lsn: 1, commit_ts: new Timestamp(1n) })),
    /unknown op "upsert"/,
  );
  assert.throws(
    () => decode(pack({ key: "k", op: "insert", value: null, schema_version: "1.0", sequence: 1, lsn: 1, commit_ts: 5 })),
    /"commit_ts"/,
  );
  assert.throws(
    () => decode(pack({ key: "k", op: "insert", value: null, schema_version: "1.0", sequence: -1, lsn: 1, commit_ts: new Timestamp(1n) })),
    /"sequence"/,
  );
});

test("LSN text form", () => {
  assert.equal(formatLsn(0n), "0/0");
  assert.equal(formatLsn(1n), "0/1");
  assert.equal(parseLsn("0/1505920"), 0x1505920n);
  assert.equal(formatLsn(parseLsn("FFFFFFFF/FFFFFFFF")), "FFFFFFFF/FFFFFFFF");
  assert.throws(() => parseLsn("12"), RangeError);
});
