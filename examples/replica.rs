//! A service that keeps a replica of one row and prints it as it changes.
//!
//!   cargo run --example replica -- 'public.accounts:1'
//!
//! Environment: `WALCAST_NATS_URL` (default nats://127.0.0.1:4222),
//! `WALCAST_SUBJECT_PREFIX` (default walcast), `WALCAST_STREAM` (default WALCAST).
//! The replica is seeded from walcast's JetStream stream (the key's last envelope),
//! follows the live subject, and refetches from the stream on a gap or a skew.

use std::sync::Arc;

use walcast::client::{refetch_from_stream, NatsTransport, Replica, ReplicaOptions};

type DynError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), DynError> {
    let key = std::env::args()
        .nth(1)
        .ok_or("usage: replica <key>, e.g. replica 'public.accounts:1'")?;
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let nats_url = env("WALCAST_NATS_URL", "nats://127.0.0.1:4222");
    let prefix = env("WALCAST_SUBJECT_PREFIX", "walcast");
    let stream = env("WALCAST_STREAM", "WALCAST");

    let client = async_nats::connect(&nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let transport = NatsTransport::new(client, &prefix, 1024);

    let mut options = ReplicaOptions::new(key.clone());
    let (js2, prefix2, stream2, key2) = (js.clone(), prefix.clone(), stream.clone(), key.clone());
    options.refetch = Some(Arc::new(move || {
        let (js, prefix, stream, key) =
            (js2.clone(), prefix2.clone(), stream2.clone(), key2.clone());
        Box::pin(async move { refetch_from_stream(&js, &stream, &prefix, &key).await })
    }));
    // The row as a generic MessagePack value; a service would use its own struct.
    let replica: Replica<rmpv::Value> = Replica::start(&transport, options).await?;
    replica.when_idle().await;
    println!("{key}: {:?} {}", replica.meta(), show(replica.get()));
    let mut changes = replica.watch();
    while changes.changed().await.is_ok() {
        let value = changes.borrow_and_update().clone();
        println!("{key}: {:?} {}", replica.meta(), show(value));
    }
    Ok(())
}

fn show(v: Option<rmpv::Value>) -> String {
    match v {
        Some(v) => walcast::wire::codec::to_json(&v).to_string(),
        None => "(no row)".into(),
    }
}
