/**
 * The transport contract (the seed's `SyncTransport`, as walcast's Rust client has it)
 * and {@link InProcessTransport}.
 *
 * - `publish(key, envelope)` delivers to every current subscriber of `key`; without
 *   subscribers it is a no-op (never throws for that).
 * - A subscriber only receives what is published after it subscribed. The transport
 *   does not retain, validate or de-duplicate.
 * - `subscribe(key, handler)` returns an idempotent unsubscribe function (a
 *   {@link Subscription}); a key is forgotten when its last subscriber leaves.
 * - `subscribeTable(schema, table, handler)` receives every key of the table (and its
 *   `truncate` envelopes).
 *
 * **Slow and throwing subscribers.** A handler that throws is counted
 * (`Subscription.errors`, and reported to `onHandlerError`); the others still get the
 * envelope. A handler that returns a Promise is not called again before it settles:
 * meanwhile its envelopes wait in its own queue (`queueCapacity`, default 1024); when
 * that is full the envelope is dropped *for that subscriber only* and counted
 * (`Subscription.dropped`). Envelopes carry the full row and a dense sequence, so a
 * replica sees the drop as a gap and refetches: a slow subscriber never delays the
 * others and recovers by itself.
 */
import type { Envelope } from "./codec.js";
import { parseKey, tableKeyPrefix } from "./key.js";

/** Receives one envelope; may return a Promise (see the module comment). */
export type Handler = (envelope: Envelope) => void | PromiseLike<unknown>;

/** Reports an error thrown (or rejected) by a handler. */
export type HandlerErrorHook = (error: unknown, envelope: Envelope) => void;

/**
 * Returned by subscribe: call it (or `.unsubscribe()`) to leave; idempotent.
 */
export interface Subscription {
  (): void;
  unsubscribe(): void;
  /** Envelopes dropped because this subscriber's queue was full. */
  readonly dropped: number;
  /** Handler calls that threw or rejected. */
  readonly errors: number;
  /** True once unsubscribed. */
  readonly closed: boolean;
}

export interface SubscribeOptions {
  /** Envelopes that may wait while an async handler runs (default: the transport's). */
  queueCapacity?: number;
}

/** What a transport carries: one key's (or table's) change envelopes. */
export interface Transport {
  publish(key: string, envelope: Envelope): void;
  subscribe(key: string, handler: Handler, options?: SubscribeOptions): Subscription;
  subscribeTable(schema: string, table: string, handler: Handler, options?: SubscribeOptions): Subscription;
  /** Keys (and tables) with at least one live local subscriber. */
  keyCount(): number;
}

export const DEFAULT_QUEUE_CAPACITY = 1024;

export const defaultHandlerErrorHook: HandlerErrorHook = (error, envelope) => {
  console.error(`walcast: a subscriber of ${envelope.key} failed:`, error);
};

let nextId = 0;

/** One local subscriber: its handler, its queue, its counters. */
export class LocalSubscriber {
  readonly id = nextId++;
  private queue: Envelope[] = [];
  private busy = false;
  dropped = 0;
  errors = 0;
  closed = false;

  constructor(
    private readonly handler: Handler,
    private readonly capacity: number,
    private readonly onError: HandlerErrorHook,
  ) {}

  /** Never waits for the handler's promise, never throws. */
  deliver(env: Envelope): void {
    if (this.closed) return;
    if (this.busy) {
      if (this.queue.length >= this.capacity) this.dropped++;
      else this.queue.push(env);
      return;
    }
    this.run(env);
    this.drain();
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
  }

  private fail(error: unknown, env: Envelope): void {
    this.errors++;
    try {
      this.onError(error, env);
    } catch {
      // An error hook that throws must not break delivery either.
    }
  }

  private run(env: Envelope): void {
    let result: void | PromiseLike<unknown>;
    this.busy = true;
    try {
      result = this.handler(env);
    } catch (e) {
      this.busy = false;
      this.fail(e, env);
      return;
    }
    if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
      (result as PromiseLike<unknown>).then(
        () => {
          this.busy = false;
          this.drain();
        },
        (e: unknown) => {
          this.busy = false;
          this.fail(e, env);
          this.drain();
        },
      );
    } else {
      this.busy = false;
    }
  }

  private drain(): void {
    while (!this.busy && !this.closed && this.queue.length > 0) {
      this.run(this.queue.shift()!);
    }
  }
}

/** Wrap a removal action as an idempotent {@link Subscription}. */
export function makeSubscription(sub: LocalSubscriber, remove: () => void): Subscription {
  const unsubscribe = () => {
    if (sub.closed) return;
    sub.close();
    remove();
  };
  const fn = unsubscribe as Subscription;
  Object.defineProperties(fn, {
    unsubscribe: { value: unsubscribe },
    dropped: { get: () => sub.dropped },
    errors: { get: () => sub.errors },
    closed: { get: () => sub.closed },
  });
  return fn;
}

export interface InProcessTransportOptions {
  queueCapacity?: number;
  onHandlerError?: HandlerErrorHook;
}

/** The registry entry of a table subscription (never a valid key: no values part). */
function tableEntry(schema: string, table: string): string {
  return `${tableKeyPrefix(schema, table)}*`;
}

/**
 * A keyed in-memory pub/sub with the same contract as {@link NatsTransport}: for
 * monoliths, tests, and services that publish and listen in one process. Delivery is
 * synchronous; a publish from inside a handler is delivered after the current one
 * has reached every subscriber, so every subscriber sees publishes in order.
 */
export class InProcessTransport implements Transport {
  /** key (or `schema.table:*`) → subscribers; present only while it has one. */
  private readonly keys = new Map<string, LocalSubscriber[]>();
  private readonly capacity: number;
  private readonly onError: HandlerErrorHook;
  private readonly pending: Array<[LocalSubscriber[], Envelope]> = [];
  private delivering = false;

  constructor(options: InProcessTransportOptions = {}) {
    this.capacity = options.queueCapacity ?? DEFAULT_QUEUE_CAPACITY;
    this.onError = options.onHandlerError ?? defaultHandlerErrorHook;
  }

  publish(key: string, envelope: Envelope): void {
    let table: string | undefined;
    try {
      const k = parseKey(key);
      table = tableEntry(k.schema, k.table);
    } catch {
      table = undefined;
    }
    const targets = [...(this.keys.get(key) ?? []), ...((table && this.keys.get(table)) || [])];
    if (targets.length === 0) return;
    this.pending.push([targets, envelope]);
    if (this.delivering) return;
    this.delivering = true;
    try {
      let next: [LocalSubscriber[], Envelope] | undefined;
      while ((next = this.pending.shift()) !== undefined) {
        for (const sub of next[0]) sub.deliver(next[1]);
      }
    } finally {
      this.delivering = false;
    }
  }

  subscribe(key: string, handler: Handler, options?: SubscribeOptions): Subscription {
    return this.add(key, handler, options);
  }

  subscribeTable(schema: string, table: string, handler: Handler, options?: SubscribeOptions): Subscription {
    return this.add(tableEntry(schema, table), handler, options);
  }

  keyCount(): number {
    return this.keys.size;
  }

  private add(entry: string, handler: Handler, options?: SubscribeOptions): Subscription {
    const sub = new LocalSubscriber(handler, options?.queueCapacity ?? this.capacity, this.onError);
    let subs = this.keys.get(entry);
    if (!subs) this.keys.set(entry, (subs = []));
    subs.push(sub);
    return makeSubscription(sub, () => {
      const list = this.keys.get(entry);
      if (!list) return;
      const i = list.indexOf(sub);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.keys.delete(entry);
    });
  }
}
