//! Why a change could not become an envelope: [`EnvelopeError`].

use crate::decode::value::ValueError;

/// Why a change could not become an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("table {table} is in tracked mode, and the stream lets envelopes go by age or size (--stream-max-age/--stream-max-bytes): its keys' last envelopes are their sequence state, so a key whose envelopes left the stream would start again at sequence 1 and reuse numbers consumers have seen; put the table in column mode (--column-sequence {table}=column, sql/sequence_column.sql), take it out of the publication, or keep history per key (--stream-history) instead of a window")]
    TrackedInWindow { table: String },
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
    #[error("the envelope of {key} is {bytes} bytes, above the NATS server's max_payload of {max}: raise max_payload in nats-server.conf, exclude the large column (--exclude-column {}=<column>), or publish a marker instead (--oversize marker)", table_of(key))]
    TooLarge {
        key: String,
        bytes: usize,
        max: usize,
    },
    #[error("table {0} is to be encrypted (--encrypt) but no encryption key is given (--encryption-keys-file or WALCAST_ENCRYPTION_KEYS)")]
    NoEncryptionKey(String),
    #[error("decoding a row value again failed: {0}")]
    Decode(String),
    #[error("encoding the envelope failed: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The `schema.table` a key (`<schema>.<table>:<key token>`) belongs to.
fn table_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(table, _)| table)
}
