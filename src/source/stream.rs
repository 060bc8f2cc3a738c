//! The replication stream: the CopyBoth phase after `START_REPLICATION`.
//!
//! Events come out of the read buffer without copying (an XLogData payload is a slice
//! of it); [`ReplicationStream::next`] takes what is already buffered before reading
//! the socket again; status updates go back on the same connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::conn::{io_err, proto, ReplicationConnection};
use super::error::parse_error_fields;
use super::SourceError;
use crate::wire::Lsn;

/// One event of the replication stream.
#[derive(Debug)]
pub enum ReplicationEvent {
    /// A pgoutput message that starts at `wal_start`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's position; `reply_requested` asks for a status update now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
    /// The server ended the stream (CopyDone).
    End,
}

/// The CopyBoth stream after `START_REPLICATION`.
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

/// Microseconds since 2000-01-01, the clock the protocol speaks.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    unix - 946_684_800_000_000
}

impl ReplicationStream {
    pub(super) fn new(conn: ReplicationConnection) -> Self {
        ReplicationStream { conn }
    }

    /// The next event: one already in the read buffer if there is one, else read
    /// from the socket. Cancel-safe (usable in `select!`).
    #[cfg(any(test, feature = "test-utils"))]
    pub async fn next(&mut self) -> Result<ReplicationEvent, SourceError> {
        match self.buffered_event()? {
            Some(event) => Ok(event),
            None => self.next_event().await,
        }
    }

    /// The next event. Cancel-safe (usable in `select!`): nothing is lost when the
    /// future is dropped before it completes.
    pub async fn next_event(&mut self) -> Result<ReplicationEvent, SourceError> {
        loop {
            let (tag, body) = self.conn.read_frame().await?;
            if let Some(ev) = Self::event(tag, body)? {
                return Ok(ev);
            }
        }
    }

    /// An event already in the read buffer, without reading the socket.
    pub fn buffered_event(&mut self) -> Result<Option<ReplicationEvent>, SourceError> {
        while let Some((tag, body)) = self.conn.try_frame()? {
            if let Some(ev) = Self::event(tag, body)? {
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }

    fn event(tag: u8, body: Bytes) -> Result<Option<ReplicationEvent>, SourceError> {
        match tag {
            b'd' => match body.first() {
                Some(b'w') => {
                    if body.len() < 25 {
                        return Err(proto("short XLogData"));
                    }
                    let mut h = &body[1..25];
                    let wal_start = Lsn(h.get_u64());
                    let wal_end = Lsn(h.get_u64());
                    Ok(Some(ReplicationEvent::XLogData {
                        wal_start,
                        wal_end,
                        data: body.slice(25..),
                    }))
                }
                Some(b'k') => {
                    if body.len() < 18 {
                        return Err(proto("short keepalive"));
                    }
                    let mut h = &body[1..18];
                    let wal_end = Lsn(h.get_u64());
                    let _server_time = h.get_i64();
                    Ok(Some(ReplicationEvent::Keepalive {
                        wal_end,
                        reply_requested: h.get_u8() == 1,
                    }))
                }
                other => Err(proto(format!("unknown CopyData kind {other:?}"))),
            },
            b'c' => Ok(Some(ReplicationEvent::End)),
            b'E' => Err(SourceError::from_pg(parse_error_fields(&body))),
            b'N' | b'S' => Ok(None),
            other => Err(proto(format!(
                "unexpected message {:?} in the replication stream",
                other as char
            ))),
        }
    }

    /// Send a standby status update: `write` received, `flush` durably handled.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let mut body = BytesMut::with_capacity(34);
        body.extend_from_slice(b"r");
        body.extend_from_slice(&write.0.to_be_bytes());
        body.extend_from_slice(&flush.0.to_be_bytes());
        body.extend_from_slice(&flush.0.to_be_bytes()); // apply
        body.extend_from_slice(&pg_now_micros().to_be_bytes());
        body.extend_from_slice(&[u8::from(reply_requested)]);
        frontend::CopyData::new(body.freeze())
            .map_err(io_err("encoding a status update"))?
            .write(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// End the stream: CopyDone, then drain what the server still sends (it may send
    /// data before its own CopyDone) until it is ready, then Terminate.
    pub async fn finish(mut self) -> Result<(), SourceError> {
        frontend::copy_done(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let drain = async {
            loop {
                let (tag, body) = self.conn.read_frame().await?;
                match tag {
                    b'Z' => return Ok::<(), SourceError>(()),
                    b'E' => return Err(SourceError::from_pg(parse_error_fields(&body))),
                    _ => {}
                }
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(5), drain).await;
        frontend::terminate(&mut self.conn.wbuf);
        let _ = self.conn.flush().await;
        match result {
            Ok(r) => r,
            Err(_) => Err(proto("server did not end the stream within 5 s")),
        }
    }
}
