//! Refetch answers for column-mode tables: walcast listens on `<prefix>_refetch`
//! (queue group `walcast`, so one instance answers) and replies to a request whose
//! payload is a key with the row's current envelope, read from the table by the
//! reader (which knows the table's published shape and schema version).
//!
//! A reply is the MessagePack envelope (`op = "snapshot"`, the sequence column's
//! value), or an empty message with a `Walcast-Error` header: `not-found` (no such
//! row: the key is deleted or never existed) or a sentence saying why not (a
//! tracked-mode table, whose answer is the stream's last message of the subject; an
//! unknown table; a busy instance). Listening starts once this instance streams
//! (a standby waiting for the slot does not answer).

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::ops::shutdown::Shutdown;
use crate::wire::key::{refetch_subject, REFETCH_ERROR_HEADER, REFETCH_NOT_FOUND};

/// Requests waiting for the reader; more are refused as busy.
const QUEUED: usize = 256;
/// How long a request may wait for the reader (a long transaction delays answers).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One refetch for the reader to answer.
pub(super) struct RefetchRequest {
    pub key: String,
    pub reply: oneshot::Sender<RefetchAnswer>,
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
    rx: Option<mpsc::Receiver<RefetchRequest>>,
    streaming: watch::Sender<bool>,
}

impl Requests {
    /// No refetch subject (no column-mode table): never yields.
    pub(super) fn none() -> Self {
        Requests {
            rx: None,
            streaming: watch::channel(false).0,
        }
    }

    /// This instance holds the slot: start answering.
    pub(super) fn streaming(&self) {
        self.streaming.send_replace(true);
    }

    /// The next request (pending forever without a responder).
    pub(super) async fn next(&mut self) -> Option<RefetchRequest> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// The responder task and the reader's end of its queue.
pub(super) fn responder(
    client: async_nats::Client,
    prefix: &str,
    shutdown: Shutdown,
) -> (impl std::future::Future<Output = ()>, Requests) {
    let (tx, rx) = mpsc::channel(QUEUED);
    let (streaming, streaming_rx) = watch::channel(false);
    let subject = refetch_subject(prefix);
    let task = serve(client, subject, tx, streaming_rx, shutdown);
    (
        task,
        Requests {
            rx: Some(rx),
            streaming,
        },
    )
}

async fn serve(
    client: async_nats::Client,
    subject: String,
    requests: mpsc::Sender<RefetchRequest>,
    mut streaming: watch::Receiver<bool>,
    mut shutdown: Shutdown,
) {
    tokio::select! {
        ready = streaming.wait_for(|s| *s) => if ready.is_err() { return },
        _ = shutdown.wait() => return,
    }
    let mut sub = match client
        .queue_subscribe(subject.clone(), "walcast".to_string())
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(subject = %subject, error = %e, "cannot answer refetch requests");
            return;
        }
    };
    tracing::info!(subject = %subject, "answering refetch requests");
    loop {
        let msg = tokio::select! {
            msg = sub.next() => match msg { Some(m) => m, None => return },
            _ = shutdown.wait() => return,
        };
        let Some(reply_to) = msg.reply else { continue };
        let answer = match std::str::from_utf8(&msg.payload) {
            Ok(key) => ask(&requests, key.to_string()),
            Err(_) => Err(RefetchAnswer::Refused(
                "the request is not a UTF-8 key".into(),
            )),
        };
        let client = client.clone();
        tokio::spawn(async move {
            let answer = match answer {
                Ok(rx) => match tokio::time::timeout(ANSWER_WITHIN, rx).await {
                    Ok(Ok(answer)) => answer,
                    _ => RefetchAnswer::Refused("no answer in time; retry".into()),
                },
                Err(refused) => refused,
            };
            if let Err(e) = send_answer(&client, reply_to, answer).await {
                tracing::debug!(error = %e, "refetch reply not sent");
            }
        });
    }
}

/// Queue a request for the reader.
fn ask(
    requests: &mpsc::Sender<RefetchRequest>,
    key: String,
) -> Result<oneshot::Receiver<RefetchAnswer>, RefetchAnswer> {
    let (reply, rx) = oneshot::channel();
    requests
        .try_send(RefetchRequest { key, reply })
        .map_err(|_| RefetchAnswer::Refused("busy; retry".into()))?;
    Ok(rx)
}

async fn send_answer(
    client: &async_nats::Client,
    reply_to: async_nats::Subject,
    answer: RefetchAnswer,
) -> Result<(), async_nats::PublishError> {
    let (headers, payload) = match answer {
        RefetchAnswer::Envelope(bytes) => (HeaderMap::new(), bytes),
        RefetchAnswer::NotFound => (error_headers(REFETCH_NOT_FOUND), Vec::new()),
        RefetchAnswer::Refused(why) => (error_headers(&why), Vec::new()),
    };
    client
        .publish_with_headers(reply_to, headers, payload.into())
        .await
}

fn error_headers(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(REFETCH_ERROR_HEADER, value);
    headers
}
