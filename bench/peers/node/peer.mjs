#!/usr/bin/env node
// Rival CDC publisher for the walcast benchmark, written the way a Node team
// typically would: pg-logical-replication (pgoutput plugin, its parser and its
// acknowledge helper), msgpackr for the envelope and nats.js for publishing.
//
// usage: peer.mjs CONNINFO SLOT PUBLICATION ENDPOS NATS_URL SUBJECT_PREFIX [--jetstream]
//
// Streams pgoutput (proto_version 1, text values) from an existing slot,
// publishes one MessagePack map {table, op, lsn, row} per row change on
// <prefix>.<schema>.<table>, confirms the flushed position to PostgreSQL after
// the NATS flush (core) or the PubAcks (JetStream), and stops once everything
// up to ENDPOS has been processed. Prints "published N" on stdout.

import { LogicalReplicationService, PgoutputPlugin } from 'pg-logical-replication';
import { pack } from 'msgpackr';
import { connect } from 'nats';

const USAGE = 'usage: peer.mjs CONNINFO SLOT PUBLICATION ENDPOS NATS_URL SUBJECT_PREFIX [--jetstream]';
const CONFIRM_EVERY_MS = 1000; // how often the position is confirmed while streaming
const STATUS_EVERY_MS = 5000; // standby status even when nothing new was confirmed
const MAX_INFLIGHT = 4000; // JetStream: drain the PubAcks past this many

const args = process.argv.slice(2);
const jetstream = args.includes('--jetstream');
const positional = args.filter((a) => a !== '--jetstream');
if (positional.length !== 6) {
  console.error(USAGE);
  process.exit(2);
}
const [conninfo, slot, publication, endposText, natsUrl, prefix] = positional;

function fail(err) {
  console.error(`peer.mjs: error: ${err?.stack ?? err}`);
  process.exit(1);
}
process.on('unhandledRejection', fail);

// LSNs as BigInt; the library hands them out as zero-padded "XXXXXXXX/XXXXXXXX".
const toLsn = (text) => {
  const [hi, lo] = text.split('/');
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
};
const lsnText = (lsn) =>
  `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
const maxLsn = (a, b) => (a > b ? a : b);

// node-postgres takes URLs; libpq's "key=value ..." form is translated here.
function pgConfig(info) {
  if (info.includes('://')) return { connectionString: info };
  const names = { host: 'host', hostaddr: 'host', port: 'port', user: 'user', password: 'password',
    dbname: 'database', application_name: 'application_name' };
  const config = {};
  for (const [, key, quoted, bare] of info.matchAll(/(\w+)\s*=\s*(?:'((?:\\.|[^'])*)'|(\S+))/g)) {
    const value = quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : bare;
    if (!names[key]) throw new Error(`unsupported conninfo keyword: ${key}`);
    config[names[key]] = key === 'port' ? Number(value) : value;
  }
  return config;
}

const endpos = toLsn(endposText);

const nc = await connect({ servers: natsUrl, reconnect: false }).catch(fail);
let js = null;
if (jetstream) {
  const subjects = `${prefix}.>`;
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.find(subjects);
  } catch (err) {
    if (!/no stream matches subject/.test(err.message)) throw err;
    await jsm.streams.add({ name: `${prefix.replace(/\./g, '_').toUpperCase()}_CDC`, subjects: [subjects] });
  }
  js = nc.jetstream();
}

const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: [publication] });
// Keep the column values as the text PostgreSQL sent: by default the library
// runs node-postgres' type parsers over them (numbers, Dates, JSON objects...).
const readColumn = plugin.parser.readRelationColumn.bind(plugin.parser);
plugin.parser.readRelationColumn = (reader) => ({ ...readColumn(reader), parser: (text) => text });
// Count the XLogData messages as they arrive, so that a keepalive can tell
// whether everything received before it has been handled (the library queues
// messages for the 'data' handler but emits keepalives at once).
let received = 0;
const parse = plugin.parse.bind(plugin);
plugin.parse = (buf) => {
  received++;
  return parse(buf);
};

const service = new LogicalReplicationService(pgConfig(conninfo), {
  acknowledge: { auto: false, timeoutSeconds: 0 }, // we confirm only what NATS has
  // JetStream: the handler awaits PubAcks now and then, so let the library
  // pause the stream meanwhile. Core NATS: the handler is synchronous (publish
  // only buffers; flushes are chained below), so the default, unpaused mode.
  flowControl: { enabled: jetstream },
});

let handled = 0;
let busy = false;
let inTxn = false;
let txnLsn = '0/0';
let published = 0;
let pending = []; // JetStream PubAck promises not yet awaited
let lastCommitEnd = 0n; // end of the last commit fully handed to NATS
let confirmed = 0n; // position reported to PostgreSQL as flushed
let serverWalEnd = 0n; // the server has sent everything before this
let pastEnd = false; // endpos reached: finish once the handler is idle
let finalLsn = 0n; // position to confirm at the end: everything before it is handled
let finishing = false;
let lastConfirmAt = Date.now();

// The library's acknowledge(lsn) reports lsn + 1 as written/flushed/applied;
// hand it lsn - 1 so that exactly the confirmed position is reported.
const sendStatus = () => service.acknowledge(lsnText(confirmed > 0n ? confirmed - 1n : 0n));

function publish(relation, op, tuple) {
  const row = {};
  for (const col in tuple) if (tuple[col] !== undefined) row[col] = tuple[col]; // 'u': left out
  relation.subject ??= `${prefix}.${relation.schema}.${relation.name}`;
  const payload = pack({ table: `${relation.schema}.${relation.name}`, op, lsn: txnLsn, row });
  if (js) {
    const ack = js.publish(relation.subject, payload);
    ack.catch(fail);
    pending.push(ack);
  } else {
    nc.publish(relation.subject, payload);
  }
  published++;
}

// Confirmations run one after another: each makes everything handed to NATS
// so far durable there (PubAcks or a flush), then reports the last commit.
let confirmChain = Promise.resolve();
function confirm() {
  confirmChain = confirmChain.then(async () => {
    const upto = lastCommitEnd;
    const acks = pending;
    pending = [];
    if (js) await Promise.all(acks);
    else await nc.flush();
    lastConfirmAt = Date.now();
    if (upto > confirmed) {
      confirmed = upto;
      await sendStatus();
    }
  });
  return confirmChain;
}

async function finish() {
  finishing = true;
  clearInterval(statusTimer);
  await confirm();
  confirmed = maxLsn(confirmed, finalLsn);
  await sendStatus();
  await service.stop();
  await nc.drain();
  process.stdout.write(`published ${published}\n`);
}

// Called when the handler goes idle and on keepalives.
function settle(keepalive) {
  if (finishing || busy) return;
  if (pastEnd) {
    finish().catch(fail);
    return;
  }
  if (handled !== received || inTxn) return;
  if (serverWalEnd >= endpos) {
    // Everything the server sent before serverWalEnd is handled: confirm it all.
    pastEnd = true;
    finalLsn = maxLsn(serverWalEnd, lastCommitEnd);
    finish().catch(fail);
  } else if (keepalive && lastCommitEnd > confirmed) {
    confirm().catch(fail); // caught up: confirm without waiting for the next commit
  }
}

service.on('data', async (lsn, msg) => {
  handled++;
  if (finishing || pastEnd) return;
  busy = true;
  try {
    const at = toLsn(lsn);
    if (!inTxn && at >= endpos) {
      // A transaction starting at or past endpos: not ours to publish.
      pastEnd = true;
      finalLsn = at;
      return;
    }
    switch (msg.tag) {
      case 'begin':
        inTxn = true;
        txnLsn = lsnText(toLsn(msg.commitLsn));
        break;
      case 'commit':
        inTxn = false;
        lastCommitEnd = toLsn(msg.commitEndLsn);
        if (lastCommitEnd >= endpos) {
          pastEnd = true;
          finalLsn = lastCommitEnd;
        } else if (Date.now() - lastConfirmAt >= CONFIRM_EVERY_MS) {
          lastConfirmAt = Date.now();
          const confirming = confirm();
          if (js) await confirming;
          else confirming.catch(fail);
        }
        break;
      case 'insert':
        publish(msg.relation, 'insert', msg.new);
        break;
      case 'update':
        publish(msg.relation, 'update', msg.new);
        break;
      case 'delete':
        publish(msg.relation, 'delete', msg.key ?? msg.old);
        break;
      default: // relation (cached by the parser), type, origin, truncate, message
        break;
    }
    if (js && pending.length >= MAX_INFLIGHT) await confirm();
  } catch (err) {
    fail(err);
  } finally {
    busy = false;
    settle(false);
  }
});

service.on('heartbeat', (lsn, _timestamp, shouldRespond) => {
  serverWalEnd = maxLsn(serverWalEnd, toLsn(lsn));
  if (shouldRespond) sendStatus();
  settle(true);
});

service.on('error', fail);

const statusTimer = setInterval(() => {
  if (!finishing && !service.isStop()) sendStatus();
}, STATUS_EVERY_MS);

await service.subscribe(plugin, slot).catch(fail);
if (!finishing) fail(new Error('replication stream ended before endpos'));
