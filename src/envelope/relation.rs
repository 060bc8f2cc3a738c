//! Tables as the envelope stage knows them: a [`Relation`] per Relation message (its
//! shape, schema version, subject and key prefixes, and what its settings publish),
//! what a new Relation message changed ([`RelationUpdate`]), and the key and subject
//! of a row. [`EnvelopeBuilder::on_relation`](super::EnvelopeBuilder::on_relation)
//! makes them.

use super::schema::{SchemaHistory, SchemaVersion, TableShape};
use super::EnvelopeError;
use crate::decode::pgoutput::TupleValue;
use crate::wire::codec::Op;
use crate::wire::key;

/// A table as the envelope stage knows it.
#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub table: String,
    pub shape: TableShape,
    pub version: SchemaVersion,
    pub(super) version_text: String,
    /// `<prefix>.<schema token>.<table token>.`
    pub(super) subject_prefix: String,
    /// `<schema>.<table>:`
    pub(super) key_prefix: String,
    /// `REPLICA IDENTITY FULL`: updates carry the whole old row.
    pub full_identity: bool,
    /// Indexes of the columns that may arrive as unchanged TOAST.
    pub(super) toastable: Vec<usize>,
    /// Column mode: the index of the sequence column.
    pub(super) sequence_column: Option<usize>,
    /// Which columns the envelope's value carries.
    pub(super) published: Vec<bool>,
    /// Ops published (all when `None`).
    pub(super) ops: Option<Vec<Op>>,
    /// How long its `delete` envelopes stay in the stream (`None`: for good).
    pub(super) delete_ttl: Option<std::time::Duration>,
    /// How its rows are compressed and encrypted (`None`: in the clear, as is).
    pub(super) seal: Option<super::SealPlan>,
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

/// A row's key and subject.
pub(super) type Keyed = (String, String);

impl Relation {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The key and subject of the row `tuple`; an error when a key column is null.
    pub(super) fn key_of(
        &self,
        tuple: &[TupleValue<'_>],
        op: &'static str,
    ) -> Result<Keyed, EnvelopeError> {
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

    pub(super) fn check_column_count(
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

    pub(super) fn publishes(&self, op: Op) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }

    /// The text of the sequence column in the new row (column mode).
    pub(super) fn sequence_text(&self, new: &[TupleValue<'_>]) -> Option<String> {
        match new.get(self.sequence_column?)? {
            TupleValue::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        }
    }
}

/// Indexes of the columns of `shape` that may arrive as unchanged TOAST.
pub(super) fn toastable_columns(shape: &TableShape) -> Vec<usize> {
    shape
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.kind.is_toastable())
        .map(|(i, _)| i)
        .collect()
}
