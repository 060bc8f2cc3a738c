//! The NATS connection the sinks publish on: connected once, reconnecting by itself
//! forever, its state shared with the health endpoints and the core sink.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;

use super::SinkError;
use crate::client::{NatsAuth, NatsUrl};

/// Connection state shared with the health endpoints.
#[derive(Debug, Default)]
pub struct NatsState {
    pub connected: AtomicBool,
    /// Bumped on every disconnect: a confirmation round-trip is only valid if the
    /// generation did not change since the batch was published.
    pub generation: AtomicU64,
    /// The last permissions violation the server reported.
    pub permission_denied: std::sync::Mutex<Option<String>>,
}

/// At start: can walcast publish under its prefix? An empty request on
/// `<prefix>._walcast_probe` (a subject walcast reserves: consumers skip
/// `<prefix>._walcast*`), expecting a stream that does not exist so JetStream never
/// stores it. Run once walcast's stream (over `<prefix>.>`) exists: a permitted
/// publish is answered at once (JetStream refuses it); a user that may not publish
/// gets a permissions-violation error from the server instead, and no answer.
pub async fn probe_publish(
    client: &Client,
    prefix: &str,
    state: &NatsState,
) -> Result<(), SinkError> {
    let subject = format!("{prefix}._walcast_probe");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Stream", "walcast-permission-probe");
    let denied = |detail: String| SinkError::Permission {
        subject: subject.clone(),
        detail,
    };
    let answer = client.request_with_headers(subject.clone(), headers, bytes::Bytes::new());
    tokio::pin!(answer);
    let mut check = tokio::time::interval(Duration::from_millis(10));
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        // The error event is delivered on the client's own task: looked at every 10 ms.
        if let Some(e) = state.permission_denied.lock().unwrap().take() {
            return Err(denied(e));
        }
        tokio::select! {
            _ = &mut answer => return Ok(()),
            _ = check.tick() => {}
            // No answer and no error (a server slower than that): as before the probe.
            _ = &mut deadline => return Ok(()),
        }
    }
}

/// Connect to NATS, waiting for it up to `timeout` (a server that is down or
/// restarting is retried with back-off; refused credentials are not); afterwards the
/// client reconnects by itself forever.
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    timeout: Duration,
    state: Arc<NatsState>,
) -> Result<Client, SinkError> {
    let url = NatsUrl::parse(url).map_err(|e| SinkError::Url(e.to_string()))?;
    let base = url
        .options_with(auth)
        .await
        .map_err(|e| SinkError::Url(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = url
            .connect_with(options(
                base.clone(),
                left.max(Duration::from_secs(1)),
                state.clone(),
            ))
            .await;
        match attempt {
            Ok(client) => {
                state.connected.store(true, Ordering::SeqCst);
                return Ok(client);
            }
            Err(e) if retryable(&e) && left > backoff => {
                tracing::warn!(server = %url.redacted(), error = %e, retry_in = ?backoff, "waiting for NATS");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(source) => {
                return Err(SinkError::Connect {
                    url: url.redacted(),
                    source,
                })
            }
        }
    }
}

/// Whether a failed first connection may succeed later (the server not up yet).
fn retryable(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as K;
    matches!(e.kind(), K::Io | K::TimedOut | K::Dns | K::MaxReconnects)
}

/// The connect options: the credentials, reconnect forever, state tracking.
fn options(
    base: async_nats::ConnectOptions,
    timeout: Duration,
    state: Arc<NatsState>,
) -> async_nats::ConnectOptions {
    base.name("walcast")
        .connection_timeout(timeout)
        .max_reconnects(None)
        .client_capacity(65_536)
        // walcast publishes only on subjects it built: a validated prefix, escaped
        // tokens and its own inboxes (subscriptions are still checked by the client).
        .skip_subject_validation(true)
        .event_callback(move |event| {
            let state = state.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        state.connected.store(true, Ordering::SeqCst);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        state.generation.fetch_add(1, Ordering::SeqCst);
                        state.connected.store(false, Ordering::SeqCst);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::debug!(error = %e, "NATS client error")
                    }
                    async_nats::Event::ServerError(async_nats::ServerError::Other(e))
                        if e.to_lowercase().contains("permissions violation") =>
                    {
                        tracing::error!(error = %e, "NATS refused a message: the user lacks a permission (see docs/security.md)");
                        *state.permission_denied.lock().unwrap() = Some(e);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
}
