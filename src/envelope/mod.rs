//! The envelope stage: decoded row changes become per-key envelopes.
//!
//! It keeps the table shapes (from Relation messages) with their schema versions,
//! extracts each row's canonical key from the primary key, assigns the per-key
//! sequence, fills unchanged-TOAST columns, and hands each envelope to the codec
//! exactly once. See `docs/envelope.md` for the contract.

pub mod key;
pub mod schema;

use std::collections::HashMap;

use bytes::Bytes;

use crate::codec::{self, EnvelopeRef, Op, RowRef};
use crate::decode::pgoutput::{OldTuple, TupleValue};
use crate::decode::value::{parse_text, Timestamp, Value, ValueError};
use crate::lsn::Lsn;
use schema::{next_version, Column, SchemaVersion, ShapeChange, TableShape};

/// Why a change could not become an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("table {table} has no primary key and no replica identity index: walcast cannot key its rows (add a primary key, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX <unique index>)")]
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
    #[error("change outside a transaction (no Begin)")]
    NoTransaction,
    #[error("encoding the envelope failed: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Columns whose unchanged-TOAST value is needed but not known: the caller fetches
/// them and passes them to [`EnvelopeBuilder::provide_toast`], then retries.
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
}

/// A table as the envelope stage knows it.
#[derive(Debug, Clone)]
pub struct Relation {
    pub id: u32,
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
}

/// What a Relation message changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationUpdate {
    pub table: String,
    pub previous: Option<SchemaVersion>,
    pub current: SchemaVersion,
}

/// The open transaction's commit identity.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    commit_lsn: Lsn,
    commit_ts: Timestamp,
}

/// Last values of TOASTable columns per key, for tables without FULL identity.
/// Bounded by a byte budget; when full, entries are evicted.
#[derive(Debug, Default)]
struct ToastCache {
    entries: HashMap<String, Vec<(usize, Value<'static>)>>,
    bytes: usize,
    budget: usize,
}

fn value_size(v: &Value<'_>) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Bin(b) => b.len(),
        Value::Array(a) => a.iter().map(value_size).sum::<usize>() + 8,
        Value::Json(j) => j.to_string().len(),
        _ => 16,
    }
}

impl ToastCache {
    fn entry_size(key: &str, vals: &[(usize, Value<'static>)]) -> usize {
        key.len() + 32 + vals.iter().map(|(_, v)| value_size(v) + 16).sum::<usize>()
    }

    fn insert(&mut self, key: String, vals: Vec<(usize, Value<'static>)>) {
        self.remove(&key);
        let size = Self::entry_size(&key, &vals);
        if size > self.budget {
            return;
        }
        while self.bytes + size > self.budget {
            let Some(victim) = self.entries.keys().next().cloned() else {
                break;
            };
            self.remove(&victim);
        }
        self.bytes += size;
        self.entries.insert(key, vals);
    }

    fn remove(&mut self, key: &str) {
        if let Some(v) = self.entries.remove(key) {
            self.bytes -= Self::entry_size(key, &v);
        }
    }

    fn get(&self, key: &str, column: usize) -> Option<&Value<'static>> {
        self.entries
            .get(key)?
            .iter()
            .find(|(i, _)| *i == column)
            .map(|(_, v)| v)
    }
}

/// Turns decoded changes into encoded envelopes; holds the per-table and per-key state.
#[derive(Debug)]
pub struct EnvelopeBuilder {
    prefix: String,
    relations: HashMap<u32, Relation>,
    sequences: HashMap<String, u64>,
    truncates: HashMap<u32, u64>,
    toast: ToastCache,
    tx: Option<Transaction>,
}

impl EnvelopeBuilder {
    /// `prefix` is the subject prefix; `toast_cache_bytes` bounds the memory kept for
    /// unchanged-TOAST columns of tables without FULL replica identity.
    pub fn new(prefix: &str, toast_cache_bytes: usize) -> Self {
        EnvelopeBuilder {
            prefix: prefix.to_string(),
            relations: HashMap::new(),
            sequences: HashMap::new(),
            truncates: HashMap::new(),
            toast: ToastCache {
                budget: toast_cache_bytes,
                ..Default::default()
            },
            tx: None,
        }
    }

    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
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
        if key.is_empty() {
            return Err(EnvelopeError::NoKey { table: qualified });
        }
        let shape = TableShape { columns, key };
        let previous = self.relations.get(&id).map(|r| r.version);
        let version = match self.relations.get(&id) {
            Some(old) if old.schema == schema && old.table == table => {
                next_version(old.version, old.shape.compare(&shape))
            }
            // Renamed table: a new identity for consumers.
            Some(old) => next_version(old.version, ShapeChange::Breaking),
            None => SchemaVersion::INITIAL,
        };
        let toastable = shape
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind.is_toastable())
            .map(|(i, _)| i)
            .collect();
        let rel = Relation {
            id,
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
            shape,
        };
        self.relations.insert(id, rel);
        Ok(RelationUpdate {
            table: qualified,
            previous,
            current: version,
        })
    }

    /// A Begin message: envelopes until the Commit carry this commit LSN and time.
    pub fn begin(&mut self, commit_lsn: Lsn, commit_ts_pg_micros: i64) {
        self.tx = Some(Transaction {
            commit_lsn,
            commit_ts: Timestamp::from_pg_micros(commit_ts_pg_micros),
        });
    }

    /// The Commit message: the transaction is closed.
    pub fn commit(&mut self) {
        self.tx = None;
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Values fetched from the database for a [`ToastNeeded`] (text forms, by column).
    pub fn provide_toast(
        &mut self,
        needed: &ToastNeeded,
        texts: &[Option<String>],
    ) -> Result<(), EnvelopeError> {
        let rel = self
            .relations
            .get(&needed.relation_id)
            .ok_or(EnvelopeError::UnknownRelation(needed.relation_id))?;
        let mut vals = Vec::new();
        for (name, text) in needed.columns.iter().zip(texts) {
            let Some(idx) = rel.shape.columns.iter().position(|c| &c.name == name) else {
                continue;
            };
            let col = &rel.shape.columns[idx];
            let v = match text {
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
        if let Some(existing) = self.toast.entries.get(&needed.key) {
            for (i, v) in existing {
                if !vals.iter().any(|(j, _)| j == i) {
                    vals.push((*i, v.clone()));
                }
            }
        }
        self.toast.insert(needed.key.clone(), vals);
        Ok(())
    }

    /// Build the envelope(s) of one Insert, Update or Delete. An update that changes
    /// the primary key yields a `delete` of the old key and an `insert` of the new one.
    pub fn change(
        &mut self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: Option<&[TupleValue<'_>]>,
        out: &mut Vec<Outgoing>,
    ) -> Result<Option<ToastNeeded>, EnvelopeError> {
        let tx = self.tx.ok_or(EnvelopeError::NoTransaction)?;
        let rel = self
            .relations
            .get(&relation_id)
            .ok_or(EnvelopeError::UnknownRelation(relation_id))?;
        let ncols = rel.shape.columns.len();
        for tuple in [new, old.map(|o| o.values())].into_iter().flatten() {
            if tuple.len() != ncols {
                return Err(EnvelopeError::ColumnCount {
                    table: rel.qualified_name(),
                    expected: ncols,
                    got: tuple.len(),
                });
            }
        }

        let key_of = |tuple: &[TupleValue<'_>], op_name: &'static str| {
            let mut k = rel.key_prefix.clone();
            let mut token_parts: Vec<&str> = Vec::with_capacity(rel.shape.key.len());
            for (n, &i) in rel.shape.key.iter().enumerate() {
                let text = match tuple[i] {
                    TupleValue::Text(t) => std::str::from_utf8(t).ok(),
                    _ => None,
                };
                let Some(text) = text else {
                    return Err(EnvelopeError::NullKey {
                        table: rel.qualified_name(),
                        column: rel.shape.columns[i].name.clone(),
                        op: op_name,
                    });
                };
                key::push_key_value(&mut k, n == 0, text);
                token_parts.push(text);
            }
            let subject = format!("{}{}", rel.subject_prefix, key::key_token(token_parts));
            Ok((k, subject))
        };

        match op {
            Op::Delete | Op::Truncate => {
                let old = old.map(|o| o.values()).unwrap_or_default();
                let (k, subject) = key_of(old, "delete")?;
                self.emit(relation_id, tx, Op::Delete, k, subject, None, out)?;
                Ok(None)
            }
            Op::Insert | Op::Update | Op::Snapshot => {
                let new = new.unwrap_or_default();
                let (k, subject) = key_of(new, op.as_str())?;
                // A key change: the old key's row is gone.
                let moved_from = match (op, old) {
                    (Op::Update, Some(old)) => {
                        let (old_key, old_subject) = key_of(old.values(), "update")?;
                        (old_key != k).then_some((old_key, old_subject))
                    }
                    _ => None,
                };
                let full_old = match old {
                    Some(OldTuple::Full(v)) => Some(v.as_slice()),
                    _ => None,
                };
                // Unchanged TOAST columns: from the full old row, else from the cache
                // (under the old key when the key changed).
                let toast_key = moved_from
                    .as_ref()
                    .map(|(ok, _)| ok.clone())
                    .unwrap_or_else(|| k.clone());
                let mut missing = Vec::new();
                for (i, v) in new.iter().enumerate() {
                    if *v == TupleValue::UnchangedToast {
                        let from_old = full_old
                            .map(|o| !matches!(o[i], TupleValue::UnchangedToast))
                            .unwrap_or(false);
                        if !from_old && self.toast.get(&toast_key, i).is_none() {
                            missing.push(i);
                        }
                    }
                }
                if !missing.is_empty() {
                    return Ok(Some(ToastNeeded {
                        relation_id,
                        schema: rel.schema.clone(),
                        table: rel.table.clone(),
                        key: toast_key,
                        key_columns: rel
                            .shape
                            .key
                            .iter()
                            .map(|&i| {
                                let text = match new[i] {
                                    TupleValue::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                    _ => String::new(),
                                };
                                (rel.shape.columns[i].name.clone(), text)
                            })
                            .collect(),
                        columns: missing
                            .iter()
                            .map(|&i| rel.shape.columns[i].name.clone())
                            .collect(),
                    }));
                }
                let mut values = Vec::with_capacity(new.len());
                for (i, v) in new.iter().enumerate() {
                    let col = &rel.shape.columns[i];
                    let tv = match (*v, full_old) {
                        (TupleValue::UnchangedToast, Some(o))
                            if !matches!(o[i], TupleValue::UnchangedToast) =>
                        {
                            o[i]
                        }
                        _ => *v,
                    };
                    values.push(match tv {
                        TupleValue::Null => Value::Null,
                        TupleValue::Text(t) => {
                            parse_text(&col.kind, t).map_err(|source| EnvelopeError::Value {
                                table: rel.qualified_name(),
                                column: col.name.clone(),
                                source,
                            })?
                        }
                        TupleValue::UnchangedToast => self
                            .toast
                            .get(&toast_key, i)
                            .cloned()
                            .expect("checked above: cached"),
                        TupleValue::Binary(_) => {
                            return Err(EnvelopeError::Binary {
                                table: rel.qualified_name(),
                                column: col.name.clone(),
                            })
                        }
                    });
                }
                let mut op = op;
                if let Some((old_key, old_subject)) = moved_from {
                    self.toast.remove(&old_key);
                    self.emit(relation_id, tx, Op::Delete, old_key, old_subject, None, out)?;
                    op = Op::Insert;
                }
                let rel = &self.relations[&relation_id];
                if !rel.full_identity && !rel.toastable.is_empty() {
                    let cached = rel
                        .toastable
                        .iter()
                        .map(|&i| (i, values[i].clone().into_owned()))
                        .collect();
                    self.toast.insert(k.clone(), cached);
                }
                self.emit(relation_id, tx, op, k, subject, Some(&values), out)?;
                Ok(None)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        relation_id: u32,
        tx: Transaction,
        op: Op,
        key: String,
        subject: String,
        values: Option<&[Value<'_>]>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), EnvelopeError> {
        let rel = &self.relations[&relation_id];
        if op == Op::Delete {
            self.toast.remove(&key);
        }
        let sequence = match self.sequences.get_mut(&key) {
            Some(s) => {
                *s += 1;
                *s
            }
            None => {
                self.sequences.insert(key.clone(), 1);
                1
            }
        };
        let envelope = EnvelopeRef {
            key: &key,
            op,
            value: values.map(|values| RowRef {
                columns: &rel.shape.columns,
                values,
            }),
            schema_version: &rel.version_text,
            sequence,
            lsn: tx.commit_lsn.0,
            commit_ts: tx.commit_ts,
        };
        let payload = codec::encode(&envelope)?;
        out.push(Outgoing {
            subject,
            payload: Bytes::from(payload),
        });
        Ok(())
    }

    /// A Truncate message: one table-level `truncate` envelope per table, on the
    /// subject `<prefix>.<schema>.<table>.~truncate`, with the key `<schema>.<table>:`
    /// and a per-table sequence.
    pub fn truncate(
        &mut self,
        relation_ids: &[u32],
        out: &mut Vec<Outgoing>,
    ) -> Result<(), EnvelopeError> {
        let tx = self.tx.ok_or(EnvelopeError::NoTransaction)?;
        for &id in relation_ids {
            let rel = self
                .relations
                .get(&id)
                .ok_or(EnvelopeError::UnknownRelation(id))?;
            let seq = self.truncates.entry(id).or_insert(0);
            *seq += 1;
            let envelope = EnvelopeRef {
                key: &rel.key_prefix,
                op: Op::Truncate,
                value: None,
                schema_version: &rel.version_text,
                sequence: *seq,
                lsn: tx.commit_lsn.0,
                commit_ts: tx.commit_ts,
            };
            out.push(Outgoing {
                subject: format!("{}{}", rel.subject_prefix, key::TRUNCATE_TOKEN),
                payload: Bytes::from(codec::encode(&envelope)?),
            });
            // Cached TOAST values of the table's rows are gone with them.
            let prefix = rel.key_prefix.clone();
            let stale: Vec<String> = self
                .toast
                .entries
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in stale {
                self.toast.remove(&k);
            }
        }
        Ok(())
    }
}
