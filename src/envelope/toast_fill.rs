//! Unchanged-TOAST columns: an update that leaves a large value unchanged does not
//! carry it. Which values a change lacks (neither in the full old row nor cached),
//! what the caller is asked to read and where it is exact ([`ToastNeeded`]), the
//! values it read (from the table, valid only while its row is still the change's
//! version, or from the key's last envelope in the stream; kept for the next change
//! of the key whatever the cache's budget), and what is remembered for later changes.

use super::relation::Keyed;
use super::{EnvelopeBuilder, EnvelopeError, Relation, RowVersion, ToastNeeded, ToastSource};
use crate::decode::pgoutput::{OldTuple, TupleValue};
use crate::decode::value::parse_text;
use crate::wire::Value;

/// Whether a published column value is the unavailable marker
/// (`{"$walcast_unavailable": "unchanged-toast"}`).
pub fn is_unavailable_marker(v: &rmpv::Value) -> bool {
    v.as_map()
        .is_some_and(|m| m.len() == 1 && m[0].0.as_str() == Some(crate::wire::UNAVAILABLE_KEY))
}

/// Whether a published row carries the unavailable marker in one of `columns`.
pub fn marked_in(row: &rmpv::Value, columns: &[String]) -> bool {
    row.as_map().is_some_and(|m| {
        m.iter().any(|(k, v)| {
            k.as_str().is_some_and(|k| columns.iter().any(|c| c == k)) && is_unavailable_marker(v)
        })
    })
}

/// The full old row, when the table has `REPLICA IDENTITY FULL`.
pub(super) fn full_old<'t, 'a>(old: Option<&'t OldTuple<'a>>) -> Option<&'t [TupleValue<'a>]> {
    match old {
        Some(OldTuple::Full(v)) => Some(v.as_slice()),
        _ => None,
    }
}

/// Column `i` of the new row, or of the full old row when unchanged TOAST.
pub(super) fn effective<'a>(
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

impl Relation {
    /// What to ask the database for: the row's key columns and the missing columns.
    pub(super) fn toast_needed(
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
}

impl EnvelopeBuilder {
    /// Indexes of unchanged-TOAST columns neither the old row nor the cache has.
    pub(super) fn missing_toast(
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

    /// Where the missing unchanged-TOAST values of this change are exact: the key's
    /// last envelope in tracked mode (the old key's, after a key change), else the
    /// table's row while it is still this change's version.
    pub(super) fn toast_source(
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
        let xid = self.tx.map(|t| t.xid).unwrap_or_default();
        let version = match (rel.sequence_column, rel.sequence_text(new)) {
            (Some(i), Some(expected)) => RowVersion::SequenceColumn {
                column: rel.shape.columns[i].name.clone(),
                expected,
            },
            _ => RowVersion::Xmin { xid },
        };
        ToastSource {
            stream_subject,
            version,
            xid,
        }
    }

    /// Values read from the table for a [`ToastNeeded`] (text forms, by column), and
    /// whether the row read is still the version the change wrote: when it is not,
    /// the columns are published as unavailable. Returns how many published columns
    /// are unavailable.
    pub fn provide_toast(
        &mut self,
        needed: &ToastNeeded,
        texts: &[Option<String>],
        same_version: bool,
    ) -> Result<usize, EnvelopeError> {
        let rel = self.relation(needed.relation_id)?;
        let mut vals = Vec::new();
        for (name, text) in needed.columns.iter().zip(texts) {
            let Some(idx) = rel.shape.columns.iter().position(|c| &c.name == name) else {
                continue;
            };
            let col = &rel.shape.columns[idx];
            let v = match text {
                _ if !same_version => Value::Unavailable,
                None => Value::Null,
                Some(t) => parse_text(&col.kind, t.as_bytes())
                    .map_err(|source| EnvelopeError::Value {
                        table: rel.qualified_name(),
                        column: col.name.clone(),
                        source,
                    })?
                    .into_owned(),
            };
            vals.push((idx, v));
        }
        Ok(self.set_pending_toast(needed, vals))
    }

    /// The row value of the key's last envelope in the stream (`None`: the stream
    /// has none) for a [`ToastNeeded`] whose source has a `stream_subject`: each
    /// needed column as it was published. Returns how many published columns are
    /// unavailable.
    pub fn provide_toast_from_envelope(
        &mut self,
        needed: &ToastNeeded,
        row: Option<&rmpv::Value>,
    ) -> Result<usize, EnvelopeError> {
        let rel = self.relation(needed.relation_id)?;
        let published = row.and_then(rmpv::Value::as_map);
        let mut vals = Vec::new();
        for name in &needed.columns {
            let Some(idx) = rel.shape.columns.iter().position(|c| &c.name == name) else {
                continue;
            };
            let found = published.and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_str() == Some(name))
                    .map(|(_, v)| v.clone())
            });
            // A value published as unavailable stays unavailable (never copied on as
            // if it were the value).
            let value = found.filter(|v| !is_unavailable_marker(v));
            vals.push((idx, value.map_or(Value::Unavailable, Value::Raw)));
        }
        Ok(self.set_pending_toast(needed, vals))
    }

    /// Values for the next change of `needed.key`, whatever the cache's budget; the
    /// cache keeps them too when they fit.
    fn set_pending_toast(
        &mut self,
        needed: &ToastNeeded,
        mut vals: Vec<(usize, Value<'static>)>,
    ) -> usize {
        let rel = &self.relations[&needed.relation_id];
        let unavailable = vals
            .iter()
            .filter(|(i, v)| *v == Value::Unavailable && rel.published[*i])
            .count();
        if let Some(existing) = self.toast.entries.get(&needed.key) {
            for (i, v) in existing {
                if !vals.iter().any(|(j, _)| j == i) {
                    vals.push((*i, v.clone()));
                }
            }
        }
        let cached: Vec<(usize, Value<'static>)> = vals
            .iter()
            .filter(|(_, v)| *v != Value::Unavailable)
            .cloned()
            .collect();
        self.toast.insert(needed.key.clone(), cached);
        self.pending_toast = Some((needed.key.clone(), vals));
        unavailable
    }

    /// An unchanged TOAST value of `key`'s column `i`: just provided, else cached.
    pub(super) fn toast_value(&self, key: &str, i: usize) -> Option<&Value<'static>> {
        match &self.pending_toast {
            Some((k, vals)) if k == key => vals.iter().find(|(j, _)| *j == i).map(|(_, v)| v),
            _ => None,
        }
        .or_else(|| self.toast.get(key, i))
    }

    /// Remember the TOASTable values that came with this change (tables without FULL
    /// identity): a later change may leave them unchanged. After a key change, the
    /// carried-over values move to the new key.
    pub(super) fn cache_toast(
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
