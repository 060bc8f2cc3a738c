//! Opening the replication connection's socket: a Unix socket (never TLS, as libpq),
//! or TCP with an SSLRequest and a rustls handshake on the same socket when `sslmode`
//! asks for TLS and the server agrees.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::{ReadHalf, WriteHalf};
use super::params::{ConnectParams, Target};
use super::SourceError;

/// An open socket, before startup.
pub(super) struct Opened {
    pub(super) reader: ReadHalf,
    pub(super) writer: WriteHalf,
    /// See `ReplicationConnection::channel_binding`.
    pub(super) channel_binding: Option<Vec<u8>>,
}

fn connect_error(params: &ConnectParams) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Connect {
        target: params.target.to_string(),
        source,
    }
}

/// TCP (with TLS when asked and offered) or a Unix socket (never TLS, as libpq).
pub(super) async fn open(
    params: &ConnectParams,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Opened, SourceError> {
    match &params.target {
        Target::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error(params))?;
            let (r, w) = s.into_split();
            Ok(Opened {
                reader: Box::new(r),
                writer: Box::new(w),
                channel_binding: None,
            })
        }
        Target::Tcp { host, port } => open_tcp(params, host, *port, tls).await,
    }
}

/// TCP, upgraded to TLS when a TLS configuration is given and the server agrees; an
/// error when it refuses and `sslmode` requires TLS.
async fn open_tcp(
    params: &ConnectParams,
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Opened, SourceError> {
    let mut s = TcpStream::connect((host, port))
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
async fn ssl_request(s: &mut TcpStream) -> std::io::Result<bool> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    s.write_all(&request).await?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await?;
    Ok(answer[0] == b'S')
}

/// The TLS handshake, and the server certificate's channel binding data.
async fn start_tls(
    s: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
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
