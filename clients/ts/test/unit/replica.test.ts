// Ports of the replica tests in tests/client.rs, on the in-process transport.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createClientReplica, InProcessTransport, type Envelope, type Result, type SyncSchema } from "../../src/index.js";
import { envelope } from "../support/contract.js";

interface Account {
  id: number;
  balance: number;
}

/** The parse gate: a row that decodes into an Account. */
const accountSchema: SyncSchema<Account> = {
  parse(v: unknown): Result<Account> {
    const r = v as Record<string, unknown> | null;
    if (r && typeof r === "object" && typeof r.id === "number" && typeof r.balance === "number") {
      return { tag: "Ok", value: { id: r.id, balance: r.balance } };
    }
    return { tag: "Err", error: `not an account: ${JSON.stringify(v)}` };
  },
};

/** A refetch serving `snapshot.env` (failing when undefined), counting calls. */
function refetchOf(snapshot: { env: Envelope | undefined }) {
  return async () => {
    await new Promise((r) => setTimeout(r, 5));
    if (!snapshot.env) throw new Error("unavailable");
    return snapshot.env;
  };
}

test("replica reconciles stale envelopes, gaps, skews and parse failures", async () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const snapshot = { env: envelope(k, 5, "1.0", 500) as Envelope | undefined };
  const r = createClientReplica<Account>({
    key: k,
    transport: t,
    schema: accountSchema,
    seed: envelope(k, 1, "1.0", 100),
    refetch: refetchOf(snapshot),
    schemaVersion: "1.0",
  });
  assert.deepEqual(r.get(), { id: 1, balance: 100 });
  assert.equal(r.status, "ok");
  assert.deepEqual(r.meta(), { schemaVersion: "1.0", sequence: 1, status: "ok" });

  // In order: applied. A minor schema difference applies.
  t.publish(k, envelope(k, 2, "1.3", 200));
  assert.equal(r.get()!.balance, 200);
  assert.equal(r.meta().schemaVersion, "1.3");

  // Stale: dropped.
  t.publish(k, envelope(k, 2, "1.0", 999));
  t.publish(k, envelope(k, 1, "1.0", 999));
  assert.equal(r.get()!.balance, 200);
  assert.equal(r.stats.ignoredStale, 2);

  // Gap: not applied; the refetch converges on the snapshot.
  t.publish(k, envelope(k, 4, "1.0", 400));
  assert.equal(r.status, "refetching");
  assert.equal(r.get()!.balance, 200);
  await r.whenIdle();
  assert.equal(r.stats.gaps, 1);
  assert.equal(r.get()!.balance, 500);
  assert.equal(r.meta().sequence, 5);
  assert.equal(r.status, "ok");

  // Major skew: not applied, refetch.
  snapshot.env = envelope(k, 7, "1.0", 700);
  t.publish(k, envelope(k, 6, "2.0", 600));
  assert.equal(r.get()!.balance, 500);
  await r.whenIdle();
  assert.equal(r.stats.schemaSkews, 1);
  assert.equal(r.get()!.balance, 700);

  // Parse failure: skew, refetch, never a throw.
  snapshot.env = envelope(k, 9, "1.0", 900);
  t.publish(k, envelope(k, 8, "1.0", "not a number"));
  assert.equal(r.stats.parseErrors, 1);
  await r.whenIdle();
  assert.equal(r.get()!.balance, 900);
  assert.equal(r.status, "ok");

  // Refetch failure: stale.
  snapshot.env = undefined;
  t.publish(k, envelope(k, 11, "1.0", 1100));
  await r.whenIdle();
  assert.equal(r.status, "stale");
  assert.equal(r.get()!.balance, 900);

  // onChange sees applied values; dispose is idempotent and stops applying.
  const changes: Array<number | undefined> = [];
  r.onChange((v) => changes.push(v?.balance));
  t.publish(k, envelope(k, 10, "1.0", 1000));
  assert.deepEqual(changes, [1000]);
  assert.equal(r.get()!.balance, 1000);
  assert.equal(r.status, "ok");
  r.dispose();
  r.dispose();
  assert.equal(t.keyCount(), 0);
  t.publish(k, envelope(k, 11, "1.0", 1100));
  assert.equal(r.get()!.balance, 1000);
  assert.equal(r.stats.applied, 6);
  assert.equal(r.stats.refetches, 4);
  assert.equal(r.stats.gaps, 2);
});

test("replica without refetch goes stale on a gap", () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const r = createClientReplica<Account>({ key: k, transport: t, schema: accountSchema });
  assert.equal(r.status, "stale");
  assert.equal(r.get(), undefined);
  assert.equal(r.meta().sequence, -1);
  t.publish(k, envelope(k, 3, "1.0", 300));
  assert.equal(r.get()!.balance, 300);
  assert.equal(r.status, "ok");
  t.publish(k, envelope(k, 5, "1.0", 500));
  assert.equal(r.status, "stale");
  assert.equal(r.get()!.balance, 300);
  assert.equal(r.stats.gaps, 1);
  assert.equal(r.stats.refetches, 0);
});

test("replica without a seed starts from a refetch; a delete applies as null", async () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const r = createClientReplica<Account>({
    key: k,
    transport: t,
    schema: accountSchema,
    refetch: refetchOf({ env: envelope(k, 3, "1.0", 300) }),
  });
  assert.equal(r.status, "refetching");
  // A live envelope while the refetch is in flight applies, status stays refetching.
  t.publish(k, envelope(k, 1, "1.0", 100));
  assert.equal(r.get()!.balance, 100);
  assert.equal(r.status, "refetching");
  await r.whenIdle();
  assert.equal(r.get()!.balance, 300);
  assert.equal(r.status, "ok");
  const del: Envelope = { ...envelope(k, 4, "1.0", 0), op: "delete", value: null };
  t.publish(k, del);
  assert.equal(r.get(), null);
  assert.equal(r.meta().sequence, 4);
  assert.equal(r.stats.parseErrors, 0);
});

test("a parse gate that throws counts as a parse error; a refetched stale envelope leaves the status ok", async () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const r = createClientReplica<Account>({
    key: k,
    transport: t,
    schema: {
      parse(v) {
        if ((v as { balance: unknown }).balance === "boom") throw new Error("gate crashed");
        return accountSchema.parse(v);
      },
    },
    seed: envelope(k, 2, "1.0", 200),
    refetch: refetchOf({ env: envelope(k, 2, "1.0", 200) }),
  });
  t.publish(k, envelope(k, 3, "1.0", "boom"));
  assert.equal(r.stats.parseErrors, 1);
  assert.equal(r.status, "refetching");
  await r.whenIdle();
  assert.equal(r.stats.ignoredStale, 1);
  assert.equal(r.status, "ok");
  assert.equal(r.get()!.balance, 200);
});

test("a custom cell receives the applied values; the default schema accepts rows as they are", () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const sets: unknown[] = [];
  let cur: unknown;
  const r = createClientReplica({
    key: k,
    transport: t,
    seed: envelope(k, 1, "1.0", 100),
    cell: { get: () => cur as never, peek: () => cur as never, set: (v) => void sets.push((cur = v)) },
  });
  t.publish(k, envelope(k, 2, "1.0", 200));
  assert.deepEqual(sets, [
    { id: 1, balance: 100 },
    { id: 1, balance: 200 },
  ]);
  assert.deepEqual(r.peek(), { id: 1, balance: 200 });
});

test("a refetch older than the envelope that showed the gap: the held-back envelope applies, or another refetch follows", async () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const snapshot = { env: envelope(k, 11, "1.0", 1100) as Envelope | undefined };
  const r = createClientReplica<Account>({
    key: k,
    transport: t,
    schema: accountSchema,
    seed: envelope(k, 4, "1.0", 400),
    refetch: refetchOf(snapshot),
  });
  // Seq 12 shows a gap; the stream still answers 11: 11 applies, then the held-back 12.
  t.publish(k, envelope(k, 12, "1.0", 1200));
  await r.whenIdle();
  assert.equal(r.meta().sequence, 12);
  assert.equal(r.get()!.balance, 1200);
  assert.deepEqual([r.stats.gaps, r.stats.refetches, r.stats.applied], [1, 1, 3]);
  assert.equal(r.status, "ok");

  // Seq 20 shows a gap; the stream answers 14 first, then 20: a second refetch.
  let calls = 0;
  const answers = [envelope(k, 14, "1.0", 1400), envelope(k, 20, "1.0", 2000)];
  const r2 = createClientReplica<Account>({
    key: k,
    transport: t,
    schema: accountSchema,
    seed: envelope(k, 12, "1.0", 1200),
    refetch: async () => answers[Math.min(calls++, 1)]!,
  });
  t.publish(k, envelope(k, 20, "1.0", 2000));
  await r2.whenIdle();
  assert.equal(r2.meta().sequence, 20);
  assert.deepEqual([r2.stats.gaps, r2.stats.refetches], [1, 2]);
  assert.equal(r2.status, "ok");

  // A stream that stays behind: three follow-up refetches, then stale.
  const r3 = createClientReplica<Account>({
    key: k,
    transport: t,
    schema: accountSchema,
    seed: envelope(k, 20, "1.0", 2000),
    refetch: async () => envelope(k, 21, "1.0", 2100),
  });
  t.publish(k, envelope(k, 30, "1.0", 3000));
  await r3.whenIdle();
  assert.equal(r3.status, "stale");
  assert.equal(r3.meta().sequence, 21);
  assert.deepEqual([r3.stats.gaps, r3.stats.refetches], [1, 4]);
  for (const x of [r, r2, r3]) x.dispose();
  assert.equal(t.keyCount(), 0);
});
