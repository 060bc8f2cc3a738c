//! walcast: a change-data-capture publisher from PostgreSQL to NATS.
//!
//! # Layout
//!
//! The folders are the pipeline, in the order data flows; each stage depends only on
//! the stages before it, on [`ops`] and on [`wire`]:
//!
//! ```text
//! source ──► decode ──► envelope ──► sink ──► (NATS)       state ◄──► JetStream
//!   ▲                                  │
//!   └──────── checkpoint ◄── confirmed ┘        pipeline: builds, runs, supervises them
//! ```
//!
//! - [`wire`]: the shared vocabulary: `Op`, `Timestamp`, typed `Value`s, LSNs and
//!   positions, THE envelope encoder/decoder, the key grammar and subjects. Imports
//!   nothing of the crate.
//! - [`ops`]: metrics (every stage's), the HTTP endpoints, shutdown and the background
//!   task set. Every stage imports it, so it comes first.
//! - `source`: the replication connection (startup, auth, framing), the CopyBoth
//!   stream and its status updates, the slot, catalog queries, the slot monitor and
//!   heartbeat; `SourceSettings`.
//! - `decode`: pgoutput messages of protocols 1–4 (zero-copy; streamed and two-phase
//!   messages in `pgoutput::streaming`), type OIDs, text values into typed values,
//!   Relation messages into typed columns and keys. No I/O: what the catalog must
//!   answer, the reader asks.
//! - `envelope`: keys, schema versions, per-key sequences, unchanged-TOAST fill: one
//!   encoded envelope per change. Synchronous: what it lacks it asks for (`Need`);
//!   `EnvelopeSettings` with the per-table settings.
//! - `state`: the durable state in JetStream (each key's last envelope, schema
//!   histories, snapshot progress, the streams and their window, what they hold for
//!   `tail --stored`);
//!   `StreamSettings`.
//! - `sink`: one `Sink`, three publishers (JetStream fast batches, JetStream one
//!   PubAck each, core NATS) with one sequence window and shared back-off;
//!   `delivery`: which of them, the streams set up for it, `SinkSettings`; `sync`: what
//!   a NATS acknowledgement guarantees and the flush horizon's delay (`--flush-delay`).
//! - `checkpoint`: which WAL position is safe to report as flushed, and when (the
//!   flush horizon).
//! - [`pipeline`]: `run()` builds the stages, starts them and supervises reconnects;
//!   `reader/` is the reading task in small parts (change loop, envelope feed,
//!   hand-over, status reporter, snapshot driver, request answerer, streamed
//!   transactions held until their commit); the snapshot's
//!   plan and progress; refetch and re-snapshot requests over NATS.
//! - [`config`]: flags, environment and config file, resolved once into each stage's
//!   settings (`RunSettings`); [`cli`]: `run`, `tail`, `check`, `teardown`, `snapshot`,
//!   `verify` (the tables against the stream, key by key).
//!
//! The consumer side, [`client`] (transports with local fan-out and subscriber GC, a
//! reconciling replica, refetch from the stream, catch-up since a position), depends
//! on [`wire`] only: services
//! link it with `default-features = false` and compile none of the server.
//! [`testing`] (feature `test-utils`) starts throwaway PostgreSQL and nats-server
//! instances (and JetStream clusters of them) for the tests, the demo and the benchmarks; `hostile` (feature
//! `fuzzing`, and the unit tests) holds the fuzz targets' entry points.

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
#[cfg(all(feature = "server", any(test, feature = "fuzzing")))]
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
