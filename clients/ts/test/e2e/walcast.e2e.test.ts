// End to end: real PostgreSQL → the real walcast binary → real nats-server (JetStream)
// → this package. The decoded values are compared with what PostgreSQL itself says
// of the rows, and a replica that loses messages must recover from the stream.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { connect, type NatsConnection } from "nats";
import {
  createClientReplica,
  NatsTransport,
  parseLsn,
  refetchFromStream,
  refetchFromWalcast,
  RefetchError,
  streamRefetch,
  Timestamp,
  type Envelope,
  type Handler,
  type Result,
  type SubscribeOptions,
  type Subscription,
  type Transport,
} from "../../src/index.js";
import { Inbox } from "../support/contract.js";
import { parseJsonExact } from "../support/pgjson.js";
import { eventually, NatsServer, PgServer, Walcast } from "../support/servers.js";

const WAIT = 15_000;

const SCHEMA_SQL = `
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE types (
  id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, f4 float4, f4nan float4, f4inf float4,
  f8 float8, f8nan float8, f8inf float8, f8ninf float8, num numeric, bignum numeric, numnan numeric,
  b bool, t text, ch char(3), by bytea, u uuid, j json, jb jsonb, ts timestamp, tstz timestamptz,
  tsinf timestamptz, tsninf timestamp, d date, tm time, iv interval, ia int[], ta text[], ia2 int[],
  ta2 text[], m mood, ma mood[], nul text, jn jsonb, lb int[]);
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(), tags text[]);
CREATE PUBLICATION walcast FOR TABLE types, accounts;
`;

const BIG = `-${"9".repeat(120)}.${"1".repeat(30)}`;

const ROWS_SQL = `
INSERT INTO types VALUES (1, -32768, 2147483647, 9223372036854775807, 1.5, 'NaN', '-Infinity',
  0.1, 'NaN', 'Infinity', '-Infinity', 12.340, '${BIG}', 'NaN', true,
  E'h\\u00e9llo "w"\\ttab\\nline \\u2713', 'ab', '\\x00ff0001', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a": [1, 2.5, null, "x"], "big": 12345678901234567890, "neg": -9007199254740993}',
  '{"nested": {"deep": [true, {"k": -1}]}, "f": 1.0e2}', '2024-02-29 12:34:56.789012',
  '2024-02-29 12:34:56.5+02', 'infinity', '-infinity', '2024-02-29', '13:14:15.5',
  '1 year 2 mons 3 days 04:05:06.5', '{1,NULL,3}', '{"a b",NULL,"c,d",""}', '{{1,2},{3,NULL}}',
  '{{a,NULL},{"",x}}', 'happy', '{sad,happy}', NULL,
  '{"pi": 3.141592653589793238462643383279, "huge": 1e400, "i": 100000000000000000000000000001, "e30": 1e30, "u": 18446744073709551615, "tenth": 0.1}',
  '[0:1]={7,8}');
INSERT INTO types VALUES (2, 0, -5, -9223372036854775808, 0.1, 3.4028235e38, 'Infinity',
  1e300, -0.5, 2.2250738585072014e-308, 5e-324, '-0.000001', 'Infinity', '-Infinity', false,
  '', 'abc', '\\x', '00000000-0000-0000-0000-000000000000', '"just a string"', '[]',
  '0044-03-15 12:00:00 BC', '1969-12-31 23:59:59.999999+00', '-infinity', 'infinity', '0044-03-15 BC',
  '00:00:00', '-1 mons +2 days -00:00:01.000001', '{}', '{}', '{{NULL}}', '{{"\\"q\\"",","}}', 'sad', '{}', NULL);
INSERT INTO types (id, i8, ts, d) VALUES (3, 9007199254740993, '1970-01-01 00:00:00', 'infinity');
`;

/** How each column of \`types\` is read back from PostgreSQL and compared. */
type Kind = "int" | "float4" | "float8" | "text" | "bpchar" | "bool" | "bytea" | "json" | "timestamp" | "interval" | "array" | "bounded";
const COLUMNS: Record<string, Kind> = {
  id: "int", i2: "int", i4: "int", i8: "int",
  f4: "float4", f4nan: "float4", f4inf: "float4",
  f8: "float8", f8nan: "float8", f8inf: "float8", f8ninf: "float8",
  num: "text", bignum: "text", numnan: "text", b: "bool", t: "text", ch: "bpchar", by: "bytea", u: "text",
  j: "json", jb: "json", ts: "timestamp", tstz: "timestamp", tsinf: "timestamp", tsninf: "timestamp",
  d: "text", tm: "text", iv: "interval", ia: "array", ta: "array", ia2: "array", ta2: "array",
  m: "text", ma: "array", nul: "text", jn: "json", lb: "bounded",
};

function pgExpr(col: string, kind: Kind): string {
  switch (kind) {
    case "bytea":
      return `encode(${col}, 'hex')`;
    case "bpchar":
      // ::text would strip char(n)'s padding; its output function keeps it.
      return `to_json(${col}) #>> '{}'`;
    case "json":
    case "array":
      return `to_json(${col})::text`;
    case "bounded":
      // An array whose lower bounds are not all 1 travels as {lower_bounds, elements}.
      return `CASE WHEN ${col} IS NULL OR array_ndims(${col}) IS NULL OR array_to_string(ARRAY(SELECT array_lower(${col}, d) FROM generate_series(1, array_ndims(${col})) d), ',') ~ '^(1,)*1$' THEN to_json(${col})::text
        ELSE json_build_object('lower_bounds', ARRAY(SELECT array_lower(${col}, d) FROM generate_series(1, array_ndims(${col})) d), 'elements', to_json(${col}))::text END`;
    case "timestamp":
      return `CASE WHEN isfinite(${col}) THEN trunc(extract(epoch FROM ${col}) * 1000000)::text ELSE ${col}::text END`;
    case "interval":
      return `CASE WHEN ${col} IS NULL THEN NULL ELSE json_build_object('months', (extract(year FROM ${col}) * 12 + extract(month FROM ${col}))::text,
        'days', extract(day FROM ${col})::text,
        'microseconds', (extract(hour FROM ${col}) * 3600000000 + extract(minute FROM ${col}) * 60000000
          + extract(microseconds FROM ${col}))::bigint::text)::text END`;
    default:
      return `${col}::text`;
  }
}

/** Every column of every row of \`types\`, as PostgreSQL prints it. */
async function pgRows(pg: PgServer): Promise<Map<number, Record<string, string | null>>> {
  const fields = Object.entries(COLUMNS)
    .map(([c, k]) => `'${c}', ${pgExpr(c, k)}`)
    .join(", ");
  const out = await pg.psql(`SELECT json_build_object(${fields}) FROM types ORDER BY id;`);
  const rows = new Map<number, Record<string, string | null>>();
  for (const line of out.split("\n")) {
    const r = JSON.parse(line) as Record<string, string | null>;
    rows.set(Number(r.id), r);
  }
  return rows;
}

function checkColumn(col: string, kind: Kind, got: unknown, pg: string | null): void {
  const what = `column ${col}: decoded ${String(got)} (${typeof got}), PostgreSQL says ${pg}`;
  if (pg === null) return assert.equal(got, null, what);
  switch (kind) {
    case "int": {
      const want = BigInt(pg);
      const safe = want >= -(2n ** 53n) && want <= 2n ** 53n;
      assert.equal(typeof got, safe ? "number" : "bigint", what);
      return assert.equal(BigInt(got as number | bigint), want, what);
    }
    case "float4":
      assert.equal(typeof got, "number", what);
      return assert.ok(Object.is(got, Math.fround(Number(pg))), what);
    case "float8":
      assert.equal(typeof got, "number", what);
      return assert.ok(Object.is(got, Number(pg)), what);
    case "bool":
      return assert.equal(got, pg === "true", what);
    case "bytea":
      assert.ok(got instanceof Uint8Array, what);
      return assert.equal(Buffer.from(got).toString("hex"), pg, what);
    case "json":
    case "array":
    case "bounded":
      return assert.deepEqual(got, parseJsonExact(pg), what);
    case "timestamp": {
      assert.ok(got instanceof Timestamp, what);
      return assert.equal(got.isFinite ? got.toEpochMicros().toString() : got.toString(), pg, what);
    }
    case "interval": {
      const want = JSON.parse(pg) as Record<string, string>;
      const iv = got as Record<string, number | bigint>;
      assert.deepEqual(Object.keys(iv), ["months", "days", "microseconds"], what);
      for (const f of ["months", "days", "microseconds"]) assert.equal(String(iv[f]), want[f], `${what} (${f})`);
      return;
    }
    case "text":
    case "bpchar":
      return assert.equal(got, pg, what);
  }
}

/** A transport that withholds (drops) every envelope while `paused`, counting them. */
class Withholding implements Transport {
  paused = false;
  withheld = 0;
  constructor(private readonly inner: Transport) {}
  publish(key: string, envelope: Envelope): void {
    this.inner.publish(key, envelope);
  }
  private wrap(handler: Handler): Handler {
    return (env) => {
      if (this.paused) {
        this.withheld++;
        return;
      }
      return handler(env);
    };
  }
  subscribe(key: string, handler: Handler, options?: SubscribeOptions): Subscription {
    return this.inner.subscribe(key, this.wrap(handler), options);
  }
  subscribeTable(schema: string, table: string, handler: Handler, options?: SubscribeOptions): Subscription {
    return this.inner.subscribeTable(schema, table, this.wrap(handler), options);
  }
  keyCount(): number {
    return this.inner.keyCount();
  }
}

interface Account {
  id: number;
  owner: string;
  balance: string;
  updated_at: Timestamp;
  tags: Array<string | null> | null;
}

const accountSchema = {
  parse(v: unknown): Result<Account> {
    const r = v as Partial<Account> | null;
    if (r && typeof r.id === "number" && typeof r.owner === "string" && typeof r.balance === "string" && r.updated_at instanceof Timestamp) {
      return { tag: "Ok", value: r as Account };
    }
    return { tag: "Err", error: "not an account row" };
  },
};

describe("walcast end to end (PostgreSQL → walcast → NATS → TypeScript)", () => {
  let pg: PgServer | undefined;
  let nats: NatsServer | undefined;
  let walcast: Walcast | undefined;
  let nc: NatsConnection | undefined;

  // A setup failure (a missing binary above all) fails every test with its message.
  let setupError: unknown;
  const ready = () => {
    if (setupError) throw setupError;
  };

  before(async () => {
    try {
      pg = await PgServer.start();
      nats = await NatsServer.start();
      await pg.psql(SCHEMA_SQL);
      walcast = await Walcast.start(pg, nats);
      nc = await connect({ servers: nats.url(), name: "e2e" });
    } catch (e) {
      setupError = e;
    }
  });

  after(async () => {
    await nc?.close().catch(() => {});
    await walcast?.stop();
    await nats?.stop();
    await pg?.stop();
  });

  test("every type of the matrix decodes to what PostgreSQL holds", { timeout: 60_000 }, async (t) => {
    ready();
    const transport = new NatsTransport({ connection: nc! });
    const inbox = new Inbox();
    const sub = transport.subscribeTable("public", "types", inbox.handler);
    await transport.flush();
    await pg!.psql(ROWS_SQL);
    const got = new Map<number, Envelope>();
    while (got.size < 3) {
      const env = await inbox.next(WAIT).catch((e) => {
        throw new Error(`${e}\nwalcast log:\n${walcast!.log()}`);
      });
      got.set(Number(env.value!.id), env);
    }
    sub();
    const rows = await pgRows(pg!);
    const walLsn = parseLsn(await pg!.psql("SELECT pg_current_wal_lsn()::text;"));
    for (const [id, env] of got) {
      assert.equal(env.key, `public.types:${id}`);
      assert.equal(env.op, "insert");
      assert.equal(env.schemaVersion, "1.0");
      assert.equal(env.sequence, 1);
      assert.ok(env.lsn > 0n && env.lsn <= walLsn, `lsn ${env.lsn} vs current ${walLsn}`);
      assert.ok(env.commitTs.isFinite && Math.abs(env.commitTs.toEpochMillis() - Date.now()) < 60_000);
      const row = rows.get(id)!;
      assert.deepEqual(Object.keys(env.value!), Object.keys(COLUMNS), "every column, in table order");
      for (const [col, kind] of Object.entries(COLUMNS)) checkColumn(col, kind, env.value![col], row[col] ?? null);
      // The stream's copy (what a refetch returns) is the same envelope.
      assert.deepEqual(await refetchFromStream(nc!, env.key), env);
    }
    // Spot checks of the mapping itself.
    const one = got.get(1)!.value!;
    assert.equal(one.i8, 9223372036854775807n);
    assert.equal(one.f4, 1.5);
    assert.equal(one.num, "12.340");
    assert.equal(one.bignum, BIG);
    assert.equal(one.ch, "ab ");
    assert.deepEqual(one.by, new Uint8Array([0, 255, 0, 1]));
    assert.deepEqual(one.j, { a: [1, 2.5, null, "x"], big: 12345678901234567890n, neg: -9007199254740993n });
    assert.ok((one.tsinf as Timestamp).equals(Timestamp.INFINITY));
    assert.ok((one.tsninf as Timestamp).equals(Timestamp.NEG_INFINITY));
    assert.equal((one.ts as Timestamp).toString(), "2024-02-29T12:34:56.789012Z");
    assert.equal((one.tstz as Timestamp).toString(), "2024-02-29T10:34:56.500000Z");
    assert.deepEqual(one.iv, { months: 14, days: 3, microseconds: 14_706_500_000 });
    assert.deepEqual(one.ia2, [
      [1, 2],
      [3, null],
    ]);
    const two = got.get(2)!.value!;
    assert.equal(two.i8, -9223372036854775808n);
    assert.deepEqual(two.by, new Uint8Array([]));
    assert.ok((two.ts as Timestamp).seconds < 0n, "a BC timestamp has negative seconds");
    assert.equal(got.get(3)!.value!.i8, 9007199254740993n);
    t.diagnostic(`3 rows × ${Object.keys(COLUMNS).length} columns equal PostgreSQL's own output`);
  });

  test("a replica that loses messages detects the gap, refetches from the stream and ends equal to the database", { timeout: 60_000 }, async (t) => {
    ready();
    const k = "public.accounts:1";
    await pg!.psql("INSERT INTO accounts (id, owner, balance, tags) VALUES (1, 'ada', 0, '{vip,NULL}');");
    await eventually("the row in walcast's stream", WAIT, () => refetchFromStream(nc!, k).catch(() => undefined));

    const nats = new NatsTransport({ connection: nc! });
    const lossy = new Withholding(nats);
    const replica = createClientReplica<Account>({
      key: k,
      transport: lossy,
      schema: accountSchema,
      refetch: streamRefetch(nc!, k),
      schemaVersion: "1.0",
    });
    await replica.whenIdle();
    await nats.flush();
    assert.equal(replica.status, "ok");
    assert.equal(replica.get()!.balance, "0");
    assert.equal(replica.meta().sequence, 1);

    // Live updates apply in order.
    for (let i = 1; i <= 3; i++) await pg!.psql(`UPDATE accounts SET balance = ${i}.5, updated_at = now() WHERE id = 1;`);
    await eventually("the replica at sequence 4", WAIT, () => (replica.meta().sequence === 4 ? true : undefined));
    assert.equal(replica.get()!.balance, "3.5");

    // Messages lost: seven updates never reach the replica.
    lossy.paused = true;
    for (let i = 4; i <= 10; i++) await pg!.psql(`UPDATE accounts SET balance = ${i}.5, tags = '{x,${i}}' WHERE id = 1;`);
    await eventually("seven envelopes withheld", WAIT, () => (lossy.withheld === 7 ? true : undefined));
    assert.equal(replica.meta().sequence, 4);
    lossy.paused = false;

    // The next one is a gap: not applied, refetched from the stream.
    await pg!.psql("UPDATE accounts SET balance = 99.25, owner = 'ada lovelace', updated_at = '2024-02-29 12:34:56.5+00' WHERE id = 1;");
    await eventually("the replica at sequence 12", WAIT, () => (replica.meta().sequence === 12 ? true : undefined));
    await replica.whenIdle();
    assert.equal(replica.stats.gaps, 1);
    assert.equal(replica.stats.refetches, 2, "the initial load and the gap");
    assert.equal(replica.status, "ok");

    // The replica equals what PostgreSQL holds.
    const row = JSON.parse(
      await pg!.psql(
        "SELECT json_build_object('id', id, 'owner', owner, 'balance', balance::text, 'updated_at', trunc(extract(epoch FROM updated_at) * 1000000)::text, 'tags', tags) FROM accounts WHERE id = 1;",
      ),
    );
    const v = replica.get()!;
    assert.deepEqual(
      { id: v.id, owner: v.owner, balance: v.balance, updated_at: v.updated_at.toEpochMicros().toString(), tags: v.tags },
      row,
    );
    assert.equal(v.balance, "99.25");

    // A delete applies as null.
    await pg!.psql("DELETE FROM accounts WHERE id = 1;");
    await eventually("the delete", WAIT, () => (replica.meta().sequence === 13 ? true : undefined));
    assert.equal(replica.get(), null);
    assert.equal((await refetchFromStream(nc!, k)).op, "delete");
    replica.dispose();
    assert.equal(nats.keyCount(), 0);
    t.diagnostic(`replica stats: ${JSON.stringify(replica.stats)}`);
  });

  test("the README's consumer follows a row live", { timeout: 60_000 }, async (t) => {
    ready();
    const k = "public.accounts:2";
    await pg!.psql("INSERT INTO accounts (id, owner, balance) VALUES (2, 'grace', 10);");
    await eventually("the row in walcast's stream", WAIT, () => refetchFromStream(nc!, k).catch(() => undefined));
    const example = fileURLToPath(new URL("../../examples/follow-key.js", import.meta.url));
    const child = spawn(process.execPath, [example, k], { env: { ...process.env, NATS_URL: nats!.url() }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    try {
      await eventually("the consumer's initial state", WAIT, () => (out.includes("now: ok") ? true : undefined));
      assert.match(out, /^1 \{\n  id: 2,\n  owner: 'grace',\n  balance: '10',$/m);
      await pg!.psql("UPDATE accounts SET balance = 11 WHERE id = 2; UPDATE accounts SET balance = 12.75 WHERE id = 2;");
      await eventually("two live updates printed", WAIT, () => (/^3 \{\n  id: 2,\n  owner: 'grace',\n  balance: '12\.75',$/m.test(out) ? true : undefined));
      assert.match(out, /^2 \{\n  id: 2,\n  owner: 'grace',\n  balance: '11',$/m);
      await pg!.psql("DELETE FROM accounts WHERE id = 2;");
      await eventually("the delete printed", WAIT, () => (/^4 null$/m.test(out) ? true : undefined));
    } catch (e) {
      throw new Error(`${(e as Error).message}\nconsumer output:\n${out}`);
    } finally {
      child.kill("SIGTERM");
      await new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.once("exit", resolve)));
    }
    assert.equal(child.exitCode, 0, out);
    t.diagnostic(out.trim().split("\n").join(" | "));
  });
  test("a column-mode key is refetched from walcast itself, and a deleted one is not found", { timeout: 60_000 }, async (t) => {
    ready();
    const helper = readFileSync(fileURLToPath(new URL("../../../../../sql/sequence_column.sql", import.meta.url)), "utf8");
    await pg!.psql(helper);
    await pg!.psql(`CREATE TABLE ledger (id int PRIMARY KEY, amount numeric NOT NULL);
      SELECT walcast_install_sequence('ledger');
      CREATE PUBLICATION colpub FOR TABLE ledger;
      INSERT INTO ledger VALUES (1, 5);`);
    const column = await Walcast.start(pg!, nats!, [
      "--publication", "colpub", "--slot", "walcast_col", "--subject-prefix", "colcast",
      "--column-sequence", "public.ledger=walcast_seq",
    ]);
    try {
      const k = "public.ledger:1";
      await pg!.psql("UPDATE ledger SET amount = 6.5 WHERE id = 1; UPDATE ledger SET amount = 7.25 WHERE id = 1;");
      const env = await refetchFromWalcast(nc!, k, { prefix: "colcast" });
      assert.equal(env.op, "snapshot");
      assert.equal(env.key, k);
      assert.equal(env.sequence, 3, "the row's walcast_seq after an insert and two updates");
      assert.equal((env.value as Record<string, unknown>).amount, "7.25");
      await pg!.psql("DELETE FROM ledger WHERE id = 1;");
      await assert.rejects(refetchFromWalcast(nc!, k, { prefix: "colcast" }), (e: RefetchError) => e.notFound);
      await assert.rejects(refetchFromWalcast(nc!, "public.nope:1", { prefix: "colcast" }), /not a published table/);
      t.diagnostic(`refetched ${k} at sequence ${env.sequence}`);
    } finally {
      await column.stop();
    }
  });
});
