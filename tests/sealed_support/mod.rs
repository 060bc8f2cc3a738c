//! Shared by tests/sealed.rs and tests/sealed_columns.rs: test key rings, markers,
//! tables, and reading envelopes, payloads and the JetStream store's files.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use walcast::client::{envelopes_with, Received};
use walcast::wire::seal::Keyring;
use walcast::wire::{Envelope, Op};

pub const K1: &str = "k1:1111111111111111111111111111111111111111111111111111111111111111";
pub const K1_WRONG: &str = "k1:2222222222222222222222222222222222222222222222222222222222222222";
pub const K2: &str = "k2:3333333333333333333333333333333333333333333333333333333333333333";
pub const SECRET_MARKER: &str = "MARKER-7f3a-SECRET";
pub const PLAIN_MARKER: &str = "MARKER-7f3a-PLAIN";

pub const TABLES: &str = "
    CREATE TABLE docs (id int PRIMARY KEY, body text);
    CREATE TABLE secrets (id int PRIMARY KEY, note text, blob text);
    CREATE TABLE plain (id int PRIMARY KEY, note text);
    CREATE PUBLICATION walcast FOR TABLE docs, secrets, plain;";

/// Everything received on `walcast.>` within `window` once `n` arrived, decoded with
/// `keys`.
pub async fn receive(
    sub: async_nats::Subscriber,
    keys: Option<Keyring>,
    n: usize,
) -> Vec<Received> {
    let mut stream = envelopes_with(sub, keys.map(Arc::new));
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(r)) => got.push(r),
            _ => panic!("only {} of {n} messages arrived", got.len()),
        }
    }
    got
}

pub fn ok(got: &[Received]) -> Vec<&Envelope> {
    got.iter()
        .map(|r| {
            r.envelope
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", r.subject))
        })
        .collect()
}

pub fn find<'a>(got: &[&'a Envelope], key: &str, op: Op) -> &'a Envelope {
    got.iter()
        .find(|e| e.key == key && e.op == op)
        .unwrap_or_else(|| panic!("no {op:?} of {key} in {got:#?}"))
}

/// The bytes of every file under `dir`, concatenated.
pub fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

pub async fn subscribe(url: &str) -> async_nats::Subscriber {
    let client = walcast::client::connect(url).await.unwrap();
    let sub = client.subscribe("walcast.>").await.unwrap();
    client.flush().await.unwrap();
    sub
}
