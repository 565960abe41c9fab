//! LLM usage (seeds 000 and 003): ingest and pricing (`usage`), quotas with the pre-call
//! preflight a gateway runs before forwarding a call (`quota`, `Usage::preflight`), and
//! the analytics reports over the rollups (`analytics`, one module per report). No HTTP
//! here: `tally-server` maps [`AiError`] to statuses and owns the request shapes.

pub mod analytics;
mod error;
pub mod quota;
pub mod records;
pub mod usage;

pub use error::{AiError, AiResult};
