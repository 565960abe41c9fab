//! Domain types and rules of tally: tenants and principals, tracked events and their
//! validation, ingest-time enrichment, activity summaries, and the auth primitives
//! (password hashing, API keys, JWTs). Nothing here does I/O beyond reading an optional
//! GeoIP database file at start-up.

pub mod activity;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod credential;
pub mod enrich;
pub mod error;
pub mod event;
pub mod ids;
pub mod limiter;
pub mod models;
pub mod number;
pub mod outbound;
pub mod pricing;
pub mod quota;
pub mod ratelimit;
pub mod sensitive;
pub mod sketch;
pub mod tenancy;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod time;
pub mod usage;

pub use error::{check_id, FieldError, Violation};
pub use ids::{AccountId, ApiKeyId, TenantId};
