//! The NATS connection the sinks publish on: connected once, reconnecting by itself
//! forever, its state shared with the health endpoints and the permission check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;

use super::SinkError;
use crate::client::{NatsAuth, NatsUrl};

/// Connection state shared with the health endpoints.
#[derive(Debug, Default)]
pub struct NatsState {
    pub connected: AtomicBool,
    /// The last permissions violation the server reported.
    pub permission_denied: std::sync::Mutex<Option<String>>,
}

/// Whether the client is connected (not between a disconnect and the reconnect).
pub(crate) fn connected(client: &Client) -> bool {
    client.connection_state() != async_nats::connection::State::Disconnected
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
                        state.connected.store(false, Ordering::SeqCst);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::debug!(error = %e, "NATS client error")
                    }
                    async_nats::Event::ServerError(async_nats::ServerError::Other(e))
                        if e.to_lowercase().contains("permissions violation") =>
                    {
                        if e.contains(super::permissions::USER_INFO_SUBJECT) {
                            // The optional start-up check: it says so itself.
                            tracing::debug!(error = %e, "NATS refused the permissions question");
                        } else {
                            tracing::error!(error = %e, "NATS refused a message: the user lacks a permission (see docs/security.md)");
                        }
                        *state.permission_denied.lock().unwrap() = Some(e);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
}
