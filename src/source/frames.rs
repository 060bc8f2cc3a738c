//! Framing and socket I/O of the replication connection: frontend messages written
//! out of the write buffer, backend frames split out of the read buffer (each body a
//! zero-copy slice of it, so an XLogData payload is never copied), and the pacing of
//! reads while streaming.

use std::time::Duration;

use bytes::Bytes;
use postgres_protocol::message::backend::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::ReplicationConnection;
use super::error::{io_err, proto};
use super::SourceError;

/// Bytes read from the socket at most per read call (large reads, few wake-ups).
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// The pause before reading again after a short read, while streaming.
pub const DEFAULT_READ_NAP: Duration = Duration::from_micros(50);
/// A read shorter than this means the walsender is not far ahead.
const SMALL_READ: usize = 32 * 1024;
/// A read shorter than this is a trickle (a few transactions): read again at once,
/// a nap would only add latency.
const TRICKLE_READ: usize = 4 * 1024;

impl ReplicationConnection {
    /// Write out what the write buffer holds.
    pub(super) async fn flush(&mut self) -> Result<(), SourceError> {
        self.writer
            .write_all(&self.wbuf)
            .await
            .map_err(io_err("writing to PostgreSQL"))?;
        self.wbuf.clear();
        Ok(())
    }

    /// A complete frame from the buffer, if one is there: (tag, body).
    pub(super) fn try_frame(&mut self) -> Result<Option<(u8, Bytes)>, SourceError> {
        let Some(header) = Header::parse(&self.rbuf).map_err(|e| proto(e.to_string()))? else {
            return Ok(None);
        };
        let total = header.len() as usize + 1;
        if self.rbuf.len() < total {
            if self.rbuf.capacity() < total {
                self.rbuf.reserve(total - self.rbuf.len());
            }
            return Ok(None);
        }
        let frame = self.rbuf.split_to(total).freeze();
        Ok(Some((header.tag(), frame.slice(5..))))
    }

    /// The complete frames in the buffer, without taking them: (tag, body).
    pub(super) fn peek_frames(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut rest: &[u8] = &self.rbuf;
        std::iter::from_fn(move || {
            let header = Header::parse(rest).ok().flatten()?;
            let total = header.len() as usize + 1;
            if rest.len() < total {
                return None;
            }
            let (frame, after) = rest.split_at(total);
            rest = after;
            Some((header.tag(), &frame[5..]))
        })
    }

    /// The next frame, reading from the socket as needed. Cancel-safe: a frame is
    /// only taken from the buffer once complete.
    pub(super) async fn read_frame(&mut self) -> Result<(u8, Bytes), SourceError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            // After a short read (but not a trickle), let the walsender fill the
            // socket a little before reading again: a reader that wakes for every
            // message competes with it for the CPU (measured: about 2x the drain rate
            // on 2 cores). A trickle is read at once: latency matters more there.
            // The nap is a timer sleep: it never blocks a runtime worker.
            if self.last_read_small && !self.read_nap.is_zero() {
                tokio::time::sleep(self.read_nap).await;
            }
            let n = self
                .reader
                .read_buf(&mut self.rbuf)
                .await
                .map_err(io_err("reading from PostgreSQL"))?;
            if n == 0 {
                return Err(SourceError::Closed);
            }
            self.last_read_small = (TRICKLE_READ..SMALL_READ).contains(&n);
        }
    }

    /// Pause this long before a read that follows a short read (0: never). Streaming
    /// sets 50 µs by default.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn set_read_nap(&mut self, nap: Duration) {
        self.read_nap = nap;
    }
}
