//! The envelope stage: decoded row changes become per-key envelopes.
//!
//! It keeps the table shapes (from Relation messages) with their schema versions,
//! extracts each row's canonical key from the primary key, assigns the per-key
//! sequence ([`sequence`]), fills unchanged-TOAST columns ([`toast`]), and hands each
//! envelope to the codec exactly once. See `docs/envelope.md` for the contract.
//!
//! State it does not hold in memory (a key's last sequence, an unchanged TOAST value)
//! is asked of the caller through [`Need`]: the caller loads it and retries, so this
//! stage stays synchronous and free of I/O.

mod change;
pub mod schema;
pub mod sequence;
pub mod toast;
mod toast_fill;

use std::collections::HashMap;

use bytes::Bytes;

use crate::decode::value::ValueError;
use crate::wire::codec::{self, EnvelopeRef, Op, RowRef};
use crate::wire::key;
use crate::wire::Lsn;
use crate::wire::{Timestamp, Value};
use schema::{Column, SchemaHistory, SchemaVersion, TableShape};
use sequence::{KeyState, KeyStateCache, Lookup, Position, SequenceMode, SubjectFilter};
use toast::ToastCache;

/// Why a change could not become an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("table {table} has no primary key and no replica identity index: walcast cannot key its rows, its changes are not published (add a primary key, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX <unique index>, or ALTER PUBLICATION ... DROP TABLE {table})")]
    NoKey { table: String },
    #[error("table {table}: tuple has {got} columns, the Relation message announced {expected}")]
    ColumnCount {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("table {table}: key column {column} is null or missing in a {op} change")]
    NullKey {
        table: String,
        column: String,
        op: &'static str,
    },
    #[error("table {table}, column {column}: {source}")]
    Value {
        table: String,
        column: String,
        #[source]
        source: ValueError,
    },
    #[error("table {table}, column {column}: binary tuple values are not enabled")]
    Binary { table: String, column: String },
    #[error("table {table}: sequence column {column:?} does not exist")]
    NoSequenceColumn { table: String, column: String },
    #[error("table {table}: sequence column {column} is not a non-negative integer in a {op} change ({detail}); a delete needs REPLICA IDENTITY FULL to carry it (see sql/sequence_column.sql)")]
    BadSequenceColumn {
        table: String,
        column: String,
        op: &'static str,
        detail: String,
    },
    #[error("change outside a transaction (no Begin)")]
    NoTransaction,
    #[error("the envelope of {key} is {bytes} bytes, above the NATS server's max_payload of {max}: raise max_payload in nats-server.conf, exclude the large column (--exclude-column), or publish a marker instead (--oversize marker)")]
    TooLarge {
        key: String,
        bytes: usize,
        max: usize,
    },
    #[error("decoding a row value again failed: {0}")]
    Decode(String),
    #[error("encoding the envelope failed: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Columns whose unchanged-TOAST value is needed but not known: the caller reads
/// them from `source` and passes them to [`EnvelopeBuilder::provide_toast`] or
/// [`EnvelopeBuilder::provide_toast_from_envelope`], then retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToastNeeded {
    pub relation_id: u32,
    pub schema: String,
    pub table: String,
    pub key: String,
    /// Key column names and their text values, to find the row.
    pub key_columns: Vec<(String, String)>,
    /// Names of the columns whose values are needed.
    pub columns: Vec<String>,
    pub source: ToastSource,
}

/// Where an unchanged TOAST value can be read exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToastSource {
    /// Tracked mode: the key's last envelope in the stream holds the row as it was
    /// just before this change (an earlier change is a replay and never reaches here).
    pub stream_subject: Option<String>,
    /// Else (or when the stream has no envelope of the key: a row older than walcast),
    /// the table's current row, valid only while it is still the version this change
    /// wrote; otherwise the value is published as unavailable.
    pub version: RowVersion,
}

/// How to tell that the table's current row is the version a change wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowVersion {
    /// Column mode: the sequence column holds this change's value.
    SequenceColumn { column: String, expected: String },
    /// Otherwise: the row's `xmin` is the change's transaction.
    Xmin { xid: u32 },
}

impl RowVersion {
    /// The SQL expression to read beside the columns, and the text it must equal.
    pub fn check(&self) -> (String, String) {
        match self {
            RowVersion::SequenceColumn { column, expected } => (
                format!("\"{}\"::text", column.replace('"', "\"\"")),
                expected.clone(),
            ),
            RowVersion::Xmin { xid } => ("xmin::text".into(), xid.to_string()),
        }
    }
}

/// Per-table settings: sequence column, published columns, published ops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSettings {
    /// Column mode: the sequence is this column.
    pub sequence_column: Option<String>,
    /// Publish only these columns (all when `None`).
    pub include_columns: Option<Vec<String>>,
    /// Never publish these columns.
    pub exclude_columns: Vec<String>,
    /// Publish only these ops (all when `None`); filtered changes get no sequence.
    pub ops: Option<Vec<Op>>,
}

/// State the builder needs before it can build a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Toast(ToastNeeded),
    /// The key's last published state: load the last message of `subject` and pass
    /// it to [`EnvelopeBuilder::provide_key_state`].
    KeyState {
        key: String,
        subject: String,
    },
}

/// A table as the envelope stage knows it.
#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub table: String,
    pub shape: TableShape,
    pub version: SchemaVersion,
    version_text: String,
    /// `<prefix>.<schema token>.<table token>.`
    subject_prefix: String,
    /// `<schema>.<table>:`
    key_prefix: String,
    /// `REPLICA IDENTITY FULL`: updates carry the whole old row.
    pub full_identity: bool,
    /// Indexes of the columns that may arrive as unchanged TOAST.
    toastable: Vec<usize>,
    /// Column mode: the index of the sequence column.
    sequence_column: Option<usize>,
    /// Which columns the envelope's value carries.
    published: Vec<bool>,
    /// Ops published (all when `None`).
    ops: Option<Vec<Op>>,
}

impl Relation {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// One encoded envelope ready for the sink.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    /// `<key>:<sequence>`: the JetStream de-duplication id (`Nats-Msg-Id`).
    pub msg_id: String,
    /// Where the change sits in the WAL (`Walcast-Position`).
    pub position: Position,
}

/// What a Relation message changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationUpdate {
    pub table: String,
    pub previous: Option<SchemaVersion>,
    pub current: SchemaVersion,
    /// The table's schema history when it gained a version: to be persisted.
    pub history_to_store: Option<SchemaHistory>,
    /// Columns the table's include/exclude settings name that it no longer has.
    pub missing_setting_columns: Vec<String>,
}

/// The open transaction's commit identity.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    commit_lsn: Lsn,
    xid: u32,
    commit_ts: Timestamp,
    /// Envelopes emitted (or recognised as replays) so far in this transaction.
    ordinal: u32,
}

/// Turns decoded changes into encoded envelopes; holds the per-table and per-key state.
#[derive(Debug)]
pub struct EnvelopeBuilder {
    prefix: String,
    /// Looked up several times per change: a fast hasher (relation ids are the
    /// server's, not an attacker's).
    relations: HashMap<u32, Relation, foldhash::fast::RandomState>,
    histories: HashMap<String, SchemaHistory>,
    default_mode: SequenceMode,
    /// Settings per table (`schema.table`).
    tables: HashMap<String, TableSettings>,
    keys: KeyStateCache,
    toast: ToastCache,
    /// Unchanged-TOAST values just provided for the next change of a key.
    pending_toast: Option<(String, Vec<(usize, Value<'static>)>)>,
    tx: Option<Transaction>,
    replays_skipped: u64,
    /// Subjects that may have a message in the stream (tracked mode): a key outside it
    /// is new and needs no load.
    subject_filter: Option<SubjectFilter>,
    key_cache: usize,
    /// The NATS server's `max_payload`.
    max_payload: usize,
    /// `--oversize marker`: publish a marker instead of stopping.
    oversize_marker: bool,
    oversize_markers: u64,
    /// Where envelopes are encoded: each one is split off as an exact-size view, so
    /// envelopes in flight share a few blocks instead of one allocation each.
    encoded: bytes::BytesMut,
    /// Where each envelope is serialised first: MessagePack writes many small pieces,
    /// which a `Vec` takes more cheaply than a `BytesMut`; then one copy into `encoded`.
    scratch: Vec<u8>,
}

/// The size of the blocks envelopes are encoded into.
const ENCODE_BLOCK: usize = 64 * 1024;

/// Bytes counted for an envelope's headers beside its message id.
const HEADER_ALLOWANCE: usize = 160;
/// The key of the row value that replaces a too-large one.
pub const TOO_LARGE_KEY: &str = "$walcast_too_large";

/// The value of a too-large envelope: `{"$walcast_too_large": <encoded size>}`.
struct MarkerRow<'a>(&'a [(&'static str, u64)]);

impl serde::Serialize for MarkerRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl EnvelopeBuilder {
    /// `prefix`: the subject prefix; `default_mode`: tracked or volatile;
    /// `tables`: per-table settings; `key_cache`: key states kept in memory;
    /// `toast_cache_bytes`: memory for unchanged-TOAST values.
    pub fn new(
        prefix: &str,
        default_mode: SequenceMode,
        tables: HashMap<String, TableSettings>,
        key_cache: usize,
        toast_cache_bytes: usize,
    ) -> Self {
        let authoritative = default_mode == SequenceMode::Volatile;
        EnvelopeBuilder {
            prefix: prefix.to_string(),
            relations: HashMap::default(),
            histories: HashMap::new(),
            default_mode,
            tables,
            keys: KeyStateCache::new(key_cache, authoritative),
            toast: ToastCache::new(toast_cache_bytes),
            pending_toast: None,
            tx: None,
            replays_skipped: 0,
            subject_filter: None,
            key_cache,
            max_payload: usize::MAX,
            oversize_marker: false,
            oversize_markers: 0,
            encoded: bytes::BytesMut::new(),
            scratch: Vec::with_capacity(1024),
        }
    }

    /// Forget every key state (another process may have published since they were
    /// learnt) and start from the subjects the stream holds now.
    pub fn reset_key_state(&mut self, filter: Option<SubjectFilter>) {
        let authoritative = self.default_mode == SequenceMode::Volatile;
        if !authoritative {
            self.keys = KeyStateCache::new(self.key_cache, false);
        }
        self.subject_filter = filter;
    }

    /// Changes recognised as already published (replays after a restart).
    pub fn replays_skipped(&self) -> u64 {
        self.replays_skipped
    }

    /// Whether the schema history of `schema.table` is known (else the caller loads
    /// it with [`EnvelopeBuilder::provide_schema_history`] when it has a store).
    pub fn has_schema_history(&self, qualified: &str) -> bool {
        self.histories.contains_key(qualified)
    }

    pub fn provide_schema_history(&mut self, qualified: &str, history: SchemaHistory) {
        self.histories.insert(qualified.to_string(), history);
    }

    /// The sink confirmed every envelope at or before `position`.
    pub fn acknowledged(&mut self, position: Position) {
        self.keys.acknowledged(position);
    }

    /// Register or update a table from its Relation message.
    pub fn on_relation(
        &mut self,
        id: u32,
        schema: &str,
        table: &str,
        replica_identity: u8,
        columns: Vec<Column>,
        key: Vec<usize>,
    ) -> Result<RelationUpdate, EnvelopeError> {
        let qualified = format!("{schema}.{table}");
        let settings = self.tables.get(&qualified).cloned().unwrap_or_default();
        let sequence_column =
            match &settings.sequence_column {
                Some(name) => Some(columns.iter().position(|c| &c.name == name).ok_or_else(
                    || EnvelopeError::NoSequenceColumn {
                        table: qualified.clone(),
                        column: name.clone(),
                    },
                )?),
                None => None,
            };
        let published = columns
            .iter()
            .map(|c| {
                settings
                    .include_columns
                    .as_ref()
                    .is_none_or(|inc| inc.contains(&c.name))
                    && !settings.exclude_columns.contains(&c.name)
            })
            .collect();
        let missing_setting_columns = settings
            .include_columns
            .iter()
            .flatten()
            .chain(&settings.exclude_columns)
            .filter(|name| !columns.iter().any(|c| &c.name == *name))
            .cloned()
            .collect();
        let shape = TableShape { columns, key };
        let previous = self.relations.get(&id).map(|r| r.version);
        let at = self.tx.map(|t| t.commit_lsn).unwrap_or_default();
        let history = self.histories.entry(qualified.clone()).or_default();
        let (version, added) = history.version_for(&shape, at);
        let history_to_store = added.then(|| history.clone());
        let toastable = shape
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind.is_toastable())
            .map(|(i, _)| i)
            .collect();
        let rel = Relation {
            schema: schema.to_string(),
            table: table.to_string(),
            version,
            version_text: version.to_string(),
            subject_prefix: format!(
                "{}.{}.{}.",
                self.prefix,
                key::name_token(schema),
                key::name_token(table)
            ),
            key_prefix: key::table_key_prefix(schema, table),
            full_identity: replica_identity == b'f',
            toastable,
            sequence_column,
            published,
            ops: settings.ops,
            shape,
        };
        self.relations.insert(id, rel);
        Ok(RelationUpdate {
            table: qualified,
            previous,
            current: version,
            history_to_store,
            missing_setting_columns,
        })
    }

    /// A Begin message: envelopes until the Commit carry this commit LSN and time.
    pub fn begin(&mut self, commit_lsn: Lsn, commit_ts_pg_micros: i64, xid: u32) {
        self.tx = Some(Transaction {
            commit_lsn,
            xid,
            commit_ts: Timestamp::from_pg_micros(commit_ts_pg_micros),
            ordinal: 0,
        });
    }

    /// Envelopes of a snapshot chunk: they sit at `position.commit_lsn` in the WAL order
    /// (just before the chunk's high watermark), numbered from `position.ordinal`, so
    /// that positions keep growing across chunks read at the same watermark.
    pub fn begin_snapshot(&mut self, position: Position, commit_ts: Timestamp) {
        self.tx = Some(Transaction {
            commit_lsn: position.commit_lsn,
            xid: 0,
            commit_ts,
            ordinal: position.ordinal,
        });
    }

    /// The position the next envelope of the open transaction gets.
    pub fn next_position(&self) -> Option<Position> {
        self.tx.map(|t| Position {
            commit_lsn: t.commit_lsn,
            ordinal: t.ordinal,
        })
    }

    /// The Commit message: the transaction is closed.
    pub fn commit(&mut self) {
        self.tx = None;
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// The state of a key loaded from the stream: its last envelope's sequence and the
    /// `Walcast-Position` of that change; `None` when the subject has no message.
    pub fn provide_key_state(&mut self, key: String, loaded: Option<KeyState>) {
        self.keys.loaded(key, loaded);
    }

    /// A key's state read from the stream for another purpose (an unchanged TOAST
    /// value, a snapshot comparison): kept when the key's state is not in memory, so
    /// it is not read a second time.
    pub fn offer_key_state(&mut self, key: &str, state: KeyState) {
        if self.keys.lookup(key) == Lookup::Missing {
            self.keys.loaded(key.to_string(), Some(state));
        }
    }

    /// Whether a Relation message (or the catalog) described `relation_id` already.
    pub fn knows_relation(&self, relation_id: u32) -> bool {
        self.relations.contains_key(&relation_id)
    }

    /// Whether walcast assigns the sequences of `relation_id` (tracked mode).
    pub fn is_tracked(&self, relation_id: u32) -> bool {
        self.relations
            .get(&relation_id)
            .is_some_and(|rel| self.tracked(rel))
    }

    /// The table of `relation_id`, known from a Relation message or the catalog.
    fn relation(&self, relation_id: u32) -> Result<&Relation, EnvelopeError> {
        self.relations
            .get(&relation_id)
            .ok_or(EnvelopeError::UnknownRelation(relation_id))
    }

    fn mode_of(&self, rel: &Relation) -> SequenceMode {
        match rel.sequence_column {
            Some(i) => SequenceMode::Column(rel.shape.columns[i].name.clone()),
            None => self.default_mode.clone(),
        }
    }

    /// `Some(need)` when `key`'s state must be loaded first.
    fn key_state_need(&mut self, rel_tracked: bool, key: &str, subject: &str) -> Option<Need> {
        if rel_tracked && self.keys.lookup(key) == Lookup::Missing {
            if let Some(filter) = &self.subject_filter {
                if !filter.may_contain(subject) {
                    // Never published: a new key, its subject has no message.
                    self.provide_key_state(key.to_string(), None);
                    return None;
                }
            }
            return Some(Need::KeyState {
                key: key.to_string(),
                subject: subject.to_string(),
            });
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        relation_id: u32,
        op: Op,
        key: String,
        subject: String,
        values: Option<&[Value<'_>]>,
        column_seq: Option<u64>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), EnvelopeError> {
        let mut tx = self.tx.ok_or(EnvelopeError::NoTransaction)?;
        // Op filters apply to live changes; a snapshot row is always published.
        if let Some(ops) = &self.relations[&relation_id].ops {
            if op != Op::Snapshot && !ops.contains(&op) {
                return Ok(());
            }
        }
        let position = Position {
            commit_lsn: tx.commit_lsn,
            ordinal: tx.ordinal,
        };
        tx.ordinal += 1;
        self.tx = Some(tx);
        let rel = &self.relations[&relation_id];
        let sequence = match column_seq {
            Some(seq) => seq,
            None => {
                let state = match self.keys.lookup(&key) {
                    Lookup::Known(s) => s,
                    Lookup::Missing => unreachable!("key state loaded before emitting"),
                };
                if let Some(s) = state {
                    if position <= s.position {
                        // Already published before a restart: not a new change.
                        self.replays_skipped += 1;
                        return Ok(());
                    }
                }
                if let Some(filter) = self.subject_filter.as_mut() {
                    filter.insert(&subject);
                }
                let sequence = state.map_or(1, |s| s.sequence + 1);
                let deleted = op == Op::Delete;
                self.keys.assigned(
                    &key,
                    KeyState {
                        sequence,
                        position,
                        deleted,
                    },
                );
                sequence
            }
        };
        let envelope = EnvelopeRef {
            key: &key,
            op,
            value: values.map(|values| RowRef {
                columns: &rel.shape.columns,
                values,
                published: Some(&rel.published),
            }),
            schema_version: &rel.version_text,
            sequence,
            lsn: tx.commit_lsn.0,
            commit_ts: tx.commit_ts,
        };
        if self.encoded.capacity() < ENCODE_BLOCK / 8 {
            self.encoded.reserve(ENCODE_BLOCK);
        }
        self.scratch.clear();
        codec::encode_to(&mut self.scratch, &envelope)?;
        self.encoded.extend_from_slice(&self.scratch);
        let payload = self.encoded.split().freeze();
        let msg_id = message_id(&key, sequence);
        let (payload, marked) = fit_size(
            self.max_payload,
            self.oversize_marker,
            payload,
            &envelope,
            &msg_id,
        )?;
        self.oversize_markers += u64::from(marked);
        out.push(Outgoing {
            subject,
            payload,
            msg_id,
            position,
        });
        Ok(())
    }

    /// The NATS server's largest message, and whether a larger envelope is replaced
    /// by a marker (else it is an error).
    pub fn set_size_limit(&mut self, max_payload: usize, oversize_marker: bool) {
        self.max_payload = max_payload;
        self.oversize_marker = oversize_marker;
    }

    /// Envelopes replaced by a too-large marker so far.
    pub fn oversize_markers(&self) -> u64 {
        self.oversize_markers
    }

    /// The keys (with their subjects) a Truncate of these tables publishes on.
    pub fn truncate_keys(
        &self,
        relation_ids: &[u32],
    ) -> Result<Vec<(String, String)>, EnvelopeError> {
        relation_ids
            .iter()
            .map(|id| {
                let rel = self
                    .relations
                    .get(id)
                    .ok_or(EnvelopeError::UnknownRelation(*id))?;
                Ok((
                    rel.key_prefix.clone(),
                    format!("{}{}", rel.subject_prefix, key::TRUNCATE_TOKEN),
                ))
            })
            .collect()
    }

    /// A Truncate message: one table-level `truncate` envelope per table, on the
    /// subject `<prefix>.<schema>.<table>.~truncate`, with the key `<schema>.<table>:`
    /// and its own sequence (tracked like a key's, also for column-mode tables).
    pub fn truncate(
        &mut self,
        relation_ids: &[u32],
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        self.tx.ok_or(EnvelopeError::NoTransaction)?;
        let keys = self.truncate_keys(relation_ids)?;
        let tracked = self.default_mode == SequenceMode::Tracked;
        for (k, subject) in &keys {
            if let Some(need) = self.key_state_need(tracked, k, subject) {
                return Ok(Some(need));
            }
        }
        for (&id, (k, subject)) in relation_ids.iter().zip(keys) {
            self.toast.remove_prefix(&k);
            self.emit(id, Op::Truncate, k, subject, None, None, out)?;
        }
        Ok(None)
    }
}

/// The envelope as published: itself, or (too large for NATS) an error or a
/// marker, as `--oversize` says.
fn fit_size<V: serde::Serialize>(
    max_payload: usize,
    oversize_marker: bool,
    payload: Bytes,
    envelope: &EnvelopeRef<'_, V>,
    msg_id: &str,
) -> Result<(Bytes, bool), EnvelopeError> {
    // Headers travel in the same message: id, position, expected sequence.
    let size = payload.len() + msg_id.len() + HEADER_ALLOWANCE;
    if size <= max_payload {
        return Ok((payload, false));
    }
    if !oversize_marker {
        return Err(EnvelopeError::TooLarge {
            key: envelope.key.to_string(),
            bytes: size,
            max: max_payload,
        });
    }
    let marker = [(TOO_LARGE_KEY, payload.len() as u64)];
    let marked = codec::encode(&EnvelopeRef {
        key: envelope.key,
        op: envelope.op,
        value: Some(MarkerRow(&marker)),
        schema_version: envelope.schema_version,
        sequence: envelope.sequence,
        lsn: envelope.lsn,
        commit_ts: envelope.commit_ts,
    })?;
    Ok((Bytes::from(marked), true))
}

/// The `Nats-Msg-Id` of a key's envelope: `<key>:<sequence>`.
fn message_id(key: &str, sequence: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let sequence = digits.format(sequence);
    let mut id = String::with_capacity(key.len() + 1 + sequence.len());
    id.push_str(key);
    id.push(':');
    id.push_str(sequence);
    id
}
