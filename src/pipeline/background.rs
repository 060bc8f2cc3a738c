//! The tasks beside the reader and the sink: the HTTP endpoints, the slot monitor, the
//! heartbeat, the NATS connection gauge and the request responder. All are joined at
//! shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::requests::{self, Requests};
use super::PipelineError;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::{Shutdown, TaskSet};
use crate::sink::NatsState;
use crate::source::SourceSettings;

/// The HTTP endpoints, the slot monitor and the heartbeat.
pub(super) async fn start(
    metrics_addr: SocketAddr,
    source: &SourceSettings,
    metrics: &Arc<Metrics>,
    tasks: &mut TaskSet,
) -> Result<(), PipelineError> {
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|source| PipelineError::Metrics {
            addr: metrics_addr,
            source,
        })?;
    tasks.spawn(crate::ops::http::serve(
        listener,
        metrics.clone(),
        tasks.shutdown(),
    ));
    if !source.heartbeat_interval.is_zero() {
        tasks.spawn(crate::source::monitor::heartbeat(
            source.clone(),
            tasks.shutdown(),
        ));
    }
    tasks.spawn(crate::source::monitor::monitor_slot(
        source.clone(),
        metrics.clone(),
        tasks.shutdown(),
    ));
    Ok(())
}

/// Every 250 ms until shutdown: whether NATS is connected (metric and readiness).
pub(super) async fn nats_gauge(
    state: Arc<NatsState>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    loop {
        metrics.set_nats_connected(state.connected.load(Ordering::SeqCst));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Requests to this instance: re-snapshots, and refetches when a table is in column
/// mode (tracked tables are refetched from the stream).
pub(super) fn start_requests(
    client: &async_nats::Client,
    subject_prefix: &str,
    column_mode: bool,
    tasks: &mut TaskSet,
) -> Requests {
    let (task, requests) = requests::responder(
        client.clone(),
        subject_prefix,
        column_mode,
        tasks.shutdown(),
    );
    tasks.spawn(task);
    requests
}
