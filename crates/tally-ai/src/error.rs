//! What LLM usage, quota and report operations refuse, in domain terms;
//! `tally-server::error` maps each case to a status and the envelope.

use tally_core::FieldError;
use tally_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// A field of the input breaks a rule.
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// More quota rules than a tenant may have.
    #[error("{0}")]
    TooManyRules(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of ours; the detail is logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl AiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        AiError::Internal(e.to_string())
    }
}

pub type AiResult<T> = Result<T, AiError>;
