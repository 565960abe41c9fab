//! The one place where errors become HTTP: status codes and the JSON envelope
//! `{"error": {"code", "message", "details"}}`. 5xx bodies never carry internals; those are
//! logged instead.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use tally_access::AccessError;
use tally_ai::AiError;
use tally_core::error::codes;
use tally_core::FieldError;
use tally_insights::InsightsError;
use tally_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Field(FieldError),
    /// The gateway's refusals and failures, with their own status, code and details.
    #[error("{}", .0.message)]
    Gateway(Box<tally_gateway::GatewayError>),
    /// A request-level error with a stable code.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        details: Value,
    },
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("{1}")]
    Unauthorized(&'static str, String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    TooManyItems(String),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request URI exceeds {0} bytes")]
    UriTooLong(usize),
    #[error("the request headers exceed {max_headers} headers or {max_bytes} bytes")]
    HeadersTooLarge {
        max_headers: usize,
        max_bytes: usize,
    },
    #[error("the request body was not received within {0} seconds")]
    RequestTimeout(u64),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("storage limit of {0} events reached")]
    StorageLimit(u64),
    #[error("storage is full")]
    StorageFull,
    #[error("free space on the server's disk is {free_bytes} bytes, below the {min_free_bytes} bytes writes need; writes resume when space returns")]
    LowSpace {
        free_bytes: u64,
        min_free_bytes: u64,
    },
    #[error("service unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `INSIGHTS_001`, `VALIDATION_ERROR`.
    pub code: String,
    pub message: String,
    /// Extra context, e.g. `{"field": "event_type"}`.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Gateway(g) => {
                StatusCode::from_u16(g.status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ApiError::Field(_) | ApiError::BadRequest { .. } | ApiError::InvalidJson(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::StorageLimit(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) | ApiError::TooManyItems(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::StorageFull | ApiError::LowSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Gateway(g) => g.code,
            ApiError::Field(f) => f.code,
            ApiError::BadRequest { code, .. } => code,
            ApiError::InvalidJson(_) => "INVALID_JSON",
            ApiError::Unauthorized(code, _) => code,
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::TooManyItems(_) => "BATCH_TOO_LARGE",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::UriTooLong(_) => "URI_TOO_LONG",
            ApiError::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            ApiError::StorageLimit(_) | ApiError::StorageFull => codes::STORAGE_LIMIT,
            ApiError::LowSpace { .. } => "INSUFFICIENT_STORAGE",
            ApiError::RequestTimeout(_) => "REQUEST_TIMEOUT",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Gateway(g) => g.details.clone(),
            ApiError::Field(f) => json!({ "field": f.field }),
            ApiError::BadRequest { details, .. } => details.clone(),
            ApiError::PayloadTooLarge(limit) => json!({ "max_body_bytes": limit }),
            ApiError::UriTooLong(limit) => json!({ "max_uri_bytes": limit }),
            ApiError::HeadersTooLarge {
                max_headers,
                max_bytes,
            } => json!({ "max_headers": max_headers, "max_header_bytes": max_bytes }),
            ApiError::StorageLimit(limit) => json!({ "max_events": limit }),
            ApiError::LowSpace {
                free_bytes,
                min_free_bytes,
            } => json!({ "free_bytes": free_bytes, "min_free_bytes": min_free_bytes }),
            ApiError::RequestTimeout(secs) => json!({ "body_read_timeout_secs": secs }),
            ApiError::RateLimited {
                retry_after_secs, ..
            } => json!({ "retry_after_secs": retry_after_secs }),
            _ => json!({}),
        }
    }

    fn public_message(&self) -> String {
        match self {
            // Never leak internals in 5xx bodies.
            ApiError::Internal(_) => "internal error".into(),
            ApiError::Unavailable(_) => "service temporarily unavailable".into(),
            ApiError::Field(f) => format!("{}: {}", f.field, f.message),
            other => other.to_string(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Field(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(msg) => ApiError::Conflict(msg),
            StoreError::NotFound(_) => ApiError::NotFound("tenant"),
            StoreError::Full => ApiError::StorageFull,
            StoreError::LowSpace {
                free_bytes,
                min_free_bytes,
            } => ApiError::LowSpace {
                free_bytes,
                min_free_bytes,
            },
            StoreError::Unavailable(msg) => ApiError::Unavailable(msg),
            StoreError::Internal(msg) => ApiError::Internal(msg),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Invalid(f) => ApiError::Field(f),
            AccessError::Unauthorized(code, message) => ApiError::Unauthorized(code, message),
            AccessError::Forbidden(message) => ApiError::Forbidden(message),
            AccessError::NotFound(what) => ApiError::NotFound(what),
            AccessError::Conflict(message) => ApiError::Conflict(message),
            AccessError::RateLimited {
                message,
                retry_after_secs,
            } => ApiError::RateLimited {
                message,
                retry_after_secs,
            },
            AccessError::Store(e) => e.into(),
            AccessError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<InsightsError> for ApiError {
    fn from(e: InsightsError) -> Self {
        match e {
            InsightsError::Invalid(f) => ApiError::Field(f),
            InsightsError::NotFound(what) => ApiError::NotFound(what),
            InsightsError::Store(e) => e.into(),
            InsightsError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<AiError> for ApiError {
    fn from(e: AiError) -> Self {
        match e {
            AiError::Invalid(f) => ApiError::Field(f),
            AiError::NotFound(what) => ApiError::NotFound(what),
            AiError::TooManyRules(message) => ApiError::TooManyItems(message),
            AiError::Store(e) => e.into(),
            AiError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) | ApiError::Unavailable(detail) => {
                tracing::error!(code = self.code(), error = %detail, "request failed");
            }
            _ => tracing::debug!(code = self.code(), error = %self, "request rejected"),
        }
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code().to_owned(),
                message: self.public_message(),
                details: self.details(),
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::Gateway(g) = &self {
            crate::api::gateway::add_error_headers(&mut resp, g);
        }
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(*retry_after_secs),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<tally_gateway::GatewayError> for ApiError {
    fn from(e: tally_gateway::GatewayError) -> Self {
        ApiError::Gateway(Box::new(e))
    }
}
