//! Validation errors shared by every domain rule: a stable code, the exact field, a message.

use serde::Serialize;

/// Stable machine-readable error codes. The seed's codes are used where they apply.
pub mod codes {
    /// Invalid event type (seed 001).
    pub const INVALID_EVENT_TYPE: &str = "INSIGHTS_001";
    /// Required properties missing (seed 001).
    pub const MISSING_REQUIRED: &str = "INSIGHTS_002";
    /// Invalid analysis period (seed 001).
    pub const INVALID_PERIOD: &str = "INSIGHTS_003";
    /// Storage limit reached (seed 001).
    pub const STORAGE_LIMIT: &str = "INSIGHTS_006";
    /// A field has the wrong type, length or format.
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    /// A timestamp is outside the accepted window.
    pub const INVALID_TIMESTAMP: &str = "INVALID_TIMESTAMP";
}

/// One rule broken by one field of the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Stable code, e.g. `INSIGHTS_001` or `VALIDATION_ERROR`.
    pub code: &'static str,
    /// Dotted path of the offending field, e.g. `properties.user_id`.
    pub field: String,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(codes::VALIDATION_ERROR, field, message)
    }

    pub fn required(field: impl Into<String>) -> Self {
        Self::new(codes::VALIDATION_ERROR, field, "is required")
    }
}

/// Checks a client-chosen identifier (a user, project, conversation, model name …): 1 to
/// `max` characters, none of them a control character (NUL, newlines, escapes).
pub fn check_id<'a>(field: &str, id: &'a str, max: usize) -> Result<&'a str, FieldError> {
    if id.is_empty() {
        return Err(FieldError::invalid(field, "must not be empty"));
    }
    if id.chars().count() > max {
        return Err(FieldError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(FieldError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(id)
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.code)
    }
}

impl std::error::Error for FieldError {}

/// A domain rule that refused an operation for a reason other than a malformed field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("tenant storage limit of {limit} events reached")]
    StorageLimit { limit: u64 },
}
