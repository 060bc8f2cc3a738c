//! A PostgreSQL replication connection spoken directly over the wire protocol: what
//! the connection holds, and getting it from a socket to ready-for-query (the startup
//! message, then the server's requests answered until `ReadyForQuery`).
//!
//! `tokio-postgres` cannot open a `replication=database` connection nor speak
//! CopyBoth, so this module and its neighbours do:
//!
//! - [`socket`](super::socket): TCP or Unix socket, SSLRequest and the TLS handshake;
//! - [`auth`](super::auth): trust, cleartext, MD5, SCRAM-SHA-256 (with channel binding);
//! - [`frames`](super::frames): backend frames split out of the read buffer (every
//!   XLogData payload a zero-copy slice of it), frontend messages flushed;
//! - [`commands`](super::commands): simple queries and the replication commands
//!   (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, `START_REPLICATION`).
//!
//! Frontend messages are built with `postgres-protocol`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::ScramSha256;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::{io_err, parse_error_fields, proto};
use super::frames::READ_CHUNK;
use super::params::ConnectParams;
use super::socket::{open, Opened};
use super::SourceError;

pub use super::commands::quote_ident;

pub(super) type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
pub(super) type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// An authenticated connection in `replication=database` mode.
pub struct ReplicationConnection {
    pub(super) reader: ReadHalf,
    pub(super) writer: WriteHalf,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// Parameters the server reported (`server_version`, ...).
    pub server_params: HashMap<String, String>,
    /// The last read was short (see [`frames`](super::frames)): nap before the next.
    pub(super) last_read_small: bool,
    pub(super) read_nap: Duration,
    /// TLS: the server certificate's `tls-server-end-point` data (`Some(empty)` when
    /// on TLS without a certificate hash; `None` without TLS).
    pub(super) channel_binding: Option<Vec<u8>>,
}

/// The parameters of the startup message: the session every connection of walcast
/// gets (text forms of values as the decoder expects them).
fn startup_parameters(p: &ConnectParams) -> [(&str, &str); 10] {
    [
        ("user", &p.user),
        ("database", &p.dbname),
        ("replication", "database"),
        ("application_name", &p.application_name),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("IntervalStyle", "iso_8601"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
    ]
}

impl ReplicationConnection {
    /// Connect (with TLS as `sslmode` asks), authenticate and wait until the server is
    /// ready for queries.
    pub async fn connect(params: &ConnectParams) -> Result<Self, SourceError> {
        let tls = params.tls.client_config()?;
        let timed_out = || SourceError::Connect {
            target: params.target.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:?}", params.connect_timeout),
            ),
        };
        let opened = tokio::time::timeout(params.connect_timeout, open(params, tls))
            .await
            .map_err(|_| timed_out())??;
        let mut conn = ReplicationConnection::over(opened);
        conn.startup(params).await?;
        Ok(conn)
    }

    /// A connection over an open socket, before startup.
    fn over(opened: Opened) -> Self {
        ReplicationConnection {
            reader: opened.reader,
            writer: opened.writer,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            server_params: HashMap::new(),
            last_read_small: false,
            read_nap: Duration::ZERO,
            channel_binding: opened.channel_binding,
        }
    }

    /// Send the startup message and answer the server until it is ready for queries.
    async fn startup(&mut self, p: &ConnectParams) -> Result<(), SourceError> {
        frontend::startup_message(startup_parameters(p).iter().copied(), &mut self.wbuf)
            .map_err(io_err("encoding the startup message"))?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'R' => self.authenticate(p, body, &mut scram).await?,
                b'E' => return Err(SourceError::from_pg(parse_error_fields(&body))),
                b'S' => self.record_server_parameter(&body),
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(proto(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    /// A `ParameterStatus` message (`name\0value\0`) kept in `server_params`.
    fn record_server_parameter(&mut self, body: &[u8]) {
        let mut parts = body.split(|&c| c == 0);
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            self.server_params.insert(
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            );
        }
    }
}

/// Unit tests drive the protocol over in-memory byte streams.
#[cfg(test)]
impl ReplicationConnection {
    /// A connection over any byte streams, already past startup (unit tests).
    pub(super) fn from_io(
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        ReplicationConnection::over(Opened {
            reader: Box::new(reader),
            writer: Box::new(writer),
            channel_binding: None,
        })
    }
}
