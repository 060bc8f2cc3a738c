/**
 * One key's reconciled value: the seed's `createClientReplica`, with the semantics of
 * walcast's Rust `Replica`. Every inbound envelope passes, in order:
 *
 * 1. the **schema-version gate**: another MAJOR than the expected `schemaVersion` is
 *    a breaking skew (status `skew`, `schemaSkews`++, not applied, refetch); another
 *    minor falls through (a malformed version lets the parse gate decide);
 * 2. the **parse gate**: `schema.parse(value)` must return `{tag: "Ok"}`; an `Err`
 *    (or a throw) is `skew`, `parseErrors`++, refetch — never a crash. `delete` and
 *    `truncate` envelopes carry no value and skip it;
 * 3. the **stale drop**: `sequence <= current` is ignored (`ignoredStale`++);
 * 4. **gap detection**: `sequence > current + 1` on the live stream means envelopes
 *    were missed: `gaps`++, not applied, refetch (the refetched envelope is applied).
 *    The envelope that showed the gap is held back: should the refetch return an older
 *    one (the stream had not stored the newest yet), it then applies if it is the next
 *    sequence, else the replica refetches again (at most 3 times in a row; then
 *    `stale`). The Rust `Replica` has no such follow-up;
 * 5. apply: value and meta updated, status `ok` (`refetching` while one is in flight).
 *
 * Without a seed the replica starts with a refetch. Without a refetch function a
 * needed recovery leaves the status `stale`; a failed refetch does too. Values:
 * `undefined` until the first apply, `null` after a `delete`/`truncate`.
 */
import type { Envelope } from "./codec.js";
import type { Subscription, Transport } from "./transport.js";

/** A parse result (para-schema's `Result<T, string>`). */
export type Result<T> = { tag: "Ok"; value: T } | { tag: "Err"; error: string };

/** Anything with a `parse` returning a {@link Result}: the parse gate. */
export interface SyncSchema<T> {
  parse(v: unknown): Result<T>;
}

/** A minimal reactive cell (a para-signals `signal()` satisfies it). */
export interface Cell<V> {
  get(): V;
  peek(): V;
  set(v: V): void;
}

/**
 * - `ok`: the last apply succeeded; the replica is current
 * - `stale`: uninitialised, or a refetch failed or none is available
 * - `skew`: an inbound value failed the schema-version or parse gate
 * - `refetching`: a recovery refetch is in flight
 */
export type ReplicaStatus = "ok" | "stale" | "skew" | "refetching";

export interface ReplicaMeta {
  /** Schema version of the applied value (`null` until the first apply). */
  schemaVersion: string | null;
  /** Sequence of the applied value (-1 until the first apply). */
  sequence: number;
  status: ReplicaStatus;
}

export interface ReplicaStats {
  applied: number;
  ignoredStale: number;
  gaps: number;
  parseErrors: number;
  refetches: number;
  schemaSkews: number;
}

/** Fetches the key's authoritative current envelope (e.g. {@link streamRefetch}). */
export type Refetch = () => Promise<Envelope>;

export interface ReplicaOptions<T> {
  key: string;
  transport: Transport;
  /** The parse gate (default: every row value is accepted as is). */
  schema?: SyncSchema<T>;
  /** An initial envelope (e.g. embedded by the server in a page). */
  seed?: Envelope;
  /** Recovery: fetch the current authoritative envelope. */
  refetch?: Refetch;
  /** The `major.minor` schema version the client's `T` was written for. */
  schemaVersion?: string;
  /** Where the value lives (default: a plain cell). */
  cell?: Cell<T | null | undefined>;
}

/** `pending`: a live envelope held back as a gap, tried again after the refetch. */
type Source = "seed" | "live" | "refetch" | "pending";

/** Refetches in a row started because a held-back envelope was still ahead. */
const MAX_FOLLOW_UPS = 3;

function major(v: string | null | undefined): string | undefined {
  if (v == null) return undefined;
  const m = /^(\d+)\./.exec(String(v));
  return m ? m[1] : undefined;
}

function plainCell<V>(initial: V): Cell<V> {
  let value = initial;
  return { get: () => value, peek: () => value, set: (v) => void (value = v) };
}

const acceptAll: SyncSchema<never> = { parse: (v) => ({ tag: "Ok", value: v as never }) };

export class Replica<T = Record<string, unknown>> {
  readonly key: string;
  /** Observability counters (read directly). */
  readonly stats: ReplicaStats = { applied: 0, ignoredStale: 0, gaps: 0, parseErrors: 0, refetches: 0, schemaSkews: 0 };
  private readonly cell: Cell<T | null | undefined>;
  private readonly schema: SyncSchema<T>;
  private readonly refetchFn: Refetch | undefined;
  private readonly expectedMajor: string | undefined;
  private metaValue: ReplicaMeta = { schemaVersion: null, sequence: -1, status: "stale" };
  private refetching = false;
  /** The newest live envelope dropped as a gap since the last refetch started. */
  private pendingLive: Envelope | undefined;
  private followUps = 0;
  private disposed = false;
  private idleWaiters: Array<() => void> = [];
  private listeners = new Set<(value: T | null, meta: ReplicaMeta) => void>();
  private readonly subscription: Subscription;

  constructor(options: ReplicaOptions<T>) {
    this.key = options.key;
    this.cell = options.cell ?? plainCell<T | null | undefined>(undefined);
    this.schema = options.schema ?? (acceptAll as SyncSchema<T>);
    this.refetchFn = options.refetch;
    this.expectedMajor = major(options.schemaVersion);
    this.subscription = options.transport.subscribe(options.key, (env) => this.ingest(env, "live"));
    if (options.seed) this.ingest(options.seed, "seed");
    else this.startRefetch();
  }

  /** The current value (`undefined`: uninitialised; `null`: deleted). */
  get(): T | null | undefined {
    return this.cell.get();
  }

  /** The current value, without tracking (for reactive cells). */
  peek(): T | null | undefined {
    return this.cell.peek();
  }

  meta(): ReplicaMeta {
    return { ...this.metaValue };
  }

  peekMeta(): ReplicaMeta {
    return { ...this.metaValue };
  }

  get status(): ReplicaStatus {
    return this.metaValue.status;
  }

  /** Called after every applied value; returns an unsubscribe. */
  onChange(listener: (value: T | null, meta: ReplicaMeta) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  /** Resolves when no recovery refetch is in flight. */
  whenIdle(): Promise<void> {
    if (!this.refetching) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop listening (idempotent): unsubscribes; nothing is applied any more. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.subscription();
    this.listeners.clear();
  }

  private setStatus(status: ReplicaStatus): void {
    this.metaValue = { ...this.metaValue, status };
  }

  private ingest(env: Envelope, source: Source): void {
    if (this.disposed) return;
    // Schema-version gate (a malformed version lets the parse gate decide).
    const got = major(env.schemaVersion);
    if (this.expectedMajor !== undefined && got !== undefined && got !== this.expectedMajor) {
      this.stats.schemaSkews++;
      this.setStatus("skew");
      if (source !== "refetch") this.startRefetch();
      return;
    }
    // Parse gate.
    let parsed: T | null = null;
    if (env.op !== "delete" && env.op !== "truncate") {
      let res: Result<T>;
      try {
        res = this.schema.parse(env.value);
      } catch (e) {
        res = { tag: "Err", error: String(e) };
      }
      if (!res || res.tag !== "Ok") {
        this.stats.parseErrors++;
        this.setStatus("skew");
        if (source !== "refetch") this.startRefetch();
        return;
      }
      parsed = res.value;
    }
    const current = this.metaValue.sequence;
    if (current >= 0) {
      if (env.sequence <= current) {
        this.stats.ignoredStale++;
        if (source === "refetch") this.setStatus("ok");
        return;
      }
      if (env.sequence > current + 1 && (source === "live" || source === "pending")) {
        if (source === "live") this.stats.gaps++;
        if (!this.pendingLive || env.sequence > this.pendingLive.sequence) this.pendingLive = env;
        if (source === "live" || this.followUps++ < MAX_FOLLOW_UPS) this.startRefetch();
        else this.setStatus("stale");
        return;
      }
    }
    this.metaValue = {
      schemaVersion: env.schemaVersion,
      sequence: env.sequence,
      status: this.refetching && source !== "refetch" ? "refetching" : "ok",
    };
    this.stats.applied++;
    if (source === "live" || source === "pending") this.followUps = 0;
    this.cell.set(parsed);
    const meta = this.meta();
    for (const l of [...this.listeners]) {
      try {
        l(parsed, meta);
      } catch (e) {
        console.error(`walcast: a listener of replica ${this.key} failed:`, e);
      }
    }
  }

  private startRefetch(): void {
    if (this.disposed || this.refetching) return;
    const refetch = this.refetchFn;
    if (!refetch) {
      this.setStatus("stale");
      return;
    }
    this.refetching = true;
    this.stats.refetches++;
    this.setStatus("refetching");
    let p: Promise<Envelope>;
    try {
      p = Promise.resolve(refetch());
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (env) => {
        this.refetching = false;
        this.ingest(env, "refetch");
        // The stream can answer with an envelope older than the live one that showed
        // the gap (that one may not be stored yet when the refetch is served): the
        // held-back envelope then applies if it is the next one, else refetch again.
        const pending = this.pendingLive;
        this.pendingLive = undefined;
        if (pending && pending.sequence > this.metaValue.sequence) this.ingest(pending, "pending");
        else this.followUps = 0;
      },
      () => {
        this.refetching = false;
        this.pendingLive = undefined;
        if (!this.disposed) this.setStatus("stale");
      },
    )
      .catch((e: unknown) => console.error(`walcast: replica ${this.key}:`, e))
      .finally(() => {
        if (this.refetching) return; // a follow-up refetch resolves the waiters
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      });
  }
}

/** Create a replica of one key (the seed's `createClientReplica`). */
export function createClientReplica<T = Record<string, unknown>>(options: ReplicaOptions<T>): Replica<T> {
  return new Replica<T>(options);
}
