//! `walcast snapshot`: ask a running instance to snapshot tables again while it
//! streams, and print its answer.

use anyhow::{bail, Context};

use crate::client::redact_url;
use crate::config::SnapshotConfig;
use crate::pipeline::requests::{snapshot_subject, SnapshotReply};

pub(super) async fn snapshot(cfg: SnapshotConfig) -> anyhow::Result<()> {
    let client = crate::client::connect_with_auth(&cfg.nats.url, &cfg.nats.auth()).await?;
    let subject = snapshot_subject(&cfg.subject_prefix);
    let tables: Vec<String> = cfg.tables.iter().map(|t| qualified(t)).collect();
    let request = client.request(subject.clone(), serde_json::to_vec(&tables)?.into());
    let reply = match tokio::time::timeout(cfg.timeout, request).await {
        Ok(reply) => reply.map_err(|e| {
            anyhow::anyhow!(
                "no running walcast answers on {subject} at {} ({e}): is `walcast run --subject-prefix {}` streaming?",
                redact_url(&cfg.nats.url),
                cfg.subject_prefix
            )
        })?,
        Err(_) => bail!("no answer on {subject} within {:?}", cfg.timeout),
    };
    let answer: SnapshotReply =
        serde_json::from_slice(&reply.payload).context("the answer is not walcast's")?;
    if let Some(error) = answer.error {
        bail!("walcast refused: {error}");
    }
    for t in &answer.queued {
        println!("queued   {t}");
    }
    for t in &answer.already {
        println!("already  {t} (queued or being read)");
    }
    for t in &answer.unknown {
        println!("unknown  {t} (not a table of the publication)");
    }
    if !answer.unknown.is_empty() {
        bail!("{} table(s) unknown", answer.unknown.len());
    }
    Ok(())
}

/// `schema.table` as given, or a bare table name in the schema `public`.
fn qualified(table: &str) -> String {
    if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_table_name_is_in_public() {
        assert_eq!(super::qualified("orders"), "public.orders");
        assert_eq!(super::qualified("sales.orders"), "sales.orders");
    }
}
