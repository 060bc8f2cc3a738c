//! A PostgreSQL replication connection spoken directly over the wire protocol.
//!
//! `tokio-postgres` cannot open a `replication=database` connection nor speak
//! CopyBoth, so this module does: startup, authentication (trust, cleartext, MD5,
//! SCRAM-SHA-256), simple queries, `START_REPLICATION`, and the CopyBoth stream of
//! XLogData and keepalive messages with standby status updates going back. Frontend
//! messages are built with `postgres-protocol`; backend frames are split here so that
//! every XLogData payload is a zero-copy slice of the read buffer.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend::Header, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::parse_error_fields;
use super::params::{ConnectParams, Target};
use super::stream::ReplicationStream;
use super::SourceError;
use crate::wire::Lsn;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// Bytes read from the socket at most per read call (large reads, few wake-ups).
const READ_CHUNK: usize = 256 * 1024;
/// The pause before reading again after a short read, while streaming.
pub const DEFAULT_READ_NAP: Duration = Duration::from_micros(50);
/// A read shorter than this means the walsender is not far ahead.
const SMALL_READ: usize = 32 * 1024;
/// A read shorter than this is a trickle (a few transactions): read again at once,
/// a nap would only add latency.
const TRICKLE_READ: usize = 4 * 1024;

/// An authenticated connection in `replication=database` mode.
pub struct ReplicationConnection {
    reader: ReadHalf,
    writer: WriteHalf,
    rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// Parameters the server reported (`server_version`, ...).
    pub server_params: HashMap<String, String>,
    last_read_small: bool,
    read_nap: Duration,
    /// TLS: the server certificate's `tls-server-end-point` data (`Some(empty)` when
    /// on TLS without a certificate hash; `None` without TLS).
    channel_binding: Option<Vec<u8>>,
}

/// An open socket, before startup.
struct Opened {
    reader: ReadHalf,
    writer: WriteHalf,
    channel_binding: Option<Vec<u8>>,
}

fn connect_error(params: &ConnectParams) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Connect {
        target: params.target.to_string(),
        source,
    }
}

/// TCP (with TLS when asked and offered) or a Unix socket (never TLS, as libpq).
async fn open(
    params: &ConnectParams,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Opened, SourceError> {
    let (host, port) = match &params.target {
        Target::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error(params))?;
            let (r, w) = s.into_split();
            return Ok(Opened {
                reader: Box::new(r),
                writer: Box::new(w),
                channel_binding: None,
            });
        }
        Target::Tcp { host, port } => (host, *port),
    };
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(connect_error(params))?;
    s.set_nodelay(true).map_err(connect_error(params))?;
    if let Some(config) = tls {
        if ssl_request(&mut s).await.map_err(connect_error(params))? {
            return start_tls(s, host, config).await;
        }
        if params.tls.mode.requires_tls() {
            return Err(SourceError::Config(format!(
                "PostgreSQL at {} does not accept TLS connections, and sslmode requires TLS",
                params.target
            )));
        }
    }
    let (r, w) = s.into_split();
    Ok(Opened {
        reader: Box::new(r),
        writer: Box::new(w),
        channel_binding: None,
    })
}

/// SSLRequest: whether the server agrees to TLS.
async fn ssl_request(s: &mut tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    s.write_all(&request).await?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await?;
    Ok(answer[0] == b'S')
}

async fn start_tls(
    s: tokio::net::TcpStream,
    host: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Opened, SourceError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| SourceError::Config(format!("PostgreSQL TLS: host name {host:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, s)
        .await
        .map_err(|source| SourceError::Tls {
            target: host.to_string(),
            source,
        })?;
    let channel_binding = Some(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(super::tls::server_end_point)
            .unwrap_or_default(),
    );
    let (r, w) = tokio::io::split(tls);
    Ok(Opened {
        reader: Box::new(r),
        writer: Box::new(w),
        channel_binding,
    })
}

pub(super) fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> SourceError {
    move |e| SourceError::Io { context, source: e }
}

pub(super) fn proto(msg: impl Into<String>) -> SourceError {
    SourceError::Protocol(msg.into())
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
        let mut conn = ReplicationConnection {
            reader: opened.reader,
            writer: opened.writer,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            server_params: HashMap::new(),
            last_read_small: false,
            read_nap: Duration::ZERO,
            channel_binding: opened.channel_binding,
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, p: &ConnectParams) -> Result<(), SourceError> {
        let startup: [(&str, &str); 10] = [
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
        ];
        frontend::startup_message(startup.iter().copied(), &mut self.wbuf)
            .map_err(io_err("encoding the startup message"))?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'R' => self.authenticate(p, body, &mut scram).await?,
                b'E' => return Err(SourceError::from_pg(parse_error_fields(&body))),
                b'S' => {
                    let mut parts = body.split(|&c| c == 0);
                    if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                        self.server_params.insert(
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        );
                    }
                }
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

    /// One authentication request of the server, answered.
    async fn authenticate(
        &mut self,
        p: &ConnectParams,
        body: Bytes,
        scram: &mut Option<ScramSha256>,
    ) -> Result<(), SourceError> {
        let mut b = body.clone();
        if b.len() < 4 {
            return Err(proto("short authentication message"));
        }
        let code = b.get_i32();
        let password = || {
            p.password.clone().ok_or_else(|| {
                SourceError::Auth(format!(
                    "the server asks a password for user {:?} and the URL gives none",
                    p.user
                ))
            })
        };
        match code {
            0 => {}
            3 => {
                frontend::password_message(&password()?, &mut self.wbuf)
                    .map_err(io_err("encoding the password"))?;
                self.flush().await?;
            }
            5 => {
                if b.len() < 4 {
                    return Err(proto("short MD5 salt"));
                }
                let salt = [b[0], b[1], b[2], b[3]];
                let hash = postgres_protocol::authentication::md5_hash(
                    p.user.as_bytes(),
                    &password()?,
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                    .map_err(io_err("encoding the password"))?;
                self.flush().await?;
            }
            10 => *scram = Some(self.sasl_start(&b, &password()?).await?),
            11 => {
                let s = scram.as_mut().ok_or_else(|| proto("SASL continue before start"))?;
                s.update(&b).map_err(|e| SourceError::Auth(format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), &mut self.wbuf)
                    .map_err(io_err("encoding SASL"))?;
                self.flush().await?;
            }
            12 => {
                let s = scram.as_mut().ok_or_else(|| proto("SASL final before start"))?;
                s.finish(&b)
                    .map_err(|e| SourceError::Auth(format!("SCRAM server proof: {e}")))?;
            }
            other => {
                return Err(SourceError::Auth(format!(
                    "unsupported authentication method (code {other}); use trust, password, md5 or scram-sha-256"
                )))
            }
        }
        Ok(())
    }

    /// SASL: choose the mechanism and send the first message. Over TLS with a
    /// certificate, SCRAM-SHA-256-PLUS (channel binding) when the server offers it.
    async fn sasl_start(
        &mut self,
        mechanisms: &[u8],
        password: &[u8],
    ) -> Result<ScramSha256, SourceError> {
        let mechs: Vec<&[u8]> = mechanisms
            .split(|&c| c == 0)
            .filter(|m| !m.is_empty())
            .collect();
        let plus = mechs.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
        let bound = self
            .channel_binding
            .as_ref()
            .filter(|h| !h.is_empty() && plus);
        if !mechs.contains(&&b"SCRAM-SHA-256"[..]) && bound.is_none() {
            return Err(SourceError::Auth(format!(
                "server offers SASL mechanisms {:?}, walcast speaks SCRAM-SHA-256",
                mechs
                    .iter()
                    .map(|m| String::from_utf8_lossy(m))
                    .collect::<Vec<_>>()
            )));
        }
        let (mechanism, binding) = match (bound, &self.channel_binding) {
            (Some(hash), _) => (
                "SCRAM-SHA-256-PLUS",
                ChannelBinding::tls_server_end_point(hash.clone()),
            ),
            (None, Some(_)) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
            (None, None) => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
        };
        tracing::debug!(mechanism, "authenticating");
        let s = ScramSha256::new(password, binding);
        frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
            .map_err(io_err("encoding SASL"))?;
        self.flush().await?;
        Ok(s)
    }

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

    /// Run a simple query; rows come back as text columns.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(io_err("encoding a query"))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'D' => rows.push(parse_data_row(&body)?),
                b'E' => error = Some(parse_error_fields(&body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(SourceError::from_pg(e)),
                        None => Ok(rows),
                    }
                }
                b'T' | b'C' | b'N' | b'I' | b'S' => {}
                other => {
                    return Err(proto(format!(
                        "unexpected message {:?} after a query",
                        other as char
                    )))
                }
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| proto("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlog_pos: col(2)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| proto("IDENTIFY_SYSTEM: bad xlogpos"))?,
            dbname: col(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput`: a permanent slot. Returns the
    /// consistent point.
    pub async fn create_slot(&mut self, slot: &str) -> Result<Lsn, SourceError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(slot)
            ))
            .await?;
        rows.first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| proto("CREATE_REPLICATION_SLOT: no consistent point"))
    }

    /// Pause this long before a read that follows a short read (0: never). Streaming
    /// sets 50 µs by default.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn set_read_nap(&mut self, nap: Duration) {
        self.read_nap = nap;
    }

    /// `START_REPLICATION ... LOGICAL`: from here on the connection is a stream.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, SourceError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names '{}', messages 'true')",
            quote_ident(slot),
            start,
            quote_ident(publication).replace('\'', "''")
        );
        frontend::query(&sql, &mut self.wbuf).map_err(io_err("encoding START_REPLICATION"))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                // CopyBothResponse: postgres-protocol's Message::parse rejects this tag.
                b'W' => {
                    if self.read_nap.is_zero() {
                        self.read_nap = DEFAULT_READ_NAP;
                    }
                    return Ok(ReplicationStream::new(self));
                }
                b'E' => return Err(SourceError::from_pg(parse_error_fields(&body))),
                b'N' | b'S' => {}
                other => {
                    return Err(proto(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, SourceError> {
    let mut b = body;
    if b.len() < 2 {
        return Err(proto("short DataRow"));
    }
    let n = b.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(proto("short DataRow"));
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            if b.len() < len {
                return Err(proto("short DataRow"));
            }
            out.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
            b.advance(len);
        }
    }
    Ok(out)
}

/// Double-quote an identifier for a replication command.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Unit tests drive the protocol over in-memory byte streams.
#[cfg(test)]
impl ReplicationConnection {
    /// A connection over any byte streams, already past startup (unit tests).
    pub(super) fn from_io(
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        ReplicationConnection {
            reader: Box::new(reader),
            writer: Box::new(writer),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            server_params: HashMap::new(),
            last_read_small: false,
            read_nap: Duration::ZERO,
            channel_binding: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_parse_with_nulls_and_reject_truncation() {
        let body = b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff";
        assert_eq!(
            parse_data_row(body).unwrap(),
            vec![Some("ab".to_string()), None]
        );
        assert!(parse_data_row(&body[..7]).is_err());
    }
}
