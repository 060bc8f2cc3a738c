//! walcast: a change-data-capture publisher from PostgreSQL to NATS.
//!
//! # Layout
//!
//! The folders are the pipeline, in the order data flows; each stage depends only on
//! the stages before it and on [`wire`]:
//!
//! ```text
//! source ──► decode ──► envelope ──► sink ──► (NATS)       state ◄──► JetStream
//!   ▲                                  │
//!   └──────── checkpoint ◄── confirmed ┘        pipeline: builds, runs, supervises them
//! ```
//!
//! - [`wire`]: the shared vocabulary: `Op`, `Timestamp`, typed `Value`s, LSNs and
//!   positions, THE envelope encoder/decoder, the key grammar and subjects.
//! - `source`: the replication connection (startup, auth, framing), the CopyBoth
//!   stream and its status updates, the slot, catalog queries, the slot monitor.
//! - `decode`: pgoutput messages (zero-copy), type OIDs, text values into typed values,
//!   Relation messages resolved into typed columns and keys.
//! - `envelope`: keys, schema versions, per-key sequences, unchanged-TOAST fill: one
//!   encoded envelope per change. Synchronous: what it lacks it asks for (`Need`).
//! - `state`: the durable state in JetStream (each key's last envelope, schema
//!   histories) that the pipeline loads for the envelope stage.
//! - `sink`: one `Sink`, two publishers (core NATS, JetStream) with shared back-off.
//! - `checkpoint`: which WAL position is safe to report as flushed.
//! - [`pipeline`]: `run()` builds the stages and supervises reconnects; the reader loop;
//!   the delivery/sequence-mode policy shared with `walcast check`.
//! - [`ops`]: metrics, the HTTP endpoints, shutdown and the background task set.
//! - [`config`] and [`cli`]: flags, environment and config file; `run`, `tail`, `check`.
//!
//! The consumer side, [`client`] (transports with local fan-out and subscriber GC, a
//! reconciling replica, refetch from the stream), depends on [`wire`] only: services
//! link it with `default-features = false` and compile none of the server.
//! [`testing`] (feature `test-utils`) starts throwaway PostgreSQL and nats-server
//! instances for the tests, the demo and the benchmarks.

pub mod client;
pub mod wire;

#[cfg(feature = "server")]
mod checkpoint;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
mod decode;
#[cfg(feature = "server")]
mod envelope;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod hostile;
#[cfg(feature = "server")]
pub mod ops;
#[cfg(feature = "server")]
pub mod pipeline;
#[cfg(feature = "server")]
mod sink;
#[cfg(feature = "server")]
mod source;
#[cfg(feature = "server")]
mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
