//! The decode stage: pgoutput messages into typed row changes.
//!
//! [`pgoutput`] parses the binary messages without copying; [`types`] knows which
//! value type each PostgreSQL type OID becomes; [`relation`] resolves a Relation
//! message against the catalog into typed columns and a key; [`value`] turns
//! text-format column values into typed [`crate::wire::Value`]s.

pub mod pgoutput;
pub mod relation;
pub mod types;
pub mod value;
