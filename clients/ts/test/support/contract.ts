// The transport contract, the same cases for every implementation (a port of
// `contract` in tests/client.rs).
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import type { Envelope, Transport } from "../../src/index.js";
import { Timestamp } from "../../src/index.js";

export const SHORT_MS = 300;
export const WAIT_MS = 10_000;

export function envelope(key: string, seq: number, version: string, balance: unknown): Envelope {
  return {
    key,
    op: "update",
    value: { id: 1, balance },
    schemaVersion: version,
    sequence: seq,
    lsn: BigInt(seq * 100),
    commitTs: new Timestamp(1_700_000_000n, 0),
  };
}

/** Collects what a handler receives; `next()` waits for the next one. */
export class Inbox {
  readonly items: Envelope[] = [];
  private read = 0;
  private waiter: (() => void) | undefined;

  readonly handler = (env: Envelope): void => {
    this.items.push(env);
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  };

  async next(timeoutMs = WAIT_MS): Promise<Envelope> {
    const deadline = Date.now() + timeoutMs;
    while (this.read >= this.items.length) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no envelope within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return this.items[this.read++]!;
  }

  async nothingMore(): Promise<void> {
    await sleep(SHORT_MS);
    const extra = this.items.slice(this.read);
    assert.equal(extra.length, 0, `unexpected envelopes: ${extra.map((e) => `${e.key} #${e.sequence}`).join(", ")}`);
  }
}

/**
 * `settle()` must resolve once what was published so far has had time to arrive
 * (nothing for the in-process transport, a flush + short wait for NATS).
 */
export async function contract(t: Transport, settle: () => Promise<void>): Promise<void> {
  const k = "public.accounts:1";
  // Publishing to a key without subscribers is a no-op.
  t.publish(k, envelope(k, 1, "1.0", 10));
  assert.equal(t.keyCount(), 0);

  // A subscriber only receives what is published after it subscribed.
  const a = new Inbox();
  const b = new Inbox();
  const subA = t.subscribe(k, a.handler);
  const subB = t.subscribe(k, b.handler);
  assert.equal(t.keyCount(), 1);
  await settle();
  t.publish(k, envelope(k, 2, "1.0", 20));
  assert.equal((await a.next()).sequence, 2);
  assert.equal((await b.next()).sequence, 2);
  await a.nothingMore();

  // Not retained, not validated, not de-duplicated: the same envelope twice arrives
  // twice, an older one after a newer one arrives too.
  t.publish(k, envelope(k, 2, "1.0", 20));
  t.publish(k, envelope(k, 1, "9.9", "x"));
  assert.equal((await a.next()).sequence, 2);
  const older = await a.next();
  assert.equal(older.sequence, 1);
  assert.equal(older.schemaVersion, "9.9");
  assert.deepEqual(older.value, { id: 1, balance: "x" });
  await b.next();
  await b.next();

  // Other keys are not delivered.
  t.publish("public.accounts:2", envelope("public.accounts:2", 1, "1.0", 1));
  await a.nothingMore();

  // Unsubscribe is idempotent; the key stays while another subscriber lives.
  subA();
  subA.unsubscribe();
  assert.equal(subA.closed, true);
  assert.equal(t.keyCount(), 1);
  t.publish(k, envelope(k, 3, "1.0", 30));
  assert.equal((await b.next()).sequence, 3);
  await a.nothingMore();
  // The last unsubscribe forgets the key: no key leak.
  subB();
  assert.equal(t.keyCount(), 0);

  // Table-level subscriptions see every key of the table and no other table.
  const table = new Inbox();
  const subT = t.subscribeTable("public", "accounts", table.handler);
  await settle();
  t.publish("public.accounts:7", envelope("public.accounts:7", 1, "1.0", 7));
  t.publish("public.other:7", envelope("public.other:7", 1, "1.0", 7));
  assert.equal((await table.next()).key, "public.accounts:7");
  await table.nothingMore();
  subT();
  assert.equal(t.keyCount(), 0);

  // After unsubscribing nothing arrives any more.
  const seen: number[] = [];
  const subC = t.subscribe(k, (e) => void seen.push(e.sequence));
  await settle();
  t.publish(k, envelope(k, 4, "1.0", 40));
  const deadline = Date.now() + WAIT_MS;
  while (seen.length === 0) {
    assert.ok(Date.now() < deadline, "handler never called");
    await sleep(10);
  }
  subC();
  assert.equal(t.keyCount(), 0);
  t.publish(k, envelope(k, 5, "1.0", 50));
  await settle();
  await sleep(SHORT_MS);
  assert.deepEqual(seen, [4]);
}

/**
 * A slow (async) subscriber and a throwing one never delay or starve a fast one;
 * the slow one's overflow is dropped and counted for it alone.
 */
export async function slowAndThrowingSubscribers(t: Transport, settle: () => Promise<void>): Promise<void> {
  const k = "public.accounts:1";
  const never = new Promise<void>(() => {});
  const slow = t.subscribe(k, () => never, { queueCapacity: 32 }); // never finishes its first envelope
  const throwing = t.subscribe(k, () => {
    throw new Error("boom");
  });
  const fast = new Inbox();
  const subFast = t.subscribe(k, fast.handler);
  await settle();
  for (let seq = 1; seq <= 200; seq++) t.publish(k, envelope(k, seq, "1.0", seq));
  const seqs: number[] = [];
  while (seqs.length < 200) seqs.push((await fast.next()).sequence);
  assert.deepEqual(seqs, Array.from({ length: 200 }, (_, i) => i + 1));
  assert.equal(subFast.dropped, 0);
  assert.equal(subFast.errors, 0);
  // One envelope in the handler, 32 queued, the rest dropped for this subscriber only.
  assert.equal(slow.dropped, 200 - 1 - 32);
  assert.equal(throwing.errors, 200);
  assert.equal(throwing.dropped, 0);
  slow();
  throwing();
  subFast();
  assert.equal(t.keyCount(), 0);
}
