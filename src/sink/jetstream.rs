//! JetStream delivery: the stream that is at once the de-duplication window, the
//! per-key state and the snapshot a consumer refetches; publishing gated on PubAcks.
//!
//! Every envelope is published with `Nats-Msg-Id = <key>:<sequence>` (a replay inside
//! the duplicate window is dropped by the server), `Walcast-Position` (the WAL position
//! of the change: how a restart recognises what was already published), and
//! `Nats-Expected-Last-Subject-Sequence` where walcast knows it, so the broker itself
//! refuses an out-of-order write for a key. To always know it, a key is never in
//! flight twice: publishes go out in rounds, each round at most one message per
//! subject, every round pipelined; the next message of a subject goes once the
//! previous one's PubAck gave its stream sequence.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, Stream};
use async_nats::HeaderMap;
use futures::future::join_all;
use lru::LruCache;
use tokio::sync::{mpsc, watch};

use super::{SinkBatch, SinkError};
use crate::codec;
use crate::envelope::schema::SchemaHistory;
use crate::envelope::sequence::{KeyState, Position, SubjectFilter};
use crate::lsn::Lsn;
use crate::metrics::Metrics;

/// Header carrying a change's WAL position.
pub const POSITION_HEADER: &str = "Walcast-Position";

/// How the stream is set up.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    /// Envelope subjects: `<prefix>.>`.
    pub prefix: String,
    /// Messages kept per subject (1: the last state of every key).
    pub history: i64,
    pub duplicate_window: Duration,
}

impl StreamSettings {
    /// Subjects of walcast's own records (schema histories): `<prefix>_meta.>`.
    pub fn meta_prefix(&self) -> String {
        format!("{}_meta", self.prefix)
    }

    fn subjects(&self) -> Vec<String> {
        vec![
            format!("{}.>", self.prefix),
            format!("{}.>", self.meta_prefix()),
        ]
    }

    fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: self.subjects(),
            max_messages_per_subject: self.history,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }
}

fn js_err(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::JetStream(format!("{what}: {e}"))
}

/// What makes an existing stream's configuration unusable for walcast.
pub fn stream_problems(c: &Config, settings: &StreamSettings) -> Vec<String> {
    let mut problems = Vec::new();
    for s in settings.subjects() {
        if !c.subjects.contains(&s) {
            problems.push(format!("subjects {:?} lack {s:?}", c.subjects));
        }
    }
    if c.max_messages_per_subject != settings.history {
        problems.push(format!(
            "max_msgs_per_subject is {}, walcast is configured for {}",
            c.max_messages_per_subject, settings.history
        ));
    }
    if !c.allow_direct {
        problems.push("allow_direct is off".into());
    }
    if c.max_age != Duration::ZERO || c.max_messages > 0 || c.max_bytes > 0 {
        problems.push("it has age/count/size limits that would drop key state".into());
    }
    problems
}

/// The stream's problems, or `None` when it does not exist yet.
pub async fn inspect_stream(
    js: &Context,
    settings: &StreamSettings,
) -> Result<Option<Vec<String>>, SinkError> {
    match js.get_stream(&settings.name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| js_err("reading the stream config", e))?;
            Ok(Some(stream_problems(&info.config, settings)))
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(js_err("looking up the stream", e)),
    }
}

/// Create the stream, or check that the existing one fits.
pub async fn ensure_stream(js: &Context, settings: &StreamSettings) -> Result<Stream, SinkError> {
    match inspect_stream(js, settings).await? {
        Some(problems) if !problems.is_empty() => Err(SinkError::StreamConflict {
            stream: settings.name.clone(),
            problems: problems.join("; "),
        }),
        Some(_) => js
            .get_stream(&settings.name)
            .await
            .map_err(|e| js_err("opening the stream", e)),
        None => js
            .create_stream(settings.config())
            .await
            .map_err(|e| js_err(&format!("creating stream {}", settings.name), e)),
    }
}

/// Reads and writes walcast's state in the stream.
#[derive(Clone)]
pub struct StateStore {
    js: Context,
    stream: Stream,
    prefix: String,
    meta_prefix: String,
    /// Highest stream sequence this process wrote (from PubAcks).
    last_written: Arc<std::sync::atomic::AtomicU64>,
}

impl StateStore {
    pub fn new(js: Context, stream: Stream, settings: &StreamSettings) -> Self {
        StateStore {
            js,
            stream,
            prefix: settings.prefix.clone(),
            meta_prefix: settings.meta_prefix(),
            last_written: Arc::default(),
        }
    }

    /// Record a stream sequence this process wrote.
    pub fn wrote(&self, seq: u64) {
        self.last_written
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// The stream's last sequence, and whether anybody but this process wrote to it
    /// since this process last did (then in-memory key states may be stale).
    pub async fn written_by_others(&self) -> Result<bool, SinkError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream state", e))?;
        let ours = self.last_written.load(std::sync::atomic::Ordering::SeqCst);
        Ok(info.state.last_sequence != ours)
    }

    /// A filter of every envelope subject the stream holds now.
    pub async fn subject_filter(&self) -> Result<SubjectFilter, SinkError> {
        use futures::TryStreamExt;
        let mut stream = self.stream.clone();
        let count = stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream state", e))?
            .state
            .subjects_count as usize;
        let mut filter = SubjectFilter::with_capacity((count * 2).max(1 << 20));
        if count > 0 {
            let mut subjects = stream
                .info_with_subjects(format!("{}.>", self.prefix))
                .await
                .map_err(|e| js_err("listing the stream's subjects", e))?;
            while let Some((subject, _)) = subjects
                .try_next()
                .await
                .map_err(|e| js_err("listing the stream's subjects", e))?
            {
                filter.insert(&subject);
            }
        }
        Ok(filter)
    }

    /// The last message of a key's subject: its state and stream sequence.
    pub async fn load_key(&self, subject: &str) -> Result<Option<(KeyState, u64)>, SinkError> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(msg) => {
                let env = codec::decode(&msg.payload)
                    .map_err(|e| js_err(&format!("last message of {subject}"), e))?;
                let position = msg
                    .headers
                    .get(POSITION_HEADER)
                    .and_then(|v| Position::from_header(v.as_str()))
                    .ok_or_else(|| {
                        js_err(
                            &format!("last message of {subject}"),
                            "no Walcast-Position header (was it published by walcast?)",
                        )
                    })?;
                Ok(Some((
                    KeyState {
                        sequence: env.sequence,
                        position,
                    },
                    msg.sequence,
                )))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(js_err(&format!("loading the state of {subject}"), e)),
        }
    }

    fn schema_subject(&self, schema: &str, table: &str) -> String {
        format!(
            "{}.schema.{}.{}",
            self.meta_prefix,
            crate::envelope::key::name_token(schema),
            crate::envelope::key::name_token(table)
        )
    }

    pub async fn load_schema(&self, schema: &str, table: &str) -> Result<SchemaHistory, SinkError> {
        let subject = self.schema_subject(schema, table);
        match self
            .stream
            .direct_get_last_for_subject(subject.clone())
            .await
        {
            Ok(msg) => serde_json::from_slice(&msg.payload)
                .map_err(|e| js_err(&format!("schema history on {subject}"), e)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(SchemaHistory::default()),
            Err(e) => Err(js_err(&format!("loading {subject}"), e)),
        }
    }

    pub async fn store_schema(
        &self,
        schema: &str,
        table: &str,
        history: &SchemaHistory,
    ) -> Result<(), SinkError> {
        let subject = self.schema_subject(schema, table);
        let payload = serde_json::to_vec(history).expect("serializing a schema history");
        let ack = self
            .js
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| js_err(&format!("storing {subject}"), e))?
            .await
            .map_err(|e| js_err(&format!("storing {subject}"), e))?;
        self.wrote(ack.sequence);
        Ok(())
    }
}

/// Publishes batches through JetStream and reports confirmed transaction ends.
pub struct JetStreamSink {
    js: Context,
    store: StateStore,
    /// Stream sequence of each subject's last message, from PubAcks.
    last_seq: LruCache<String, u64>,
    max_unconfirmed: usize,
    metrics: Arc<Metrics>,
}

/// What became of one message in an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Acked,
}

impl JetStreamSink {
    pub fn new(
        js: Context,
        store: StateStore,
        key_cache: usize,
        max_unconfirmed: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        JetStreamSink {
            js,
            store,
            last_seq: LruCache::new(NonZeroUsize::new(key_cache.max(1)).unwrap()),
            max_unconfirmed,
            metrics,
        }
    }

    /// Publish every waiting message of `batches` in rounds; `Err` with a reason when
    /// an attempt must be retried.
    async fn attempt(
        &mut self,
        batches: &[SinkBatch],
        states: &mut [Vec<State>],
    ) -> Result<(), String> {
        loop {
            let mut round: Vec<(usize, usize)> = Vec::new();
            let mut in_round: HashSet<&str> = HashSet::new();
            let mut blocked: HashSet<&str> = HashSet::new();
            for (b, batch) in batches.iter().enumerate() {
                for (i, item) in batch.items.iter().enumerate() {
                    let subject = item.subject.as_str();
                    if states[b][i] == State::Acked {
                        continue;
                    }
                    if in_round.contains(subject) || blocked.contains(subject) {
                        blocked.insert(subject);
                        continue;
                    }
                    in_round.insert(subject);
                    round.push((b, i));
                }
            }
            if round.is_empty() {
                return Ok(());
            }
            let mut futures = Vec::with_capacity(round.len());
            for &(b, i) in &round {
                let item = &batches[b].items[i];
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", item.msg_id.as_str());
                headers.insert(POSITION_HEADER, item.position.to_header().as_str());
                let expected = self
                    .last_seq
                    .get(item.subject.as_str())
                    .copied()
                    .or(item.expected_last_subject_seq);
                if let Some(seq) = expected {
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        seq.to_string().as_str(),
                    );
                }
                let msg = PublishMessage::build()
                    .payload(item.payload.clone())
                    .headers(headers);
                match self.js.send_publish(item.subject.clone(), msg).await {
                    Ok(ack) => futures.push(std::future::IntoFuture::into_future(ack)),
                    Err(e) => return Err(format!("publish: {e}")),
                }
            }
            let acks = join_all(futures).await;
            let mut failure = None;
            for (&(b, i), ack) in round.iter().zip(acks) {
                let item = &batches[b].items[i];
                match ack {
                    Ok(ack) => {
                        self.store.wrote(ack.sequence);
                        self.last_seq.put(item.subject.to_string(), ack.sequence);
                        states[b][i] = State::Acked;
                    }
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        // Our idea of the subject's last message is stale (e.g. a
                        // timed-out PubAck whose message was stored): look.
                        match self.store.load_key(item.subject.as_str()).await {
                            Ok(Some((state, seq))) => {
                                self.last_seq.put(item.subject.to_string(), seq);
                                if state.position == item.position {
                                    states[b][i] = State::Acked;
                                } else if state.position > item.position {
                                    return Err(format!(
                                        "subject {} holds a later change ({:?}) than the one being published ({:?}): another writer?",
                                        item.subject, state.position, item.position
                                    ));
                                } else {
                                    failure.get_or_insert(format!("{e}"));
                                }
                            }
                            Ok(None) => {
                                self.last_seq.put(item.subject.to_string(), 0);
                                failure.get_or_insert(format!("{e}"));
                            }
                            Err(le) => {
                                failure.get_or_insert(format!("{e}; {le}"));
                            }
                        }
                    }
                    Err(e) => {
                        failure.get_or_insert(format!("{e}"));
                    }
                }
            }
            if let Some(f) = failure {
                return Err(f);
            }
        }
    }

    /// Run until the channel closes and everything received was acknowledged.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Lsn>,
    ) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(100);
        let mut pending: Vec<SinkBatch> = Vec::new();
        let mut states: Vec<Vec<State>> = Vec::new();
        let mut closed = false;
        loop {
            if pending.is_empty() {
                if closed {
                    return Ok(());
                }
                match rx.recv().await {
                    Some(b) => pending.push(b),
                    None => return Ok(()),
                }
            }
            let mut items: usize = pending.iter().map(|b| b.items.len()).sum();
            while items < self.max_unconfirmed {
                match rx.try_recv() {
                    Ok(b) => {
                        items += b.items.len();
                        pending.push(b);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            states.resize_with(pending.len(), Vec::new);
            for (s, b) in states.iter_mut().zip(&pending) {
                s.resize(b.items.len(), State::Waiting);
            }
            self.metrics.inflight_envelopes.set(items as i64);
            let started = Instant::now();
            match self.attempt(&pending, &mut states).await {
                Ok(()) => {
                    self.metrics
                        .publish_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.published.inc_by(items as u64);
                    super::observe_commit_latency(&self.metrics, &pending);
                    if let Some(end) = pending.iter().rev().find_map(|b| b.commit_end) {
                        let _ = confirmed.send(end);
                    }
                    pending.clear();
                    states.clear();
                    backoff = Duration::from_millis(100);
                }
                Err(reason) => {
                    if reason.contains("another writer") {
                        return Err(SinkError::JetStream(reason));
                    }
                    self.metrics.publish_retries.inc();
                    tracing::warn!(reason = %reason, envelopes = items, "JetStream did not acknowledge everything; publishing the rest again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
