//! Why talking to PostgreSQL failed, and the server's own error fields.

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with PostgreSQL at {target} failed: {source}")]
    Tls {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL authentication failed: {0}")]
    Auth(String),
    #[error("PostgreSQL: {0}")]
    Server(PgError),
    #[error("PostgreSQL protocol error: {0}")]
    Protocol(String),
    #[error("PostgreSQL closed the connection")]
    Closed,
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Preflight(String),
    #[error("replication slot \"{slot}\" exists but {problem}")]
    Slot { slot: String, problem: String },
    #[error("replication slot \"{slot}\" {why}: changes since walcast last confirmed may be gone. To go on, start once with --recreate-slot: walcast creates the slot again and snapshots every table again (rows changed meanwhile are published, keys deleted meanwhile get a delete)")]
    SlotLost { slot: String, why: String },
    #[error("PostgreSQL ended the replication stream")]
    StreamEnded,
    #[error("transaction {xid}, streamed as committed, was still not visible to other sessions after {waited:?} (a synchronous standby that does not answer holds commits so): walcast reads the table again later")]
    NotVisible {
        xid: u32,
        waited: std::time::Duration,
    },
    #[error("PostgreSQL: {}", describe(.0))]
    Query(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        SourceError::Query(e)
    }
}

/// A `tokio-postgres` error with the server's own words (its `Display` alone says
/// only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" hint: {h}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Whether a SQLSTATE means the server is going away or not up yet.
fn transient_code(code: &str) -> bool {
    // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, 53300 too
    // many connections, class 08: connection exceptions.
    matches!(code, "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08")
}

impl SourceError {
    /// A server error; authentication failures (SQLSTATE class 28) are reported as such.
    pub fn from_pg(e: PgError) -> Self {
        if e.code.starts_with("28") {
            SourceError::Auth(e.message)
        } else {
            SourceError::Server(e)
        }
    }

    /// Whether retrying later may succeed (the server restarting, a network blip),
    /// as opposed to a configuration problem that needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. }
            | SourceError::Io { .. }
            | SourceError::Closed
            | SourceError::StreamEnded
            | SourceError::NotVisible { .. } => true,
            // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
            // 55006 object in use (the slot is active in another process).
            SourceError::Server(e) => {
                matches!(
                    e.code.as_str(),
                    "57P01" | "57P02" | "57P03" | "55006" | "53300"
                )
            }
            SourceError::Query(e) => {
                e.is_closed() || e.code().is_none_or(|c| transient_code(c.code()))
            }
            _ => false,
        }
    }
}

/// An I/O failure while doing `context` (for `map_err`).
pub(super) fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> SourceError {
    move |e| SourceError::Io { context, source: e }
}

/// A message that breaks the protocol.
pub(super) fn proto(msg: impl Into<String>) -> SourceError {
    SourceError::Protocol(msg.into())
}

/// A server error or notice, with the fields an operator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

pub(crate) fn parse_error_fields(body: &[u8]) -> PgError {
    let mut e = PgError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_are_read() {
        let body = b"SFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let e = parse_error_fields(body);
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "28P01");
        assert!(e.message.contains("password authentication failed"));
    }
}
