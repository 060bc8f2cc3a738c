// End to end for compressed and encrypted tables: real PostgreSQL → the real walcast
// binary (`--compress`, `--encrypt`, a key ring file) → real nats-server → this
// package's decode with and without the key ring; the JetStream store files hold no
// plaintext of the encrypted table; key rotation across a walcast restart.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, type NatsConnection, type Subscription } from "nats";
import { decode, DecodeError, Keyring, refetchFromStream, type Envelope } from "../../src/index.js";
import { eventually, NatsServer, PgServer, Walcast } from "../support/servers.js";

const K1 = `k1:${"a1".repeat(32)}`;
const K2 = `k2:${"b2".repeat(32)}`;
const SECRET = "TS-MARKER-91c4-SECRET";
const PLAIN = "TS-MARKER-91c4-PLAIN";
const LONG = "walcast compresses this ".repeat(30);

type Raw = { subject: string; data: Uint8Array };

/** Every message on walcast's subjects, queued as it arrives. */
function collect(nc: NatsConnection): { sub: Subscription; take(n: number): Promise<Raw[]> } {
  const queue: Raw[] = [];
  const sub = nc.subscribe("walcast.>", { callback: (_e, m) => queue.push({ subject: m.subject, data: m.data }) });
  return {
    sub,
    async take(n: number) {
      await eventually(`${n} messages`, 30_000, () => (queue.length >= n ? true : undefined));
      return queue.splice(0, n);
    },
  };
}

function storeBytes(dir: string): Buffer {
  const parts: Buffer[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else parts.push(readFileSync(p));
    }
  };
  walk(dir);
  return Buffer.concat(parts);
}

function find(envs: Envelope[], key: string, op: string): Envelope {
  const e = envs.find((x) => x.key === key && x.op === op);
  assert.ok(e, `no ${op} of ${key}`);
  return e;
}

describe("compressed and encrypted tables (walcast --compress / --encrypt)", () => {
  let pg: PgServer | undefined;
  let nats: NatsServer | undefined;
  let nc: NatsConnection | undefined;
  const dir = mkdtempSync(join(tmpdir(), "walcast-ts-keys-"));
  const ringFile = join(dir, "keys");

  before(async () => {
    pg = await PgServer.start();
    nats = await NatsServer.start();
    await pg.psql(`CREATE TABLE docs (id int PRIMARY KEY, body text);
      CREATE TABLE secrets (id int PRIMARY KEY, note text);
      CREATE TABLE plain (id int PRIMARY KEY, note text);
      CREATE TABLE people (id int PRIMARY KEY, name text, ssn text);
      CREATE PUBLICATION walcast FOR TABLE docs, secrets, plain, people;`);
    nc = await connect({ servers: nats.url(), name: "sealed-e2e" });
  });

  after(async () => {
    await nc?.close().catch(() => {});
    await nats?.stop();
    await pg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("round trips, clear errors without the key, no plaintext in the store, key rotation", { timeout: 120_000 }, async (t) => {
    writeFileSync(ringFile, `${K1}\n`);
    const args = ["--snapshot", "never", "--compress", "public.docs=200", "--compress", "public.secrets=200",
      "--encrypt", "public.secrets", "--encrypt-column", "public.people=ssn", "--encryption-keys-file", ringFile];
    const received = collect(nc!);
    await nc!.flush();
    let walcast = await Walcast.start(pg!, nats!, args);
    const k1 = Keyring.parse(K1);
    try {
      await pg!.psql(`INSERT INTO docs VALUES (1, '${LONG}'), (2, 'short');
        INSERT INTO secrets VALUES (1, '${SECRET} one'), (2, '${SECRET} ${LONG}');
        INSERT INTO plain VALUES (1, '${PLAIN}');
        INSERT INTO people VALUES (1, 'Ada Clear', '${SECRET} ssn');`);
      const first = await received.take(6);
      const envs = first.map((m) => decode(m.data, { keys: k1 }));
      const big = find(envs, "public.docs:1", "insert");
      assert.deepEqual([big.compression, big.keyId, big.value], ["zstd", undefined, { id: 1, body: LONG }]);
      assert.equal(find(envs, "public.docs:2", "insert").compression, undefined);
      const s1 = find(envs, "public.secrets:1", "insert");
      assert.deepEqual([s1.keyId, s1.value], ["k1", { id: 1, note: `${SECRET} one` }]);
      const s2 = find(envs, "public.secrets:2", "insert");
      assert.deepEqual([s2.compression, s2.keyId], ["zstd", "k1"]);
      const person = find(envs, "public.people:1", "insert");
      assert.deepEqual([person.keyId, person.value], ["k1", { id: 1, name: "Ada Clear", ssn: `${SECRET} ssn` }]);
      for (const m of first) {
        const clear = m.subject.includes(".plain.");
        if (m.subject.includes(".people.")) {
          assert.ok(Buffer.from(m.data).includes("Ada Clear") && !Buffer.from(m.data).includes(SECRET), "only ssn is sealed");
          assert.throws(() => decode(m.data), /key id "k1" and this consumer has no encryption keys/);
          continue;
        }
        assert.equal(Buffer.from(m.data).includes("TS-MARKER-91c4"), clear, m.subject);
        if (m.subject.includes(".secrets.")) {
          assert.throws(() => decode(m.data), (e: Error) => e instanceof DecodeError && /key id "k1" and this consumer has no encryption keys/.test(e.message));
          assert.throws(() => decode(m.data, { keys: Keyring.parse(`k1:${"00".repeat(32)}`) }), /does not authenticate under key id "k1"/);
        }
      }
      const stored = await refetchFromStream(nc!, "public.secrets:1", { keys: k1 });
      assert.deepEqual(stored.value, s1.value);
      await assert.rejects(refetchFromStream(nc!, "public.secrets:1"), /no encryption keys/);

      const store = join(nats!.dir, "store");
      await eventually("the stream's files hold the clear row", 30_000, () =>
        storeBytes(store).includes(PLAIN) && storeBytes(store).includes("walcast.public.secrets.2") ? true : undefined);
      assert.ok(!storeBytes(store).includes(SECRET), "the store holds plaintext of public.secrets");

      // Rotation: k2 added, walcast restarted; new envelopes use k2, old ones still open.
      await walcast.stop();
      writeFileSync(ringFile, `${K1}\n${K2}\n`);
      walcast = await Walcast.start(pg!, nats!, args);
      await pg!.psql(`UPDATE secrets SET note = '${SECRET} again' WHERE id = 1;`);
      const [next] = await received.take(1);
      const both = Keyring.parse(`${K1};${K2}`);
      const update = decode(next!.data, { keys: both });
      assert.deepEqual([update.op, update.sequence, update.keyId, update.value], ["update", 2, "k2", { id: 1, note: `${SECRET} again` }]);
      assert.throws(() => decode(next!.data, { keys: k1 }), /key id "k2", which is not in this consumer's key ring \(it has: k1\)/);
      const old = await refetchFromStream(nc!, "public.secrets:2", { keys: both });
      assert.deepEqual([old.keyId, old.sequence], ["k1", 1]);
      t.diagnostic(`sealed envelope of ${s2.key}: ${first.find((m) => m.subject.endsWith("secrets.2"))!.data.length} bytes`);
    } finally {
      received.sub.unsubscribe();
      await walcast.stop();
    }
  });
});
