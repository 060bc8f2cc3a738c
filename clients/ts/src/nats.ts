/**
 * NATS: the seed's callback-style connection contract, an adapter from a nats.js
 * `NatsConnection`, {@link NatsTransport} (walcast's subjects, local fan-out,
 * subscriber GC) and refetching a key's last envelope from walcast's JetStream stream.
 */
import type { Msg, NatsConnection, NatsError } from "nats";
import { decode, encode, type Envelope } from "./codec.js";
import { DEFAULT_PREFIX, subjectForTable, subjectOf } from "./key.js";
import type { Keyring } from "./seal.js";
import {
  DEFAULT_QUEUE_CAPACITY,
  defaultHandlerErrorHook,
  LocalSubscriber,
  makeSubscription,
  type Handler,
  type HandlerErrorHook,
  type SubscribeOptions,
  type Subscription,
  type Transport,
} from "./transport.js";

/**
 * A NATS connection, callback-adapted (the seed's `SyncNatsConnection`): delivery as
 * a callback plus an unsubscribe function, rather than nats.js's async iterables.
 */
export interface SyncNatsConnection {
  publish(subject: string, payload: Uint8Array): void;
  /** Subscribe to `subject`; `onMessage` gets each raw payload; returns an unsubscribe. */
  subscribe(subject: string, onMessage: (payload: Uint8Array) => void): () => void;
  /** Optional: resolve once the server has processed everything sent so far. */
  flush?(): Promise<void>;
}

/**
 * Adapt a nats.js (v2) connection. Messages are delivered through nats.js's
 * `callback` option: synchronously, in order, without an async iterator per subject.
 */
export function fromNatsConnection(
  nc: NatsConnection,
  onError: (error: NatsError, subject: string) => void = (e, s) => console.error(`walcast: NATS subscription ${s}:`, e),
): SyncNatsConnection & { flush(): Promise<void> } {
  return {
    publish(subject, payload) {
      nc.publish(subject, payload);
    },
    subscribe(subject, onMessage) {
      const sub = nc.subscribe(subject, {
        callback: (err: NatsError | null, msg: Msg) => {
          if (err) onError(err, subject);
          else onMessage(msg.data);
        },
      });
      return () => sub.unsubscribe();
    },
    flush() {
      return nc.flush();
    },
  };
}

/** Encoding on publish, decoding on receipt (default: walcast's codec). */
export interface EnvelopeCodec {
  encode(envelope: Envelope): Uint8Array;
  decode(payload: Uint8Array): Envelope;
}

export interface NatsTransportOptions {
  /** A {@link SyncNatsConnection}, or a nats.js connection (adapted with {@link fromNatsConnection}). */
  connection: SyncNatsConnection | NatsConnection;
  /** walcast's subject prefix (`--subject-prefix`, default `walcast`). */
  prefix?: string;
  queueCapacity?: number;
  codec?: EnvelopeCodec;
  onHandlerError?: HandlerErrorHook;
  /** Told about each message on a subscribed subject that is not an envelope (skipped). */
  onUndecodable?: (error: unknown, subject: string) => void;
  /** Opens the rows of encrypted tables (with the default codec); without it their envelopes are undecodable, with the reason. */
  keys?: Keyring;
}

interface SubjectEntry {
  natsUnsub: () => void;
  subscribers: LocalSubscriber[];
}

function isNatsJs(c: SyncNatsConnection | NatsConnection): c is NatsConnection {
  return typeof (c as NatsConnection).getServer === "function" && typeof (c as NatsConnection).drain === "function";
}

/**
 * The transport over NATS, on walcast's subjects. All local subscribers of one key
 * share ONE NATS subscription, decoded once per message and handed to each of them;
 * when the last local subscriber leaves, the NATS subscription is removed from the
 * server (subscriber GC).
 */
export class NatsTransport implements Transport {
  readonly prefix: string;
  private readonly nc: SyncNatsConnection;
  private readonly codec: EnvelopeCodec;
  private readonly capacity: number;
  private readonly onError: HandlerErrorHook;
  private readonly onUndecodable: (error: unknown, subject: string) => void;
  private readonly subjects = new Map<string, SubjectEntry>();
  private undecodableCount = 0;

  constructor(options: NatsTransportOptions) {
    this.nc = isNatsJs(options.connection) ? fromNatsConnection(options.connection) : options.connection;
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    const keys = options.keys;
    this.codec = options.codec ?? { encode, decode: (payload) => decode(payload, { keys }) };
    this.capacity = options.queueCapacity ?? DEFAULT_QUEUE_CAPACITY;
    this.onError = options.onHandlerError ?? defaultHandlerErrorHook;
    this.onUndecodable =
      options.onUndecodable ?? ((e, s) => console.warn(`walcast: ${s}: not a walcast envelope:`, e));
  }

  /** Messages received on subscribed subjects that did not decode (skipped). */
  get undecodable(): number {
    return this.undecodableCount;
  }

  /** The subject of a key under this transport's prefix. */
  subjectOf(key: string): string {
    return subjectOf(this.prefix, key);
  }

  publish(key: string, envelope: Envelope): void {
    this.nc.publish(this.subjectOf(key), this.codec.encode(envelope));
  }

  subscribe(key: string, handler: Handler, options?: SubscribeOptions): Subscription {
    return this.add(this.subjectOf(key), handler, options);
  }

  subscribeTable(schema: string, table: string, handler: Handler, options?: SubscribeOptions): Subscription {
    return this.add(subjectForTable(this.prefix, schema, table), handler, options);
  }

  keyCount(): number {
    return this.subjects.size;
  }

  /** Resolves once the server has seen every subscribe and publish sent so far. */
  async flush(): Promise<void> {
    await this.nc.flush?.();
  }

  private add(subject: string, handler: Handler, options?: SubscribeOptions): Subscription {
    const local = new LocalSubscriber(handler, options?.queueCapacity ?? this.capacity, this.onError);
    let entry = this.subjects.get(subject);
    if (entry) {
      entry.subscribers.push(local);
    } else {
      const created: SubjectEntry = { natsUnsub: () => {}, subscribers: [local] };
      this.subjects.set(subject, created);
      try {
        created.natsUnsub = this.nc.subscribe(subject, (payload) => this.receive(subject, created, payload));
      } catch (e) {
        this.subjects.delete(subject);
        throw e;
      }
      entry = created;
    }
    const owner = entry;
    return makeSubscription(local, () => {
      const i = owner.subscribers.indexOf(local);
      if (i >= 0) owner.subscribers.splice(i, 1);
      if (owner.subscribers.length === 0 && this.subjects.get(subject) === owner) {
        this.subjects.delete(subject);
        owner.natsUnsub();
      }
    });
  }

  private receive(subject: string, entry: SubjectEntry, payload: Uint8Array): void {
    if (entry.subscribers.length === 0) return;
    let env: Envelope;
    try {
      env = this.codec.decode(payload);
    } catch (e) {
      this.undecodableCount++;
      this.onUndecodable(e, subject);
      return;
    }
    for (const sub of [...entry.subscribers]) sub.deliver(env);
  }
}

/** A refetch failed (`notFound`: the stream has no message for the key's subject). */
export class RefetchError extends Error {
  constructor(
    message: string,
    readonly notFound = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "RefetchError";
  }
}

export interface StreamRefetchOptions {
  /** walcast's stream (`--stream`, default `WALCAST`). */
  stream?: string;
  /** walcast's subject prefix (default `walcast`). */
  prefix?: string;
  /** JetStream API prefix (default `$JS.API`; another for a JetStream domain). */
  apiPrefix?: string;
  /** Request timeout in ms (default 5000). */
  timeoutMs?: number;
  /** Opens the rows of encrypted tables. */
  keys?: Keyring;
}

const textEncoder = new TextEncoder();

function isNoResponders(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === "503";
}

/**
 * The authoritative current envelope of `key`: the last message of its subject in
 * walcast's JetStream stream. Uses a direct get (`$JS.API.DIRECT.GET.<stream>`,
 * `{"last_by_subj": subject}`; walcast creates its stream with `allow_direct`) and
 * falls back to the stream API (`$JS.API.STREAM.MSG.GET.<stream>`) when no server
 * answers direct gets.
 */
export async function refetchFromStream(nc: NatsConnection, key: string, options: StreamRefetchOptions = {}): Promise<Envelope> {
  const stream = options.stream ?? "WALCAST";
  const api = options.apiPrefix ?? "$JS.API";
  const timeout = options.timeoutMs ?? 5000;
  const subject = subjectOf(options.prefix ?? DEFAULT_PREFIX, key);
  const body = textEncoder.encode(JSON.stringify({ last_by_subj: subject }));
  let msg: Msg;
  try {
    msg = await nc.request(`${api}.DIRECT.GET.${stream}`, body, { timeout });
  } catch (e) {
    if (!isNoResponders(e)) throw new RefetchError(`direct get of ${subject} from ${stream}: ${(e as Error).message}`, false, { cause: e });
    return fromStreamApi(nc, `${api}.STREAM.MSG.GET.${stream}`, body, subject, stream, timeout, options.keys);
  }
  const h = msg.headers;
  if (h && (h.hasError || (h.code !== 0 && h.code >= 300))) {
    if (h.code === 404) throw new RefetchError(`${stream} has no message on ${subject}`, true);
    throw new RefetchError(`direct get of ${subject} from ${stream}: ${h.code} ${h.description}`);
  }
  if (msg.data.length === 0) throw new RefetchError(`${stream} has no message on ${subject}`, true);
  try {
    return decode(msg.data, { keys: options.keys });
  } catch (e) {
    throw new RefetchError(`the last message on ${subject} is not an envelope: ${(e as Error).message}`, false, { cause: e });
  }
}

async function fromStreamApi(
  nc: NatsConnection,
  apiSubject: string,
  body: Uint8Array,
  subject: string,
  stream: string,
  timeout: number,
  keys: Keyring | undefined,
): Promise<Envelope> {
  let msg: Msg;
  try {
    msg = await nc.request(apiSubject, body, { timeout });
  } catch (e) {
    throw new RefetchError(`getting ${subject} from ${stream}: ${(e as Error).message}`, false, { cause: e });
  }
  let reply: { error?: { code?: number; err_code?: number; description?: string }; message?: { data?: string } };
  try {
    reply = JSON.parse(new TextDecoder().decode(msg.data));
  } catch (e) {
    throw new RefetchError(`getting ${subject} from ${stream}: the reply is not JSON`, false, { cause: e });
  }
  if (reply.error) {
    const notFound = reply.error.err_code === 10037;
    throw new RefetchError(
      `getting ${subject} from ${stream}: ${reply.error.description ?? "error"} (${reply.error.code}/${reply.error.err_code})`,
      notFound,
    );
  }
  const data = reply.message?.data;
  if (typeof data !== "string") throw new RefetchError(`${stream} has no message on ${subject}`, true);
  try {
    return decode(new Uint8Array(Buffer.from(data, "base64")), { keys });
  } catch (e) {
    throw new RefetchError(`the last message on ${subject} is not an envelope: ${(e as Error).message}`, false, { cause: e });
  }
}

/** Like {@link refetchFromStream}, but `undefined` when the stream has no envelope of the key. */
export async function lastEnvelope(nc: NatsConnection, key: string, options: StreamRefetchOptions = {}): Promise<Envelope | undefined> {
  try {
    return await refetchFromStream(nc, key, options);
  } catch (e) {
    if (e instanceof RefetchError && e.notFound) return undefined;
    throw e;
  }
}

export interface WalcastRefetchOptions {
  /** walcast's subject prefix (default `walcast`): requests go to `<prefix>_refetch`. */
  prefix?: string;
  /** Request timeout in ms (default 5000). */
  timeoutMs?: number;
  /** Opens the row of an encrypted table. */
  keys?: Keyring;
}

/**
 * The current envelope of `key` in a column-mode table (`--column-sequence`), asked
 * of walcast itself: a request on `<prefix>_refetch` whose payload is the key. walcast
 * reads the row and answers with its envelope (`op = "snapshot"`), or an empty reply
 * with a `Walcast-Error` header: `not-found` (no row: the key is deleted) or why it
 * cannot answer.
 */
export async function refetchFromWalcast(nc: NatsConnection, key: string, options: WalcastRefetchOptions = {}): Promise<Envelope> {
  const subject = `${options.prefix ?? DEFAULT_PREFIX}_refetch`;
  let msg: Msg;
  try {
    msg = await nc.request(subject, textEncoder.encode(key), { timeout: options.timeoutMs ?? 5000 });
  } catch (e) {
    throw new RefetchError(`asking walcast on ${subject}: ${(e as Error).message}`, false, { cause: e });
  }
  const refused = msg.headers?.get("Walcast-Error");
  if (refused === "not-found") throw new RefetchError(`${key} has no row`, true);
  if (refused) throw new RefetchError(`walcast: ${refused}`);
  try {
    return decode(msg.data, { keys: options.keys });
  } catch (e) {
    throw new RefetchError(`walcast's answer for ${key} is not an envelope: ${(e as Error).message}`, false, { cause: e });
  }
}

/** A replica's `refetch` for a column-mode key: {@link refetchFromWalcast}. */
export function walcastRefetch(nc: NatsConnection, key: string, options: WalcastRefetchOptions = {}): () => Promise<Envelope> {
  return () => refetchFromWalcast(nc, key, options);
}

/** A refetch function for one key, for {@link createClientReplica}'s `refetch`. */
export function streamRefetch(nc: NatsConnection, key: string, options: StreamRefetchOptions = {}): () => Promise<Envelope> {
  return () => refetchFromStream(nc, key, options);
}
