import assert from "node:assert/strict";
import { test } from "node:test";
import { InProcessTransport, type Envelope } from "../../src/index.js";
import { contract, envelope, slowAndThrowingSubscribers } from "../support/contract.js";

const quiet = () => {};

test("the contract holds for the in-process transport", async () => {
  await contract(new InProcessTransport({ onHandlerError: quiet }), async () => {});
});

test("in-process: a slow or throwing subscriber never delays a fast one", async () => {
  await slowAndThrowingSubscribers(new InProcessTransport({ onHandlerError: quiet }), async () => {});
});

test("in-process: delivery is synchronous and in publish order, also for publishes from a handler", () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const a: number[] = [];
  const b: number[] = [];
  t.subscribe(k, (e) => {
    a.push(e.sequence);
    if (e.sequence === 1) t.publish(k, envelope(k, 2, "1.0", 2));
  });
  t.subscribe(k, (e) => void b.push(e.sequence));
  t.publish(k, envelope(k, 1, "1.0", 1));
  assert.deepEqual(a, [1, 2]);
  assert.deepEqual(b, [1, 2]);
});

test("in-process: an async subscriber gets its envelopes one at a time, in order", async () => {
  const t = new InProcessTransport();
  const k = "public.accounts:1";
  const seen: number[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const sub = t.subscribe(k, async (e: Envelope) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await new Promise((r) => setTimeout(r, 2));
    seen.push(e.sequence);
    inFlight--;
  });
  for (let i = 1; i <= 20; i++) t.publish(k, envelope(k, i, "1.0", i));
  while (seen.length < 20) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i + 1));
  assert.equal(maxInFlight, 1);
  assert.equal(sub.dropped, 0);
  sub();
});

test("in-process: many subscribers and churn leave no keys behind", () => {
  const t = new InProcessTransport();
  const subs = [];
  for (let i = 0; i < 10_000; i++) subs.push(t.subscribe(`public.churn:${i % 1000}`, () => {}));
  assert.equal(t.keyCount(), 1000);
  for (const s of subs) s();
  assert.equal(t.keyCount(), 0);
  const table = t.subscribeTable("public", "churn", () => {});
  assert.equal(t.keyCount(), 1);
  table();
  table();
  assert.equal(t.keyCount(), 0);
});
