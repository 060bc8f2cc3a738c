//! The envelope stage and what feeds it: the builder is synchronous and asks for what
//! it lacks ([`Need`]); this part loads it — key states and unchanged-TOAST values
//! from the state store or the table, column types and keys from the catalog, schema
//! histories from the stream — and counts what the stage did.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;

use super::prefetch::FetchedRow;
use super::recent::RecentCommits;
use crate::client::StoredEnvelope;
use crate::decode::pgoutput::RelationColumn;
use crate::decode::relation::{self, ResolvedRelation};
use crate::decode::types::TypeRegistry;
use crate::envelope::{marked_in, EnvelopeBuilder, EnvelopeError, Need, Outgoing, ToastNeeded};
use crate::ops::metrics::Metrics;
use crate::pipeline::PipelineError;
use crate::source::catalog::Catalog;
use crate::source::chunks::TableInfo;
use crate::source::{ConnectParams, SourceError};
use crate::state::StateStore;
use crate::wire::Op;

/// Per-table change counters, resolved once (no label lookups on the hot path).
struct TableCounters {
    insert: IntCounter,
    update: IntCounter,
    delete: IntCounter,
    truncate: IntCounter,
}

impl TableCounters {
    fn new(metrics: &Metrics, table: &str) -> Self {
        let c = &metrics.envelope.changes;
        TableCounters {
            insert: c.with_label_values(&[table, "insert"]),
            update: c.with_label_values(&[table, "update"]),
            delete: c.with_label_values(&[table, "delete"]),
            truncate: c.with_label_values(&[table, "truncate"]),
        }
    }
}

/// The envelope builder with its loaders.
pub(super) struct Envelopes {
    pub(super) builder: EnvelopeBuilder,
    pub(super) catalog: Catalog,
    /// The JetStream state store (key states, schema histories), when delivering
    /// through JetStream.
    pub(super) store: Option<StateStore>,
    types: TypeRegistry,
    pub(super) metrics: Arc<Metrics>,
    counters: HashMap<u32, TableCounters, foldhash::fast::RandomState>,
    /// Unseen keys were met since the last look ahead (loaded alone, or found ahead):
    /// look ahead at the next read too.
    pub(super) missed: bool,
    /// A TOAST value was published as unavailable since the last look.
    unavailable_seen: bool,
    /// Last envelopes loaded ahead, by subject, for the unchanged-TOAST values of
    /// their keys (dropped once used or once the key is published again).
    /// (`None`: the stream has none).
    pub(super) ahead: HashMap<String, Option<StoredEnvelope>, foldhash::fast::RandomState>,
    /// Table rows read ahead for unchanged-TOAST values, by key.
    pub(super) toast_rows: HashMap<String, FetchedRow, foldhash::fast::RandomState>,
    /// Tables TOAST fills read, by relation id.
    pub(super) table_infos: HashMap<u32, TableInfo>,
    /// Commits streamed that a read of a table must see.
    pub(super) recent: RecentCommits,
}

impl Envelopes {
    pub(super) fn new(
        builder: EnvelopeBuilder,
        catalog: Catalog,
        store: Option<StateStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Envelopes {
            builder,
            catalog,
            store,
            types: TypeRegistry::new(),
            metrics,
            counters: HashMap::default(),
            missed: true,
            unavailable_seen: false,
            ahead: HashMap::default(),
            toast_rows: HashMap::default(),
            recent: RecentCommits::default(),
            table_infos: HashMap::new(),
        }
    }

    /// Whether a TOAST value was published as unavailable since the last call.
    pub(super) fn take_unavailable(&mut self) -> bool {
        std::mem::take(&mut self.unavailable_seen)
    }

    /// Run one step of the builder until it needs nothing more, loading what it asks
    /// for in between.
    pub(super) async fn build<F>(
        &mut self,
        out: &mut Vec<Outgoing>,
        mut step: F,
    ) -> Result<(), PipelineError>
    where
        F: FnMut(&mut EnvelopeBuilder, &mut Vec<Outgoing>) -> Result<Option<Need>, EnvelopeError>,
    {
        let markers_before = self.builder.oversize_markers();
        while let Some(need) = step(&mut self.builder, out)? {
            self.provide(need).await?;
        }
        let markers = self.builder.oversize_markers() - markers_before;
        if markers > 0 {
            self.metrics.envelope.oversize_markers.inc_by(markers);
            tracing::warn!(
                key = out.last().map_or("", |o| o.msg_id.as_str()),
                "an envelope above NATS's max_payload was published as a too-large marker"
            );
        }
        Ok(())
    }

    /// Load what the envelope stage asked for.
    async fn provide(&mut self, need: Need) -> Result<(), PipelineError> {
        match need {
            Need::Toast(needed) => self.provide_toast(needed).await?,
            Need::KeyState { key, subject } => {
                let store = self
                    .store
                    .as_ref()
                    .expect("tracked sequences without a store are volatile");
                self.metrics.envelope.key_state_loads.inc();
                self.metrics.envelope.key_state_requests.inc();
                self.missed = true;
                let loaded = store.load_key(&subject).await?;
                self.builder
                    .provide_key_state(key, loaded.map(|(state, _)| state));
            }
        }
        Ok(())
    }

    /// Unchanged-TOAST values: from the key's last envelope in the stream (tracked
    /// mode: exact), else from the table while its row is still this change's
    /// version; otherwise published as unavailable, counted and logged.
    async fn provide_toast(&mut self, needed: ToastNeeded) -> Result<(), PipelineError> {
        let unavailable = match self.toast_from_stream(&needed).await? {
            Some(n) => n,
            None => self.toast_from_table(&needed).await?,
        };
        if unavailable > 0 {
            self.unavailable_seen = true;
            let table = format!("{}.{}", needed.schema, needed.table);
            self.metrics
                .envelope
                .toast_unavailable
                .with_label_values(&[&table])
                .inc_by(unavailable as u64);
            tracing::warn!(table = %table, key = %needed.key, columns = ?needed.columns,
                "unchanged TOAST value no longer available (the row changed or went since this change): published as unavailable; REPLICA IDENTITY FULL avoids it");
        }
        Ok(())
    }

    /// From the key's last envelope, when the stream has one (`None`: it has not).
    async fn toast_from_stream(
        &mut self,
        needed: &ToastNeeded,
    ) -> Result<Option<usize>, PipelineError> {
        let (Some(subject), Some(store)) = (&needed.source.stream_subject, &self.store) else {
            return Ok(None);
        };
        let last = match self.ahead.remove(subject) {
            Some(Some(last)) => last,
            Some(None) => return Ok(None), // read ahead: the stream has none
            None => {
                self.metrics.envelope.toast_stream_loads.inc();
                let Some(last) = store.last_envelope(subject).await? else {
                    return Ok(None);
                };
                last
            }
        };
        let state = store.key_state_of(subject, &last)?;
        self.builder.offer_key_state(&last.envelope.key, state);
        if marked_in(&last.envelope.value, &needed.columns) {
            return Ok(None); // published as unavailable: the table may still have it
        }
        let row = Some(&last.envelope.value);
        Ok(Some(self.builder.provide_toast_from_envelope(needed, row)?))
    }

    /// From the table, if its row is still this change's version (read ahead, or
    /// now).
    async fn toast_from_table(&mut self, needed: &ToastNeeded) -> Result<usize, PipelineError> {
        self.metrics.envelope.toast_fetches.inc();
        let (_, expected) = needed.source.version.check();
        // Kept for the key's later changes in the same read: the last may be the
        // version read.
        let ahead = self.toast_rows.get(&needed.key);
        if let Some((row, texts)) = ahead.and_then(|r| r.pick(&needed.columns).map(|t| (r, t))) {
            // Read ahead at this change's version: exact. Read after this change was
            // visible, at another version: the row changed since, and a new read
            // cannot bring the value back. Otherwise (the change may not have been
            // visible to that read yet) ask again now.
            let same = row.version.as_deref() == Some(expected.as_str());
            if same || row.saw_committed(needed.source.xid) {
                return Ok(self.builder.provide_toast(needed, &texts, same)?);
            }
        }
        self.missed = true;
        let (texts, same) = self.fetch_toast_now(needed).await?;
        Ok(self.builder.provide_toast(needed, &texts, same)?)
    }

    /// A Relation message (or a table the stream has not described yet): typed
    /// columns and key from the catalog, the schema history from the stream, and the
    /// new shape given to the envelope stage.
    pub(super) async fn on_relation(
        &mut self,
        relation_id: u32,
        namespace: &str,
        name: &str,
        replica_identity: u8,
        columns: &[RelationColumn<'_>],
    ) -> Result<(), PipelineError> {
        self.table_infos.remove(&relation_id);
        let resolved = self
            .resolve_relation(relation_id, replica_identity, columns)
            .await?;
        let qualified = format!("{namespace}.{name}");
        if let Some(store) = &self.store {
            if !self.builder.has_schema_history(&qualified) {
                let history = store.load_schema(namespace, name).await?;
                tracing::debug!(table = %qualified, versions = history.entries.len(), "schema history loaded");
                self.builder.provide_schema_history(&qualified, history);
            }
        }
        let update = self.builder.on_relation(
            relation_id,
            namespace,
            name,
            replica_identity,
            resolved.columns,
            resolved.key,
        )?;
        if let (Some(store), Some(history)) = (&self.store, &update.history_to_store) {
            store.store_schema(namespace, name, history).await?;
        }
        self.report_relation(&update);
        self.counters.insert(
            relation_id,
            TableCounters::new(&self.metrics, &update.table),
        );
        Ok(())
    }

    async fn resolve_relation(
        &mut self,
        relation_id: u32,
        replica_identity: u8,
        columns: &[RelationColumn<'_>],
    ) -> Result<ResolvedRelation, SourceError> {
        let (catalog, types) = (&self.catalog, &mut self.types);
        resolve_from_catalog(catalog, types, relation_id, replica_identity, columns).await
    }

    /// A schema version change and settings that name columns the table lost.
    fn report_relation(&self, update: &crate::envelope::RelationUpdate) {
        if let Some(prev) = update.previous.as_ref().filter(|p| **p != update.current) {
            self.metrics
                .envelope
                .schema_changes
                .with_label_values(&[&update.table])
                .inc();
            tracing::info!(table = %update.table, from = %prev, to = %update.current, "schema version changed");
        }
        if !update.missing_setting_columns.is_empty() {
            self.metrics
                .envelope
                .missing_setting_columns
                .with_label_values(&[&update.table])
                .inc_by(update.missing_setting_columns.len() as u64);
            tracing::warn!(
                table = %update.table,
                columns = ?update.missing_setting_columns,
                "the table no longer has columns its settings name (dropped?); the settings of the other columns still apply"
            );
        }
    }

    /// Make the envelope stage know a table the stream has not described yet.
    pub(super) async fn register_relation(
        &mut self,
        info: &TableInfo,
    ) -> Result<(), PipelineError> {
        // The catalog's shape is the one in force now (not at the start of the WAL).
        let now = self.catalog.current_wal_lsn().await?;
        self.builder.set_catalog_position(now);
        let columns = catalog_columns(info);
        self.on_relation(
            info.relation_id,
            &info.schema,
            &info.name,
            info.replica_identity,
            &columns,
        )
        .await
    }

    /// The table as the catalog describes it, made known to the envelope stage.
    pub(super) async fn known_table(
        &mut self,
        qualified: &str,
    ) -> Result<TableInfo, PipelineError> {
        let info = self.catalog.table_info(qualified).await?;
        if !self.builder.knows_relation(info.relation_id) {
            self.register_relation(&info).await?;
        }
        Ok(info)
    }

    /// Count a change of `op` on a relation that was published as `envelopes`
    /// envelopes: once, whatever their number (a key change publishes two), and not
    /// at all when none was (a replay, an op filtered out).
    pub(super) fn count(&self, relation_id: u32, op: Op, envelopes: u64) {
        let Some(c) = self.counters.get(&relation_id).filter(|_| envelopes > 0) else {
            return;
        };
        match op {
            Op::Insert => c.insert.inc(),
            Op::Update => c.update.inc(),
            Op::Delete => c.delete.inc(),
            Op::Truncate => c.truncate.inc(),
            Op::Snapshot => {}
        }
    }

    /// Count a truncate of each of `relation_ids` whose envelope is among `built`.
    pub(super) fn count_truncates(&self, relation_ids: &[u32], built: &[Outgoing]) {
        let Ok(keys) = self.builder.truncate_keys(relation_ids) else {
            return;
        };
        for (&id, (_, subject)) in relation_ids.iter().zip(keys) {
            let published = built.iter().filter(|o| o.subject == subject).count();
            self.count(id, Op::Truncate, published as u64);
        }
    }

    /// A change of a table without a usable key: not published (the other tables go
    /// on), counted, logged once per table, shown by `/readyz`.
    pub(super) fn refuse_keyless(&self, table: String) {
        let counter = self
            .metrics
            .envelope
            .keyless_skipped
            .with_label_values(&[&table]);
        if counter.get() == 0 {
            let e = EnvelopeError::NoKey {
                table: table.clone(),
            };
            tracing::error!(table = %table, "{e}");
            self.metrics
                .add_degraded(format!("{table} has no key: its changes are not published"));
        }
        counter.inc();
    }

    /// A new catalog connection when the old one was closed (the server restarted).
    pub(super) async fn reconnect_catalog(
        &mut self,
        params: &ConnectParams,
        timeout: std::time::Duration,
    ) {
        if !self.catalog.is_closed() {
            return;
        }
        match Catalog::connect(params, timeout).await {
            Ok(c) => self.catalog = c,
            Err(e) => tracing::warn!(error = %e, "catalog connection not back yet"),
        }
    }
}

/// A relation's columns resolved: the types the registry lacks (domains and arrays
/// down to their base) and the key's column names, from the catalog.
pub(crate) async fn resolve_from_catalog(
    catalog: &Catalog,
    types: &mut TypeRegistry,
    relation_id: u32,
    replica_identity: u8,
    columns: &[RelationColumn<'_>],
) -> Result<ResolvedRelation, SourceError> {
    let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    for _ in 0..8 {
        let missing = types.missing(oids.iter().copied());
        if missing.is_empty() {
            break;
        }
        let rows = catalog.types(&missing).await?;
        if rows.is_empty() {
            break;
        }
        types.add_rows(rows);
    }
    let key = catalog.key_columns(relation_id).await?;
    Ok(relation::resolve(types, replica_identity, columns, &key))
}

/// A table's columns as the catalog describes them, in the form a Relation message
/// carries them.
pub(crate) fn catalog_columns(info: &TableInfo) -> Vec<RelationColumn<'_>> {
    info.columns
        .iter()
        .map(|(name, oid, typmod, _)| RelationColumn {
            flags: 0,
            name,
            type_oid: *oid,
            type_modifier: *typmod,
        })
        .collect()
}
