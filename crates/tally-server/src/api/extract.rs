//! Request extractors whose failures use the error envelope: JSON bodies (content type,
//! size limit, syntax, field-level type errors), query strings, the authenticated
//! principal and the client IP; and the helpers every handler shares: what a credential
//! may do (`require`), which tenant a request acts on (`tenant_for`), bounded integers
//! and paging.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tally_core::activity;
use tally_core::auth::{Action, Principal};
use tally_core::{FieldError, TenantId};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// A JSON body, parsed with the exact path of any mistyped field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.config.max_body_bytes;
        let deadline = state.config.body_read_timeout;
        let bytes = tokio::time::timeout(deadline, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::RequestTimeout(deadline.as_secs().max(1)))?
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge(limit),
                other => ApiError::BadRequest {
                    code: "INVALID_BODY",
                    message: other.body_text(),
                    details: serde_json::json!({}),
                },
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, telling syntax errors (`INVALID_JSON`) from type errors on a named field
/// (`VALIDATION_ERROR`). Anything but white space after the value is a syntax error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        Ok(v) => de
            .end()
            .map(|()| v)
            .map_err(|e| ApiError::InvalidJson(e.to_string())),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            use serde_json::error::Category;
            if inner.to_string().starts_with("recursion limit exceeded") {
                return Err(ApiError::InvalidJson(inner.to_string()));
            }
            match inner.classify() {
                Category::Data => Err(FieldError::invalid(
                    if path == "." { "body".to_owned() } else { path },
                    strip_position(&inner.to_string()),
                )
                .into()),
                Category::Syntax | Category::Eof | Category::Io => {
                    Err(ApiError::InvalidJson(inner.to_string()))
                }
            }
        }
    }
}

/// Parses one item of a batch (or a single item) into `T`, naming the field of a structural
/// mistake: an unknown field names itself, anything else names `what`.
pub fn parse_item<T: DeserializeOwned>(raw: &str, what: &str) -> Result<T, FieldError> {
    if !raw.trim_start().starts_with('{') {
        return Err(FieldError::invalid(what, "must be a JSON object"));
    }
    serde_json::from_str::<T>(raw).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .unwrap_or(what)
            .to_owned();
        FieldError::invalid(field, strip_position(&msg))
    })
}

/// serde's messages end with " at line L column C", which is noise for a data error.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Query parameters; every field should be an `Option<String>` validated by the handler, so
/// that errors can name the parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                let message = e.body_text();
                // An unknown parameter names itself, like an unknown body field does.
                let field = message
                    .split("unknown field `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next())
                    .unwrap_or("query")
                    .to_owned();
                ApiError::BadRequest {
                    code: "VALIDATION_ERROR",
                    message,
                    details: serde_json::json!({ "field": field }),
                }
            })
    }
}

/// The authenticated caller, from `Authorization: Bearer <JWT or API key>`.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Ok(Auth(state.auth.authenticate(token).await?))
    }
}

/// The bearer token itself, for operations on the session it names (logout).
pub struct BearerToken(pub String);

impl FromRequestParts<AppState> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        bearer(parts).map(|t| BearerToken(t.to_owned()))
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "UNAUTHORIZED",
                "missing Authorization header".into(),
            ))?;
        let value = header.to_str().map_err(|_| {
            ApiError::Unauthorized("UNAUTHORIZED", "malformed Authorization header".into())
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "UNAUTHORIZED",
                "expected 'Authorization: Bearer <token or API key>'".into(),
            ))?;
        Ok(token)
    }
}

/// The client's IP: the first `X-Forwarded-For` hop when the server is configured to trust
/// a proxy, else the TCP peer.
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.config.trust_forwarded_for {
            let forwarded = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|ip| ip.trim().parse().ok());
            if forwarded.is_some() {
                return Ok(ClientIp(forwarded));
            }
        }
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Refuses a credential that may not do `action`, naming what it lacks.
pub(crate) fn require(p: &Principal, action: Action) -> ApiResult<()> {
    if p.can(action) {
        return Ok(());
    }
    let what = match action {
        Action::Ingest => "the 'ingest' scope",
        Action::Read => "the 'read' scope",
        Action::Gateway => "the 'gateway' scope",
        Action::Predict => "the 'predict' scope",
        Action::ManageTenant => "the 'admin' scope or the owner role",
        Action::Platform => "the admin role",
    };
    Err(ApiError::Forbidden(format!("this credential lacks {what}")))
}

/// The tenant a read acts on: the caller's, or for a platform admin `?tenant_id=`.
pub(crate) fn tenant_for(p: &Principal, requested: Option<&str>) -> ApiResult<TenantId> {
    let requested = match requested {
        None => None,
        Some(s) => Some(
            s.parse::<TenantId>()
                .map_err(|_| FieldError::invalid("tenant_id", "must be a UUID"))?,
        ),
    };
    p.effective_tenant(requested)
        .map_err(|_| ApiError::Forbidden("only the admin role may act on another tenant".into()))
}

/// A query integer in `[min, max]`, `default` when absent or empty.
pub(crate) fn parse_u32(
    field: &str,
    v: Option<&str>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, FieldError> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                FieldError::invalid(field, format!("must be an integer from {min} to {max}"))
            }),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Platform admins only: another tenant.
    #[param(value_type = Option<uuid::Uuid>)]
    pub(crate) tenant_id: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// From 1.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    pub(crate) page: Option<String>,
    /// 1 to 100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub(crate) page_size: Option<String>,
    /// Platform admins only: another tenant.
    #[param(value_type = Option<uuid::Uuid>)]
    pub(crate) tenant_id: Option<String>,
}

pub(crate) fn paging(q: &PageQuery) -> Result<(u32, u32, u64), FieldError> {
    let page = parse_u32("page", q.page.as_deref(), 1, 1, 100_000)?;
    let size = parse_u32(
        "page_size",
        q.page_size.as_deref(),
        activity::DEFAULT_PAGE_SIZE,
        1,
        activity::MAX_PAGE_SIZE,
    )?;
    Ok((page, size, u64::from(page - 1) * u64::from(size)))
}
