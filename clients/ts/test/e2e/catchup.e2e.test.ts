// Catch-up since a position, end to end (real PostgreSQL → walcast → nats-server with
// JetStream → this package): a consumer offline for 10,000 changes reads them page by
// page and then follows live — every change once, in per-key order, the final state
// equal to the database; a position older than the stream's window is the documented
// error.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { connect, type NatsConnection } from "nats";
import { changesSince, followSince, latestPosition, PositionTooOldError, type ChangeFilter } from "../../src/index.js";
import { eventually, NatsServer, PgServer, Walcast } from "../support/servers.js";

const WAIT = 60_000;
const KEYS = 500;

async function updateAll(pg: PgServer, rounds: number): Promise<void> {
  const sql: string[] = [];
  for (let r = 0; r < rounds; r++) {
    for (let first = 1; first <= KEYS; first += 100) {
      sql.push(`UPDATE kv SET v = v + 1 WHERE id BETWEEN ${first} AND ${first + 99};`);
    }
  }
  await pg.psql(sql.join("\n"));
}

async function caughtUp(nc: NatsConnection, pg: PgServer, count: number): Promise<number> {
  return eventually(`${count} messages in the stream`, WAIT, async () => {
    const jsm = await nc.jetstreamManager();
    const s = (await jsm.streams.info("WALCAST")).state;
    return s.messages >= count ? s.last_seq : undefined;
  });
}

describe("catch-up since a position", () => {
  let pg: PgServer | undefined;
  let nats: NatsServer | undefined;
  let walcast: Walcast | undefined;
  let nc: NatsConnection | undefined;

  before(async () => {
    pg = await PgServer.start();
    nats = await NatsServer.start();
    await pg.psql(`CREATE TABLE kv (id bigint PRIMARY KEY, v bigint NOT NULL);
      CREATE PUBLICATION walcast FOR TABLE kv;
      INSERT INTO kv SELECT g, 0 FROM generate_series(1, ${KEYS}) g;`);
    walcast = await Walcast.start(pg, nats, ["--stream-history", "64", "--snapshot", "never"]);
    nc = await connect({ servers: nats.url(), name: "catch-up" });
  });

  after(async () => {
    await nc?.close().catch(() => {});
    await walcast?.stop();
    await nats?.stop();
    await pg?.stop();
  });

  test("10,000 changes page by page, then live with no gap or duplicate", { timeout: 180_000 }, async () => {
    await pg!.psql("UPDATE kv SET v = 0");
    await caughtUp(nc!, pg!, KEYS);
    const position = await latestPosition(nc!);
    await updateAll(pg!, 20);
    await caughtUp(nc!, pg!, 21 * KEYS);

    const filter: ChangeFilter = { tables: ["public.kv"], ops: ["update"] };
    const seqs = new Map<string, number[]>();
    let at = position;
    let pages = 0;
    for (;;) {
      const page = await changesSince(nc!, at, filter, 1000);
      pages++;
      assert.ok(page.changes.length <= 1000);
      for (const c of page.changes) {
        const list = seqs.get(c.envelope.key) ?? [];
        list.push(Number(c.envelope.sequence));
        seqs.set(c.envelope.key, list);
      }
      at = page.next;
      if (!page.hasMore) break;
    }
    assert.ok(pages >= 10, `${pages} pages`);
    assert.equal(seqs.size, KEYS);
    const expected = Array.from({ length: 20 }, (_, i) => i + 2);
    for (const [key, list] of seqs) assert.deepEqual(list, expected, `${key}: every change once, in order`);

    const live = followSince(nc!, at, filter);
    await updateAll(pg!, 2);
    const last = new Map<string, { seq: number; v: number }>();
    for (let i = 0; i < 2 * KEYS; i++) {
      const next = await live.next();
      assert.ok(!next.done);
      const e = next.value.envelope;
      const before = last.get(e.key)?.seq ?? 21;
      assert.equal(Number(e.sequence), before + 1, `${e.key}: no gap, no duplicate at the hand-over`);
      last.set(e.key, { seq: Number(e.sequence), v: Number((e.value as Record<string, unknown>).v) });
    }
    await live.return(undefined);
    const rows = (await pg!.psql("SELECT id, v FROM kv ORDER BY id")).split("\n");
    assert.equal(rows.length, KEYS);
    for (const row of rows) {
      const [id, v] = row.split("|");
      assert.deepEqual(last.get(`public.kv:${id}`), { seq: 23, v: Number(v) }, `public.kv:${id} equals the database`);
    }
  });

  test("a position older than the window is PositionTooOldError", { timeout: 120_000 }, async () => {
    const jsm = await nc!.jetstreamManager();
    // A stream with a small size window over the same subjects' kind (its own prefix).
    await jsm.streams.add({ name: "WINDOWED", subjects: ["windowed.>"], max_bytes: 4096 });
    const js = nc!.jetstream();
    for (let i = 0; i < 200; i++) await js.publish(`windowed.public.kv.${i}`, new Uint8Array(64));
    const info = await jsm.streams.info("WINDOWED");
    assert.ok(info.state.first_seq > 2, `the window moved: ${info.state.first_seq}`);
    await assert.rejects(
      changesSince(nc!, 1, {}, 10, { stream: "WINDOWED", prefix: "windowed" }),
      (e: unknown) => e instanceof PositionTooOldError && e.position === 1 && e.oldest === info.state.first_seq,
    );
  });
});
