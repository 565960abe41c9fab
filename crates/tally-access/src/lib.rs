//! Who may do what: tenants, accounts and API keys (`tenancy`), sessions, tokens and login
//! throttling (`auth`), argon2 on threads of their own (`passwords`), and the append-only
//! audit trail (`audit`). No HTTP here: `tally-server` maps [`AccessError`] to statuses,
//! and the CLI calls the same operations.

pub mod audit;
pub mod auth;
mod error;
pub mod passwords;
pub mod tenancy;

pub use error::{AccessError, AccessResult};

use tally_core::time::SharedClock;
use tally_store::Stores;

/// Tenancy and the audit trail over the stores, reading time from one clock: the HTTP
/// API and the CLI call the same operations.
#[derive(Clone)]
pub struct Access {
    stores: Stores,
    clock: SharedClock,
}

impl Access {
    pub fn new(stores: Stores, clock: SharedClock) -> Self {
        Self { stores, clock }
    }
}
