//! Why the pipeline stopped, and which failures are worth a reconnect.

use crate::decode::pgoutput::DecodeError;
use crate::envelope::EnvelopeError;
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::state::StateError;
use crate::wire::Lsn;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("pgoutput message at {lsn}: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the sink stopped unexpectedly")]
    SinkGone,
    #[error("{transactions} transaction(s) not confirmed by NATS within the shutdown budget; they are safe in the slot (flushed up to {flushed}) and will be published at the next start")]
    Unconfirmed { transactions: usize, flushed: Lsn },
    #[error("loading state from the stream: {0}")]
    Store(#[from] StateError),
    #[error("{0}")]
    Config(String),
    #[error("spilling a streamed transaction to {dir}: {source} (--stream-spill-dir must be a writable directory with room)")]
    Spill {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PipelineError {
    /// A failure that a reconnect may cure.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Store(StateError::Foreign { .. }) => false,
            PipelineError::Store(_) => true,
            _ => false,
        }
    }

    /// The slot is in use by another process (a hot standby waits to take over).
    pub(super) fn is_slot_busy(&self) -> bool {
        matches!(self, PipelineError::Source(SourceError::Server(pg)) if pg.code == "55006")
    }

    /// The server refused something (it may be restarting).
    pub(super) fn is_server_error(&self) -> bool {
        matches!(self, PipelineError::Source(SourceError::Server(_)))
    }
}
