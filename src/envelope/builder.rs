//! The envelope builder: its per-table and per-key state, tables registered from
//! Relation messages, the open transaction, and the table-level changes (Truncate).
//! Row changes are in `change.rs`, the last step of every change in `emit.rs`.

use std::collections::HashMap;

use super::emit::{EncodeBuffer, Outgoing};
use super::relation::toastable_columns;
use super::schema::{Column, SchemaHistory, TableShape};
use super::sequence::{KeyState, KeyStateCache, Lookup, Position, SequenceMode, SubjectFilter};
use super::toast::ToastCache;
use super::{
    EnvelopeError, EnvelopeSettings, Need, Oversize, Relation, RelationUpdate, TableSettings,
};
use crate::wire::codec::Op;
use crate::wire::{key, Lsn, Timestamp, Value};

/// The open transaction's commit identity.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transaction {
    pub(super) commit_lsn: Lsn,
    pub(super) xid: u32,
    pub(super) commit_ts: Timestamp,
    /// Envelopes emitted (or recognised as replays) so far in this transaction.
    pub(super) ordinal: u32,
}

/// Turns decoded changes into encoded envelopes; holds the per-table and per-key state.
#[derive(Debug)]
pub struct EnvelopeBuilder {
    pub(super) prefix: String,
    /// Looked up several times per change: a fast hasher (relation ids are the
    /// server's, not an attacker's).
    pub(super) relations: HashMap<u32, Relation, foldhash::fast::RandomState>,
    pub(super) histories: HashMap<String, SchemaHistory>,
    default_mode: SequenceMode,
    /// Settings per table (`schema.table`).
    pub(super) tables: HashMap<String, TableSettings>,
    pub(super) keys: KeyStateCache,
    pub(super) toast: ToastCache,
    /// Unchanged-TOAST values just provided for the next change of a key.
    pub(super) pending_toast: Option<(String, Vec<(usize, Value<'static>)>)>,
    pub(super) tx: Option<Transaction>,
    /// See [`EnvelopeBuilder::set_catalog_position`].
    pub(super) catalog_position: Lsn,
    pub(super) replays_skipped: u64,
    /// Subjects that may have a message in the stream (tracked mode): a key outside it
    /// is new and needs no load.
    pub(super) subject_filter: Option<SubjectFilter>,
    key_cache: usize,
    /// The NATS server's `max_payload`.
    pub(super) max_payload: usize,
    /// `--oversize marker`: publish a marker instead of stopping.
    pub(super) oversize_marker: bool,
    pub(super) oversize_markers: u64,
    pub(super) encode_buffer: EncodeBuffer,
    /// The stream has an age or size window: tracked tables are refused.
    stream_window: bool,
    /// The encryption keys, for the tables that are encrypted.
    keys_ring: Option<std::sync::Arc<crate::wire::seal::Keyring>>,
}

impl EnvelopeBuilder {
    /// `prefix`: the subject prefix; `default_mode`: tracked or volatile;
    /// `tables`: per-table settings; `key_cache`: key states kept in memory;
    /// `toast_cache_bytes`: memory for unchanged-TOAST values.
    pub fn new(settings: EnvelopeSettings, default_mode: SequenceMode) -> Self {
        let authoritative = default_mode == SequenceMode::Volatile;
        let key_cache = settings.key_cache;
        EnvelopeBuilder {
            prefix: settings.subject_prefix,
            relations: HashMap::default(),
            histories: HashMap::new(),
            default_mode,
            tables: settings.tables,
            keys_ring: settings.keys,
            keys: KeyStateCache::new(key_cache, authoritative),
            toast: ToastCache::new(settings.toast_cache_bytes),
            pending_toast: None,
            tx: None,
            catalog_position: Lsn(0),
            replays_skipped: 0,
            subject_filter: None,
            key_cache,
            max_payload: usize::MAX,
            oversize_marker: settings.oversize == Oversize::Marker,
            oversize_markers: 0,
            encode_buffer: EncodeBuffer::new(),
            stream_window: settings.stream_window,
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
        let sequence_column = settings.sequence_column_index(&columns, &qualified)?;
        if self.stream_window
            && sequence_column.is_none()
            && self.default_mode == SequenceMode::Tracked
        {
            return Err(EnvelopeError::TrackedInWindow { table: qualified });
        }
        let published = settings.published_columns(&columns);
        let missing_setting_columns = settings.missing_columns(&columns);
        let seal = settings.seal_plan(self.keys_ring.as_deref(), &columns, &qualified)?;
        let shape = TableShape { columns, key };
        let previous = self.relations.get(&id).map(|r| r.version);
        let at = self.tx.map_or(self.catalog_position, |t| t.commit_lsn);
        let history = self.histories.entry(qualified.clone()).or_default();
        let (version, added) = history.version_for(&shape, at);
        let history_to_store = added.then(|| history.clone());
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
            toastable: toastable_columns(&shape),
            sequence_column,
            published,
            ops: settings.ops,
            delete_ttl: settings.delete_ttl,
            seal,
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

    /// Where the WAL was when the catalog described the tables described next outside
    /// a transaction (a snapshot, a refetch): their shape is the one in force there.
    pub fn set_catalog_position(&mut self, at: Lsn) {
        self.catalog_position = at;
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// The open transaction's id, if one is open.
    pub fn transaction_xid(&self) -> Option<u32> {
        self.tx.as_ref().map(|t| t.xid)
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

    /// `schema.table` of a relation described so far.
    pub fn relation_name(&self, relation_id: u32) -> Option<String> {
        self.relations
            .get(&relation_id)
            .map(Relation::qualified_name)
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
    pub(super) fn relation(&self, relation_id: u32) -> Result<&Relation, EnvelopeError> {
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

    /// Whether walcast assigns `rel`'s sequences, keeping their state in the stream.
    pub(super) fn tracked(&self, rel: &Relation) -> bool {
        self.mode_of(rel) == SequenceMode::Tracked
    }

    /// `Some(need)` when `key`'s state must be loaded first.
    pub(super) fn key_state_need(
        &mut self,
        rel_tracked: bool,
        key: &str,
        subject: &str,
    ) -> Option<Need> {
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

    /// The NATS server's largest message (a larger envelope is an error, or a marker
    /// with `--oversize marker`).
    pub fn set_size_limit(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
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
            let rows = Default::default();
            self.emit(id, Op::Truncate, (k, subject), rows, None, out)?;
        }
        Ok(None)
    }
}
