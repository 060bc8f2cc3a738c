//! Core NATS delivery: publishes are pipelined; every batch waiting in the channel is
//! written out, then one confirmation round-trip (a message to walcast's own inbox,
//! which the server delivers only after everything this connection published before
//! it) confirms them all. It confirms only what went out on the connection it used:
//! the connection (the server's id and the id the server gave this client) is read
//! before the first write and after the round trip, and a change means writes may
//! have been lost with the old one. Batches not confirmed (a timeout, or a reconnect
//! in between) are published again: at-least-once, and a replay carries the same
//! bytes, so consumers drop it as stale.

use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::{confirm, Confirmed, Retry, SinkBatch, SinkError, SinkSettings};
use crate::ops::metrics::Metrics;

/// Publishes batches and reports confirmed transaction ends.
pub struct CoreSink {
    client: Client,
    sync_subject: Subject,
    sync_sub: async_nats::Subscriber,
    round: u64,
    settings: SinkSettings,
    metrics: Arc<Metrics>,
}

impl CoreSink {
    pub async fn new(
        client: Client,
        settings: &SinkSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let sync_subject = Subject::from(format!("{}.walcast-sync", client.new_inbox()));
        let sync_sub = client.subscribe(sync_subject.clone()).await?;
        Ok(CoreSink {
            client,
            sync_subject,
            sync_sub,
            round: 0,
            settings: settings.clone(),
            metrics,
        })
    }

    /// One confirmation round-trip.
    async fn round_trip(&mut self) -> Result<(), &'static str> {
        self.round += 1;
        let token = Bytes::from(self.round.to_be_bytes().to_vec());
        self.client
            .publish(self.sync_subject.clone(), token.clone())
            .await
            .map_err(|_| "publish failed")?;
        let deadline = tokio::time::Instant::now() + self.settings.confirm_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.sync_sub.next()).await {
                Ok(Some(msg)) if msg.payload == token => return Ok(()),
                Ok(Some(_)) => continue, // an older round's answer
                Ok(None) => return Err("confirmation subscription closed"),
                Err(_) => return Err("no confirmation in time"),
            }
        }
    }

    /// Move what waits in the channel to `pending`, up to the in-flight bound; `true`
    /// when the channel is closed.
    fn take_waiting(
        &self,
        rx: &mut mpsc::Receiver<SinkBatch>,
        pending: &mut Vec<SinkBatch>,
        pending_items: &mut usize,
    ) -> bool {
        while *pending_items < self.settings.max_unconfirmed {
            match rx.try_recv() {
                Ok(b) => {
                    *pending_items += b.items.len();
                    pending.push(b);
                }
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Write every envelope of `pending` to the connection; `false` when a write failed.
    async fn write_all(&self, pending: &[SinkBatch]) -> bool {
        for item in pending.iter().flat_map(|b| &b.items) {
            let written = self
                .client
                .publish(item.subject.clone(), item.payload.clone())
                .await;
            if written.is_err() {
                return false;
            }
        }
        true
    }

    /// Write `pending` (`items` envelopes) out and confirm it with one round-trip on
    /// the same connection.
    async fn publish_and_confirm(
        &mut self,
        pending: &[SinkBatch],
        items: usize,
    ) -> Result<(), &'static str> {
        let before = ConnectionId::of(&self.client);
        let outcome = if !self.write_all(pending).await {
            Err("publish failed")
        } else if items == 0 {
            Ok(()) // only empty transactions: nothing to confirm
        } else {
            self.round_trip().await
        };
        confirmation(outcome, &before, &ConnectionId::of(&self.client))
    }

    /// Run until the channel closes and everything received was confirmed.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        let mut pending: Vec<SinkBatch> = Vec::new();
        let mut pending_items = 0usize;
        let mut closed = false;
        let mut retry = Retry::new(self.metrics.clone());
        loop {
            if pending.is_empty() {
                if closed {
                    return Ok(());
                }
                match rx.recv().await {
                    Some(b) => {
                        pending_items += b.items.len();
                        pending.push(b);
                    }
                    None => return Ok(()),
                }
            }
            closed |= self.take_waiting(&mut rx, &mut pending, &mut pending_items);
            self.metrics
                .sink
                .inflight_envelopes
                .set(pending_items as i64);
            let started = Instant::now();
            match self.publish_and_confirm(&pending, pending_items).await {
                Ok(()) => {
                    let elapsed = started.elapsed().as_secs_f64();
                    self.metrics.sink.publish_seconds.observe(elapsed);
                    confirm(&self.metrics, &confirmed, &pending);
                    pending.clear();
                    pending_items = 0;
                    retry.succeeded();
                }
                Err(reason) => {
                    retry
                        .failed(
                            "NATS did not confirm; publishing again",
                            reason,
                            pending_items,
                        )
                        .await;
                }
            }
        }
    }
}

/// The connection a client publishes on: the server's id (new at every server start)
/// and the id the server gave this client (never reused by that server). The client
/// records both from the server's INFO when it connects, before it writes anything
/// on the new connection; no event callback is involved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnectionId {
    server: String,
    client: u64,
}

impl ConnectionId {
    fn of(client: &Client) -> Self {
        Self::from_info(&client.server_info())
    }

    fn from_info(info: &async_nats::ServerInfo) -> Self {
        ConnectionId {
            server: info.server_id.clone(),
            client: info.client_id,
        }
    }
}

/// A round trip's outcome confirms the writes before it only if they all went out on
/// the connection it used (`before` the first write, `after` the round trip).
fn confirmation(
    outcome: Result<(), &'static str>,
    before: &ConnectionId,
    after: &ConnectionId,
) -> Result<(), &'static str> {
    match outcome {
        Ok(()) if before != after => Err("the connection changed before confirmation"),
        outcome => outcome,
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
