//! The NATS connection the sinks publish on: connected once, reconnecting by itself
//! forever, its state shared with the health endpoints and the core sink.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;

use super::SinkError;

/// Connection state shared with the health endpoints.
#[derive(Debug, Default)]
pub struct NatsState {
    pub connected: AtomicBool,
    /// Bumped on every disconnect: a confirmation round-trip is only valid if the
    /// generation did not change since the batch was published.
    pub generation: AtomicU64,
}

/// Connect to NATS; afterwards the client reconnects by itself forever.
pub async fn connect(
    url: &str,
    timeout: Duration,
    state: Arc<NatsState>,
) -> Result<Client, SinkError> {
    let cb_state = state.clone();
    let client = async_nats::ConnectOptions::new()
        .name("walcast")
        .connection_timeout(timeout)
        .max_reconnects(None)
        .client_capacity(65_536)
        .event_callback(move |event| {
            let state = cb_state.clone();
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
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|source| SinkError::Connect {
            url: url.to_string(),
            source,
        })?;
    state.connected.store(true, Ordering::SeqCst);
    Ok(client)
}
