//! The durability tests' writer: a deterministic multi-key workload of inserts,
//! updates and deletes, and what it committed.
#![allow(dead_code)] // shared by tests/durability.rs and tests/cluster.rs

use std::collections::HashMap;
use std::time::Duration;

use super::common::poll_until;

/// A deterministic random source.
pub struct Rng(pub u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a workload committed: changes in all, and per key (the row's id).
#[derive(Default)]
pub struct Written {
    pub total: usize,
    pub per_key: HashMap<u64, usize>,
}

impl Written {
    pub fn and(mut self, other: Written) -> Written {
        self.total += other.total;
        self.per_key.extend(other.per_key);
        self
    }
}

/// Write `changes` row changes over the keys in `keys` in transactions of 1 to 20 changes:
/// inserts, updates (v + 1) and deletes. Returns what it wrote (each change one row).
pub async fn workload(
    url: String,
    changes: usize,
    keys: std::ops::Range<u64>,
    seed: u64,
    pause: Duration,
) -> Written {
    workload_on("kv", url, changes, keys, seed, pause).await
}

/// [`workload`] on `table` (columns as `kv`'s: `id bigint`, `v bigint`, `pad text`).
pub async fn workload_on(
    table: &str,
    url: String,
    changes: usize,
    keys: std::ops::Range<u64>,
    seed: u64,
    pause: Duration,
) -> Written {
    // Connect, riding out a server busy with the other tests for a few seconds.
    let (db, conn) = poll_until(
        "the workload's connection",
        Duration::from_secs(10),
        || async { tokio_postgres::connect(&url, tokio_postgres::NoTls).await },
    )
    .await;
    tokio::spawn(conn);
    let mut rng = Rng(seed);
    let mut exists: HashMap<u64, bool> = HashMap::new();
    let mut written = Written::default();
    while written.total < changes {
        let n = 1 + rng.below(20) as usize;
        let mut sql = String::from("BEGIN;");
        let mut touched = Vec::with_capacity(n);
        for _ in 0..n {
            let k = keys.start + rng.below(keys.end - keys.start);
            touched.push(k);
            let e = exists.entry(k).or_insert(false);
            if !*e {
                sql.push_str(&format!("INSERT INTO {table} VALUES ({k}, 0, 'p{k}');"));
                *e = true;
            } else if rng.below(10) < 8 {
                sql.push_str(&format!("UPDATE {table} SET v = v + 1 WHERE id = {k};"));
            } else {
                sql.push_str(&format!("DELETE FROM {table} WHERE id = {k};"));
                *e = false;
            }
        }
        sql.push_str("COMMIT;");
        if let Err(e) = db.batch_execute(&sql).await {
            // The server went away (a crash test): stop; what committed is what the
            // final check compares with (this transaction may have committed too).
            println!("workload stopped after {} changes: {e}", written.total);
            return written;
        }
        written.total += n;
        for k in touched {
            *written.per_key.entry(k).or_default() += 1;
        }
        if !pause.is_zero() {
            // The rate is the point.
            tokio::time::sleep(pause).await;
        }
    }
    written
}
