//! The slot's health, read from `pg_replication_slots` every 10 s, as metrics.

use std::sync::Arc;
use std::time::Duration;

use super::catalog::Catalog;
use super::params::ConnectParams;
use super::settings::SourceSettings;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;

/// The prefix of walcast's heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "walcast.heartbeat";

/// Every `interval` until shutdown: a non-transactional logical decoding message whose
/// content is the time it was written (Unix microseconds); the reader measures how old
/// the last one it saw is. A role that may not write one gets a warning, once.
pub async fn heartbeat(settings: SourceSettings, mut shutdown: Shutdown) {
    let (params, timeout) = (&settings.params, settings.connect_timeout);
    let mut catalog: Option<Catalog> = None;
    loop {
        if let Some(c) = reconnected(&mut catalog, params, timeout).await {
            if let Err(e) = c.emit_heartbeat(HEARTBEAT_PREFIX).await {
                if !e.is_transient() {
                    tracing::warn!(error = %e, "heartbeat off: the role cannot write one (GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO <role>, or --heartbeat-interval 0)");
                    return;
                }
                tracing::debug!(error = %e, "heartbeat");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.heartbeat_interval) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Every 10 s until shutdown: the slot's state as metrics.
pub async fn monitor_slot(settings: SourceSettings, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    let (params, timeout) = (&settings.params, settings.connect_timeout);
    let mut catalog: Option<Catalog> = None;
    loop {
        if let Some(c) = reconnected(&mut catalog, params, timeout).await {
            match c.slot_health(&settings.slot).await {
                Ok(Some(h)) => {
                    metrics.source.slot_active.set(i64::from(h.active));
                    for status in ["reserved", "extended", "unreserved", "lost"] {
                        metrics
                            .source
                            .slot_wal_status
                            .with_label_values(&[status])
                            .set(i64::from(h.wal_status.as_deref() == Some(status)));
                    }
                    metrics
                        .source
                        .slot_safe_wal_size
                        .set(h.safe_wal_size.unwrap_or(-1));
                    metrics
                        .source
                        .slot_retained_wal
                        .set(h.retained_bytes.unwrap_or(0));
                }
                Ok(None) => metrics.source.slot_active.set(0),
                Err(e) => tracing::debug!(error = %e, "reading the slot's state"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The catalog connection, connected again when it is missing or closed (`None` while
/// PostgreSQL is unreachable).
async fn reconnected<'a>(
    catalog: &'a mut Option<Catalog>,
    params: &ConnectParams,
    timeout: Duration,
) -> Option<&'a Catalog> {
    if catalog.as_ref().is_none_or(|c| c.is_closed()) {
        *catalog = Catalog::connect(params, timeout).await.ok();
    }
    catalog.as_ref()
}
