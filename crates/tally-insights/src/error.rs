//! What tracking and activity operations refuse, in domain terms; `tally-server::error`
//! maps each case to a status and the envelope.

use tally_core::FieldError;
use tally_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum InsightsError {
    /// A field of the input breaks a rule.
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of ours; the detail is logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl InsightsError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        InsightsError::Internal(e.to_string())
    }
}

pub type InsightsResult<T> = Result<T, InsightsError>;
