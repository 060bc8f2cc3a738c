// Catch-up since a position: a consumer that was offline reads what walcast's stream
// holds after its last position — filtered by table, key or op — page by page, then
// follows live from the last page's watermark with no gap and no duplicate at the
// hand-over. A position is a sequence of walcast's JetStream stream. The same contract
// as the Rust client's `changes_since` / `follow_since` / `latest_position` (README,
// "Catch-up since a position"), on JetStream ordered consumers with subject filters.
import { DeliverPolicy, type JsMsg, type NatsConnection } from "nats";
import { decode, type Envelope, type Op } from "./codec.js";
import type { Keyring } from "./seal.js";
import { DEFAULT_PREFIX, subjectForKey, subjectForTable } from "./key.js";

/** Which envelopes a catch-up returns (all when a list is empty or absent). */
export interface ChangeFilter {
  /** `schema.table` names (the stream filters by subject). */
  tables?: string[];
  /** Keys (`schema.table:value`), exactly (the stream filters by subject). */
  keys?: string[];
  ops?: Op[];
  /** Keys matching this pattern only: `*` stands for any run of characters. */
  keyPattern?: string;
}

export interface CatchUpOptions {
  /** walcast's stream (default `WALCAST`). */
  stream?: string;
  /** walcast's subject prefix (default `walcast`). */
  prefix?: string;
  /** The keys encrypted rows are opened with (without them an encrypted row throws). */
  keys?: Keyring;
}

/** An envelope as the stream holds it, with its position. */
export interface StoredChange {
  envelope: Envelope;
  streamSequence: number;
}

export interface Page {
  changes: StoredChange[];
  /** Whether the stream held more for the filter when the page ended. */
  hasMore: boolean;
  /** The position to ask from next. */
  next: number;
}

/** A position whose successors have left the stream's window: refetch instead. */
export class PositionTooOldError extends Error {
  constructor(
    readonly position: number,
    readonly oldest: number,
  ) {
    super(
      `position ${position} is older than the stream's retention (its oldest message is ${oldest}): changes after it are gone; refetch (snapshot) the keys instead, then follow from latestPosition()`,
    );
    this.name = "PositionTooOldError";
  }
}

const PAGE_WAIT_MS = 10_000;

function subjects(filter: ChangeFilter, prefix: string): string[] {
  const out: string[] = [];
  for (const t of filter.tables ?? []) {
    const dot = t.indexOf(".");
    if (dot < 0) throw new Error(`invalid catch-up filter: ${JSON.stringify(t)} is not schema.table`);
    out.push(subjectForTable(prefix, t.slice(0, dot), t.slice(dot + 1)));
  }
  for (const k of filter.keys ?? []) out.push(subjectForKey(prefix, k));
  return out.length > 0 ? out : [`${prefix}.>`];
}

/** `*` in `pattern` matches any run of characters; everything else itself. */
export function globMatches(pattern: string, text: string): boolean {
  const escaped = pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${escaped.join("[\\s\\S]*")}$`).test(text);
}

function accepts(filter: ChangeFilter, e: Envelope): boolean {
  const ops = filter.ops ?? [];
  return (ops.length === 0 || ops.includes(e.op)) && (filter.keyPattern === undefined || globMatches(filter.keyPattern, e.key));
}

/** The stream's last sequence: a position to catch up from later. */
export async function latestPosition(nc: NatsConnection, options: CatchUpOptions = {}): Promise<number> {
  const jsm = await nc.jetstreamManager();
  return (await jsm.streams.info(options.stream ?? "WALCAST")).state.last_seq;
}

async function checkedInfo(nc: NatsConnection, stream: string, position: number) {
  const jsm = await nc.jetstreamManager();
  const info = await jsm.streams.info(stream);
  const c = info.config;
  const window = c.max_age > 0 || c.max_bytes > 0 || c.max_msgs > 0;
  if (window && info.state.messages > 0 && position + 1 < info.state.first_seq) {
    throw new PositionTooOldError(position, info.state.first_seq);
  }
  return info;
}

async function orderedFrom(nc: NatsConnection, stream: string, prefix: string, position: number, filter: ChangeFilter) {
  return nc.jetstream().consumers.get(stream, {
    filterSubjects: subjects(filter, prefix),
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: position + 1,
  });
}

function stored(m: JsMsg, keys: Keyring | undefined): StoredChange {
  return { envelope: decode(m.data, { keys }), streamSequence: m.info.streamSequence };
}

/** Up to `pageSize` envelopes after `position` that `filter` wants. */
export async function changesSince(
  nc: NatsConnection,
  position: number,
  filter: ChangeFilter = {},
  pageSize = 1000,
  options: CatchUpOptions = {},
): Promise<Page> {
  const stream = options.stream ?? "WALCAST";
  const info = await checkedInfo(nc, stream, position);
  const page: Page = { changes: [], hasMore: false, next: position };
  const last = info.state.last_seq;
  if (last <= position) return page;
  const consumer = await orderedFrom(nc, stream, options.prefix ?? DEFAULT_PREFIX, position, filter);
  if ((await consumer.info(true)).num_pending === 0) {
    page.next = last; // nothing the filter wants up to `last` (read before the consumer)
    return page;
  }
  while (page.changes.length < Math.max(1, pageSize)) {
    const batch = await consumer.fetch({ max_messages: Math.max(1, pageSize - page.changes.length), expires: PAGE_WAIT_MS });
    let got = 0;
    let pending = 1;
    for await (const m of batch) {
      got++;
      const s = stored(m, options.keys);
      page.next = s.streamSequence;
      pending = m.info.pending;
      if (accepts(filter, s.envelope)) page.changes.push(s);
      if (pending === 0) break;
    }
    if (got === 0) throw new Error(`catch-up: no message within ${PAGE_WAIT_MS / 1000} s though some were pending`);
    page.hasMore = pending > 0;
    if (pending === 0) break;
  }
  return page;
}

/**
 * Every envelope after `position` that `filter` wants: the stored ones first, then the
 * live ones as the stream stores them, on one ordered consumer (nothing missed or
 * repeated at the hand-over). Stop by breaking out of the loop.
 */
export async function* followSince(
  nc: NatsConnection,
  position: number,
  filter: ChangeFilter = {},
  options: CatchUpOptions = {},
): AsyncGenerator<StoredChange> {
  const stream = options.stream ?? "WALCAST";
  await checkedInfo(nc, stream, position);
  const consumer = await orderedFrom(nc, stream, options.prefix ?? DEFAULT_PREFIX, position, filter);
  const messages = await consumer.consume();
  try {
    for await (const m of messages) {
      const s = stored(m, options.keys);
      if (accepts(filter, s.envelope)) yield s;
    }
  } finally {
    messages.stop();
  }
}
