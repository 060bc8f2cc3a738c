//! walcast's durable state, kept in JetStream: each key's last envelope (its sequence
//! and `Walcast-Position`), the subjects the stream holds, and the tables' schema
//! histories. The pipeline loads from it what the envelope stage asks for; the
//! JetStream sink records what it wrote.

mod batch;
mod stored;
pub mod stream;
pub mod window;

use std::sync::Arc;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};

use crate::client::StoredEnvelope;
use crate::envelope::schema::SchemaHistory;
use crate::envelope::sequence::{KeyState, SubjectFilter};
use crate::wire::key;
pub use stored::STORED_PAGE;
use stream::js_err;
pub use stream::{
    ensure_meta_stream, ensure_stream, inspect_stream, takes_batches, StreamSettings,
};

/// Why reading or writing the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("stream {stream} went back from sequence {written} (acknowledged to this process) to {now}: the NATS server lost acknowledged envelopes (a host crash before its store synced, or the stream was recreated). walcast stops so that it starts again from the replication slot: with --flush-delay at least the servers' sync_interval, the slot still holds what was lost and it is published again")]
    RolledBack {
        stream: String,
        written: u64,
        now: u64,
    },
    #[error("stream {stream} has no window ({from}) and may hold the last envelopes of tracked tables ({tables}), which are their keys' sequence state: walcast will not change its window to {to} (--stream-max-age, --stream-max-bytes), which would let those envelopes go and a key start again at sequence 1. Put those tables in column mode (--column-sequence, sql/sequence_column.sql), or use a new stream (--stream) for the window")]
    WindowDropsKeyState {
        stream: String,
        from: String,
        to: String,
        tables: String,
    },
    #[error("stream {stream} exists with a configuration walcast cannot use: {problems} (fix or delete the stream, or choose another --stream)")]
    StreamConflict { stream: String, problems: String },
    #[error("stream {stream} holds a message on {subject} that was not published by walcast ({why}): another client publishes under walcast's subject prefix. Remove the message (nats stream rmm {stream} {sequence}) or purge the subject, and give walcast a prefix and stream of its own (--subject-prefix)")]
    Foreign {
        stream: String,
        subject: String,
        sequence: u64,
        why: String,
    },
}

/// A listing of subjects under way (see [`StateStore::table_subjects`]).
pub struct SubjectPages(std::pin::Pin<Box<async_nats::jetstream::stream::InfoWithSubjects>>);

/// Up to `limit` more subjects of a listing (fewer: the listing is done).
pub async fn next_subjects(
    pages: &mut SubjectPages,
    limit: usize,
) -> Result<Vec<String>, StateError> {
    use futures::TryStreamExt;
    let mut subjects = Vec::with_capacity(limit.min(4096));
    while subjects.len() < limit {
        match pages
            .0
            .try_next()
            .await
            .map_err(|e| js_err("listing the stream's subjects", e))?
        {
            Some((subject, _)) => subjects.push(subject),
            None => break,
        }
    }
    Ok(subjects)
}

/// Whether a server of this version keeps per-message TTLs (`Nats-TTL`, 2.11+: the
/// release that brought batched gets too).
pub fn server_has_message_ttl(version: &str) -> bool {
    batch::server_has_multi_last(version)
}

/// The meta stream's subject of the record that walcast streamed from `slot`.
fn slot_subject(meta_prefix: &str, slot: &str) -> String {
    format!("{meta_prefix}.slot.{}", key::name_token(slot))
}

/// Whether the meta stream records that walcast streamed from `slot` (as
/// [`StateStore::slot_known`], without creating anything: `walcast check`).
pub async fn slot_recorded(
    js: &Context,
    settings: &StreamSettings,
    slot: &str,
) -> Result<bool, StateError> {
    let meta = match js.get_stream(settings.meta_name()).await {
        Ok(meta) => meta,
        Err(e) if stream::not_found(&e) => return Ok(false),
        Err(e) => return Err(js_err("looking up the meta stream", e)),
    };
    let subject = slot_subject(&settings.meta_prefix(), slot);
    match meta.direct_get_last_for_subject(&subject).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
        Err(e) => Err(js_err(&format!("loading {subject}"), e)),
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
    /// The server answers batched `multi_last` gets (2.11+).
    multi_last: bool,
    /// Opens the envelopes of encrypted tables.
    keys: Option<Arc<crate::wire::seal::Keyring>>,
}

impl StateStore {
    pub fn new(js: Context, stream: Stream, meta: Stream, settings: &StreamSettings) -> Self {
        StateStore {
            multi_last: batch::server_has_multi_last(&js.client().server_info().version),
            js,
            stream,
            meta,
            prefix: settings.prefix.clone(),
            meta_prefix: settings.meta_prefix(),
            last_written: Arc::default(),
            keys: settings.keys.clone(),
        }
    }

    /// The subject of direct gets from the envelope stream.
    fn direct_get_subject(&self) -> String {
        format!(
            "$JS.API.DIRECT.GET.{}",
            self.stream.cached_info().config.name
        )
    }

    /// Record a stream sequence this process wrote.
    pub fn wrote(&self, seq: u64) {
        self.last_written
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// The stream's last sequence, and whether anybody but this process wrote to it
    /// since this process last did (then in-memory key states may be stale).
    pub async fn written_by_others(&self) -> Result<bool, StateError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream state", e))?;
        let ours = self.last_written.load(std::sync::atomic::Ordering::SeqCst);
        Ok(info.state.last_sequence != ours)
    }

    /// The stream's last sequence now; [`StateError::RolledBack`] when it is below one
    /// this process was acknowledged: the server lost acknowledged envelopes, and what
    /// this process holds in memory (key sequences, the sink's chain) is ahead of it.
    pub async fn last_sequence(&self) -> Result<u64, StateError> {
        let mut stream = self.stream.clone();
        let last = stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream state", e))?
            .state
            .last_sequence;
        let written = self.last_written.load(std::sync::atomic::Ordering::SeqCst);
        if last < written {
            return Err(StateError::RolledBack {
                stream: stream.cached_info().config.name.clone(),
                written,
                now: last,
            });
        }
        Ok(last)
    }

    /// A filter of every envelope subject the stream holds now.
    pub async fn subject_filter(&self) -> Result<SubjectFilter, StateError> {
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

    /// The subjects of `schema.table`'s keys the stream holds (deleted keys too:
    /// their last message is the `delete`), read page by page with [`next_subjects`].
    pub async fn table_subjects(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<SubjectPages, StateError> {
        let filter = key::subject_for_table(&self.prefix, schema, table);
        let pages = self
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| js_err("listing the stream's subjects", e))?;
        Ok(SubjectPages(Box::pin(pages)))
    }

    /// The last message of a subject, decoded (`None`: the subject has none).
    pub async fn last_envelope(&self, subject: &str) -> Result<Option<StoredEnvelope>, StateError> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(msg) => {
                let sequence = msg.sequence;
                StoredEnvelope::read_with(msg, self.keys.as_deref())
                    .map(Some)
                    .map_err(|e| self.foreign(subject, sequence, format!("not an envelope: {e}")))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(js_err(&format!("loading the last message of {subject}"), e)),
        }
    }

    /// The key state a subject's last envelope gives (its sequence and position).
    pub fn key_state_of(
        &self,
        subject: &str,
        stored: &StoredEnvelope,
    ) -> Result<KeyState, StateError> {
        let position = stored.position.ok_or_else(|| {
            self.foreign(
                subject,
                stored.stream_sequence,
                "no Walcast-Position header".into(),
            )
        })?;
        Ok(KeyState {
            sequence: stored.envelope.sequence,
            position,
            deleted: stored.envelope.op == crate::wire::Op::Delete,
        })
    }

    fn foreign(&self, subject: &str, sequence: u64, why: String) -> StateError {
        StateError::Foreign {
            stream: self.stream.cached_info().config.name.clone(),
            subject: subject.to_string(),
            sequence,
            why,
        }
    }

    /// The last message of a key's subject: its state and stream sequence.
    pub async fn load_key(&self, subject: &str) -> Result<Option<(KeyState, u64)>, StateError> {
        let Some(stored) = self.last_envelope(subject).await? else {
            return Ok(None);
        };
        let state = self.key_state_of(subject, &stored)?;
        Ok(Some((state, stored.stream_sequence)))
    }

    fn schema_subject(&self, schema: &str, table: &str) -> String {
        format!(
            "{}.schema.{}.{}",
            self.meta_prefix,
            key::name_token(schema),
            key::name_token(table)
        )
    }

    pub async fn load_schema(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<SchemaHistory, StateError> {
        self.load_record(&self.schema_subject(schema, table)).await
    }

    pub async fn store_schema(
        &self,
        schema: &str,
        table: &str,
        history: &SchemaHistory,
    ) -> Result<(), StateError> {
        self.store_record(&self.schema_subject(schema, table), history)
            .await
    }

    fn slot_subject(&self, slot: &str) -> String {
        slot_subject(&self.meta_prefix, slot)
    }

    /// Whether walcast recorded streaming from `slot` before.
    pub async fn slot_known(&self, slot: &str) -> Result<bool, StateError> {
        let record: Option<serde_json::Value> = self.load_record(&self.slot_subject(slot)).await?;
        Ok(record.is_some())
    }

    /// Record that walcast created and streams from `slot` (at `consistent_point`).
    pub async fn record_slot(&self, slot: &str, consistent_point: &str) -> Result<(), StateError> {
        let record = serde_json::json!({ "slot": slot, "created_at": consistent_point });
        self.store_record(&self.slot_subject(slot), &Some(record))
            .await
    }

    fn snapshot_subject(&self, slot: &str) -> String {
        format!("{}.snapshot.{}", self.meta_prefix, key::name_token(slot))
    }

    /// The snapshot progress of `slot` (default: none yet).
    pub async fn load_snapshot<T: serde::de::DeserializeOwned + Default>(
        &self,
        slot: &str,
    ) -> Result<T, StateError> {
        self.load_record(&self.snapshot_subject(slot)).await
    }

    pub async fn store_snapshot<T: serde::Serialize>(
        &self,
        slot: &str,
        progress: &T,
    ) -> Result<(), StateError> {
        self.store_record(&self.snapshot_subject(slot), progress)
            .await
    }

    /// A JSON record of the meta stream (the default when there is none).
    async fn load_record<T: serde::de::DeserializeOwned + Default>(
        &self,
        subject: &str,
    ) -> Result<T, StateError> {
        match self.meta.direct_get_last_for_subject(subject).await {
            Ok(msg) => serde_json::from_slice(&msg.payload)
                .map_err(|e| js_err(&format!("record on {subject}"), e)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(js_err(&format!("loading {subject}"), e)),
        }
    }

    /// Store a JSON record in the meta stream (its last message per subject counts).
    async fn store_record<T: serde::Serialize>(
        &self,
        subject: &str,
        record: &T,
    ) -> Result<(), StateError> {
        let payload = serde_json::to_vec(record).expect("serializing a record");
        self.js
            .publish(subject.to_string(), payload.into())
            .await
            .map_err(|e| js_err(&format!("storing {subject}"), e))?
            .await
            .map_err(|e| js_err(&format!("storing {subject}"), e))?;
        Ok(())
    }
}
