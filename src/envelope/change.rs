//! One row change into its envelope(s): the key, unchanged-TOAST values, typed values,
//! the sequence. An update that changes the primary key is a `delete` of the old key
//! and an `insert` of the new one.

use super::{
    EnvelopeBuilder, EnvelopeError, Need, Outgoing, Relation, RowVersion, ToastNeeded, ToastSource,
};
use crate::decode::pgoutput::{OldTuple, TupleValue};
use crate::decode::value::parse_text;
use crate::envelope::sequence::{Lookup, SequenceMode};
use crate::wire::codec::{self, EnvelopeRef, RowRef};
use crate::wire::{key, Lsn, Op, Timestamp, Value};

/// A row's key and subject.
type Keyed = (String, String);

impl Relation {
    /// The key and subject of the row `tuple`; an error when a key column is null.
    fn key_of(&self, tuple: &[TupleValue<'_>], op: &'static str) -> Result<Keyed, EnvelopeError> {
        let mut k = self.key_prefix.clone();
        let key_text = |i: usize| match tuple[i] {
            TupleValue::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        };
        for (n, &i) in self.shape.key.iter().enumerate() {
            let Some(text) = key_text(i) else {
                return Err(EnvelopeError::NullKey {
                    table: self.qualified_name(),
                    column: self.shape.columns[i].name.clone(),
                    op,
                });
            };
            key::push_key_value(&mut k, n == 0, text);
        }
        let mut subject = String::with_capacity(self.subject_prefix.len() + k.len() + 8);
        subject.push_str(&self.subject_prefix);
        let texts = self.shape.key.iter().filter_map(|&i| key_text(i));
        key::push_key_token(&mut subject, texts);
        Ok((k, subject))
    }

    fn check_column_count(
        &self,
        tuples: [Option<&[TupleValue<'_>]>; 2],
    ) -> Result<(), EnvelopeError> {
        let expected = self.shape.columns.len();
        match tuples.into_iter().flatten().find(|t| t.len() != expected) {
            Some(t) => Err(EnvelopeError::ColumnCount {
                table: self.qualified_name(),
                expected,
                got: t.len(),
            }),
            None => Ok(()),
        }
    }

    fn publishes(&self, op: Op) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }

    /// What to ask the database for: the row's key columns and the missing columns.
    fn toast_needed(
        &self,
        relation_id: u32,
        toast_key: String,
        new: &[TupleValue<'_>],
        missing: &[usize],
        source: ToastSource,
    ) -> ToastNeeded {
        let text = |i: usize| match new[i] {
            TupleValue::Text(t) => String::from_utf8_lossy(t).into_owned(),
            _ => String::new(),
        };
        ToastNeeded {
            relation_id,
            schema: self.schema.clone(),
            table: self.table.clone(),
            key: toast_key,
            key_columns: self
                .shape
                .key
                .iter()
                .map(|&i| (self.shape.columns[i].name.clone(), text(i)))
                .collect(),
            columns: missing
                .iter()
                .map(|&i| self.shape.columns[i].name.clone())
                .collect(),
            source,
        }
    }

    /// The text of the sequence column in the new row (column mode).
    fn sequence_text(&self, new: &[TupleValue<'_>]) -> Option<String> {
        match new.get(self.sequence_column?)? {
            TupleValue::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        }
    }
}

/// The full old row, when the table has `REPLICA IDENTITY FULL`.
fn full_old<'t, 'a>(old: Option<&'t OldTuple<'a>>) -> Option<&'t [TupleValue<'a>]> {
    match old {
        Some(OldTuple::Full(v)) => Some(v.as_slice()),
        _ => None,
    }
}

/// Column `i` of the new row, or of the full old row when unchanged TOAST.
fn effective<'a>(
    new: &[TupleValue<'a>],
    full_old: Option<&[TupleValue<'a>]>,
    i: usize,
) -> TupleValue<'a> {
    match (new[i], full_old) {
        (TupleValue::UnchangedToast, Some(o)) if !matches!(o[i], TupleValue::UnchangedToast) => {
            o[i]
        }
        (v, _) => v,
    }
}

impl EnvelopeBuilder {
    /// Build the envelope(s) of one Insert, Update or Delete. Returns what must be
    /// loaded first, if anything; nothing is emitted then.
    pub fn change(
        &mut self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: Option<&[TupleValue<'_>]>,
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        let rel = self.keyed_relation(relation_id, [new, old.map(|o| o.values())])?;
        if !(rel.publishes(op) || op == Op::Update && rel.publishes(Op::Delete)) {
            return Ok(None);
        }
        if matches!(op, Op::Delete | Op::Truncate) {
            let old_values = old.map(|o| o.values()).unwrap_or_default();
            return self.delete(relation_id, old_values, out);
        }
        self.upsert(relation_id, op, old, new.unwrap_or_default(), out)
    }

    /// One row of a snapshot chunk (all values present): an `op = "snapshot"`
    /// envelope that starts the key's sequence (or continues it).
    pub fn snapshot_row(
        &mut self,
        relation_id: u32,
        row: &[TupleValue<'_>],
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        self.keyed_relation(relation_id, [Some(row), None])?;
        self.upsert(relation_id, Op::Snapshot, None, row, out)
    }

    /// The relation of a change inside a transaction: it has a key, and the tuples
    /// have its column count.
    fn keyed_relation(
        &self,
        relation_id: u32,
        tuples: [Option<&[TupleValue<'_>]>; 2],
    ) -> Result<&Relation, EnvelopeError> {
        self.tx.ok_or(EnvelopeError::NoTransaction)?;
        let rel = self.relation(relation_id)?;
        if rel.shape.key.is_empty() {
            return Err(EnvelopeError::NoKey {
                table: rel.qualified_name(),
            });
        }
        rel.check_column_count(tuples)?;
        Ok(rel)
    }

    /// A re-snapshot found no row for a key the stream still holds (tracked mode):
    /// its `delete`, unless the key's last envelope is one already. `key_values` are
    /// the key columns' text forms, in key order.
    pub fn snapshot_delete(
        &mut self,
        relation_id: u32,
        key_values: &[String],
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        self.tx.ok_or(EnvelopeError::NoTransaction)?;
        let rel = self.relation(relation_id)?;
        if !self.tracked(rel) || rel.shape.key.len() != key_values.len() {
            return Ok(None);
        }
        let mut row = vec![TupleValue::Null; rel.shape.columns.len()];
        for (&i, v) in rel.shape.key.iter().zip(key_values) {
            row[i] = TupleValue::Text(v.as_bytes());
        }
        let (k, subject) = rel.key_of(&row, "delete")?;
        if let Some(need) = self.key_state_need(true, &k, &subject) {
            return Ok(Some(need));
        }
        match self.keys.lookup(&k) {
            Lookup::Known(Some(state)) if !state.deleted => {}
            _ => return Ok(None),
        }
        self.toast.remove(&k);
        self.emit(relation_id, Op::Delete, k, subject, None, None, out)?;
        Ok(None)
    }

    /// The key and subject of a row of `relation_id`.
    pub fn key_of_row(
        &self,
        relation_id: u32,
        row: &[TupleValue<'_>],
    ) -> Result<(String, String), EnvelopeError> {
        let rel = self.relation(relation_id)?;
        rel.key_of(row, "snapshot")
    }

    /// Whether the stream may hold an envelope on `subject` (tracked mode: the
    /// subject filter; otherwise always).
    pub fn may_have_published(&self, subject: &str) -> bool {
        self.subject_filter
            .as_ref()
            .is_none_or(|f| f.may_contain(subject))
    }

    /// A row's published value (what an envelope of it would carry), to compare
    /// with a key's last envelope.
    pub fn row_value(
        &self,
        relation_id: u32,
        row: &[TupleValue<'_>],
    ) -> Result<rmpv::Value, EnvelopeError> {
        let rel = self.relation(relation_id)?;
        let values = self.typed_values(relation_id, row, None, "")?;
        let bytes = rmp_serde::to_vec(&crate::wire::RowRef {
            columns: &rel.shape.columns,
            values: &values,
            published: Some(&rel.published),
        })?;
        rmpv::decode::read_value(&mut bytes.as_slice())
            .map_err(|e| EnvelopeError::Decode(e.to_string()))
    }

    /// Column mode: the envelope of a row read from the table now (a refetch
    /// answer), encoded; nothing is cached or assigned. `None`: the table's sequence
    /// is not a column of the row (tracked mode: the stream holds the answer).
    pub fn refetch_envelope(
        &self,
        relation_id: u32,
        row: &[TupleValue<'_>],
        lsn: Lsn,
        commit_ts: Timestamp,
    ) -> Result<Option<Vec<u8>>, EnvelopeError> {
        let rel = self.relation(relation_id)?;
        rel.check_column_count([Some(row), None])?;
        let Some(sequence) = self.column_sequence(rel, row, false, "snapshot")? else {
            return Ok(None);
        };
        let (key, _) = rel.key_of(row, "snapshot")?;
        let values = self.typed_values(relation_id, row, None, "")?;
        let envelope = EnvelopeRef {
            key: &key,
            op: Op::Snapshot,
            value: Some(RowRef {
                columns: &rel.shape.columns,
                values: &values,
                published: Some(&rel.published),
            }),
            schema_version: &rel.version_text,
            sequence,
            lsn: lsn.0,
            commit_ts,
        };
        Ok(Some(codec::encode(&envelope)?))
    }

    pub(super) fn tracked(&self, rel: &Relation) -> bool {
        self.mode_of(rel) == SequenceMode::Tracked
    }

    fn delete(
        &mut self,
        relation_id: u32,
        old_values: &[TupleValue<'_>],
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        let rel = &self.relations[&relation_id];
        let tracked = self.tracked(rel);
        let (k, subject) = rel.key_of(old_values, "delete")?;
        if let Some(need) = self.key_state_need(tracked, &k, &subject) {
            return Ok(Some(need));
        }
        let rel = &self.relations[&relation_id];
        let column_seq = self.column_sequence(rel, old_values, true, "delete")?;
        self.toast.remove(&k);
        self.emit(relation_id, Op::Delete, k, subject, None, column_seq, out)?;
        Ok(None)
    }

    fn upsert(
        &mut self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: &[TupleValue<'_>],
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        let rel = &self.relations[&relation_id];
        let tracked = self.tracked(rel);
        let (k, subject) = rel.key_of(new, op.as_str())?;
        // A key change: the old key's row is gone.
        let moved_from = match (op, old) {
            (Op::Update, Some(old)) => {
                let (old_key, old_subject) = rel.key_of(old.values(), "update")?;
                (old_key != k).then_some((old_key, old_subject))
            }
            _ => None,
        };
        let full_old = full_old(old);
        // Unchanged TOAST columns: from the full old row, else from the cache (under
        // the old key when the key changed).
        let toast_key = moved_from
            .as_ref()
            .map_or_else(|| k.clone(), |(ok, _)| ok.clone());
        let missing = self.missing_toast(new, full_old, &toast_key);
        if !missing.is_empty() {
            let source = self.toast_source(rel, new, &toast_key, &subject, moved_from.as_ref());
            let needed = rel.toast_needed(relation_id, toast_key, new, &missing, source);
            return Ok(Some(Need::Toast(needed)));
        }
        for (key, subject) in moved_from
            .iter()
            .chain([(k.clone(), subject.clone())].iter())
        {
            if let Some(need) = self.key_state_need(tracked, key, subject) {
                return Ok(Some(need));
            }
        }
        let values = self.typed_values(relation_id, new, full_old, &toast_key)?;
        let rel = &self.relations[&relation_id];
        let column_seq = self.column_sequence(rel, new, false, op.as_str())?;
        let mut op = op;
        if let Some((old_key, old_subject)) = &moved_from {
            let old_values = old.map(|o| o.values()).unwrap_or_default();
            let old_seq = self.column_sequence(rel, old_values, true, "delete")?;
            self.toast.remove(old_key);
            let (key, subject) = (old_key.clone(), old_subject.clone());
            self.emit(relation_id, Op::Delete, key, subject, None, old_seq, out)?;
            op = Op::Insert;
        }
        self.cache_toast(relation_id, &k, new, &values, moved_from.is_some());
        self.pending_toast = None;
        self.emit(relation_id, op, k, subject, Some(&values), column_seq, out)?;
        Ok(None)
    }

    /// Where the missing unchanged-TOAST values of this change are exact: the key's
    /// last envelope in tracked mode (the old key's, after a key change), else the
    /// table's row while it is still this change's version.
    fn toast_source(
        &self,
        rel: &Relation,
        new: &[TupleValue<'_>],
        toast_key: &str,
        subject: &str,
        moved_from: Option<&Keyed>,
    ) -> ToastSource {
        debug_assert!(moved_from.is_none_or(|(k, _)| k == toast_key));
        let stream_subject = self
            .tracked(rel)
            .then(|| moved_from.map_or(subject, |(_, s)| s.as_str()).to_string());
        let version = match (rel.sequence_column, rel.sequence_text(new)) {
            (Some(i), Some(expected)) => RowVersion::SequenceColumn {
                column: rel.shape.columns[i].name.clone(),
                expected,
            },
            _ => RowVersion::Xmin {
                xid: self.tx.map(|t| t.xid).unwrap_or_default(),
            },
        };
        ToastSource {
            stream_subject,
            version,
        }
    }

    /// Indexes of unchanged-TOAST columns neither the old row nor the cache has.
    fn missing_toast(
        &self,
        new: &[TupleValue<'_>],
        full_old: Option<&[TupleValue<'_>]>,
        toast_key: &str,
    ) -> Vec<usize> {
        (0..new.len())
            .filter(|&i| {
                effective(new, full_old, i) == TupleValue::UnchangedToast
                    && self.toast_value(toast_key, i).is_none()
            })
            .collect()
    }

    /// The row's typed values (unchanged TOAST from the old row or the cache).
    fn typed_values<'a>(
        &self,
        relation_id: u32,
        new: &[TupleValue<'a>],
        full_old: Option<&[TupleValue<'a>]>,
        toast_key: &str,
    ) -> Result<Vec<Value<'a>>, EnvelopeError> {
        let rel = &self.relations[&relation_id];
        let mut values = Vec::with_capacity(new.len());
        for (i, col) in rel.shape.columns.iter().enumerate() {
            let bad_value = |source| EnvelopeError::Value {
                table: rel.qualified_name(),
                column: col.name.clone(),
                source,
            };
            values.push(match effective(new, full_old, i) {
                TupleValue::Null => Value::Null,
                TupleValue::Text(t) => parse_text(&col.kind, t).map_err(bad_value)?,
                TupleValue::UnchangedToast => self
                    .toast_value(toast_key, i)
                    .cloned()
                    .expect("checked by missing_toast: provided or cached"),
                TupleValue::Binary(_) => {
                    return Err(EnvelopeError::Binary {
                        table: rel.qualified_name(),
                        column: col.name.clone(),
                    })
                }
            });
        }
        Ok(values)
    }

    /// Remember the TOASTable values that came with this change (tables without FULL
    /// identity): a later change may leave them unchanged. After a key change, the
    /// carried-over values move to the new key.
    fn cache_toast(
        &mut self,
        relation_id: u32,
        k: &str,
        new: &[TupleValue<'_>],
        values: &[Value<'_>],
        moved: bool,
    ) {
        let rel = &self.relations[&relation_id];
        if rel.full_identity || rel.toastable.is_empty() {
            return;
        }
        if !may_be_toasted(new) {
            // No value of a row this small is stored out of line, so its next change
            // carries them all: nothing to remember.
            self.toast.remove(k);
            return;
        }
        let pick = |unchanged: bool| -> Vec<(usize, Value<'static>)> {
            rel.toastable
                .iter()
                .filter(|&&i| (new[i] == TupleValue::UnchangedToast) == unchanged)
                .filter(|&&i| values[i] != Value::Unavailable)
                .map(|&i| (i, values[i].clone().into_owned()))
                .collect()
        };
        let fresh = pick(false);
        if moved {
            let carried = pick(true);
            self.toast.insert(k.to_string(), carried);
        }
        self.toast.update(k, fresh);
    }

    /// Column mode: the sequence the row carries (a delete: the old value + 1).
    fn column_sequence(
        &self,
        rel: &Relation,
        tuple: &[TupleValue<'_>],
        deleting: bool,
        op: &'static str,
    ) -> Result<Option<u64>, EnvelopeError> {
        let Some(i) = rel.sequence_column else {
            return Ok(None);
        };
        let bad = |detail: String| EnvelopeError::BadSequenceColumn {
            table: rel.qualified_name(),
            column: rel.shape.columns[i].name.clone(),
            op,
            detail,
        };
        let text = match tuple.get(i) {
            Some(TupleValue::Text(t)) => {
                std::str::from_utf8(t).map_err(|_| bad("not UTF-8".into()))?
            }
            Some(TupleValue::Null) => return Err(bad("null".into())),
            _ => return Err(bad("not in the change".into())),
        };
        let n: u64 = text.parse().map_err(|_| bad(format!("{text:?}")))?;
        Ok(Some(if deleting { n + 1 } else { n }))
    }
}

/// A row whose values take fewer bytes (in their text form) than this is far below
/// PostgreSQL's TOAST threshold (about 2 kB on disk, and no type's stored form takes
/// more than about five times its text): none of its values is stored out of line.
const TOASTABLE_ROW_BYTES: usize = 400;

/// Whether a value of the row `new` may be stored out of line (TOASTed).
fn may_be_toasted(new: &[TupleValue<'_>]) -> bool {
    let mut bytes = 0;
    for v in new {
        bytes += match v {
            TupleValue::UnchangedToast => return true,
            TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
            TupleValue::Null => 0,
        };
    }
    bytes >= TOASTABLE_ROW_BYTES
}
