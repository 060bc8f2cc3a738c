//! Requests a running walcast answers over NATS (one instance of a group answers:
//! queue group `walcast`; only while it holds the slot — a standby waiting for the
//! slot does not):
//!
//! - **Refetch** (`<prefix>_refetch`, only when a table is in column mode): the payload
//!   is a key; the reply is the row's current envelope, read from the table by the
//!   reader (which knows the table's published shape and schema version):
//!   `op = "snapshot"`, the sequence column's value. Or an empty message with a
//!   `Walcast-Error` header: `not-found` (no such row: the key is deleted or never
//!   existed) or a sentence saying why not (a tracked-mode table, whose answer is the
//!   stream's last message of the subject; an unknown table; a busy instance).
//! - **Re-snapshot** (`<prefix>_snapshot`, what `walcast snapshot` sends): the payload
//!   is a JSON list of `schema.table` names; the reply a JSON object
//!   `{"queued": [...], "already": [...], "unknown": [...]}` (see [`SnapshotReply`]).
//!   Or (what `walcast verify --repair` sends) `{"keys": [...]}`, keys of one table:
//!   only those keys are read again (the reply then has `"keys": <n>`; without it the
//!   whole table was queued, a snapshot being under way).

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ops::shutdown::Shutdown;
use crate::wire::key::{refetch_subject, REFETCH_ERROR_HEADER, REFETCH_NOT_FOUND};

/// Requests waiting for the reader; more are refused as busy.
const QUEUED: usize = 256;
/// How long a request may wait for the reader (a long transaction delays answers).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One request for the reader to answer.
pub(super) enum Request {
    Refetch {
        key: String,
        reply: oneshot::Sender<RefetchAnswer>,
    },
    Snapshot {
        tables: Vec<String>,
        reply: oneshot::Sender<SnapshotReply>,
    },
    /// Re-snapshot these keys (of one table) only.
    SnapshotKeys {
        keys: Vec<String>,
        reply: oneshot::Sender<SnapshotReply>,
    },
}

/// What a re-snapshot request asks for: tables (a JSON list) or keys of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SnapshotRequest {
    Tables(Vec<String>),
    Keys { keys: Vec<String> },
}

/// The answer to a re-snapshot request.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// Tables queued for a re-snapshot now.
    pub queued: Vec<String>,
    /// Tables queued or being read already.
    pub already: Vec<String>,
    /// Names that are no table of the publication.
    pub unknown: Vec<String>,
    /// Why the request could not be taken (the other lists are then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A key request: how many keys of the table in `queued` were queued. Absent: the
    /// whole table was queued (or the request named tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
}

/// The refusal of a payload that is neither form of [`SnapshotRequest`] (an older
/// walcast refuses a key request with a text starting the same way).
pub const NOT_A_SNAPSHOT_REQUEST: &str =
    "the request is not a JSON list of tables, nor {\"keys\": [...]}";

/// The subject `walcast snapshot` asks a running instance on.
pub fn snapshot_subject(prefix: &str) -> String {
    format!("{prefix}_snapshot")
}

/// What the reader answers.
#[derive(Debug)]
pub(super) enum RefetchAnswer {
    Envelope(Vec<u8>),
    NotFound,
    Refused(String),
}

/// The reader's end: requests, and the signal that this instance streams.
pub(super) struct Requests {
    rx: mpsc::Receiver<Request>,
    streaming: watch::Sender<bool>,
}

impl Requests {
    /// This instance holds the slot: start answering.
    pub(super) fn streaming(&self) {
        self.streaming.send_replace(true);
    }

    /// The next request.
    pub(super) async fn next(&mut self) -> Option<Request> {
        self.rx.recv().await
    }
}

/// The responder task and the reader's end of its queue; refetches are answered
/// when `refetch` (a table is in column mode).
pub(super) fn responder(
    client: async_nats::Client,
    prefix: &str,
    refetch: bool,
    shutdown: Shutdown,
) -> (impl std::future::Future<Output = ()>, Requests) {
    let (tx, rx) = mpsc::channel(QUEUED);
    let (streaming, streaming_rx) = watch::channel(false);
    let subjects = Subjects {
        refetch: refetch.then(|| refetch_subject(prefix)),
        snapshot: snapshot_subject(prefix),
    };
    let task = serve(client, subjects, tx, streaming_rx, shutdown);
    (task, Requests { rx, streaming })
}

struct Subjects {
    refetch: Option<String>,
    snapshot: String,
}

async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    requests: mpsc::Sender<Request>,
    mut streaming: watch::Receiver<bool>,
    mut shutdown: Shutdown,
) {
    tokio::select! {
        ready = streaming.wait_for(|s| *s) => if ready.is_err() { return },
        _ = shutdown.wait() => return,
    }
    let mut all = futures::stream::SelectAll::new();
    for subject in subjects.refetch.iter().chain([&subjects.snapshot]) {
        match client
            .queue_subscribe(subject.clone(), "walcast".to_string())
            .await
        {
            Ok(sub) => {
                tracing::info!(subject = %subject, "answering requests");
                all.push(sub);
            }
            Err(e) => tracing::warn!(subject = %subject, error = %e, "cannot answer requests"),
        }
    }
    loop {
        let msg = tokio::select! {
            msg = all.next() => match msg { Some(m) => m, None => return },
            _ = shutdown.wait() => return,
        };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let answer: futures::future::BoxFuture<'static, Reply> =
            if msg.subject.as_str() == subjects.snapshot {
                Box::pin(ask_snapshot(&requests, &msg.payload))
            } else {
                Box::pin(ask_refetch(&requests, &msg.payload))
            };
        let client = client.clone();
        tokio::spawn(async move {
            let (headers, payload) = answer.await;
            if let Err(e) = client
                .publish_with_headers(reply_to, headers, payload.into())
                .await
            {
                tracing::debug!(error = %e, "reply not sent");
            }
        });
    }
}

/// A reply: headers and payload.
type Reply = (HeaderMap, Vec<u8>);

/// Queue a refetch for the reader; the reply once it answers.
fn ask_refetch(
    requests: &mpsc::Sender<Request>,
    payload: &[u8],
) -> impl std::future::Future<Output = Reply> {
    let (reply, rx) = oneshot::channel();
    let queued = match std::str::from_utf8(payload) {
        Ok(key) => requests
            .try_send(Request::Refetch {
                key: key.to_string(),
                reply,
            })
            .map_err(|_| "busy; retry".to_string()),
        Err(_) => Err("the request is not a UTF-8 key".to_string()),
    };
    async move {
        let answer = answer_of(queued, rx, RefetchAnswer::Refused).await;
        match answer {
            RefetchAnswer::Envelope(bytes) => (HeaderMap::new(), bytes),
            RefetchAnswer::NotFound => (error_headers(REFETCH_NOT_FOUND), Vec::new()),
            RefetchAnswer::Refused(why) => (error_headers(&why), Vec::new()),
        }
    }
}

/// Queue a re-snapshot for the reader; the reply once it took it.
fn ask_snapshot(
    requests: &mpsc::Sender<Request>,
    payload: &[u8],
) -> impl std::future::Future<Output = Reply> {
    let (reply, rx) = oneshot::channel();
    let queued = match serde_json::from_slice::<SnapshotRequest>(payload) {
        Ok(SnapshotRequest::Tables(tables)) => requests
            .try_send(Request::Snapshot { tables, reply })
            .map_err(|_| "busy; retry".to_string()),
        Ok(SnapshotRequest::Keys { keys }) => requests
            .try_send(Request::SnapshotKeys { keys, reply })
            .map_err(|_| "busy; retry".to_string()),
        Err(_) => Err(NOT_A_SNAPSHOT_REQUEST.to_string()),
    };
    async move {
        let answer = answer_of(queued, rx, |why| SnapshotReply::refused(&why)).await;
        let json = serde_json::to_vec(&answer).unwrap_or_default();
        (HeaderMap::new(), json)
    }
}

/// The reader's answer to a queued request, or a refusal: not queued (`Err`), or no
/// answer within [`ANSWER_WITHIN`] (a long transaction holds the reader).
async fn answer_of<T>(
    queued: Result<(), String>,
    rx: oneshot::Receiver<T>,
    refused: impl FnOnce(String) -> T,
) -> T {
    match queued {
        Ok(()) => match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(answer)) => answer,
            _ => refused("no answer in time (a long transaction?); retry".into()),
        },
        Err(why) => refused(why),
    }
}

impl SnapshotReply {
    pub fn refused(why: &str) -> Self {
        SnapshotReply {
            error: Some(why.to_string()),
            ..Default::default()
        }
    }
}

fn error_headers(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(REFETCH_ERROR_HEADER, value);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_a_snapshot_request_parse() {
        let tables: SnapshotRequest = serde_json::from_str(r#"["public.a"]"#).unwrap();
        assert_eq!(tables, SnapshotRequest::Tables(vec!["public.a".into()]));
        let keys: SnapshotRequest = serde_json::from_str(r#"{"keys": ["public.a:1"]}"#).unwrap();
        assert_eq!(
            keys,
            SnapshotRequest::Keys {
                keys: vec!["public.a:1".into()]
            }
        );
        assert!(serde_json::from_str::<SnapshotRequest>(r#"{"tables": []}"#).is_err());
        // An older client reads a reply with a key count.
        let reply = SnapshotReply {
            queued: vec!["public.a".into()],
            keys: Some(3),
            ..Default::default()
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"queued":["public.a"],"already":[],"unknown":[],"keys":3}"#
        );
    }
}
