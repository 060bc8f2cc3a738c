//! [`Replica`]: one key's reconciled value, as `createClientReplica` of the
//! TypeScript package `@lyku/para-sync` (see the module documentation of `client`).
//!
//! Every inbound envelope passes, in order:
//! 1. the **schema-version gate**: a MAJOR different from the one the client expects is
//!    a breaking skew (status `skew`, counted, not applied, refetch); a different minor
//!    falls through;
//! 2. the **parse gate**: the row value is decoded into the caller's `T`; a failure is
//!    `skew` (counted as a parse error), triggers a refetch, never a panic;
//! 3. the **stale drop**: `sequence <= current` is ignored (counted);
//! 4. **gap detection**: `sequence > current + 1` on the live stream means envelopes
//!    were missed: counted, not applied, refetch (the refetched snapshot is applied);
//! 5. apply: value and metadata updated, status `ok`.
//!
//! A `delete` envelope applies as "no value" (`None`), as does a refetch that finds no
//! row ([`ClientError::NotFound`]). Without a refetch function a
//! needed recovery leaves the status `stale`; a failed refetch does too.
//!
//! An encrypted table's replica: the transport opens live envelopes
//! (`NatsTransport::with_keys`), the replica's refetch opens the refetched one
//! ([`ReplicaOptions::with_keys`] with [`RefetchFrom`], or a `refetch` of your own
//! calling `refetch_from_stream_with`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::stream::{refetch_from_stream_with, refetch_from_walcast_with};
use super::{ClientError, Envelope, Subscription, Transport};
use crate::wire::seal::Keyring;
use crate::wire::Op;

/// Fetches the authoritative current envelope of the key.
pub type Refetch = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Envelope, ClientError>> + Send>> + Send + Sync,
>;

/// The replica's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The last apply succeeded; the replica is current.
    Ok,
    /// Uninitialised, or a refetch failed or none is available.
    Stale,
    /// An inbound value failed the schema-version or parse gate.
    Skew,
    /// A recovery refetch is in flight.
    Refetching,
}

/// Reconcile metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMeta {
    /// Schema version of the applied value.
    pub schema_version: Option<String>,
    /// Sequence of the applied value (`None`: uninitialised).
    pub sequence: Option<u64>,
    pub status: Status,
}

/// Observability counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub applied: u64,
    pub ignored_stale: u64,
    pub gaps: u64,
    pub parse_errors: u64,
    pub refetches: u64,
    pub schema_skews: u64,
}

/// How to start a replica.
pub struct ReplicaOptions {
    pub key: String,
    /// An initial envelope (e.g. embedded by the server in a page).
    pub seed: Option<Envelope>,
    /// Recovery: fetch the current authoritative envelope.
    pub refetch: Option<Refetch>,
    /// Recovery from walcast's stream or walcast itself, when `refetch` is not set:
    /// the key's envelope, encrypted rows opened with `keyring`.
    pub refetch_from: Option<RefetchFrom>,
    /// The key ring an encrypted table's rows are opened with (`docs/encryption.md`)
    /// on refetch (`refetch_from`). Live envelopes are opened by the transport: give
    /// it the same ring (`NatsTransport::with_keys`).
    pub keyring: Option<Arc<Keyring>>,
    /// The schema version (`major.minor`) the client's `T` was written for.
    pub schema_version: Option<String>,
}

/// Where a replica refetches its key from (`ReplicaOptions::refetch_from`).
#[derive(Clone)]
pub enum RefetchFrom {
    /// The key's last envelope in walcast's JetStream stream (`refetch_from_stream`).
    Stream {
        js: async_nats::jetstream::Context,
        stream: String,
        prefix: String,
    },
    /// walcast answers from the table (column mode: `refetch_from_walcast`).
    Walcast {
        client: async_nats::Client,
        prefix: String,
        timeout: Duration,
    },
}

impl RefetchFrom {
    /// The refetch of `key`, opening encrypted rows with `keys`.
    fn refetch(self, key: String, keys: Option<Arc<Keyring>>) -> Refetch {
        let from = Arc::new(self);
        Arc::new(move || {
            let (from, key, keys) = (from.clone(), key.clone(), keys.clone());
            Box::pin(async move {
                match &*from {
                    RefetchFrom::Stream { js, stream, prefix } => {
                        refetch_from_stream_with(js, stream, prefix, &key, keys.as_deref()).await
                    }
                    RefetchFrom::Walcast {
                        client,
                        prefix,
                        timeout,
                    } => {
                        refetch_from_walcast_with(client, prefix, &key, *timeout, keys.as_deref())
                            .await
                    }
                }
            })
        })
    }
}

impl ReplicaOptions {
    pub fn new(key: impl Into<String>) -> Self {
        ReplicaOptions {
            key: key.into(),
            seed: None,
            refetch: None,
            refetch_from: None,
            keyring: None,
            schema_version: None,
        }
    }

    /// Open encrypted rows with `keys` (on refetch; see [`ReplicaOptions::keyring`]).
    pub fn with_keys(mut self, keys: Arc<Keyring>) -> Self {
        self.keyring = Some(keys);
        self
    }

    /// Refetch from `from` (unless `refetch` is set).
    pub fn refetch_from(mut self, from: RefetchFrom) -> Self {
        self.refetch_from = Some(from);
        self
    }

    /// The refetch the replica uses: `refetch`, else one built from `refetch_from`
    /// with the key ring.
    fn take_refetch(&mut self) -> Option<Refetch> {
        let from = self.refetch_from.take();
        self.refetch
            .take()
            .or_else(|| from.map(|f| f.refetch(self.key.clone(), self.keyring.clone())))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Seed,
    Live,
    Refetch,
}

struct State<T> {
    value: Option<T>,
    meta: ReplicaMeta,
    stats: ReplicaStats,
    refetching: bool,
    disposed: bool,
}

struct Inner<T> {
    key: String,
    expected_major: Option<String>,
    refetch: Option<Refetch>,
    state: Mutex<State<T>>,
    values: watch::Sender<Option<T>>,
    idle: watch::Sender<bool>,
}

/// One key's reconciled value.
pub struct Replica<T> {
    inner: Arc<Inner<T>>,
    reader: tokio::task::JoinHandle<()>,
}

/// An inbound value failed the schema-version or parse gate (status `skew`).
struct Rejected;

fn major(v: &str) -> Option<&str> {
    let (m, _) = v.split_once('.')?;
    (!m.is_empty() && m.bytes().all(|b| b.is_ascii_digit())).then_some(m)
}

impl<T> Inner<T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn ingest(self: &Arc<Self>, env: &Envelope, source: Source) {
        let mut st = self.state.lock().unwrap();
        if st.disposed {
            return;
        }
        let parsed = match self.gates(&mut st.stats, env) {
            Ok(parsed) => parsed,
            Err(Rejected) => {
                st.meta.status = Status::Skew;
                drop(st);
                if source != Source::Refetch {
                    self.start_refetch();
                }
                return;
            }
        };
        if let Some(current) = st.meta.sequence {
            if env.sequence <= current {
                st.stats.ignored_stale += 1;
                if source == Source::Refetch {
                    st.meta.status = Status::Ok;
                }
                return;
            }
            if env.sequence > current + 1 && source == Source::Live {
                st.stats.gaps += 1;
                drop(st);
                self.start_refetch();
                return;
            }
        }
        st.value = parsed.clone();
        st.meta = ReplicaMeta {
            schema_version: Some(env.schema_version.clone()),
            sequence: Some(env.sequence),
            status: if st.refetching && source != Source::Refetch {
                Status::Refetching
            } else {
                Status::Ok
            },
        };
        st.stats.applied += 1;
        drop(st);
        self.values.send_replace(parsed);
    }

    /// The schema-version gate, then the parse gate: the parsed value (`None` for a
    /// delete or a truncate), or [`Rejected`] with the failing gate's counter bumped.
    fn gates(&self, stats: &mut ReplicaStats, env: &Envelope) -> Result<Option<T>, Rejected> {
        // Schema-version gate (a malformed version lets the parse gate decide).
        if let (Some(expected), Some(got)) = (&self.expected_major, major(&env.schema_version)) {
            if expected != got {
                stats.schema_skews += 1;
                return Err(Rejected);
            }
        }
        // Parse gate.
        if env.op == Op::Delete || env.op == Op::Truncate {
            return Ok(None);
        }
        match rmpv::ext::from_value::<T>(env.value.clone()) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::debug!(key = %self.key, error = %e, "replica parse gate rejected a value");
                stats.parse_errors += 1;
                Err(Rejected)
            }
        }
    }

    /// The refetch found no row: the key is deleted (or not inserted yet).
    fn no_row(&self) {
        let mut st = self.state.lock().unwrap();
        st.value = None;
        st.meta.status = Status::Ok;
        drop(st);
        self.values.send_replace(None);
    }

    fn start_refetch(self: &Arc<Self>) {
        let mut st = self.state.lock().unwrap();
        if st.disposed || st.refetching {
            return;
        }
        let Some(refetch) = self.refetch.clone() else {
            st.meta.status = Status::Stale;
            return;
        };
        st.refetching = true;
        st.stats.refetches += 1;
        st.meta.status = Status::Refetching;
        drop(st);
        self.idle.send_replace(false);
        let inner = self.clone();
        tokio::spawn(async move {
            let result = refetch().await;
            {
                let mut st = inner.state.lock().unwrap();
                st.refetching = false;
            }
            match result {
                Ok(env) => inner.ingest(&env, Source::Refetch),
                Err(ClientError::NotFound(_)) => inner.no_row(),
                Err(e) => {
                    tracing::warn!(key = %inner.key, error = %e, "replica refetch failed");
                    inner.state.lock().unwrap().meta.status = Status::Stale;
                }
            }
            inner.idle.send_replace(true);
        });
    }
}

impl<T> Replica<T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Subscribe to the key on `transport` and start reconciling.
    pub async fn start<Tr: Transport>(
        transport: &Tr,
        options: ReplicaOptions,
    ) -> Result<Replica<T>, ClientError> {
        let sub = transport.subscribe(&options.key).await?;
        Ok(Self::from_subscription(sub, options))
    }

    /// Start reconciling from an existing subscription to the key.
    pub fn from_subscription(mut sub: Subscription, mut options: ReplicaOptions) -> Replica<T> {
        let refetch = options.take_refetch();
        let inner = Arc::new(Inner {
            expected_major: options
                .schema_version
                .as_deref()
                .and_then(major)
                .map(str::to_string),
            key: options.key,
            refetch,
            state: Mutex::new(State {
                value: None,
                meta: ReplicaMeta {
                    schema_version: None,
                    sequence: None,
                    status: Status::Stale,
                },
                stats: ReplicaStats::default(),
                refetching: false,
                disposed: false,
            }),
            values: watch::channel(None).0,
            idle: watch::channel(true).0,
        });
        match &options.seed {
            Some(seed) => inner.ingest(seed, Source::Seed),
            None => inner.start_refetch(),
        }
        let reader_inner = inner.clone();
        let reader = tokio::spawn(async move {
            while let Some(env) = sub.recv().await {
                reader_inner.ingest(&env, Source::Live);
            }
        });
        Replica { inner, reader }
    }

    /// The current value (`None`: uninitialised or deleted).
    pub fn get(&self) -> Option<T> {
        self.inner.state.lock().unwrap().value.clone()
    }

    pub fn meta(&self) -> ReplicaMeta {
        self.inner.state.lock().unwrap().meta.clone()
    }

    pub fn status(&self) -> Status {
        self.meta().status
    }

    pub fn stats(&self) -> ReplicaStats {
        self.inner.state.lock().unwrap().stats
    }

    /// A receiver that sees every applied value.
    pub fn watch(&self) -> watch::Receiver<Option<T>> {
        self.inner.values.subscribe()
    }

    /// Resolves when no recovery refetch is in flight.
    pub async fn when_idle(&self) {
        let mut idle = self.inner.idle.subscribe();
        let _ = idle.wait_for(|&i| i).await;
    }

    /// Stop listening (idempotent): unsubscribes, and nothing is applied any more.
    pub fn dispose(&self) {
        self.inner.state.lock().unwrap().disposed = true;
        self.reader.abort();
    }
}

impl<T> Drop for Replica<T> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
