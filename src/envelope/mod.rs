//! The envelope stage: decoded row changes become per-key envelopes.
//!
//! It keeps the table shapes (from Relation messages) with their schema versions,
//! extracts each row's canonical key from the primary key, assigns the per-key
//! sequence ([`sequence`]), fills unchanged-TOAST columns ([`toast`]), and hands each
//! envelope to the codec exactly once. See `docs/envelope.md` for the contract.
//!
//! State it does not hold in memory (a key's last sequence, an unchanged TOAST value)
//! is asked of the caller through [`Need`]: the caller loads it and retries, so this
//! stage stays synchronous and free of I/O.
//!
//! Where things are:
//! - `builder.rs`: [`EnvelopeBuilder`], its state, Relation and transaction messages,
//!   Truncate;
//! - `relation.rs`: [`Relation`] (a table as this stage knows it), [`RelationUpdate`];
//! - `change.rs`: Insert, Update, Delete and snapshot rows;
//! - `toast_fill.rs`: unchanged-TOAST values, found, asked for, provided, remembered;
//! - `emit.rs`: the last step of every change: position, sequence, encoding,
//!   [`Outgoing`]; `size.rs`: the NATS size limit and the message id; `seal.rs`: rows
//!   compressed and encrypted per table ([`SealPlan`]);
//! - `need.rs`: what the caller is asked for ([`Need`]); `lookahead.rs`: what
//!   changes still in the read buffer will ask for, found ahead; `error.rs`:
//!   [`EnvelopeError`]; `settings.rs`: the stage's settings ([`EnvelopeSettings`]) and per-table
//!   settings ([`TableSettings`]).

mod builder;
mod change;
mod emit;
mod error;
mod lookahead;
mod need;
mod relation;
pub mod schema;
mod seal;
pub mod sequence;
mod settings;
mod size;
pub mod toast;
mod toast_fill;

pub use builder::EnvelopeBuilder;
pub use emit::Outgoing;
pub use error::EnvelopeError;
pub use need::{Need, RowVersion, ToastNeeded, ToastSource};
pub use relation::{Relation, RelationUpdate};
pub use seal::SealPlan;
pub use settings::{EnvelopeSettings, Oversize, TableSettings};
pub use toast_fill::marked_in;

/// The key of the value that replaces a too-large envelope's row (`--oversize
/// marker`): `{"$walcast_too_large": <encoded size>}`.
pub const TOO_LARGE_KEY: &str = "$walcast_too_large";
