//! What the gateway refuses or fails with. Each error knows both of its faces:
//! tally's envelope (a stable `code` and `details`, on `/api/v1/...`) and OpenAI's error
//! shape (`type`, `param`, `code`, on `/v1/...`); `tally-server::error` renders one or the
//! other. A provider's own refusal keeps its status and message.

use serde_json::{json, Value};
use tally_ai::AiError;
use tally_core::models::ParamViolation;
use tally_core::FieldError;
use tally_store::StoreError;

use crate::providers::UpstreamError;

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: u16,
    /// tally's stable code.
    pub code: &'static str,
    pub message: String,
    /// OpenAI's error `type`.
    pub kind: String,
    /// OpenAI's `param`: the request field at fault.
    pub param: Option<String>,
    /// OpenAI's `code`.
    pub openai_code: Option<String>,
    /// The seed's extra fields (tally's `details`).
    pub details: Value,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Extra response headers (rate limit state, the request id).
    pub headers: Vec<(String, String)>,
}

pub type GatewayResult<T> = Result<T, GatewayError>;

impl GatewayError {
    pub fn new(status: u16, code: &'static str, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            kind: kind.to_owned(),
            param: None,
            openai_code: None,
            details: json!({}),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// 400 on a named request field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(400, "VALIDATION_ERROR", "invalid_request_error", message);
        e.param = Some(param.to_owned());
        e.details = json!({"field": param});
        e
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn with_openai_code(mut self, code: &str) -> Self {
        self.openai_code = Some(code.to_owned());
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn model_not_found(model: &str, why: &str) -> Self {
        Self::new(
            404,
            "MODEL_NOT_FOUND",
            "invalid_request_error",
            format!("The model '{model}' does not exist or you do not have access to it: {why}"),
        )
        .with_param("model")
        .with_openai_code("model_not_found")
        .with_details(json!({"field": "model", "model": model}))
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "gateway fault");
        Self::new(500, "INTERNAL_ERROR", "api_error", "internal error")
    }

    /// A provider's refusal or failure, passed on with its status.
    pub fn upstream(provider: &str, e: &UpstreamError) -> Self {
        let status = match e.status {
            s @ 400..=599 => s,
            _ => 502,
        };
        let mut out = Self::new(status, "PROVIDER_ERROR", &e.kind, e.message.clone());
        out.param = e.param.clone();
        out.openai_code = e.code.clone();
        out.details = json!({"provider": provider, "provider_status": e.status});
        out
    }
}

impl From<Box<ParamViolation>> for GatewayError {
    fn from(v: Box<ParamViolation>) -> Self {
        let v = *v;
        let mut e = Self::new(
            400,
            "INVALID_PARAMETER_FOR_MODEL",
            "invalid_request_error",
            v.message,
        );
        e.param = Some(v.param);
        e.openai_code = Some("invalid_parameter_for_model".into());
        e.details = json!({
            "model": v.model,
            "invalid_params": v.invalid_params,
            "suggested_params": v.suggested_params,
            "model_requirements": v.requirements,
        });
        e
    }
}

impl From<FieldError> for GatewayError {
    fn from(f: FieldError) -> Self {
        let mut e = Self::invalid(&f.field, f.message);
        e.code = f.code;
        e
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::new(
                404,
                "NOT_FOUND",
                "invalid_request_error",
                format!("{what} not found"),
            ),
            StoreError::Conflict(m) => Self::new(409, "CONFLICT", "invalid_request_error", m),
            StoreError::Full | StoreError::LowSpace { .. } => Self::new(
                507,
                "STORAGE_FULL",
                "api_error",
                "the server's storage is full; writes resume when space returns",
            ),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                Self::new(503, "UNAVAILABLE", "api_error", "storage is unavailable")
            }
            StoreError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<AiError> for GatewayError {
    fn from(e: AiError) -> Self {
        match e {
            AiError::Invalid(f) => f.into(),
            AiError::NotFound(what) => Self::new(
                404,
                "NOT_FOUND",
                "invalid_request_error",
                format!("{what} not found"),
            ),
            AiError::TooManyRules(m) => {
                Self::new(400, "TOO_MANY_ITEMS", "invalid_request_error", m)
            }
            AiError::Store(s) => s.into(),
            AiError::Internal(m) => Self::internal(m),
        }
    }
}
