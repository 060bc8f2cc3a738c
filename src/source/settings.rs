//! What the source stage needs to know: where PostgreSQL is, which publication and
//! slot it reads, and its clocks. Built once by `config/` from the flags.

use std::time::Duration;

use super::params::ConnectParams;

/// Where and how the source reads.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The connection (URL, TLS, password sources), for replication and catalog.
    pub params: ConnectParams,
    /// The publication streamed (`--publication`).
    pub publication: String,
    /// The logical replication slot (`--slot`).
    pub slot: String,
    /// How long a connection may take (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// Between standby status updates (`--status-interval`).
    pub status_interval: Duration,
    /// Create the slot again when lost although streamed from (`--recreate-slot`).
    pub recreate_slot: bool,
    /// Ask for large transactions streamed while in progress
    /// (`--stream-large-transactions`).
    pub streaming: bool,
    /// Create the slot as a failover slot, or make it one (`--failover-slot`, 17+).
    pub failover_slot: bool,
    /// Between heartbeats; zero: off (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
}
