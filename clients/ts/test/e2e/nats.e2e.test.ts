// NatsTransport and the stream refetch against a real nats-server (JetStream on),
// with fan-out and subscriber GC checked through the server's own monitoring endpoint.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "nats";
import { encode, lastEnvelope, NatsTransport, refetchFromStream, RefetchError, subjectOf, type Envelope } from "../../src/index.js";
import { contract, envelope, Inbox, slowAndThrowingSubscribers } from "../support/contract.js";
import { eventually, NatsServer } from "../support/servers.js";

const quiet = () => {};

describe("NatsTransport on a real nats-server", () => {
  let nats: NatsServer | undefined;
  const conns: NatsConnection[] = [];

  // A setup failure (a missing binary above all) fails every test with its message.
  let setupError: unknown;
  before(async () => {
    try {
      nats = await NatsServer.start();
    } catch (e) {
      setupError = e;
    }
  });

  after(async () => {
    for (const nc of conns) await nc.close().catch(() => {});
    await nats?.stop();
  });

  async function client(name: string): Promise<NatsConnection> {
    if (setupError) throw setupError;
    const nc = await connect({ servers: nats!.url(), name });
    conns.push(nc);
    return nc;
  }

  /** Wait until the server counts `expected` subscriptions; returns the last count. */
  async function serverSubscriptions(expected: number): Promise<number> {
    let n = -1;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      n = await nats!.subscriptions();
      if (n === expected) break;
      await sleep(25);
    }
    return n;
  }

  /** This connection's subscriptions as the server lists them (`/connz?subs=1`). */
  async function connectionSubjects(name: string): Promise<string[]> {
    const connz = await nats!.monitor<{ connections: Array<{ name?: string; subscriptions_list?: string[] }> }>("/connz?subs=1");
    const c = connz.connections.find((x) => x.name === name);
    assert.ok(c, `connection ${name} not in /connz`);
    return c.subscriptions_list ?? [];
  }

  test("the transport contract holds", async () => {
    const t = new NatsTransport({ connection: await client("contract"), onHandlerError: quiet });
    await contract(t, () => t.flush());
  });

  test("a slow or throwing subscriber never delays a fast one", async () => {
    const t = new NatsTransport({ connection: await client("slow"), onHandlerError: quiet });
    await slowAndThrowingSubscribers(t, () => t.flush());
  });

  test("a thousand local subscribers share one server subscription, removed with the last", async (tc) => {
    const name = "fanout";
    const t = new NatsTransport({ connection: await client(name), queueCapacity: 16 });
    await t.flush();
    const base = await nats!.subscriptions();
    const k = "public.accounts:42";
    const subject = subjectOf("walcast", k);
    const inboxes = Array.from({ length: 1000 }, () => new Inbox());
    const subs = inboxes.map((i) => t.subscribe(k, i.handler));
    await t.flush();
    const during = await serverSubscriptions(base + 1);
    tc.diagnostic(`server subscriptions: before ${base}, with 1000 local subscribers ${during}`);
    assert.equal(during, base + 1);
    assert.deepEqual(await connectionSubjects(name), [subject]);
    assert.equal(t.keyCount(), 1);

    // One message from the server reaches every local subscriber.
    t.publish(k, envelope(k, 1, "1.0", 1));
    for (const i of inboxes) assert.equal((await i.next()).sequence, 1);

    // A second key: a second server subscription.
    const other = t.subscribe("public.accounts:43", () => {});
    await t.flush();
    assert.equal(await serverSubscriptions(base + 2), base + 2);
    other();
    await t.flush();
    assert.equal(await serverSubscriptions(base + 1), base + 1);

    // All but one leave: still one server subscription; then the last one.
    const last = subs.pop()!;
    for (const s of subs) s();
    await t.flush();
    assert.equal(await serverSubscriptions(base + 1), base + 1);
    t.publish(k, envelope(k, 2, "1.0", 2));
    assert.equal((await inboxes[999]!.next()).sequence, 2);
    await inboxes[0]!.nothingMore();
    last();
    last();
    await t.flush();
    const afterAll = await serverSubscriptions(base);
    tc.diagnostic(`server subscriptions after the last local subscriber left: ${afterAll}`);
    assert.equal(afterAll, base);
    assert.deepEqual(await connectionSubjects(name), []);
    assert.equal(t.keyCount(), 0);
  });

  test("subscribe/unsubscribe churn over a thousand keys leaks no server subscriptions", async () => {
    const t = new NatsTransport({ connection: await client("churn"), queueCapacity: 16 });
    await t.flush();
    const base = await nats!.subscriptions();
    for (let i = 0; i < 10_000; i++) {
      const s = t.subscribe(`public.churn:${i % 1000}`, () => {});
      if (i % 2 === 0) s();
      else setImmediate(s);
      if (i % 1000 === 999) await t.flush();
    }
    await sleep(10);
    await t.flush();
    assert.equal(t.keyCount(), 0);
    assert.equal(await serverSubscriptions(base), base);
  });

  test("a message that is not an envelope is counted and skipped", async () => {
    const nc = await client("undecodable");
    const t = new NatsTransport({ connection: nc, onUndecodable: quiet });
    const k = "public.accounts:5";
    const inbox = new Inbox();
    const sub = t.subscribe(k, inbox.handler);
    await t.flush();
    nc.publish(subjectOf("walcast", k), new Uint8Array([0xd9]));
    t.publish(k, envelope(k, 1, "1.0", 1));
    assert.equal((await inbox.next()).sequence, 1);
    assert.equal(t.undecodable, 1);
    sub();
  });

  test("refetch reads a key's last envelope: direct get, and the stream API without allow_direct", async () => {
    const nc = await client("refetch");
    const jsm = await nc.jetstreamManager();
    const js = nc.jetstream();
    await jsm.streams.add({ name: "DIRECT", subjects: ["d.>"], allow_direct: true, max_msgs_per_subject: 1 });
    await jsm.streams.add({ name: "NODIRECT", subjects: ["nd.>"], allow_direct: false, max_msgs_per_subject: 1 });
    const k = "public.odd%2Etable:a%2Eb c";
    const env = (seq: number): Envelope => ({ ...envelope(k, seq, "1.0", seq), value: { k: "a.b c", big: 2n ** 60n, by: new Uint8Array([0, 1]) } });
    for (const prefix of ["d", "nd"]) {
      await js.publish(subjectOf(prefix, k), encode(env(1)));
      await js.publish(subjectOf(prefix, k), encode(env(2)));
    }
    const requested: string[] = [];
    const spy = new Proxy(nc, {
      get(target, prop, receiver) {
        if (prop === "request") {
          return (subject: string, ...rest: unknown[]) => {
            requested.push(subject);
            return (target.request as (...a: unknown[]) => unknown).call(target, subject, ...rest);
          };
        }
        return Reflect.get(target, prop, receiver);
      },
    });
    const direct = await refetchFromStream(spy, k, { stream: "DIRECT", prefix: "d" });
    assert.deepEqual(direct, env(2));
    assert.deepEqual(requested, ["$JS.API.DIRECT.GET.DIRECT"]);

    requested.length = 0;
    const viaApi = await refetchFromStream(spy, k, { stream: "NODIRECT", prefix: "nd" });
    assert.deepEqual(viaApi, env(2));
    assert.deepEqual(requested, ["$JS.API.DIRECT.GET.NODIRECT", "$JS.API.STREAM.MSG.GET.NODIRECT"]);

    for (const [stream, prefix] of [
      ["DIRECT", "d"],
      ["NODIRECT", "nd"],
    ] as const) {
      await assert.rejects(
        refetchFromStream(nc, "public.t:missing", { stream, prefix }),
        (e: unknown) => e instanceof RefetchError && e.notFound,
        `${stream}: a key without a message is "not found"`,
      );
    }
    await assert.rejects(refetchFromStream(nc, k, { stream: "NOSUCHSTREAM", prefix: "d" }), RefetchError);
    assert.equal(await lastEnvelope(nc, "public.t:missing", { stream: "DIRECT", prefix: "d" }), undefined);
    assert.deepEqual(await lastEnvelope(nc, k, { stream: "NODIRECT", prefix: "nd" }), env(2));
  });
});
