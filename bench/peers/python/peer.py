#!/usr/bin/env python3
"""Rival CDC publisher for the walcast benchmark, written the way a Python team
typically would: psycopg2's logical replication cursor, a hand-written pgoutput
decoder, msgpack for the envelope and nats-py for publishing.

usage: peer.py CONNINFO SLOT PUBLICATION ENDPOS NATS_URL SUBJECT_PREFIX [--jetstream]

Streams pgoutput (proto_version 1, text values) from an existing slot, publishes
one MessagePack map {table, op, lsn, row} per row change on
<prefix>.<schema>.<table>, confirms the flushed position to PostgreSQL after the
NATS flush (core) or the PubAcks (JetStream), and stops once everything up to
ENDPOS has been processed. Prints "published N" on stdout.
"""

import asyncio
import struct
import sys
import time

import msgpack
import nats
import psycopg2
import psycopg2.extras
from nats.js.errors import NotFoundError

USAGE = ("usage: peer.py CONNINFO SLOT PUBLICATION ENDPOS NATS_URL SUBJECT_PREFIX"
         " [--jetstream]")

CONFIRM_EVERY_S = 1.0  # how often the position is confirmed while streaming
ACK_TIMEOUT_S = 30.0  # how long to wait for outstanding PubAcks
MAX_UNCONFIRMED = 4000  # JetStream: drain the PubAcks at a commit past this many

_u16 = struct.Struct("!H")
_i32 = struct.Struct("!i")
_u32 = struct.Struct("!I")
_u64 = struct.Struct("!Q")


def parse_lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn):
    return "%X/%X" % (lsn >> 32, lsn & 0xFFFFFFFF)


class Relation:
    __slots__ = ("table", "subject", "columns", "key_columns")

    def __init__(self, schema, name, columns, key_columns, prefix):
        self.table = schema + "." + name
        self.subject = prefix + "." + schema + "." + name
        self.columns = columns
        self.key_columns = key_columns


def read_cstring(buf, pos):
    end = buf.index(b"\x00", pos)
    return buf[pos:end].decode(), end + 1


def read_tuple(buf, pos, columns):
    """Decode TupleData at pos; returns (row dict, new pos)."""
    (ncols,) = _u16.unpack_from(buf, pos)
    pos += 2
    row = {}
    for i in range(ncols):
        kind = buf[pos]
        pos += 1
        if kind == 0x74:  # 't' text
            (size,) = _i32.unpack_from(buf, pos)
            pos += 4
            row[columns[i]] = buf[pos:pos + size].decode()
            pos += size
        elif kind == 0x6E:  # 'n' null
            row[columns[i]] = None
        elif kind == 0x75:  # 'u' unchanged TOAST value: not sent, leave it out
            pass
        else:
            raise ValueError("unexpected tuple data kind %r" % chr(kind))
    return row, pos


class Peer:
    def __init__(self, args, jetstream):
        (self.dsn, self.slot, self.publication, endpos, self.nats_url,
         self.prefix) = args
        self.endpos = parse_lsn(endpos)
        self.jetstream = jetstream
        self.relations = {}
        self.in_txn = False
        self.txn_lsn = "0/0"
        self.published = 0
        self.unconfirmed = 0  # row changes published since the last confirmation
        self.last_commit_end = 0  # end LSN of the last commit fully handed to NATS
        self.confirmed = 0
        self.last_confirm = time.monotonic()
        self.acks = []  # JetStream PubAck futures not yet awaited
        self.done = False

    # --- NATS -------------------------------------------------------------

    async def connect_nats(self):
        async def nats_error(err):
            print("peer.py: nats: %s" % (err or type(err).__name__), file=sys.stderr)

        # One attempt, no reconnects: a broken connection is a failed run.
        self.nc = await nats.connect(self.nats_url, allow_reconnect=False,
                                     max_reconnect_attempts=1, error_cb=nats_error,
                                     pending_size=8 * 1024 * 1024)
        if self.jetstream:
            self.js = self.nc.jetstream(publish_async_max_pending=MAX_UNCONFIRMED)
            subjects = self.prefix + ".>"
            try:
                await self.js.find_stream_name_by_subject(subjects)
            except NotFoundError:
                name = self.prefix.replace(".", "_").upper() + "_CDC"
                await self.js.add_stream(name=name, subjects=[subjects])

    async def publish(self, rel, op, row):
        payload = msgpack.packb({"table": rel.table, "op": op,
                                 "lsn": self.txn_lsn, "row": row})
        if self.jetstream:
            self.acks.append(await self.js.publish_async(rel.subject, payload))
        else:
            await self.nc.publish(rel.subject, payload)
        self.published += 1
        self.unconfirmed += 1

    async def confirm(self, cur):
        """Make everything handed to NATS durable there, then tell PostgreSQL."""
        if self.jetstream:
            if self.acks:
                acks, self.acks = self.acks, []
                await asyncio.wait_for(asyncio.gather(*acks), ACK_TIMEOUT_S)
        else:
            await self.nc.flush(timeout=ACK_TIMEOUT_S)
        self.unconfirmed = 0
        self.last_confirm = time.monotonic()
        if self.last_commit_end > self.confirmed:
            self.confirmed = self.last_commit_end
            cur.send_feedback(write_lsn=self.confirmed, flush_lsn=self.confirmed,
                              force=True)

    # --- pgoutput ---------------------------------------------------------

    async def handle(self, cur, msg):
        buf = msg.payload
        tag = buf[0]
        if tag == 0x42:  # 'B' Begin: final LSN, commit time, xid
            self.in_txn = True
            self.txn_lsn = format_lsn(_u64.unpack_from(buf, 1)[0])
        elif tag == 0x43:  # 'C' Commit: flags, commit LSN, end LSN, time
            end = _u64.unpack_from(buf, 10)[0]
            self.in_txn = False
            self.last_commit_end = end
            if end >= self.endpos:
                self.done = True
            elif (self.unconfirmed >= MAX_UNCONFIRMED and self.jetstream) or \
                    time.monotonic() - self.last_confirm >= CONFIRM_EVERY_S:
                await self.confirm(cur)
            else:
                await asyncio.sleep(0)  # let the NATS client's tasks run
        elif tag == 0x52:  # 'R' Relation
            (relid,) = _u32.unpack_from(buf, 1)
            schema, pos = read_cstring(buf, 5)
            name, pos = read_cstring(buf, pos)
            pos += 1  # replica identity
            (ncols,) = _u16.unpack_from(buf, pos)
            pos += 2
            columns, key_columns = [], []
            for _ in range(ncols):
                flags = buf[pos]
                col, pos = read_cstring(buf, pos + 1)
                pos += 8  # type oid, type modifier
                columns.append(col)
                if flags & 1:
                    key_columns.append(col)
            self.relations[relid] = Relation(schema or "public", name, columns,
                                             key_columns, self.prefix)
        elif tag == 0x49:  # 'I' Insert: relid, 'N', tuple
            rel = self.relations[_u32.unpack_from(buf, 1)[0]]
            row, _ = read_tuple(buf, 6, rel.columns)
            await self.publish(rel, "insert", row)
        elif tag == 0x55:  # 'U' Update: relid, optional 'K'/'O' tuple, 'N', tuple
            rel = self.relations[_u32.unpack_from(buf, 1)[0]]
            pos = 5
            if buf[pos] in (0x4B, 0x4F):
                _, pos = read_tuple(buf, pos + 1, rel.columns)
            row, _ = read_tuple(buf, pos + 1, rel.columns)
            await self.publish(rel, "update", row)
        elif tag == 0x44:  # 'D' Delete: relid, 'K'/'O', tuple
            rel = self.relations[_u32.unpack_from(buf, 1)[0]]
            row, _ = read_tuple(buf, 6, rel.columns)
            if buf[5] == 0x4B:  # key tuple: the other columns are sent as nulls
                row = {c: row[c] for c in rel.key_columns if c in row}
            await self.publish(rel, "delete", row)
        # Origin ('O'), Type ('Y'), Truncate ('T') and Message ('M') are ignored.

    # --- main loop --------------------------------------------------------

    async def wait_readable(self, fd, timeout):
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)

    async def run(self):
        await self.connect_nats()
        conn = psycopg2.connect(
            self.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            cur = conn.cursor()
            cur.start_replication(
                slot_name=self.slot, decode=False, status_interval=10,
                options={"proto_version": "1",
                         "publication_names": self.publication})
            while not self.done:
                msg = cur.read_message()
                if msg is not None:
                    if not self.in_txn and msg.wal_end >= self.endpos:
                        break  # a transaction starting at or past endpos
                    await self.handle(cur, msg)
                    continue
                # Nothing buffered: every message received so far is handled.
                if not self.in_txn and cur.wal_end >= self.endpos:
                    break
                if self.unconfirmed or self.last_commit_end > self.confirmed:
                    await self.confirm(cur)
                await self.wait_readable(conn.fileno(), CONFIRM_EVERY_S)
            await self.confirm(cur)
            # Whatever PostgreSQL showed us up to here is done: confirm it all.
            final = max(self.last_commit_end, cur.wal_end if not self.in_txn else 0)
            cur.send_feedback(write_lsn=final, flush_lsn=final, force=True)
        finally:
            conn.close()
            await self.nc.close()
        print("published %d" % self.published, flush=True)


def main(argv):
    args = argv[1:]
    jetstream = "--jetstream" in args
    positional = [a for a in args if a != "--jetstream"]
    if len(positional) != 6:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        asyncio.run(Peer(positional, jetstream).run())
    except Exception as e:  # noqa: BLE001 - report any failure and exit non-zero
        print("peer.py: error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
