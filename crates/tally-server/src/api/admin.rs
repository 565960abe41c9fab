//! Tenants, accounts and API keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;
use tally_core::audit::action;
use tally_core::auth::{Action, Credential, Principal, Role};
use tally_core::tenancy::{Account, ApiKey, Tenant};
use tally_core::time::rfc3339;
use tally_core::{AccountId, ApiKeyId, FieldError, TenantId};

use super::dto::*;
use super::extract::{require, tenant_for, TenantQuery};
use super::extract::{ApiQuery, Auth, ClientIp, JsonBody};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use tally_access::audit::Entry;
use tally_access::tenancy::NewAccount;

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
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<CreateTenantRequest>,
) -> ApiResult<(StatusCode, Json<TenantResponse>)> {
    require(&p, Action::Platform)?;
    let t = state
        .access
        .create_tenant(&body.name, body.max_events)
        .await?;
    let entry = Entry::tenant_created(&t);
    state.access.record_by(&p, ip, entry).await;
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
    let tenants = state.access.list_tenants().await?;
    Ok(Json(tenants.into_iter().map(tenant_response).collect()))
}

/// Delete a tenant and all its data (platform admin): events, profiles, LLM usage,
/// quotas, prices, accounts and keys. Its audit trail stays. Not the caller's own tenant.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}", tag = "admin",
    params(("tenant_id" = uuid::Uuid, Path)),
    responses((status = 200, body = DeletionResponse), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope), (status = 409, body = crate::error::ErrorEnvelope, description = "your own tenant")),
    security(("bearer" = [])))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<DeletionResponse>> {
    require(&p, Action::Platform)?;
    let tenant: TenantId = tenant_id
        .parse()
        .map_err(|_| ApiError::NotFound("tenant"))?;
    let t = state.access.require_tenant(tenant).await?;
    let report = state.access.delete_tenant(Some(p.tenant_id), &t).await?;
    state.auth.forget_tenant(tenant);
    state.quotas.forget(tenant);
    let entry = Entry::tenant_deleted(&t, &report.rows);
    state.access.record_by(&p, ip, entry).await;
    Ok(Json(DeletionResponse {
        deleted: format!("tenant:{tenant}"),
        deleted_rows: report.rows,
    }))
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
    ClientIp(ip): ClientIp,
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
    let a = state
        .access
        .create_account(NewAccount {
            tenant_id,
            email: &body.email,
            password: &body.password,
            role: body.role,
        })
        .await?;
    let entry = Entry::account(&a, action::ACCOUNT_CREATED)
        .details(json!({ "email": a.email, "role": a.role }));
    state.access.record_by(&p, ip, entry).await;
    Ok((StatusCode::CREATED, Json(account_response(a))))
}

fn account_response(a: Account) -> AccountResponse {
    AccountResponse {
        id: a.id.0,
        tenant_id: a.tenant_id.0,
        email: a.email,
        role: a.role,
        created_at: rfc3339(a.created_at),
        disabled_at: a.disabled_at.map(rfc3339),
    }
}

/// List the accounts of the caller's tenant (platform admins: any tenant).
#[utoipa::path(get, path = "/api/v1/accounts", tag = "admin", params(TenantQuery),
    responses((status = 200, body = Vec<AccountResponse>), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_accounts(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Vec<AccountResponse>>> {
    require(&p, Action::ManageTenant)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let accounts = state.access.list_accounts(tenant).await?;
    Ok(Json(accounts.into_iter().map(account_response).collect()))
}

async fn managed(
    state: &AppState,
    p: &Principal,
    tenant: Option<&str>,
    id: &str,
) -> ApiResult<Account> {
    require(p, Action::ManageTenant)?;
    if !matches!(p.credential, Credential::Account { .. }) {
        return Err(ApiError::Forbidden(
            "accounts are managed by accounts, not API keys".into(),
        ));
    }
    let tenant = tenant_for(p, tenant)?;
    let id: AccountId = id.parse().map_err(|_| ApiError::NotFound("account"))?;
    Ok(state.access.managed_account(p, tenant, id).await?)
}

/// After an account changed: its cached state is dropped, so its tokens are judged afresh
/// at once, and the change goes into the trail.
async fn account_changed(
    state: &AppState,
    p: &Principal,
    ip: Option<std::net::IpAddr>,
    account: &Account,
    entry: Entry<'_>,
) {
    state.auth.forget_account(account.id);
    state.access.record_by(p, ip, entry).await;
}

/// Disable or re-enable an account. A disabled account cannot log in and its tokens are
/// refused at once.
#[utoipa::path(patch, path = "/api/v1/accounts/{account_id}", tag = "admin", request_body = UpdateAccountRequest,
    params(("account_id" = uuid::Uuid, Path), TenantQuery),
    responses((status = 200, body = AccountResponse), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope), (status = 409, body = crate::error::ErrorEnvelope, description = "your own account")),
    security(("bearer" = [])))]
pub async fn update_account(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    Path(account_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
    JsonBody(body): JsonBody<UpdateAccountRequest>,
) -> ApiResult<Json<AccountResponse>> {
    let account = managed(&state, &p, q.tenant_id.as_deref(), &account_id).await?;
    let updated = state
        .access
        .set_account_disabled(&account, body.disabled)
        .await?;
    let what = if body.disabled {
        action::ACCOUNT_DISABLED
    } else {
        action::ACCOUNT_ENABLED
    };
    let entry = Entry::account(&account, what).details(json!({ "email": account.email }));
    account_changed(&state, &p, ip, &account, entry).await;
    Ok(Json(account_response(updated)))
}

/// Delete an account. Its tokens are refused at once; what it did stays in the audit trail.
#[utoipa::path(delete, path = "/api/v1/accounts/{account_id}", tag = "admin",
    params(("account_id" = uuid::Uuid, Path), TenantQuery),
    responses((status = 204), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope), (status = 409, body = crate::error::ErrorEnvelope, description = "your own account")),
    security(("bearer" = [])))]
pub async fn delete_account(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    Path(account_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<StatusCode> {
    let account = managed(&state, &p, q.tenant_id.as_deref(), &account_id).await?;
    state.access.delete_account(&account).await?;
    let entry = Entry::account(&account, action::ACCOUNT_DELETED)
        .details(json!({ "email": account.email, "role": account.role }));
    account_changed(&state, &p, ip, &account, entry).await;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of an account (a lost laptop): its tokens are refused at once.
#[utoipa::path(post, path = "/api/v1/accounts/{account_id}/end_sessions", tag = "admin",
    params(("account_id" = uuid::Uuid, Path), TenantQuery),
    responses((status = 204), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope), (status = 409, body = crate::error::ErrorEnvelope, description = "your own account: use /auth/logout_all")),
    security(("bearer" = [])))]
pub async fn end_account_sessions(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    Path(account_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<StatusCode> {
    let account = managed(&state, &p, q.tenant_id.as_deref(), &account_id).await?;
    state
        .access
        .end_all_sessions(account.tenant_id, account.id)
        .await?;
    let entry = Entry::account(&account, action::SESSIONS_ENDED);
    account_changed(&state, &p, ip, &account, entry).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an API key. The full key is in this response only.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "admin", request_body = CreateKeyRequest,
    responses((status = 201, body = ApiKeyResponse), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope, description = "no such tenant")),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<ApiKeyResponse>)> {
    require(&p, Action::ManageTenant)?;
    let tenant_id = p
        .effective_tenant(body.tenant_id.map(TenantId))
        .map_err(|_| ApiError::Forbidden("only the admin role may act on another tenant".into()))?;
    if body.scopes.is_empty() {
        return Err(FieldError::invalid("scopes", "at least one scope is required").into());
    }
    let (key, full) = state
        .access
        .create_api_key(tenant_id, &body.name, body.scopes.into_iter().collect())
        .await?;
    let entry = Entry::key_created(&key);
    state.access.record_by(&p, ip, entry).await;
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
    let keys = state.access.list_api_keys(tenant).await?;
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
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<StatusCode> {
    require(&p, Action::ManageTenant)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let id: ApiKeyId = key_id.parse().map_err(|_| ApiError::NotFound("api key"))?;
    state.access.revoke_api_key(tenant, id).await?;
    state.auth.forget_key(tenant, id);
    let entry = Entry::key_revoked(tenant, id);
    state.access.record_by(&p, ip, entry).await;
    Ok(StatusCode::NO_CONTENT)
}
