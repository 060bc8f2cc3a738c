//! The shared wire types: what every stage and every consumer agrees on.
//!
//! - [`Op`], [`Timestamp`], [`Value`]: an envelope's vocabulary;
//! - [`codec`]: THE encoder and decoder of envelopes (MessagePack, named fields,
//!   `docs/envelope.md`), used by the publisher and the client alike;
//! - [`seal`]: compressed and encrypted rows (zstd, AES-256-GCM) and the key ring;
//! - [`key`]: the key grammar and the NATS subjects derived from keys;
//! - [`Lsn`] and [`Position`]: WAL positions, and the `Walcast-Position` header.
//!
//! This module depends on nothing else in the crate.

pub mod codec;
pub mod json;
pub mod key;
mod lsn;
mod position;
pub mod seal;
pub mod timestamp;
mod value;

pub use codec::{
    decode, decode_with, encode_into, DecodeEnvelopeError, Envelope, EnvelopeRef, Op, RowRef,
};
pub use json::Json;
pub use lsn::{Lsn, LsnParseError};
pub use position::{Position, POSITION_HEADER};
pub use timestamp::Timestamp;
pub use value::{Value, UNAVAILABLE_KEY};
