//! Loading ahead: before a read is worked through, what the changes already in the
//! read buffer will ask for is loaded together instead of one blocking round trip per
//! change: the key states walcast lacks (tracked mode) in batched gets, whose last
//! envelopes also give unchanged-TOAST values; the other unchanged-TOAST values in one
//! query per table. Only done while such needs are met (a warm cache costs no second
//! look at the buffer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::envelopes::Envelopes;
use super::ChangeReader;
use crate::decode::pgoutput::{self, PgOutput};
use crate::envelope::{marked_in, Outgoing, ToastNeeded};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::source::visibility::SeenSnapshot;
use crate::source::{ReplicationEvent, ReplicationStream};
use crate::wire::Op;

/// Keys loaded ahead per read at the most (their last envelopes are held meanwhile).
const AHEAD_MAX: usize = 4096;

/// What the read buffer will ask for, found ahead: the unseen keys with their
/// subjects, and the first unchanged-TOAST fill of each key, in the order first seen.
pub(super) struct Wanted {
    limit: usize,
    seen: HashSet<String>,
    pub(super) keys: Vec<(String, String)>,
    toast_seen: HashSet<String>,
    pub(super) toast: Vec<ToastNeeded>,
    /// The transaction the message looked at belongs to.
    xid: Option<u32>,
    /// The message looked at is inside a stream block (held, not built now).
    in_stream: bool,
}

impl Wanted {
    fn new(limit: usize, xid: Option<u32>, in_stream: bool) -> Self {
        Wanted {
            limit,
            seen: HashSet::new(),
            keys: Vec::new(),
            toast_seen: HashSet::new(),
            toast: Vec::new(),
            xid,
            in_stream,
        }
    }

    fn full(&self) -> bool {
        self.keys.len() + self.toast.len() >= self.limit
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.toast.is_empty()
    }

    fn add(&mut self, key: String, subject: String) {
        if !self.full() && self.seen.insert(key.clone()) {
            self.keys.push((key, subject));
        }
    }

    fn add_toast(&mut self, needed: ToastNeeded) {
        if !self.full() && self.toast_seen.insert(needed.key.clone()) {
            self.toast.push(needed);
        }
    }
}

impl ChangeReader {
    /// Load the states of the keys that the first event (if any) and the rest of the
    /// read buffer will ask for, when unseen keys were met lately; remember how many
    /// messages that covered, so the next look comes when they are worked through.
    pub(super) async fn load_ahead(
        &mut self,
        first: Option<&ReplicationEvent>,
        stream: &ReplicationStream,
    ) -> Result<(), PipelineError> {
        if !self.envelopes.take_missed() {
            return Ok(());
        }
        let room = self.envelopes.builder.lookahead_room().min(AHEAD_MAX);
        let mut wanted = Wanted::new(
            room,
            self.envelopes.builder.transaction_xid(),
            self.streams.block.is_some(),
        );
        let first = match first {
            Some(ReplicationEvent::XLogData { data, .. }) => Some(&data[..]),
            _ => None,
        };
        let mut covered = 0;
        for data in first.into_iter().chain(stream.buffered_messages()) {
            if wanted.full() {
                break;
            }
            look_at(&self.envelopes, data, &mut wanted);
            covered += 1;
        }
        self.ahead_left = covered;
        self.envelopes.load_keys(wanted).await
    }

    /// A message was worked through: when the looked-at ones are done, look again.
    pub(super) async fn load_ahead_when_due(
        &mut self,
        stream: &ReplicationStream,
    ) -> Result<(), PipelineError> {
        if self.ahead_left > 0 {
            self.ahead_left -= 1;
            return Ok(());
        }
        self.load_ahead(None, stream).await
    }
}

/// What one pgoutput message will ask for (changes of relations described so far).
fn look_at(envelopes: &Envelopes, data: &[u8], wanted: &mut Wanted) {
    match data.first() {
        Some(b'S') => wanted.in_stream = true,
        Some(b'E') => wanted.in_stream = false,
        _ => {}
    }
    if wanted.in_stream {
        return; // changes of a streamed transaction wait for its commit
    }
    let Ok(msg) = pgoutput::parse(data) else {
        return; // reported when the message is worked through
    };
    let builder = &envelopes.builder;
    match msg {
        PgOutput::Begin { xid, .. } => wanted.xid = Some(xid),
        PgOutput::Insert { relation_id, new } => {
            let mut found = |key, subject| wanted.add(key, subject);
            builder.unseen_keys(relation_id, Op::Insert, None, Some(&new), &mut found)
        }
        PgOutput::Update {
            relation_id,
            old,
            new,
        } => {
            let mut found = |key, subject| wanted.add(key, subject);
            builder.unseen_keys(
                relation_id,
                Op::Update,
                old.as_ref(),
                Some(&new),
                &mut found,
            );
            let xid = wanted.xid.unwrap_or_default();
            if let Some(needed) = builder.toast_ahead(relation_id, old.as_ref(), &new, xid) {
                wanted.add_toast(needed);
            }
        }
        PgOutput::Delete { relation_id, old } => {
            let mut found = |key, subject| wanted.add(key, subject);
            builder.unseen_keys(relation_id, Op::Delete, Some(&old), None, &mut found)
        }
        _ => {}
    }
}

/// A table row read ahead for the unchanged-TOAST values of a key.
pub(super) struct FetchedRow {
    pub(super) columns: Vec<String>,
    pub(super) texts: Vec<Option<String>>,
    /// The row's version (`xmin` or the sequence column); `None`: no row.
    pub(super) version: Option<String>,
    /// The read's snapshot.
    pub(super) seen: Arc<SeenSnapshot>,
}

impl FetchedRow {
    /// Whether the read saw the committed transaction `xid`: then a row that is not
    /// the version `xid` wrote was changed (or removed) after it.
    pub(super) fn saw_committed(&self, xid: u32) -> bool {
        self.seen.sees(xid)
    }

    /// The texts of `wanted` columns, if the row was read with all of them.
    pub(super) fn pick(&self, wanted: &[String]) -> Option<Vec<Option<String>>> {
        wanted
            .iter()
            .map(|w| {
                let i = self.columns.iter().position(|c| c == w)?;
                Some(self.texts.get(i).cloned().flatten())
            })
            .collect()
    }
}

impl Envelopes {
    /// Whether unseen keys were met since the last call.
    pub(super) fn take_missed(&mut self) -> bool {
        std::mem::take(&mut self.missed)
    }

    /// Load what `wanted` will ask for together: key states and last envelopes in
    /// batched gets, the other unchanged-TOAST values in one query per table.
    pub(super) async fn load_keys(&mut self, wanted: Wanted) -> Result<(), PipelineError> {
        self.ahead.clear();
        self.toast_rows.clear();
        if wanted.is_empty() {
            return Ok(());
        }
        // Needs were met: the next reads are looked at too.
        self.missed = true;
        let Wanted { keys, toast, .. } = wanted;
        if self.store.is_some() {
            self.load_key_states(keys, &toast).await?;
        }
        let from_table: Vec<ToastNeeded> = toast
            .into_iter()
            .filter(|n| {
                // From the table unless the stream has the exact values.
                let subject = n.source.stream_subject.as_ref();
                let last = subject
                    .and_then(|s| self.ahead.get(s))
                    .and_then(Option::as_ref);
                last.is_none_or(|e| marked_in(&e.envelope.value, &n.columns))
            })
            .collect();
        self.fetch_toast_rows(from_table).await
    }

    /// The unseen keys' states, and the last envelopes of those keys and of the keys
    /// whose unchanged TOAST the stream holds (tracked mode).
    async fn load_key_states(
        &mut self,
        keys: Vec<(String, String)>,
        toast: &[ToastNeeded],
    ) -> Result<(), PipelineError> {
        let store = self.store.as_ref().expect("tracked mode");
        let mut subjects: Vec<String> = keys.iter().map(|(_, s)| s.clone()).collect();
        subjects.extend(toast.iter().filter_map(|n| n.source.stream_subject.clone()));
        subjects.sort_unstable();
        subjects.dedup();
        let mut loaded = store.last_envelopes(&subjects).await?;
        let metrics = &self.metrics.envelope;
        metrics.key_state_loads.inc_by(keys.len() as u64);
        metrics.key_state_requests.inc_by(loaded.requests);
        for (key, subject) in keys {
            let state = match loaded.by_subject.get(&subject) {
                Some(last) => Some(store.key_state_of(&subject, last)?),
                None => None,
            };
            self.builder.provide_key_state(key, state);
        }
        for subject in subjects {
            let last = loaded.by_subject.remove(&subject);
            self.ahead.insert(subject, last);
        }
        Ok(())
    }

    /// Unchanged-TOAST values from the tables, one query per table, kept for the
    /// changes that will ask for them (valid for a change only while the row is still
    /// its version: checked when used).
    async fn fetch_toast_rows(&mut self, needs: Vec<ToastNeeded>) -> Result<(), PipelineError> {
        let mut by_table: HashMap<u32, Vec<ToastNeeded>> = HashMap::new();
        for n in needs {
            by_table.entry(n.relation_id).or_default().push(n);
        }
        for (relation_id, needs) in by_table {
            let info = self.table_info_of(relation_id, &needs[0]).await?;
            let mut columns: Vec<String> = needs.iter().flat_map(|n| n.columns.clone()).collect();
            columns.sort_unstable();
            columns.dedup();
            let (version, _) = needs[0].source.version.check();
            let keys: Vec<Vec<String>> = needs
                .iter()
                .map(|n| n.key_columns.iter().map(|(_, v)| v.clone()).collect())
                .collect();
            let read = self
                .catalog
                .read_rows_columns(&info, &keys, &columns, (&version, &[]))
                .await?;
            self.metrics.envelope.toast_fetch_queries.inc();
            let seen = Arc::new(read.seen);
            for (need, key) in needs.into_iter().zip(keys) {
                let (texts, version) = read.rows.get(&key).cloned().unwrap_or_default();
                let row = FetchedRow {
                    columns: columns.clone(),
                    texts,
                    version,
                    seen: seen.clone(),
                };
                self.toast_rows.insert(need.key, row);
            }
        }
        Ok(())
    }

    /// The table a TOAST fill reads, as the catalog describes it (kept until its next
    /// Relation message).
    async fn table_info_of(
        &mut self,
        relation_id: u32,
        need: &ToastNeeded,
    ) -> Result<TableInfo, PipelineError> {
        if let Some(info) = self.table_infos.get(&relation_id) {
            return Ok(info.clone());
        }
        let qualified = format!("{}.{}", need.schema, need.table);
        let info = self.catalog.table_info(&qualified).await?;
        self.table_infos.insert(relation_id, info.clone());
        Ok(info)
    }

    /// Envelopes of these subjects were built: what was loaded ahead for them is stale.
    pub(super) fn published(&mut self, built: &[Outgoing]) {
        if !self.ahead.is_empty() {
            for o in built {
                self.ahead.remove(&o.subject);
            }
        }
    }

    /// Forget what was read ahead (the stream is read again from an earlier point).
    pub(super) fn forget_ahead(&mut self) {
        self.ahead.clear();
        self.toast_rows.clear();
    }
}
