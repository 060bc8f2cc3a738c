//! The source stage: reading PostgreSQL's logical replication stream.
//!
//! [`conn`] speaks the replication protocol itself; [`catalog`] asks ordinary SQL
//! questions (checks before start, key columns, types, slots) over `tokio-postgres`.

pub mod catalog;
pub mod conn;

pub use conn::{
    ConnectParams, PgError, ReplicationConnection, ReplicationEvent, ReplicationStream,
};

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
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
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
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
            SourceError::Connect { .. } | SourceError::Io { .. } | SourceError::Closed => true,
            // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
            // 55006 object in use (the slot is active in another process).
            SourceError::Server(e) => {
                matches!(
                    e.code.as_str(),
                    "57P01" | "57P02" | "57P03" | "55006" | "53300"
                )
            }
            SourceError::Query(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }
}
