//! The client side: what subscribing services link.
//!
//! Its contracts follow the TypeScript package `@lyku/para-sync` (0.0.1-pre.2), the
//! design walcast is the PostgreSQL-authoritative server side of: its `SyncEnvelope`,
//! `SyncTransport`, `InProcessTransport`, `NatsTransport` and `createClientReplica`.
//!
//! - [`Transport`]: `publish(key, envelope)` and `subscribe(key) -> Subscription`, the
//!   contract of para-sync's `SyncTransport`: publishing to a key without subscribers is
//!   a no-op; a subscriber only receives what is published after it subscribed; the
//!   transport does not retain, validate or de-duplicate; unsubscribing is idempotent
//!   and dropping the [`Subscription`] unsubscribes. Table-level subscriptions receive
//!   every key of a table (and its `truncate` envelopes).
//! - [`InProcessTransport`]: the same contract in one process, no NATS.
//! - [`NatsTransport`]: walcast's subjects; N local subscribers of a key share one
//!   NATS subscription (local fan-out), torn down with the last one (subscriber GC).
//! - [`Replica`]: one key's reconciled value (parse gate, stale drop, gap detection,
//!   schema-version gate, refetch), like para-sync's `createClientReplica`.
//! - Catch-up ([`changes_since`], [`follow_since`], [`latest_position`]): a consumer
//!   that was offline reads what walcast's stream holds since its last position, page
//!   by page, then follows live with no gap and no duplicate at the hand-over.
//!
//! **Slow subscribers.** Every local subscriber has its own bounded queue
//! (`queue_capacity`). Delivery never waits for a subscriber: when its queue is full
//! the new envelope is dropped *for that subscriber only* and counted
//! ([`Subscription::dropped`]). Envelopes carry the full row and a dense sequence, so
//! a [`Replica`] sees the next one as a gap and refetches: a slow subscriber recovers
//! by itself and never delays the others.

mod catchup;
mod in_process;
mod nats;
mod replica;
mod stream;
mod url;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

pub use crate::wire::Envelope;
pub use catchup::{changes_since, follow_since, latest_position, ChangeFilter, Page};
pub use in_process::InProcessTransport;
pub use nats::NatsTransport;
pub use replica::{
    Refetch, RefetchFrom, Replica, ReplicaMeta, ReplicaOptions, ReplicaStats, Status,
};
pub use stream::{
    envelopes, envelopes_with, last_envelope, last_envelope_with, refetch_from_stream,
    refetch_from_stream_with, refetch_from_walcast, refetch_from_walcast_with, Received,
    StoredEnvelope,
};
pub use url::{connect, connect_with_auth, redact_url, NatsAuth, NatsUrl};

/// Default capacity of a local subscriber's queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("invalid key {0:?}: {1}")]
    Key(String, crate::wire::key::KeyError),
    #[error("refetch failed: {0}")]
    Refetch(String),
    /// The key has no row (deleted, or never inserted) and no envelope to refetch.
    #[error("{0:?} has no row")]
    NotFound(String),
    #[error("invalid NATS URL: {0}")]
    Url(String),
    /// A catch-up from a position whose successors have left the stream's window.
    #[error("position {position} is older than the stream's retention (its oldest message is {oldest}): changes after it are gone; refetch (snapshot) the keys instead, then follow from latest_position()")]
    PositionTooOld { position: u64, oldest: u64 },
    #[error("invalid catch-up filter: {0}")]
    Filter(String),
    #[error("undecodable envelope: {0}")]
    Decode(String),
}

/// What a transport carries: one key's change envelopes.
pub trait Transport: Send + Sync + 'static {
    /// Deliver `envelope` to every current subscriber of `key` (a no-op without any).
    fn publish(
        &self,
        key: &str,
        envelope: &Envelope,
    ) -> impl std::future::Future<Output = Result<(), ClientError>> + Send;

    /// Receive what is published to `key` from now on.
    fn subscribe(
        &self,
        key: &str,
    ) -> impl std::future::Future<Output = Result<Subscription, ClientError>> + Send;

    /// Receive what is published to any key of `schema.table` from now on.
    fn subscribe_table(
        &self,
        schema: &str,
        table: &str,
    ) -> impl std::future::Future<Output = Result<Subscription, ClientError>> + Send;

    /// Keys (and tables) with at least one live local subscriber.
    fn key_count(&self) -> usize;

    /// Call `handler` for every envelope of `key` on a task of its own; the returned
    /// handle unsubscribes when dropped or on [`Unsubscribe::unsubscribe`].
    fn subscribe_fn<F>(
        &self,
        key: &str,
        mut handler: F,
    ) -> impl std::future::Future<Output = Result<Unsubscribe, ClientError>> + Send
    where
        F: FnMut(Arc<Envelope>) + Send + 'static,
    {
        let sub = self.subscribe(key);
        async move {
            let Subscription { mut rx, guard, .. } = sub.await?;
            tokio::spawn(async move {
                while let Some(env) = rx.recv().await {
                    handler(env);
                }
            });
            Ok(guard)
        }
    }
}

/// Removes a subscription when dropped or asked to; idempotent.
pub struct Unsubscribe {
    action: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Unsubscribe {
    pub(crate) fn new(action: impl FnOnce() + Send + 'static) -> Self {
        Unsubscribe {
            action: Mutex::new(Some(Box::new(action))),
        }
    }

    /// Remove the subscription now (later calls do nothing).
    pub fn unsubscribe(&self) {
        let action = self.action.lock().unwrap().take();
        if let Some(action) = action {
            action();
        }
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

/// One local subscriber: its queue of envelopes and its unsubscribe handle.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Envelope>>,
    guard: Unsubscribe,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next envelope; `None` once unsubscribed.
    pub async fn recv(&mut self) -> Option<Arc<Envelope>> {
        self.rx.recv().await
    }

    /// Stop receiving (idempotent; dropping the subscription does the same).
    pub fn unsubscribe(&mut self) {
        self.guard.unsubscribe();
        self.rx.close();
    }

    /// Envelopes dropped because this subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Stream for Subscription {
    type Item = Arc<Envelope>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The sending side of one local subscriber.
#[derive(Clone)]
pub(crate) struct LocalSubscriber {
    pub id: u64,
    tx: mpsc::Sender<Arc<Envelope>>,
    dropped: Arc<AtomicU64>,
}

impl LocalSubscriber {
    pub fn new(
        id: u64,
        capacity: usize,
    ) -> (
        LocalSubscriber,
        mpsc::Receiver<Arc<Envelope>>,
        Arc<AtomicU64>,
    ) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        (
            LocalSubscriber {
                id,
                tx,
                dropped: dropped.clone(),
            },
            rx,
            dropped,
        )
    }

    /// Never waits: a full queue drops the envelope for this subscriber and counts it.
    pub fn deliver(&self, env: &Arc<Envelope>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(env.clone()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(crate) fn subscription(
    rx: mpsc::Receiver<Arc<Envelope>>,
    dropped: Arc<AtomicU64>,
    unsubscribe: impl FnOnce() + Send + 'static,
) -> Subscription {
    Subscription {
        rx,
        guard: Unsubscribe::new(unsubscribe),
        dropped,
    }
}
