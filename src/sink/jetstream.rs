//! JetStream delivery: the stream that is at once the de-duplication window, the
//! per-key state and the snapshot a consumer refetches; publishing gated on PubAcks.
//!
//! Every envelope is published with `Nats-Msg-Id = <key>:<sequence>` (a replay inside
//! the duplicate window is dropped by the server), `Walcast-Position` (the WAL position
//! of the change: how a restart recognises what was already published), and
//! `Nats-Expected-Last-Sequence`: walcast is the stream's only writer, so every
//! message can name its predecessor's stream sequence. Publishes are fully pipelined,
//! and the broker itself stores them in exactly walcast's order or refuses the rest:
//! no hole and no out-of-order write for a key, even when a connection breaks between
//! two messages. A refused tail is published again after re-reading the stream's last
//! sequence; a message stored before (its PubAck lost) is recognised by its
//! `Walcast-Position`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, Stream};
use async_nats::HeaderMap;
use std::collections::VecDeque;

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, watch};

use super::{SinkBatch, SinkError};
use crate::codec;
use crate::envelope::schema::SchemaHistory;
use crate::envelope::sequence::{KeyState, Position, SubjectFilter};
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
        vec![format!("{}.>", self.prefix)]
    }

    /// The stream of walcast's own records (schema histories), kept apart so that
    /// the envelope stream has exactly one writer: the sink.
    pub fn meta_name(&self) -> String {
        format!("{}_META", self.name)
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

    fn meta_config(&self) -> Config {
        Config {
            name: self.meta_name(),
            subjects: vec![format!("{}.>", self.meta_prefix())],
            max_messages_per_subject: 1,
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

/// Create the meta stream (schema histories) when missing.
pub async fn ensure_meta_stream(
    js: &Context,
    settings: &StreamSettings,
) -> Result<Stream, SinkError> {
    js.get_or_create_stream(settings.meta_config())
        .await
        .map_err(|e| js_err(&format!("creating stream {}", settings.meta_name()), e))
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
    meta: Stream,
    prefix: String,
    meta_prefix: String,
    /// Highest stream sequence this process wrote (from PubAcks).
    last_written: Arc<std::sync::atomic::AtomicU64>,
}

impl StateStore {
    pub fn new(js: Context, stream: Stream, meta: Stream, settings: &StreamSettings) -> Self {
        StateStore {
            js,
            stream,
            meta,
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

    /// The stream's last sequence now.
    pub async fn last_sequence(&self) -> Result<u64, SinkError> {
        let mut stream = self.stream.clone();
        Ok(stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream state", e))?
            .state
            .last_sequence)
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
        match self.meta.direct_get_last_for_subject(subject.clone()).await {
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
        self.js
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| js_err(&format!("storing {subject}"), e))?
            .await
            .map_err(|e| js_err(&format!("storing {subject}"), e))?;
        Ok(())
    }
}

/// Publishes batches through JetStream and reports confirmed transaction ends.
pub struct JetStreamSink {
    js: Context,
    store: StateStore,
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
        max_unconfirmed: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        JetStreamSink {
            js,
            store,
            max_unconfirmed,
            metrics,
        }
    }

    /// Publish one message expecting the stream's last sequence to be `expected`.
    async fn send(
        &self,
        item: &super::Publish,
        expected: u64,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, String> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", item.msg_id.as_str());
        headers.insert(POSITION_HEADER, item.position.to_header().as_str());
        headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
        let msg = PublishMessage::build()
            .payload(item.payload.clone())
            .headers(headers);
        self.js
            .send_publish(item.subject.clone(), msg)
            .await
            .map_err(|e| format!("publish: {e}"))
    }

    /// Publish the not yet acknowledged messages of `window` again, chained from the
    /// stream's current last sequence.
    async fn republish(
        &self,
        window: &VecDeque<InFlight>,
        first_id: u64,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<u64, String> {
        let mut expected = self
            .store
            .last_sequence()
            .await
            .map_err(|e| e.to_string())?;
        for (k, entry) in window.iter().enumerate() {
            for (i, item) in entry.batch.items.iter().enumerate() {
                if entry.states[i] == State::Acked {
                    continue;
                }
                let ack = self.send(item, expected).await?;
                expected += 1;
                acks.push_back(ack_future(first_id + k as u64, i, ack));
            }
        }
        Ok(expected)
    }

    /// Run until the channel closes and everything received was acknowledged.
    ///
    /// Continuous pipeline: new batches are published while earlier ones wait for
    /// their PubAcks; a batch is confirmed once all its messages (and all before it)
    /// are acknowledged. On a refusal or a timeout nothing new is published until the
    /// acknowledgements in flight are in; then the unacknowledged rest goes again.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<super::Confirmed>,
    ) -> Result<(), SinkError> {
        let mut window: VecDeque<InFlight> = VecDeque::new();
        let mut first_id: u64 = 0;
        let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut inflight_items = 0usize;
        let mut expected: Option<u64> = None;
        let mut failure: Option<String> = None;
        let mut closed = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            // Confirm what is complete at the front of the window.
            let mut done = Vec::new();
            while window
                .front()
                .is_some_and(|f| f.acked == f.batch.items.len())
            {
                let f = window.pop_front().expect("front exists");
                first_id += 1;
                self.metrics
                    .publish_seconds
                    .observe(f.started.elapsed().as_secs_f64());
                self.metrics.published.inc_by(f.batch.items.len() as u64);
                done.push(f.batch);
            }
            if !done.is_empty() {
                super::observe_commit_latency(&self.metrics, &done);
                super::report_confirmed(&confirmed, &done);
                backoff = Duration::from_millis(100);
            }
            self.metrics.inflight_envelopes.set(inflight_items as i64);
            if let Some(reason) = failure.take() {
                if !acks.is_empty() {
                    failure = Some(reason); // wait for the acknowledgements in flight
                } else {
                    self.metrics.publish_retries.inc();
                    tracing::warn!(reason = %reason, envelopes = inflight_items, "JetStream did not acknowledge everything; publishing the rest again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match self.republish(&window, first_id, &mut acks).await {
                        Ok(next) => expected = Some(next),
                        Err(e) => {
                            expected = None;
                            failure = Some(e);
                        }
                    }
                    continue;
                }
            }
            if closed && window.is_empty() {
                return Ok(());
            }
            tokio::select! {
                maybe = rx.recv(), if !closed && failure.is_none() && inflight_items < self.max_unconfirmed => {
                    let Some(batch) = maybe else {
                        closed = true;
                        continue;
                    };
                    let id = first_id + window.len() as u64;
                    let mut next = match expected {
                        Some(e) => e,
                        None => match self.store.last_sequence().await {
                            Ok(e) => e,
                            Err(e) => {
                                failure = Some(e.to_string());
                                window.push_back(InFlight::new(batch));
                                continue;
                            }
                        },
                    };
                    let mut sent = 0;
                    for (i, item) in batch.items.iter().enumerate() {
                        match self.send(item, next).await {
                            Ok(ack) => {
                                next += 1;
                                sent += 1;
                                acks.push_back(ack_future(id, i, ack));
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    let _ = sent;
                    expected = failure.is_none().then_some(next);
                    inflight_items += batch.items.len();
                    window.push_back(InFlight::new(batch));
                }
                Some((id, i, result)) = acks.next(), if !acks.is_empty() => {
                    let Some(entry) = id.checked_sub(first_id).and_then(|k| window.get_mut(k as usize)) else {
                        continue;
                    };
                    let mark = |entry: &mut InFlight, inflight_items: &mut usize| {
                        if entry.states[i] != State::Acked {
                            entry.states[i] = State::Acked;
                            entry.acked += 1;
                            *inflight_items -= 1;
                        }
                    };
                    match result {
                        Ok(ack) => {
                            self.store.wrote(ack.sequence);
                            mark(entry, &mut inflight_items);
                            if ack.duplicate {
                                // Stored by an earlier attempt: the chain after it is off.
                                expected = None;
                                failure.get_or_insert_with(|| "duplicate".into());
                            }
                        }
                        Err(e) => {
                            expected = None;
                            let item = &entry.batch.items[i];
                            if e.kind() == PublishErrorKind::WrongLastSequence {
                                // Stored already (its PubAck was lost)? Messages are
                                // stored strictly in order, so the subject holding
                                // this change or a later one means it is.
                                if let Ok(Some((state, _))) = self.store.load_key(item.subject.as_str()).await {
                                    if state.position >= item.position {
                                        mark(entry, &mut inflight_items);
                                    }
                                }
                            }
                            failure.get_or_insert(format!("{e}"));
                        }
                    }
                }
            }
        }
    }
}

/// A batch whose messages are published and not all acknowledged yet.
struct InFlight {
    batch: SinkBatch,
    states: Vec<State>,
    acked: usize,
    started: Instant,
}

impl InFlight {
    fn new(batch: SinkBatch) -> Self {
        InFlight {
            states: vec![State::Waiting; batch.items.len()],
            acked: 0,
            started: Instant::now(),
            batch,
        }
    }
}

type AckResult = Result<
    async_nats::jetstream::publish::PublishAck,
    async_nats::jetstream::context::PublishError,
>;
type AckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, usize, AckResult)> + Send>>;

/// The PubAck of message `i` of batch `id` (owns everything it needs).
fn ack_future(
    id: u64,
    i: usize,
    ack: async_nats::jetstream::context::PublishAckFuture,
) -> AckFuture {
    Box::pin(async move { (id, i, std::future::IntoFuture::into_future(ack).await) })
}
