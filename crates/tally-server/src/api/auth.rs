//! Login, logout and identity endpoints.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tally_core::audit::action;
use tally_core::auth::Credential;
use tally_core::time::rfc3339;

use super::dto::{LoginRequest, LoginResponse, MeResponse};
use super::extract::{Auth, BearerToken, ClientIp, JsonBody};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use tally_access::audit::{Actor, Entry};

/// Exchange e-mail and password for a session token (JWT, HS256, with expiry). Attempts
/// are limited per e-mail address and per client IP (429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = crate::error::ErrorEnvelope, description = "INVALID_CREDENTIALS"),
              (status = 429, body = crate::error::ErrorEnvelope, description = "RATE_LIMITED")))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let email = body.email.trim();
    let r = state.auth.login(email, &body.password, ip).await?;
    Ok(Json(LoginResponse {
        access_token: r.token,
        token_type: "Bearer",
        expires_in: r.expires_in,
        expires_at: rfc3339(r.expires_at * 1_000_000),
        tenant_id: r.account.tenant_id.0,
        role: r.account.role,
    }))
}

/// End this session: its token is refused from now on. Other sessions go on.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    BearerToken(token): BearerToken,
) -> ApiResult<StatusCode> {
    if tally_core::auth::api_key_prefix(&token).is_some() {
        return Err(ApiError::Forbidden(
            "API keys have no session; revoke the key instead".into(),
        ));
    }
    let account = state.auth.logout(&token).await?;
    let entry = Entry::account(&account, action::LOGOUT);
    state
        .access
        .record(&Actor::account(&account, ip), entry)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the caller's account (all its tokens, on every device).
#[utoipa::path(post, path = "/api/v1/auth/logout_all", tag = "auth",
    responses((status = 204), (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn logout_all(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Auth(p): Auth,
) -> ApiResult<StatusCode> {
    let Credential::Account { id, .. } = p.credential else {
        return Err(ApiError::Forbidden(
            "API keys have no session; revoke the key instead".into(),
        ));
    };
    match state.access.end_all_sessions(p.tenant_id, id).await {
        // Deleted since this request was authenticated: it has no session left.
        Err(tally_access::AccessError::NotFound(_)) | Ok(()) => {}
        Err(e) => return Err(e.into()),
    }
    state.auth.forget_account(id);
    let target = Some(format!("account:{id}"));
    state
        .access
        .record(
            &Actor::principal(&p, ip),
            Entry::success(Some(p.tenant_id), action::SESSIONS_ENDED, target),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the bearer of this token or key is.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = MeResponse), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn me(Auth(p): Auth) -> Json<MeResponse> {
    Json(match p.credential {
        Credential::Account { id, role } => MeResponse {
            tenant_id: p.tenant_id.0,
            kind: "account",
            id: id.0,
            role: Some(role),
            scopes: None,
        },
        Credential::ApiKey { id, scopes } => MeResponse {
            tenant_id: p.tenant_id.0,
            kind: "api_key",
            id: id.0,
            role: None,
            scopes: Some(scopes.into_iter().collect()),
        },
    })
}
