//! Domain operations: plain async functions over the stores and core rules. No HTTP here;
//! handlers in `api` call these, and so does the CLI.

pub mod analytics;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod insights;
pub mod passwords;
pub mod quota;
pub mod ratelimit;
pub mod tenancy;
pub mod usage;
