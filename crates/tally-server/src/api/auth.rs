//! Login and identity endpoints.

use axum::extract::State;
use axum::Json;
use tally_core::auth::Credential;
use tally_core::time::rfc3339;

use super::dto::{LoginRequest, LoginResponse, MeResponse};
use super::extract::{Auth, JsonBody};
use crate::error::ApiResult;
use crate::AppState;

/// Exchange e-mail and password for a session token (JWT, HS256, with expiry).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = crate::error::ErrorEnvelope, description = "INVALID_CREDENTIALS")))]
pub async fn login(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let now = chrono::Utc::now().timestamp();
    let r = state
        .auth
        .login(body.email.trim(), &body.password, now)
        .await?;
    Ok(Json(LoginResponse {
        access_token: r.token,
        token_type: "Bearer",
        expires_in: r.expires_in,
        expires_at: rfc3339(r.expires_at * 1_000_000),
        tenant_id: r.account.tenant_id.0,
        role: r.account.role,
    }))
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
