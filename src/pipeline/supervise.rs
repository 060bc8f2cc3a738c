//! Supervision: stream, and reconnect after transient failures, until shutdown or a
//! fatal error; a shutdown that a server blocks is bounded by the budget.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::reader::ChangeReader;
use super::requests::Requests;
use super::PipelineError;
use crate::ops::shutdown::Shutdown;
use crate::sink::{Confirmed, SinkBatch};

/// How long the sink may take to confirm what it holds before a reconnect.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// The channels between the reader and the sink.
pub(super) type SinkChannels<'a> = (
    &'a mpsc::Sender<SinkBatch>,
    &'a mut watch::Receiver<Confirmed>,
);

/// Supervise the reader until it stops; a reader stuck on a server after a shutdown
/// request is given up `budget` later. Unconfirmed changes are an error.
pub(super) async fn until_stopped(
    reader: &mut ChangeReader,
    shutdown: &mut Shutdown,
    channels: SinkChannels<'_>,
    requests: &mut Requests,
    budget: Duration,
) -> Result<(), PipelineError> {
    let budget_watch = shutdown.clone();
    let outcome = {
        let supervised = supervise(reader, shutdown, channels, requests);
        tokio::pin!(supervised);
        tokio::select! {
            result = &mut supervised => Some(result),
            _ = budget_spent(budget_watch, budget) => None,
        }
    };
    match outcome {
        Some(Ok(())) => reader.shutdown_outcome(),
        Some(Err(e)) => Err(e),
        None => {
            tracing::warn!("the shutdown budget ran out while waiting on PostgreSQL or NATS");
            reader.shutdown_outcome()
        }
    }
}

/// Resolves `budget` after shutdown was requested.
async fn budget_spent(mut shutdown: Shutdown, budget: Duration) {
    shutdown.wait().await;
    tokio::time::sleep(budget).await;
}

/// Stream, and reconnect after transient failures, until shutdown or a fatal error.
async fn supervise(
    reader: &mut ChangeReader,
    shutdown: &mut Shutdown,
    (tx, confirmed_rx): SinkChannels<'_>,
    requests: &mut Requests,
) -> Result<(), PipelineError> {
    let mut retries = Retries::default();
    loop {
        if shutdown.is_requested() {
            return Ok(());
        }
        let outcome = async {
            let stream = reader.open().await?;
            retries.streaming();
            requests.streaming();
            reader
                .stream(stream, shutdown, (tx, &mut *confirmed_rx), requests)
                .await
        }
        .await;
        reader.metrics().source.streaming.set(0);
        let e = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let delay = retries.after(e, reader)?;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return Ok(()),
        }
        // Before streaming again, let the sink confirm what it holds: the stream then
        // reflects everything this process handed off.
        reader
            .wait_confirmed(confirmed_rx, shutdown, DRAIN_WAIT)
            .await;
        reader.reconnect_catalog().await;
    }
}

/// The reconnect policy: a first connection that fails outright is a configuration
/// problem, reported at once; an active slot (hot standby) or a failure after
/// streaming started (or while standing by) is waited out, with a growing delay.
#[derive(Default)]
struct Retries {
    attempt: u32,
    streamed_once: bool,
    waiting_announced: bool,
}

impl Retries {
    fn streaming(&mut self) {
        self.streamed_once = true;
        self.attempt = 0;
    }

    /// The delay before the next attempt, or the error when it is not worth one.
    fn after(
        &mut self,
        e: PipelineError,
        reader: &ChangeReader,
    ) -> Result<Duration, PipelineError> {
        let retry = e.is_transient() || (self.streamed_once && e.is_server_error());
        let slot_busy = e.is_slot_busy();
        // A standby (it found the slot busy) runs already: a transient failure while
        // it waits (a NATS cluster electing a stream leader) is waited out too.
        let started = self.streamed_once || self.waiting_announced;
        if !retry || (!started && !slot_busy) {
            return Err(e);
        }
        self.attempt += 1;
        let delay = Duration::from_millis(200 * u64::from(self.attempt.min(25)));
        reader.metrics().set_ready(false, &format!("{e}"));
        if slot_busy && !self.waiting_announced {
            self.waiting_announced = true;
            tracing::info!(error = %e, "replication slot is in use by another process; waiting to take over");
        } else if slot_busy {
            tracing::debug!(error = %e, "replication slot still in use");
        } else {
            reader.metrics().source.reconnects.inc();
            tracing::warn!(error = %e, retry_in = ?delay, "replication connection lost; reconnecting");
        }
        Ok(delay)
    }
}
