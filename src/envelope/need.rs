//! What the builder asks of its caller before it can build a change ([`Need`]): a
//! key's last published state, or unchanged-TOAST values and where to read them
//! exactly.

#[cfg(doc)]
use super::EnvelopeBuilder;

/// State the builder needs before it can build a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Toast(ToastNeeded),
    /// The key's last published state: load the last message of `subject` and pass
    /// it to [`EnvelopeBuilder::provide_key_state`].
    KeyState {
        key: String,
        subject: String,
    },
}

/// Columns whose unchanged-TOAST value is needed but not known: the caller reads
/// them from `source` and passes them to [`EnvelopeBuilder::provide_toast`] or
/// [`EnvelopeBuilder::provide_toast_from_envelope`], then retries.
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
    pub source: ToastSource,
}

/// Where an unchanged TOAST value can be read exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToastSource {
    /// Tracked mode: the key's last envelope in the stream holds the row as it was
    /// just before this change (an earlier change is a replay and never reaches here).
    pub stream_subject: Option<String>,
    /// Else (or when the stream has no envelope of the key: a row older than walcast),
    /// the table's current row, valid only while it is still the version this change
    /// wrote; otherwise the value is published as unavailable.
    pub version: RowVersion,
    /// The change's (top-level) transaction: once a read of the table saw it
    /// committed, a row that is not its version was changed after it, and asking
    /// again cannot bring that version back.
    pub xid: u32,
}

/// How to tell that the table's current row is the version a change wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowVersion {
    /// Column mode: the sequence column holds this change's value.
    SequenceColumn { column: String, expected: String },
    /// Otherwise: the row's `xmin` is the change's transaction.
    Xmin { xid: u32 },
}

impl RowVersion {
    /// The SQL expression to read beside the columns, and the text it must equal.
    pub fn check(&self) -> (String, String) {
        match self {
            RowVersion::SequenceColumn { column, expected } => (
                format!("\"{}\"::text", column.replace('"', "\"\"")),
                expected.clone(),
            ),
            RowVersion::Xmin { xid } => ("xmin::text".into(), xid.to_string()),
        }
    }
}
