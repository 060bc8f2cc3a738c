//! The replication stream: the CopyBoth phase after `START_REPLICATION`.
//!
//! Events come out of the read buffer without copying (an XLogData payload is a slice
//! of it); [`ReplicationStream::next_event`] takes what is already buffered before
//! reading the socket again ([`ReplicationStream::buffered_event`] never reads it);
//! status updates go back on the same connection.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::conn::ReplicationConnection;
use super::error::{io_err, parse_error_fields, proto};
use super::SourceError;
use crate::wire::{Lsn, Timestamp};

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
    Timestamp::now().pg_micros()
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

    /// The pgoutput messages of the XLogData already in the read buffer, in order,
    /// without taking them (to look ahead at what they will need).
    pub fn buffered_messages(&self) -> impl Iterator<Item = &[u8]> {
        self.conn
            .peek_frames()
            .filter(|&(tag, body)| tag == b'd' && body.first() == Some(&b'w') && body.len() >= 25)
            .map(|(_, body)| &body[25..])
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
            // CopyDone, or the end of the command (a server shutting down cleanly).
            b'c' | b'C' | b'Z' => Ok(Some(ReplicationEvent::End)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A backend frame: tag, length, body.
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// The bytes a walsender sends after `START_REPLICATION`: an XLogData carrying a
    /// pgoutput Begin, a keepalive asking for a reply, a notice, then CopyDone.
    fn captured() -> (Vec<u8>, Vec<u8>) {
        let begin: Vec<u8> = [
            &b"B"[..],
            &0x0000_0000_0150_0000u64.to_be_bytes(),
            &0x0002_9A5C_1E2B_0000i64.to_be_bytes(),
            &742u32.to_be_bytes(),
        ]
        .concat();
        let mut xlog = vec![b'w'];
        xlog.extend_from_slice(&0x0150_0000u64.to_be_bytes()); // wal start
        xlog.extend_from_slice(&0x0150_0100u64.to_be_bytes()); // wal end
        xlog.extend_from_slice(&0i64.to_be_bytes()); // send time
        xlog.extend_from_slice(&begin);
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x0150_0200u64.to_be_bytes());
        keepalive.extend_from_slice(&0i64.to_be_bytes());
        keepalive.push(1);
        let bytes = [
            frame(b'd', &xlog),
            frame(b'N', b"SNOTICE\0C00000\0Mhello\0\0"),
            frame(b'd', &keepalive),
            frame(b'c', b""),
        ]
        .concat();
        (bytes, begin)
    }

    #[tokio::test]
    async fn events_come_out_of_captured_bytes_and_status_goes_back() {
        let (bytes, begin) = captured();
        let (writer, mut server_side) = tokio::io::duplex(1024);
        let conn = ReplicationConnection::from_io(std::io::Cursor::new(bytes), writer);
        let mut stream = ReplicationStream::new(conn);
        match stream.next().await.unwrap() {
            ReplicationEvent::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                assert_eq!((wal_start, wal_end), (Lsn(0x0150_0000), Lsn(0x0150_0100)));
                assert_eq!(&data[..], &begin[..], "the pgoutput message, uncopied");
            }
            other => panic!("expected XLogData, got {other:?}"),
        }
        // The notice is skipped; the keepalive is already buffered.
        match stream.buffered_event().unwrap() {
            Some(ReplicationEvent::Keepalive {
                wal_end,
                reply_requested,
            }) => {
                assert_eq!(wal_end, Lsn(0x0150_0200));
                assert!(reply_requested);
            }
            other => panic!("expected a keepalive, got {other:?}"),
        }
        assert!(matches!(
            stream.next().await.unwrap(),
            ReplicationEvent::End
        ));
        assert!(matches!(stream.next().await, Err(SourceError::Closed)));

        stream
            .send_status(Lsn(0x0150_0200), Lsn(0x0150_0100), false)
            .await
            .unwrap();
        let mut sent = [0u8; 39];
        server_side.read_exact(&mut sent).await.unwrap();
        assert_eq!(&sent[..5], &[b'd', 0, 0, 0, 38]);
        assert_eq!(sent[5], b'r');
        assert_eq!(
            &sent[6..14],
            &0x0150_0200u64.to_be_bytes(),
            "write position"
        );
        assert_eq!(
            &sent[14..22],
            &0x0150_0100u64.to_be_bytes(),
            "flush position"
        );
        assert_eq!(
            &sent[22..30],
            &0x0150_0100u64.to_be_bytes(),
            "apply position"
        );
        assert_eq!(sent[38], 0, "no reply requested");
    }
}
