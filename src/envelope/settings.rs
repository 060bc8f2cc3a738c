//! The envelope stage's configuration ([`EnvelopeSettings`], built once by `config/`)
//! and per-table settings ([`TableSettings`]): the sequence column, the published
//! columns and ops, and what they mean for a table's columns.

use std::collections::HashMap;

use super::schema::Column;
use super::seal::SealedColumns;
use super::EnvelopeError;
use super::SealPlan;
use crate::wire::codec::Op;
use crate::wire::seal::Keyring;

/// What to do with an envelope larger than the NATS server's `max_payload`
/// (`--oversize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Oversize {
    /// Stop with an error naming the key and the size (nothing is lost: the change
    /// stays in the slot).
    Fail,
    /// Publish the envelope with the value `{"$walcast_too_large": <bytes>}`.
    Marker,
}

/// What the envelope stage is configured with.
#[derive(Debug, Clone)]
pub struct EnvelopeSettings {
    /// `<prefix>.<schema>.<table>.<key token>` (`--subject-prefix`).
    pub subject_prefix: String,
    /// Per-key sequence states kept in memory (`--key-cache`).
    pub key_cache: usize,
    /// Bytes kept for unchanged-TOAST columns (`--toast-cache-bytes`).
    pub toast_cache_bytes: usize,
    pub oversize: Oversize,
    /// Settings per `schema.table`.
    pub tables: HashMap<String, TableSettings>,
    /// The stream lets envelopes go by age or size (`--stream-max-age`,
    /// `--stream-max-bytes`): tracked tables are refused.
    pub stream_window: bool,
    /// The encryption keys (`--encryption-keys-file`, `WALCAST_ENCRYPTION_KEYS`):
    /// the newest seals the tables with `encrypt`.
    pub keys: Option<std::sync::Arc<Keyring>>,
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
    /// Column mode only: `delete` envelopes leave the stream after this long.
    pub delete_ttl: Option<std::time::Duration>,
    /// Compress rows whose encoding is at least this many bytes (`--compress`).
    pub compress_min: Option<usize>,
    /// Encrypt the rows under the key ring's newest key (`--encrypt`).
    pub encrypt: bool,
    /// Encrypt only these columns, each on its own (`--encrypt-column`).
    pub encrypt_columns: Vec<String>,
}

impl TableSettings {
    /// Column mode: the index of the sequence column in `columns`; an error when the
    /// table `qualified` has no such column.
    pub(super) fn sequence_column_index(
        &self,
        columns: &[Column],
        qualified: &str,
    ) -> Result<Option<usize>, EnvelopeError> {
        let Some(name) = &self.sequence_column else {
            return Ok(None);
        };
        match columns.iter().position(|c| &c.name == name) {
            Some(i) => Ok(Some(i)),
            None => Err(EnvelopeError::NoSequenceColumn {
                table: qualified.to_string(),
                column: name.clone(),
            }),
        }
    }

    /// How the table's rows are sealed (`None`: neither compressed nor encrypted);
    /// an error when it must be encrypted and there is no key.
    pub(super) fn seal_plan(
        &self,
        keys: Option<&Keyring>,
        columns: &[Column],
        qualified: &str,
    ) -> Result<Option<SealPlan>, EnvelopeError> {
        let by_column = !self.encrypt && !self.encrypt_columns.is_empty();
        if self.compress_min.is_none() && !self.encrypt && !by_column {
            return Ok(None);
        }
        let newest = || {
            keys.and_then(Keyring::newest)
                .cloned()
                .ok_or_else(|| EnvelopeError::NoEncryptionKey(qualified.to_string()))
        };
        let key = if self.encrypt { Some(newest()?) } else { None };
        let columns = if by_column {
            let mask: Vec<bool> = columns
                .iter()
                .map(|c| self.encrypt_columns.contains(&c.name))
                .collect();
            let names = columns
                .iter()
                .zip(&mask)
                .filter(|(_, &sealed)| sealed)
                .map(|(c, _)| c.name.clone())
                .collect();
            Some(SealedColumns {
                key: newest()?,
                mask,
                names,
            })
        } else {
            None
        };
        Ok(Some(SealPlan {
            compress_min: self.compress_min,
            key,
            columns,
        }))
    }

    /// Which of `columns` the envelope's value carries.
    pub(super) fn published_columns(&self, columns: &[Column]) -> Vec<bool> {
        columns
            .iter()
            .map(|c| {
                self.include_columns
                    .as_ref()
                    .is_none_or(|inc| inc.contains(&c.name))
                    && !self.exclude_columns.contains(&c.name)
            })
            .collect()
    }

    /// Columns the include/exclude settings name that `columns` does not have.
    pub(super) fn missing_columns(&self, columns: &[Column]) -> Vec<String> {
        self.include_columns
            .iter()
            .flatten()
            .chain(&self.exclude_columns)
            .chain(&self.encrypt_columns)
            .filter(|name| !columns.iter().any(|c| &c.name == *name))
            .cloned()
            .collect()
    }
}
