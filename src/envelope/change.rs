//! One row change into its envelope(s): the key, unchanged-TOAST values, typed values,
//! the sequence. An update that changes the primary key is a `delete` of the old key
//! and an `insert` of the new one.

use super::emit::Rows;
use super::relation::Keyed;
use super::sequence::Lookup;
use super::toast_fill::{effective, full_old};
use super::{EnvelopeBuilder, EnvelopeError, Need, Outgoing, Relation};
use crate::decode::pgoutput::{OldTuple, TupleValue};
use crate::decode::value::parse_text;
use crate::wire::codec::{EnvelopeRef, RowRef};
use crate::wire::{Lsn, Op, Timestamp, Value};

/// An update's old key and subject when it changed the key.
fn moved_from(
    rel: &Relation,
    op: Op,
    old: Option<&OldTuple<'_>>,
    key: &str,
) -> Result<Option<Keyed>, EnvelopeError> {
    match (op, old) {
        (Op::Update, Some(old)) => {
            let (old_key, old_subject) = rel.key_of(old.values(), "update")?;
            Ok((old_key != key).then_some((old_key, old_subject)))
        }
        _ => Ok(None),
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
            return self.delete(relation_id, old, out);
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
        let rows = Rows::default();
        self.emit(relation_id, Op::Delete, (k, subject), rows, None, out)?;
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

    /// Whether a published value is the too-large marker (`--oversize marker`).
    pub fn is_too_large_marker(&self, value: &rmpv::Value) -> bool {
        value
            .as_map()
            .is_some_and(|m| m.len() == 1 && m[0].0.as_str() == Some(super::TOO_LARGE_KEY))
    }

    /// Whether a row's value alone is above the NATS server's `max_payload` (its
    /// envelope would be a too-large marker, or refused).
    pub fn row_too_large(
        &self,
        relation_id: u32,
        row: &[TupleValue<'_>],
    ) -> Result<bool, EnvelopeError> {
        let rel = self.relation(relation_id)?;
        let values = self.typed_values(relation_id, row, None, "")?;
        let bytes = rmp_serde::to_vec(&crate::wire::RowRef {
            columns: &rel.shape.columns,
            values: &values,
            published: Some(&rel.published),
        })?;
        Ok(bytes.len() > self.max_payload)
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
            xid: None,
            tx_index: None,
            before: None,
            compression: None,
            key_id: None,
            sealed_columns: None,
        };
        let mut out = Vec::with_capacity(256);
        super::seal::encode_to(&mut out, rel.seal.as_ref(), &envelope)?;
        Ok(Some(out))
    }

    fn delete(
        &mut self,
        relation_id: u32,
        old: Option<&OldTuple<'_>>,
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<Need>, EnvelopeError> {
        let old_values = old.map(|o| o.values()).unwrap_or_default();
        let rel = &self.relations[&relation_id];
        let tracked = self.tracked(rel);
        let (k, subject) = rel.key_of(old_values, "delete")?;
        if let Some(need) = self.key_state_need(tracked, &k, &subject) {
            return Ok(Some(need));
        }
        let rel = &self.relations[&relation_id];
        let column_seq = self.column_sequence(rel, old_values, true, "delete")?;
        let before = self.before_values(relation_id, old)?;
        let rows = Rows {
            value: None,
            before: before.as_deref(),
        };
        self.toast.remove(&k);
        self.emit(relation_id, Op::Delete, (k, subject), rows, column_seq, out)?;
        Ok(None)
    }

    /// The row before an update or delete when the table has `REPLICA IDENTITY FULL`
    /// (pgoutput's old tuple `O`, TOASTed values included); `None` otherwise.
    fn before_values<'a>(
        &self,
        relation_id: u32,
        old: Option<&OldTuple<'a>>,
    ) -> Result<Option<Vec<Value<'a>>>, EnvelopeError> {
        match full_old(old) {
            Some(o) if !o.contains(&TupleValue::UnchangedToast) => {
                self.typed_values(relation_id, o, None, "").map(Some)
            }
            _ => Ok(None),
        }
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
        let moved_from = moved_from(rel, op, old, &k)?;
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
        let before = self.before_values(relation_id, old)?;
        let mut rows = Rows {
            value: Some(&values),
            before: before.as_deref(),
        };
        let mut op = op;
        if let Some(from) = moved_from.clone() {
            self.emit_moved_delete(relation_id, from, old, rows.before, out)?;
            // The new key's row had no "before": it is an insert.
            (op, rows.before) = (Op::Insert, None);
        }
        self.cache_toast(relation_id, &k, new, &values, moved_from.is_some());
        self.pending_toast = None;
        self.emit(relation_id, op, (k, subject), rows, column_seq, out)?;
        Ok(None)
    }

    /// The `delete` of the old key of an update that changed the key, with the old
    /// row as its `before` (`REPLICA IDENTITY FULL`).
    fn emit_moved_delete(
        &mut self,
        relation_id: u32,
        (old_key, old_subject): Keyed,
        old: Option<&OldTuple<'_>>,
        before: Option<&[Value<'_>]>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), EnvelopeError> {
        let rel = &self.relations[&relation_id];
        let old_values = old.map(|o| o.values()).unwrap_or_default();
        let old_seq = self.column_sequence(rel, old_values, true, "delete")?;
        self.toast.remove(&old_key);
        let rows = Rows {
            value: None,
            before,
        };
        self.emit(
            relation_id,
            Op::Delete,
            (old_key, old_subject),
            rows,
            old_seq,
            out,
        )
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
