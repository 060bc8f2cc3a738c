//! Beside the pipeline: what operators see and what stops it.
//!
//! - [`metrics`]: every Prometheus metric, per stage, and the readiness state;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`shutdown`]: the signal every task listens on, and the set of background tasks
//!   that is joined before the process exits.

pub mod http;
pub mod metrics;
pub mod shutdown;
