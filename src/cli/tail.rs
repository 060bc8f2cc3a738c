//! `walcast tail`: the envelopes of a subject pattern, one line (or JSON object) each.

use std::collections::HashMap;

use anyhow::Context;
use futures::StreamExt;

use crate::client::{envelopes, redact_url};
use crate::config::TailConfig;
use crate::wire::{codec, Lsn};

pub(super) async fn tail(cfg: TailConfig) -> anyhow::Result<()> {
    let client = crate::client::connect_with_auth(&cfg.nats.url, &cfg.nats.auth()).await?;
    let sub = client
        .subscribe(cfg.pattern.clone())
        .await
        .with_context(|| format!("cannot subscribe to {}", cfg.pattern))?;
    client.flush().await.context("NATS flush")?;
    eprintln!("tailing {} on {}", cfg.pattern, redact_url(&cfg.nats.url));
    let mut received = envelopes(sub);
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
            Ok(env) if cfg.json => println!("{}", env.to_json()),
            Ok(env) => println!(
                "{} {} key={} seq={} schema={} lsn={} at={} value={}",
                msg.subject,
                env.op.as_str(),
                env.key,
                env.sequence,
                env.schema_version,
                Lsn(env.lsn),
                env.commit_ts.to_rfc3339(),
                codec::to_json(&env.value)
            ),
            Err(e) => eprintln!("{}: not an envelope: {e}", msg.subject),
        }
        seen += 1;
        if cfg.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}
