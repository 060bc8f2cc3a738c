//! The decode stage: pgoutput messages into typed row changes.
//!
//! [`pgoutput`] parses the binary messages without copying; [`types`] knows which
//! value type each PostgreSQL type OID becomes; [`value`] turns text-format column
//! values into those typed values.

pub mod pgoutput;
pub mod types;
pub mod value;
