//! Request extractors whose failures use the error envelope: JSON bodies (content type,
//! size limit, syntax, field-level type errors), query strings, the authenticated
//! principal and the client IP.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tally_core::auth::Principal;
use tally_core::FieldError;

use crate::error::ApiError;
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
