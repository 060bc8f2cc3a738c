//! `--repair`: ask the running instance (`<prefix>_snapshot`) to re-snapshot what
//! differs: the keys, in requests of at most [`KEYS_PER_REQUEST`]; the whole table when
//! not all keys were kept, when a snapshot is under way there, or when the instance
//! predates key requests.

use std::time::Duration;

use anyhow::{bail, Context};

use super::report::TableReport;
use crate::pipeline::requests::{snapshot_subject, SnapshotReply, SnapshotRequest};

/// Keys per request, and their bytes at most (far below NATS's `max_payload`).
const KEYS_PER_REQUEST: usize = 1000;
const BYTES_PER_REQUEST: usize = 256 * 1024;
/// How long one request may wait for the instance to take it (it answers "busy;
/// retry" while the previous key chunk waits for the stream to pass its watermark).
const TAKEN_WITHIN: Duration = Duration::from_secs(60);
/// One round trip.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// How the instance took a request.
enum Taken {
    Keys(usize),
    /// The whole table (a snapshot was under way there).
    Table,
    /// The instance does not know key requests.
    KeysUnknown,
}

/// Ask for the re-snapshot of what `report` found differing; what was asked for.
pub(super) async fn repair(
    client: &async_nats::Client,
    prefix: &str,
    report: &TableReport,
) -> anyhow::Result<String> {
    let subject = snapshot_subject(prefix);
    let Some(keys) = report.repair_keys() else {
        ask_table(client, &subject, &report.table).await?;
        return Ok("table queued for re-snapshot (more keys than verify keeps)".into());
    };
    let mut queued = 0;
    for piece in pieces(keys) {
        let request = SnapshotRequest::Keys { keys: piece };
        match ask(client, &subject, &request, &report.table).await? {
            Taken::Keys(n) => queued += n,
            Taken::Table => {
                return Ok("table queued for re-snapshot (a snapshot was under way)".into())
            }
            Taken::KeysUnknown => {
                ask_table(client, &subject, &report.table).await?;
                return Ok(
                    "table queued for re-snapshot (the running walcast takes no key requests)"
                        .into(),
                );
            }
        }
    }
    Ok(format!("{queued} keys queued for re-snapshot"))
}

/// The whole table.
async fn ask_table(client: &async_nats::Client, subject: &str, table: &str) -> anyhow::Result<()> {
    let request = SnapshotRequest::Tables(vec![table.to_string()]);
    match ask(client, subject, &request, table).await? {
        Taken::KeysUnknown => bail!("walcast refused the re-snapshot of {table}"),
        Taken::Keys(_) | Taken::Table => Ok(()),
    }
}

/// Send one request until the instance takes it (or [`TAKEN_WITHIN`] passed).
async fn ask(
    client: &async_nats::Client,
    subject: &str,
    request: &SnapshotRequest,
    table: &str,
) -> anyhow::Result<Taken> {
    let payload = serde_json::to_vec(request)?;
    let deadline = tokio::time::Instant::now() + TAKEN_WITHIN;
    loop {
        let answer = client.request(subject.to_string(), payload.clone().into());
        let reply = tokio::time::timeout(ANSWER_WITHIN, answer)
            .await
            .map_err(|_| anyhow::anyhow!("no answer on {subject} within {ANSWER_WITHIN:?}"))?
            .with_context(|| format!("no running walcast answers on {subject}"))?;
        let answer: SnapshotReply =
            serde_json::from_slice(&reply.payload).context("the answer is not walcast's")?;
        if let Some(taken) = taken(answer, table)? {
            return Ok(taken);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("walcast was busy with another re-snapshot for {TAKEN_WITHIN:?}; run verify --repair again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What an answer says; `None`: busy, ask again.
fn taken(answer: SnapshotReply, table: &str) -> anyhow::Result<Option<Taken>> {
    if let Some(error) = answer.error {
        if error.starts_with("the request is not a JSON list of tables") {
            return Ok(Some(Taken::KeysUnknown));
        }
        if error.contains("retry") {
            return Ok(None);
        }
        bail!("walcast refused the re-snapshot of {table}: {error}");
    }
    if !answer.unknown.is_empty() {
        bail!("the running walcast does not publish {table}");
    }
    Ok(Some(match answer.keys {
        Some(n) => Taken::Keys(n),
        None => Taken::Table,
    }))
}

/// Keys in requests of at most [`KEYS_PER_REQUEST`] keys and [`BYTES_PER_REQUEST`].
fn pieces(keys: Vec<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for key in keys {
        let full = out
            .last()
            .is_none_or(|p| p.len() >= KEYS_PER_REQUEST || bytes + key.len() > BYTES_PER_REQUEST);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += key.len() + 3;
        out.last_mut().expect("a piece").push(key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_in_bounded_pieces() {
        let keys: Vec<String> = (0..2500).map(|i| format!("public.t:{i}")).collect();
        let p = pieces(keys);
        assert_eq!(
            p.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        let long: Vec<String> = (0..4)
            .map(|i| format!("public.t:{i}{}", "x".repeat(100_000)))
            .collect();
        assert_eq!(pieces(long).len(), 2);
        assert!(pieces(Vec::new()).is_empty());
    }

    #[test]
    fn answers() {
        let busy = SnapshotReply::refused("busy: a re-snapshot is finishing; retry");
        assert!(taken(busy, "public.t").unwrap().is_none());
        let old = SnapshotReply::refused("the request is not a JSON list of tables: invalid type");
        assert!(matches!(
            taken(old, "public.t").unwrap(),
            Some(Taken::KeysUnknown)
        ));
        let keys = SnapshotReply {
            queued: vec!["public.t".into()],
            keys: Some(4),
            ..Default::default()
        };
        assert!(matches!(
            taken(keys, "public.t").unwrap(),
            Some(Taken::Keys(4))
        ));
        let unknown = SnapshotReply {
            unknown: vec!["public.t".into()],
            ..Default::default()
        };
        assert!(taken(unknown, "public.t").is_err());
    }
}
