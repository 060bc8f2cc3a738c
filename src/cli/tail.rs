//! `walcast tail`: the envelopes of a subject pattern, one line (or JSON object) each:
//! as they are published, or (`--stored`) what the stream holds now, the last
//! envelope of each matching subject, then exit. With the key ring, encrypted rows are
//! shown opened; without it, each is a line saying which key id it lacks.

use std::collections::HashMap;

use anyhow::Context;
use futures::StreamExt;

use crate::client::{envelopes_with, redact_url};
use crate::config::TailConfig;
use crate::state::{StateStore, STORED_PAGE};
use crate::wire::{codec, Envelope, Lsn};

pub(super) async fn tail(cfg: TailConfig) -> anyhow::Result<()> {
    let client = crate::client::connect_with_auth(&cfg.nats.url, &cfg.nats.auth()).await?;
    if cfg.stored {
        return stored(cfg, client).await;
    }
    let sub = client
        .subscribe(cfg.pattern.clone())
        .await
        .with_context(|| format!("cannot subscribe to {}", cfg.pattern))?;
    client.flush().await.context("NATS flush")?;
    eprintln!("tailing {} on {}", cfg.pattern, redact_url(&cfg.nats.url));
    let mut received = envelopes_with(
        sub,
        cfg.keyring
            .keys()
            .map_err(anyhow::Error::msg)?
            .map(std::sync::Arc::new),
    );
    let mut seen = 0u64;
    // Replays (after an outage or a restart walcast publishes unconfirmed changes
    // again, same bytes and sequence) are dropped, as a consumer does.
    let mut last_sequence: HashMap<String, u64> = HashMap::new();
    while let Some(msg) = received.next().await {
        if let Ok(env) = &msg.envelope {
            let last = last_sequence.entry(env.key.clone()).or_default();
            if env.sequence <= *last {
                tracing::debug!(key = %env.key, sequence = env.sequence, "replay dropped");
                continue;
            }
            *last = env.sequence;
        }
        match msg.envelope {
            Ok(env) => print(&msg.subject, &env, cfg.json),
            Err(e) => eprintln!("{}: not an envelope: {e}", msg.subject),
        }
        seen += 1;
        if cfg.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

/// `--stored`: the last envelope of every subject matching the pattern in walcast's
/// stream (a deleted key's is its `delete`), in subject order, read with batched
/// direct gets; then exit.
async fn stored(cfg: TailConfig, client: async_nats::Client) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    let keys = cfg
        .keyring
        .keys()
        .map_err(anyhow::Error::msg)?
        .map(std::sync::Arc::new);
    let Some(store) = StateStore::reading(js, &cfg.pattern, keys).await? else {
        anyhow::bail!(
            "no JetStream stream on {} holds {}: --stored reads walcast's stream (none with --delivery core; check --subject-prefix)",
            redact_url(&cfg.nats.url),
            cfg.pattern
        );
    };
    let subjects = store.stored_subjects(&cfg.pattern).await?;
    let limit = cfg.count.map_or(usize::MAX, |c| c as usize);
    eprintln!(
        "{} subjects of {} stored in stream {} on {}",
        subjects.len(),
        cfg.pattern,
        store.stream_name(),
        redact_url(&cfg.nats.url)
    );
    for page in subjects[..subjects.len().min(limit)].chunks(STORED_PAGE) {
        for (subject, stored) in store.stored_page(page).await? {
            print(&subject, &stored.envelope, cfg.json);
        }
    }
    Ok(())
}

/// One envelope: a JSON object, or a line for people.
fn print(subject: &str, env: &Envelope, json: bool) {
    if json {
        println!("{}", env.to_json());
        return;
    }
    println!(
        "{} {} key={} seq={} schema={} lsn={} at={} value={}",
        subject,
        env.op.as_str(),
        env.key,
        env.sequence,
        env.schema_version,
        Lsn(env.lsn),
        env.commit_ts.to_rfc3339(),
        codec::to_json(&env.value)
    );
}
