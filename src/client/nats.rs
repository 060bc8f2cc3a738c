//! [`NatsTransport`]: walcast's subjects with local fan-out and subscriber GC.
//!
//! All local subscribers of one key share ONE NATS subscription; a task reads it,
//! decodes each envelope once and hands an `Arc` to every local queue. When the last
//! local subscriber of a key leaves (explicitly or by drop), the task ends and the NATS
//! subscription is removed from the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use super::stream::envelopes_with;
use super::{subscription, ClientError, Envelope, LocalSubscriber, Subscription, Transport};
use crate::wire::key::{subject_for_key, subject_for_table};
use crate::wire::seal::Keyring;

struct Shared {
    /// subject → its local subscribers and the task reading its NATS subscription.
    subjects: Mutex<HashMap<String, SubjectEntry>>,
    /// Messages on walcast subjects that were not envelopes.
    undecodable: AtomicU64,
}

struct SubjectEntry {
    subscribers: Arc<Mutex<Vec<LocalSubscriber>>>,
    reader: tokio::task::JoinHandle<()>,
}

/// The transport over NATS, on walcast's subject layout.
#[derive(Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    prefix: String,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU64>,
    queue_capacity: usize,
    /// Opens the rows of encrypted tables.
    keys: Option<Arc<Keyring>>,
}

impl NatsTransport {
    /// `prefix`: walcast's subject prefix (`walcast` by default).
    pub fn new(client: async_nats::Client, prefix: &str, queue_capacity: usize) -> Self {
        NatsTransport {
            client,
            prefix: prefix.to_string(),
            shared: Arc::new(Shared {
                subjects: Mutex::new(HashMap::new()),
                undecodable: AtomicU64::new(0),
            }),
            next_id: Arc::default(),
            queue_capacity,
            keys: None,
        }
    }

    /// Open the envelopes of encrypted tables with `keys` (docs/encryption.md);
    /// without them such envelopes count as undecodable, with the reason logged.
    pub fn with_keys(mut self, keys: Arc<Keyring>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Messages received that did not decode as envelopes (skipped).
    pub fn undecodable(&self) -> u64 {
        self.shared.undecodable.load(Ordering::Relaxed)
    }

    fn subject(&self, key: &str) -> Result<String, ClientError> {
        subject_for_key(&self.prefix, key).map_err(|e| ClientError::Key(key.to_string(), e))
    }

    async fn add(&self, subject: String) -> Result<Subscription, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (local, rx, dropped) = LocalSubscriber::new(id, self.queue_capacity);
        let joined = {
            let subjects = self.shared.subjects.lock().unwrap();
            match subjects.get(&subject) {
                Some(entry) => {
                    entry.subscribers.lock().unwrap().push(local.clone());
                    true
                }
                None => false,
            }
        };
        if !joined {
            let nats_sub = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| ClientError::Nats(e.to_string()))?;
            let mut subjects = self.shared.subjects.lock().unwrap();
            match subjects.get(&subject) {
                // Another local subscriber created it meanwhile: join it; ours is
                // dropped, which unsubscribes it from the server.
                Some(entry) => entry.subscribers.lock().unwrap().push(local),
                None => {
                    let subscribers = Arc::new(Mutex::new(vec![local]));
                    let reader = tokio::spawn(read_subject(
                        envelopes_with(nats_sub, self.keys.clone()),
                        subscribers.clone(),
                        self.shared.clone(),
                    ));
                    subjects.insert(
                        subject.clone(),
                        SubjectEntry {
                            subscribers,
                            reader,
                        },
                    );
                }
            }
        }
        let shared = self.shared.clone();
        Ok(subscription(rx, dropped, move || {
            let mut subjects = shared.subjects.lock().unwrap();
            let now_empty = match subjects.get(&subject) {
                Some(entry) => {
                    let mut subs = entry.subscribers.lock().unwrap();
                    subs.retain(|s| s.id != id);
                    subs.is_empty()
                }
                None => false,
            };
            if now_empty {
                if let Some(entry) = subjects.remove(&subject) {
                    // Ending the reader drops the NATS subscriber: the server forgets it.
                    entry.reader.abort();
                }
            }
        }))
    }
}

async fn read_subject(
    mut received: impl futures::Stream<Item = super::Received> + Unpin,
    subscribers: Arc<Mutex<Vec<LocalSubscriber>>>,
    shared: Arc<Shared>,
) {
    while let Some(msg) = received.next().await {
        match msg.envelope {
            Ok(env) => {
                let env = Arc::new(env);
                for sub in subscribers.lock().unwrap().iter() {
                    sub.deliver(&env);
                }
            }
            Err(e) => {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %msg.subject, error = %e, "not a walcast envelope");
            }
        }
    }
}

impl Transport for NatsTransport {
    async fn publish(&self, key: &str, envelope: &Envelope) -> Result<(), ClientError> {
        let subject = self.subject(key)?;
        self.client
            .publish(subject, envelope.to_bytes().into())
            .await
            .map_err(|e| ClientError::Nats(e.to_string()))
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, ClientError> {
        let subject = self.subject(key)?;
        self.add(subject).await
    }

    async fn subscribe_table(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Subscription, ClientError> {
        self.add(subject_for_table(&self.prefix, schema, table))
            .await
    }

    fn key_count(&self) -> usize {
        self.shared.subjects.lock().unwrap().len()
    }
}
