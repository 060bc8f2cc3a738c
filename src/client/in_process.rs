//! [`InProcessTransport`]: the transport contract in one process, without NATS (for
//! monoliths, tests, and walcast embedded as a library).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{subscription, ClientError, Envelope, LocalSubscriber, Subscription, Transport};
use crate::wire::key::{parse_key, table_key_prefix};

#[derive(Default)]
struct Registry {
    /// key (or `schema.table:` for table subscriptions) → subscribers. A key is
    /// present only while it has a live subscriber.
    keys: HashMap<String, Vec<LocalSubscriber>>,
}

/// A keyed in-memory pub/sub with the same contract as [`super::NatsTransport`].
#[derive(Clone)]
pub struct InProcessTransport {
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
    queue_capacity: usize,
}

impl Default for InProcessTransport {
    fn default() -> Self {
        Self::new(super::DEFAULT_QUEUE_CAPACITY)
    }
}

/// The registry entry of a table subscription (never a valid key: no values part).
fn table_entry(schema: &str, table: &str) -> String {
    format!("{}*", table_key_prefix(schema, table))
}

impl InProcessTransport {
    pub fn new(queue_capacity: usize) -> Self {
        InProcessTransport {
            registry: Arc::default(),
            next_id: Arc::default(),
            queue_capacity,
        }
    }

    fn add(&self, entry: String) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sub, rx, dropped) = LocalSubscriber::new(id, self.queue_capacity);
        self.registry
            .lock()
            .unwrap()
            .keys
            .entry(entry.clone())
            .or_default()
            .push(sub);
        let registry = self.registry.clone();
        subscription(rx, dropped, move || {
            let mut reg = registry.lock().unwrap();
            if let Some(subs) = reg.keys.get_mut(&entry) {
                subs.retain(|s| s.id != id);
                if subs.is_empty() {
                    reg.keys.remove(&entry);
                }
            }
        })
    }
}

impl Transport for InProcessTransport {
    async fn publish(&self, key: &str, envelope: &Envelope) -> Result<(), ClientError> {
        let table = parse_key(key)
            .ok()
            .map(|k| table_entry(&k.schema, &k.table));
        let reg = self.registry.lock().unwrap();
        let targets = reg
            .keys
            .get(key)
            .into_iter()
            .chain(table.as_ref().and_then(|t| reg.keys.get(t)))
            .flatten();
        let mut shared = None;
        for sub in targets {
            let env = shared.get_or_insert_with(|| Arc::new(envelope.clone()));
            sub.deliver(env);
        }
        Ok(())
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, ClientError> {
        Ok(self.add(key.to_string()))
    }

    async fn subscribe_table(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Subscription, ClientError> {
        Ok(self.add(table_entry(schema, table)))
    }

    fn key_count(&self) -> usize {
        self.registry.lock().unwrap().keys.len()
    }
}
