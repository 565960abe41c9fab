//! What access operations refuse, in domain terms; `tally-server::error` maps each case
//! to a status and the envelope.

use tally_core::FieldError;
use tally_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A field of the input breaks a rule.
    #[error("{0}")]
    Invalid(#[from] FieldError),
    /// Credentials that do not identify a caller; `code` says why (`TOKEN_EXPIRED`,
    /// `SESSION_ENDED`, `UNAUTHORIZED`).
    #[error("{1}")]
    Unauthorized(&'static str, String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The operation contradicts the current state (deleting oneself, one's own tenant).
    #[error("{0}")]
    Conflict(String),
    /// Too many attempts: try again after `retry_after_secs`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of ours; the detail is logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl AccessError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        AccessError::Internal(e.to_string())
    }
}

pub type AccessResult<T> = Result<T, AccessError>;
