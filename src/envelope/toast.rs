//! Last values of TOASTable columns per key, for tables without `REPLICA IDENTITY
//! FULL`: an UPDATE that leaves a large value unchanged does not carry it.

use std::collections::HashMap;

use crate::wire::Value;

/// Last values of TOASTable columns per key, for tables without FULL identity.
/// Bounded by a byte budget; when full, entries are evicted.
#[derive(Debug, Default)]
pub struct ToastCache {
    pub entries: HashMap<String, Vec<(usize, Value<'static>)>>,
    bytes: usize,
    pub budget: usize,
}

fn value_size(v: &Value<'_>) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Bin(b) => b.len(),
        Value::Array(a) | Value::BoundedArray { elements: a, .. } => {
            a.iter().map(value_size).sum::<usize>() + 8
        }
        Value::Json(j) => j.size(),
        Value::Raw(v) => raw_size(v),
        _ => 16,
    }
}

/// An estimate of a MessagePack value's memory.
fn raw_size(v: &rmpv::Value) -> usize {
    match v {
        rmpv::Value::String(s) => s.as_bytes().len() + 24,
        rmpv::Value::Binary(b) => b.len() + 24,
        rmpv::Value::Array(a) => a.iter().map(raw_size).sum::<usize>() + 24,
        rmpv::Value::Map(m) => {
            m.iter()
                .map(|(k, v)| raw_size(k) + raw_size(v))
                .sum::<usize>()
                + 48
        }
        rmpv::Value::Ext(_, d) => d.len() + 24,
        _ => 16,
    }
}

impl ToastCache {
    pub fn new(budget: usize) -> Self {
        ToastCache {
            budget,
            ..Default::default()
        }
    }

    /// What an entry costs in memory, allocator and table overheads included (the
    /// budget bounds the process's memory, not only the values' bytes).
    fn entry_size(key: &str, vals: &[(usize, Value<'static>)]) -> usize {
        const ENTRY: usize = 128; // table slot, key and list allocations
        const PER_VALUE: usize = 80; // list element, value allocation
        key.len()
            + ENTRY
            + vals
                .iter()
                .map(|(_, v)| value_size(v) + PER_VALUE)
                .sum::<usize>()
    }

    pub fn insert(&mut self, key: String, vals: Vec<(usize, Value<'static>)>) {
        self.remove(&key);
        let size = Self::entry_size(&key, &vals);
        if size > self.budget {
            return;
        }
        while self.bytes + size > self.budget {
            let Some(victim) = self.entries.keys().next().cloned() else {
                break;
            };
            self.remove(&victim);
        }
        self.bytes += size;
        self.entries.insert(key, vals);
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(v) = self.entries.remove(key) {
            self.bytes -= Self::entry_size(key, &v);
        }
    }

    pub fn get(&self, key: &str, column: usize) -> Option<&Value<'static>> {
        self.entries
            .get(key)?
            .iter()
            .find(|(i, _)| *i == column)
            .map(|(_, v)| v)
    }

    /// Forget every key that starts with `prefix` (a truncated table).
    pub fn remove_prefix(&mut self, prefix: &str) {
        let stale: Vec<String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in stale {
            self.remove(&k);
        }
    }

    /// Store the values of the columns that arrived with a value (not unchanged
    /// TOAST), keeping the cached values of the others.
    pub fn update(&mut self, key: &str, vals: Vec<(usize, Value<'static>)>) {
        if vals.is_empty() {
            return;
        }
        match self.entries.get_mut(key) {
            Some(existing) => {
                let before = Self::entry_size(key, existing);
                for (i, v) in vals {
                    match existing.iter_mut().find(|(j, _)| *j == i) {
                        Some(slot) => slot.1 = v,
                        None => existing.push((i, v)),
                    }
                }
                let after = Self::entry_size(key, existing);
                self.bytes = (self.bytes + after).saturating_sub(before);
                if self.bytes > self.budget {
                    let vals = self.entries.remove(key).unwrap_or_default();
                    self.bytes -= after.min(self.bytes);
                    self.insert(key.to_string(), vals);
                }
            }
            None => self.insert(key.to_string(), vals),
        }
    }
}
