//! Tenants, accounts and API keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tally_core::auth::{Action, Credential, Role};
use tally_core::tenancy::{ApiKey, Tenant};
use tally_core::time::{now_micros, rfc3339};
use tally_core::{ApiKeyId, FieldError, TenantId};

use super::dto::*;
use super::extract::{ApiQuery, Auth, JsonBody};
use super::insights::{require, tenant_for, TenantQuery};
use crate::error::{ApiError, ApiResult};
use crate::service::tenancy::{self, NewAccount};
use crate::AppState;

fn tenant_response(t: Tenant) -> TenantResponse {
    TenantResponse {
        id: t.id.0,
        name: t.name,
        max_events: t.max_events,
        created_at: rfc3339(t.created_at),
    }
}

fn key_response(k: ApiKey, full: Option<String>) -> ApiKeyResponse {
    ApiKeyResponse {
        id: k.id.0,
        tenant_id: k.tenant_id.0,
        prefix: k.display_prefix(),
        name: k.name,
        scopes: k.scopes.into_iter().collect(),
        created_at: rfc3339(k.created_at),
        revoked_at: k.revoked_at.map(rfc3339),
        key: full,
    }
}

/// Create a tenant (platform admin).
#[utoipa::path(post, path = "/api/v1/tenants", tag = "admin", request_body = CreateTenantRequest,
    responses((status = 201, body = TenantResponse), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_tenant(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<CreateTenantRequest>,
) -> ApiResult<(StatusCode, Json<TenantResponse>)> {
    require(&p, Action::Platform)?;
    let t = tenancy::create_tenant(&state.stores, &body.name, body.max_events).await?;
    Ok((StatusCode::CREATED, Json(tenant_response(t))))
}

/// List tenants (platform admin).
#[utoipa::path(get, path = "/api/v1/tenants", tag = "admin",
    responses((status = 200, body = Vec<TenantResponse>)), security(("bearer" = [])))]
pub async fn list_tenants(
    State(state): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<TenantResponse>>> {
    require(&p, Action::Platform)?;
    let tenants = state.stores.identity.list_tenants().await?;
    Ok(Json(tenants.into_iter().map(tenant_response).collect()))
}

/// Create an account. Owners create accounts in their own tenant with a role no higher
/// than owner; platform admins anywhere, with any role.
#[utoipa::path(post, path = "/api/v1/accounts", tag = "admin", request_body = CreateAccountRequest,
    responses((status = 201, body = AccountResponse), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope, description = "no such tenant"), (status = 409, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_account(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<CreateAccountRequest>,
) -> ApiResult<(StatusCode, Json<AccountResponse>)> {
    if !matches!(p.credential, Credential::Account { .. }) {
        return Err(ApiError::Forbidden(
            "accounts are managed by accounts, not API keys".into(),
        ));
    }
    require(&p, Action::ManageTenant)?;
    let tenant_id = p
        .effective_tenant(body.tenant_id.map(TenantId))
        .map_err(|_| ApiError::Forbidden("only the admin role may act on another tenant".into()))?;
    if body.role == Role::Admin && !p.is_platform_admin() {
        return Err(ApiError::Forbidden(
            "only the admin role may create admin accounts".into(),
        ));
    }
    let a = tenancy::create_account(
        &state.stores,
        NewAccount {
            tenant_id,
            email: &body.email,
            password: &body.password,
            role: body.role,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(AccountResponse {
            id: a.id.0,
            tenant_id: a.tenant_id.0,
            email: a.email,
            role: a.role,
            created_at: rfc3339(a.created_at),
        }),
    ))
}

/// Create an API key. The full key is in this response only.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "admin", request_body = CreateKeyRequest,
    responses((status = 201, body = ApiKeyResponse), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope, description = "no such tenant")),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<ApiKeyResponse>)> {
    require(&p, Action::ManageTenant)?;
    let tenant_id = p
        .effective_tenant(body.tenant_id.map(TenantId))
        .map_err(|_| ApiError::Forbidden("only the admin role may act on another tenant".into()))?;
    if body.scopes.is_empty() {
        return Err(FieldError::invalid("scopes", "at least one scope is required").into());
    }
    let (key, full) = tenancy::create_api_key(
        &state.stores,
        tenant_id,
        &body.name,
        body.scopes.into_iter().collect(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(key_response(key, Some(full)))))
}

/// List the tenant's API keys (never the keys themselves).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "admin", params(TenantQuery),
    responses((status = 200, body = Vec<ApiKeyResponse>)), security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Vec<ApiKeyResponse>>> {
    require(&p, Action::ManageTenant)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let keys = state.stores.identity.list_api_keys(tenant).await?;
    Ok(Json(
        keys.into_iter().map(|k| key_response(k, None)).collect(),
    ))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{key_id}", tag = "admin",
    params(("key_id" = String, Path), TenantQuery),
    responses((status = 204), (status = 404, body = crate::error::ErrorEnvelope)), security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(key_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<StatusCode> {
    require(&p, Action::ManageTenant)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let id: ApiKeyId = key_id.parse().map_err(|_| ApiError::NotFound("api key"))?;
    if !state
        .stores
        .identity
        .revoke_api_key(tenant, id, now_micros())
        .await?
    {
        return Err(ApiError::NotFound("api key"));
    }
    state.auth.forget_key(tenant, id);
    Ok(StatusCode::NO_CONTENT)
}
