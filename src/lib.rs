//! walcast: a change-data-capture publisher from PostgreSQL to NATS.
//!
//! # Layout
//!
//! The pipeline runs in one direction, one module per stage:
//!
//! - [`source`]: the replication connection (startup, SCRAM/MD5 auth, CopyBoth,
//!   XLogData, keepalives, standby status updates) spoken with `postgres-protocol`,
//!   plus the catalog queries made over an ordinary `tokio-postgres` connection.
//! - [`decode`]: pgoutput messages into typed row changes, values typed by OID.
//! - [`envelope`]: keys, schema versions and per-key sequences: one envelope per change.
//! - [`codec`]: the MessagePack wire format of envelopes.
//! - [`sink`]: publishing to NATS, pipelined, with confirmation round-trips.
//! - [`checkpoint`]: which WAL position is safe to report as flushed.
//! - [`pipeline`]: wires the stages together and runs them until shutdown.
//!
//! The consumer side: [`client`] (transports with local fan-out and subscriber GC, and
//! a reconciling replica), what subscribing services link.
//!
//! Beside the pipeline: [`check`] (`walcast check`), [`config`] (flags, environment,
//! config file), [`metrics`] (Prometheus and
//! health endpoints), [`shutdown`] (the signal every task listens on) and
//! [`fixtures`] (throwaway PostgreSQL and NATS servers for tests, demo and benchmarks).

pub mod check;
pub mod checkpoint;
pub mod client;
pub mod codec;
pub mod config;
pub mod decode;
pub mod envelope;
pub mod fixtures;
pub mod lsn;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod source;
