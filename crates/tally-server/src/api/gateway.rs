//! The LLM gateway's routes (seeds 003 and 000): OpenAI's own paths (`/v1/chat/completions`,
//! `/v1/models`, `/v1/embeddings`, errors in OpenAI's shape, so the official SDKs work by
//! changing `base_url`), seed 003's chat endpoint on the same code path with the envelope,
//! and the providers, credentials, health, tests and settings under `/api/v1/ai`.

// Errors here are the gateway's (both faces, with details) or finished responses: large,
// and only on a cold path.
#![allow(clippy::result_large_err)]

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tally_core::audit::action;
use tally_core::auth::{Action, Principal};
use tally_core::pricing::Nanos;
use tally_gateway::catalog::{ModelView, ProviderView};
use tally_gateway::chat::{valid_id, CallMeta, Caller, ChatAnswer};
use tally_gateway::credentials::{ConnectionTest, CredentialInput, CredentialView};
use tally_gateway::health::DeploymentHealth;
use tally_gateway::{GatewayError, GatewaySettings};

use super::extract::{
    parse_json, require, tenant_for, ApiQuery, Auth, ClientIp, JsonBody, TenantQuery,
};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use tally_access::audit::Entry;

/// OpenAI's error shape (the `/v1` paths).
#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorEnvelope {
    pub error: OpenAiErrorBody,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`,
    /// `insufficient_quota`, `api_error`, …
    #[serde(rename = "type")]
    #[schema(required = false)]
    pub kind: String,
    /// The request field at fault.
    #[schema(required = false)]
    pub param: Option<String>,
    #[schema(required = false)]
    pub code: Option<String>,
    /// tally's extra fields (seed 003's `invalid_params`, `estimated_cost`, …).
    #[schema(value_type = Object, required = false)]
    pub details: Option<Value>,
}

/// One chat message (OpenAI's format).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the body; the gateway reads it as JSON
pub struct ChatMessageDoc {
    pub role: ChatRole,
    /// A string, or an array of parts (`{"type":"text","text":…}`,
    /// `{"type":"image_url","image_url":{"url":…}}`); null on an assistant message with
    /// `tool_calls`.
    #[schema(value_type = Object)]
    pub content: Value,
    pub tool_call_id: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// OpenAI's chat completion request, which seed 003's chat takes too. Other OpenAI fields
/// (`top_p`, `stop`, `seed`, …) are passed on to the provider.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ChatRequestDoc {
    /// A catalog model (`gpt-4o`, `o3`, `claude-sonnet-4`, `gemini-2.5-pro`), a model a
    /// credential lists, or `provider/model`.
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessageDoc>,
    pub stream: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// `low`, `medium` or `high` (reasoning models).
    pub reasoning_effort: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u32>,
    /// The end user, for per-user budgets.
    pub user: Option<String>,
}

/// OpenAI's embeddings request.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EmbeddingsRequestDoc {
    pub model: String,
    /// A string, or an array of strings or token arrays.
    #[schema(value_type = Object)]
    pub input: Value,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

/// The end user a call is for, when the body's `user` does not say.
pub const USER_HEADER: &str = "x-tally-user";
/// The conversation a call belongs to.
pub const CONVERSATION_HEADER: &str = "x-tally-conversation";

fn caller(p: &Principal, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    let header = |name: &str| -> Result<Option<String>, GatewayError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Ok(s) if valid_id(s) => Ok(Some(s.to_owned())),
                _ => Err(GatewayError::invalid(
                    name,
                    format!("the {name} header must be 1 to 128 printable characters"),
                )),
            },
        }
    };
    Ok(Caller {
        tenant: p.tenant_id,
        api_key: p.api_key_id(),
        user: header(USER_HEADER)?,
        conversation: header(CONVERSATION_HEADER)?,
    })
}

/// The headers every answer carries: the call's id, cost, remaining budget, route and
/// rate limit state.
fn meta_headers(resp: &mut Response, meta: &CallMeta) {
    let h = resp.headers_mut();
    let mut put = |name: &str, value: String| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            h.insert(n, v);
        }
    };
    put("x-tally-request-id", meta.request_id.clone());
    put("x-tally-provider", meta.provider.clone());
    put("x-tally-model", meta.model.clone());
    if let Some(d) = &meta.deployment {
        put("x-tally-deployment", d.clone());
    }
    put(
        "x-tally-cost-usd",
        format!("{:.6}", meta.cost.usd_rounded(6)),
    );
    if let Some(b) = meta.budget_remaining {
        put(
            "x-tally-budget-remaining-usd",
            format!("{:.6}", Nanos(b.0.max(0)).usd_rounded(6)),
        );
    }
    put(
        "x-tally-cache",
        if meta.cached { "hit" } else { "miss" }.into(),
    );
    if let Some(f) = &meta.fallback_from {
        put("x-tally-fallback-from", f.clone());
    }
    for (k, v) in &meta.rate_headers {
        put(k, v.clone());
    }
}

/// `Retry-After` and the error's own headers.
pub(crate) fn add_error_headers(resp: &mut Response, e: &GatewayError) {
    let h = resp.headers_mut();
    if let Some(s) = e.retry_after {
        h.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    for (k, v) in &e.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            h.insert(n, v);
        }
    }
}

/// An error in OpenAI's shape. Budget and quota refusals are 429 `insufficient_quota`
/// there, as OpenAI answers an exhausted quota; the seed's fields stay in `details`.
fn openai_error(e: GatewayError) -> Response {
    let status = match e.code {
        "O3_BUDGET_EXCEEDED" | "REASONING_QUOTA_EXCEEDED" | "QUOTA_EXCEEDED" => 429,
        _ => e.status,
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body = json!({"error": {
        "message": e.message,
        "type": e.kind,
        "param": e.param,
        "code": e.openai_code.clone().unwrap_or_else(|| e.code.to_ascii_lowercase()),
    }});
    if e.details.as_object().is_some_and(|d| !d.is_empty()) {
        body["error"]["details"] = e.details.clone();
        body["error"]["tally_code"] = json!(e.code);
    }
    let mut resp = (status, Json(body)).into_response();
    add_error_headers(&mut resp, &e);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// Authenticates an OpenAI-path call: a tally API key (or session) with the gateway scope.
async fn openai_auth(state: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let unauthorised = |message: &str| {
        openai_error(
            GatewayError::new(401, "UNAUTHORIZED", "invalid_request_error", message)
                .with_openai_code("invalid_api_key"),
        )
    };
    let Some(token) = token else {
        return Err(unauthorised(
            "You didn't provide an API key. Send a tally API key with the gateway scope as 'Authorization: Bearer <key>'.",
        ));
    };
    let p = state
        .auth
        .authenticate(token)
        .await
        .map_err(|_| unauthorised("Incorrect API key provided."))?;
    if !p.can(Action::Gateway) {
        return Err(openai_error(
            GatewayError::new(
                403,
                "FORBIDDEN",
                "permission_error",
                "this credential lacks the 'gateway' scope",
            )
            .with_openai_code("missing_scope"),
        ));
    }
    Ok(p)
}

fn openai_body(bytes: Result<Bytes, BytesRejection>, state: &AppState) -> Result<Value, Response> {
    let bytes = bytes.map_err(|_| {
        openai_error(
            GatewayError::new(
                413,
                "PAYLOAD_TOO_LARGE",
                "invalid_request_error",
                format!(
                    "the request body exceeds {} bytes",
                    state.config.max_body_bytes
                ),
            )
            .with_openai_code("request_too_large"),
        )
    })?;
    serde_json::from_slice::<Value>(&bytes).map_err(|e| {
        openai_error(
            GatewayError::new(
                400,
                "INVALID_JSON",
                "invalid_request_error",
                format!("We could not parse the JSON body of your request: {e}"),
            )
            .with_openai_code("invalid_json"),
        )
    })
}

fn answer(result: Result<ChatAnswer, GatewayError>, openai: bool) -> Response {
    match result {
        Ok(ChatAnswer::Complete { body, meta }) => {
            let mut resp = Json(body).into_response();
            meta_headers(&mut resp, &meta);
            resp
        }
        Ok(ChatAnswer::Stream { stream, meta }) => {
            let mut resp = Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            meta_headers(&mut resp, &meta);
            resp
        }
        Err(e) if openai => openai_error(e),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// OpenAI's chat completions.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway",
    request_body = ChatRequestDoc,
    responses((status = 200, description = "OpenAI's chat completion, or an event stream with `stream: true`"),
        (status = 400, body = OpenAiErrorEnvelope, description = "A bad request, a parameter the model refuses (invalid_parameter_for_model), a prompt past the context window, no credential for the model"),
        (status = 404, body = OpenAiErrorEnvelope, description = "model_not_found"),
        (status = 429, body = OpenAiErrorEnvelope, description = "A rate limit, or a budget or quota (insufficient_quota, the seed's fields in details)"),
        (status = 502, body = OpenAiErrorEnvelope, description = "The provider failed or could not be reached"),
        (status = 503, body = OpenAiErrorEnvelope, description = "Every deployment of the model is failing (circuit open)"),
        (status = 504, body = OpenAiErrorEnvelope, description = "The provider did not answer in time")),
    security(("bearer" = [])))]
pub async fn v1_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = match openai_auth(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body = match openai_body(body, &state) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let caller = match caller(&p, &headers) {
        Ok(c) => c,
        Err(e) => return openai_error(e),
    };
    answer(state.gateway.chat(caller, body).await, true)
}

/// OpenAI's model list: the models this key can call.
#[utoipa::path(get, path = "/v1/models", tag = "gateway",
    responses((status = 200, description = "OpenAI's model list")), security(("bearer" = [])))]
pub async fn v1_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let p = match openai_auth(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state.gateway.openai_models(p.tenant_id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => openai_error(e),
    }
}

/// OpenAI's embeddings.
#[utoipa::path(post, path = "/v1/embeddings", tag = "gateway",
    request_body = EmbeddingsRequestDoc,
    responses((status = 200, description = "OpenAI's embeddings answer"),
        (status = 400, body = OpenAiErrorEnvelope), (status = 404, body = OpenAiErrorEnvelope),
        (status = 429, body = OpenAiErrorEnvelope), (status = 502, body = OpenAiErrorEnvelope),
        (status = 503, body = OpenAiErrorEnvelope), (status = 504, body = OpenAiErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn v1_embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let p = match openai_auth(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body = match openai_body(body, &state) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let caller = match caller(&p, &headers) {
        Ok(c) => c,
        Err(e) => return openai_error(e),
    };
    match state.gateway.embeddings(caller, body).await {
        Ok((v, meta)) => {
            let mut resp = Json(v).into_response();
            meta_headers(&mut resp, &meta);
            resp
        }
        Err(e) => openai_error(e),
    }
}

/// Seed 003's universal chat: OpenAI's request fields (`model`, `messages`,
/// `reasoning_effort`, `max_completion_tokens`, `temperature`, …) on the gateway's code
/// path, errors in the envelope (`INVALID_PARAMETER_FOR_MODEL`, `O3_BUDGET_EXCEEDED`, …).
#[utoipa::path(post, path = "/api/v1/ai/openai/chat", tag = "gateway",
    request_body = ChatRequestDoc,
    responses((status = 200, description = "OpenAI's chat completion, or an event stream with `stream: true`"),
        (status = 400, body = crate::error::ErrorEnvelope, description = "INVALID_PARAMETER_FOR_MODEL (with invalid_params, suggested_params, model_requirements), CONTEXT_LENGTH_EXCEEDED, PROVIDER_NOT_CONFIGURED, VALIDATION_ERROR"),
        (status = 403, body = crate::error::ErrorEnvelope, description = "O3_BUDGET_EXCEEDED, REASONING_QUOTA_EXCEEDED or QUOTA_EXCEEDED with the seed's fields"),
        (status = 404, body = crate::error::ErrorEnvelope, description = "MODEL_NOT_FOUND"),
        (status = 429, body = crate::error::ErrorEnvelope, description = "RATE_LIMITED, or the provider's own 429"),
        (status = 502, body = crate::error::ErrorEnvelope, description = "The provider failed"),
        (status = 503, body = crate::error::ErrorEnvelope, description = "Every deployment is failing"),
        (status = 504, body = crate::error::ErrorEnvelope, description = "The provider did not answer in time")),
    security(("bearer" = [])))]
pub async fn seed_chat(
    State(state): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    require(&p, Action::Gateway)?;
    let caller = caller(&p, &headers)?;
    Ok(answer(state.gateway.chat(caller, body).await, false))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

/// Seed 003: the models with their specifics (generation, context window, required,
/// forbidden and optional parameters, prices) and whether a credential serves each.
#[utoipa::path(get, path = "/api/v1/ai/openai/chat", tag = "gateway", params(TenantQuery),
    responses((status = 200, body = ModelList)), security(("bearer" = [])))]
pub async fn seed_models(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<ModelList>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    Ok(Json(ModelList {
        models: state.gateway.models(tenant).await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderView>,
}

/// Seed 003: the providers the gateway speaks and the tenant's deployments of each.
#[utoipa::path(get, path = "/api/v1/ai/providers", tag = "gateway", params(TenantQuery),
    responses((status = 200, body = ProviderList)), security(("bearer" = [])))]
pub async fn providers(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<ProviderList>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    Ok(Json(ProviderList {
        providers: state.gateway.providers(tenant).await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeploymentStatus {
    pub name: String,
    pub provider: String,
    pub kind: tally_core::credential::ProviderKind,
    pub base_url: String,
    #[serde(flatten)]
    pub health: DeploymentHealth,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    /// The worst status among the deployments (`unknown` when there are none).
    pub overall: tally_gateway::health::HealthStatus,
    pub deployments: Vec<DeploymentStatus>,
}

/// Seed 003: each deployment's status (healthy, degraded, down) from its circuit, the
/// error rate and latency of real traffic, and the last active check.
#[utoipa::path(get, path = "/api/v1/ai/providers/health", tag = "gateway", params(TenantQuery),
    responses((status = 200, body = HealthReport)), security(("bearer" = [])))]
pub async fn providers_health(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<HealthReport>> {
    use tally_gateway::health::HealthStatus::*;
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let deployments: Vec<DeploymentStatus> = state
        .gateway
        .health(tenant)
        .await?
        .into_iter()
        .map(|(d, h)| DeploymentStatus {
            provider: d.provider().to_owned(),
            name: d.name,
            kind: d.kind,
            base_url: d.base_url,
            health: h,
        })
        .collect();
    let rank = |s| match s {
        Healthy => 0,
        Unknown => 1,
        Degraded => 2,
        Down => 3,
    };
    let overall = deployments
        .iter()
        .map(|d| d.health.status)
        .max_by_key(|s| rank(*s))
        .unwrap_or(Unknown);
    Ok(Json(HealthReport {
        overall,
        deployments,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
}

/// Seed 003: the tenant's provider credentials, masked.
#[utoipa::path(get, path = "/api/v1/ai/credentials", tag = "gateway",
    responses((status = 200, body = CredentialList)), security(("bearer" = [])))]
pub async fn list_credentials(
    State(state): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<CredentialList>> {
    require(&p, Action::ManageTenant)?;
    Ok(Json(CredentialList {
        credentials: state.gateway.credentials(p.tenant_id).await?,
    }))
}

/// Seed 003: creates a credential, or replaces the one of the same name (201 when
/// created, 200 when replaced). The key is sealed at rest and shown only masked.
#[utoipa::path(post, path = "/api/v1/ai/credentials", tag = "gateway", request_body = CredentialInput,
    responses((status = 201, body = CredentialView), (status = 200, body = CredentialView)),
    security(("bearer" = [])))]
pub async fn put_credential(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(input): JsonBody<CredentialInput>,
) -> ApiResult<(StatusCode, Json<CredentialView>)> {
    require(&p, Action::ManageTenant)?;
    let (view, created) = state.gateway.put_credential(p.tenant_id, input).await?;
    let entry = Entry::success(
        Some(p.tenant_id),
        action::CREDENTIAL_SET,
        Some(view.name.clone()),
    )
    .details(json!({"kind": view.kind, "base_url": view.base_url, "created": created}));
    state.access.record_by(&p, ip, entry).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// Deletes a credential.
#[utoipa::path(delete, path = "/api/v1/ai/credentials/{name}", tag = "gateway",
    params(("name" = String, Path, description = "The credential's name")),
    responses((status = 204, description = "Deleted")), security(("bearer" = [])))]
pub async fn delete_credential(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    require(&p, Action::ManageTenant)?;
    state.gateway.delete_credential(p.tenant_id, &name).await?;
    let entry = Entry::success(Some(p.tenant_id), action::CREDENTIAL_DELETED, Some(name));
    state.access.record_by(&p, ip, entry).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProviderQuery {
    /// A provider name (`openai`, `anthropic`, `google` or a credential's own name);
    /// required (query parameters are documented optional: the answer is a 400 naming it).
    #[param(min_length = 1)]
    pub provider: Option<String>,
    pub tenant_id: Option<String>,
}

/// Seed 003: a provider's quota status: the quotas that count its calls, their use, and
/// today's spend with it.
#[utoipa::path(get, path = "/api/v1/ai/credentials/quota_status", tag = "gateway", params(ProviderQuery),
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn provider_quota_status(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ProviderQuery>,
) -> ApiResult<Json<Value>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let provider = q
        .provider
        .ok_or_else(|| tally_core::FieldError::required("provider"))?;
    Ok(Json(state.gateway.quota_status(tenant, &provider).await?))
}

/// A stored credential to test (`provider`), or one to test before storing it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConnectionBody {
    /// A stored credential's name.
    pub provider: Option<String>,
    /// A credential not yet stored (`name`, `kind`, `api_key`, `base_url`).
    pub credential: Option<Value>,
}

/// Seed 003: tests a credential with a real authenticated request (the provider's model
/// list), through the outbound policy.
#[utoipa::path(post, path = "/api/v1/ai/credentials/test_connection", tag = "gateway",
    request_body = TestConnectionBody, responses((status = 200, body = ConnectionTest),
        (status = 404, body = crate::error::ErrorEnvelope, description = "No credential of that name")),
    security(("bearer" = [])))]
pub async fn test_connection(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<TestConnectionBody>,
) -> ApiResult<Json<ConnectionTest>> {
    require(&p, Action::ManageTenant)?;
    let result = match (body.provider, body.credential) {
        (Some(name), None) => state.gateway.test_credential(p.tenant_id, &name).await?,
        (None, Some(c)) => {
            let input: CredentialInput = parse_json(c.to_string().as_bytes())?;
            state.gateway.test_unsaved(p.tenant_id, input).await?
        }
        _ => {
            return Err(tally_core::FieldError::invalid(
                "provider",
                "give either provider (a stored credential's name) or credential (one to test before storing)",
            )
            .into())
        }
    };
    Ok(Json(result))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderTestBody {
    /// Only this credential (else every one).
    pub provider: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderTestReport {
    pub results: Vec<Value>,
}

/// Seed 000's provider test: a real minimal call (one answer token) to each configured
/// provider through the gateway, with its latency and the error if any. The calls are
/// recorded and priced like any other.
#[utoipa::path(post, path = "/api/v1/ai/test", tag = "gateway", request_body = ProviderTestBody,
    responses((status = 200, body = ProviderTestReport),
        (status = 404, body = crate::error::ErrorEnvelope, description = "No credential (of that name)")),
    security(("bearer" = [])))]
pub async fn test_providers(
    State(state): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ProviderTestBody>,
) -> ApiResult<Json<ProviderTestReport>> {
    require(&p, Action::Gateway)?;
    let caller = caller(&p, &headers)?;
    Ok(Json(ProviderTestReport {
        results: state
            .gateway
            .test_providers(caller, body.provider.as_deref())
            .await?,
    }))
}

/// The tenant's gateway settings: rate limits, fallback chains, the cache, its models.
#[utoipa::path(get, path = "/api/v1/ai/gateway/settings", tag = "gateway",
    responses((status = 200, body = GatewaySettings)), security(("bearer" = [])))]
pub async fn get_settings(
    State(state): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<Json<GatewaySettings>> {
    require(&p, Action::Read)?;
    Ok(Json(state.gateway.settings(p.tenant_id).await?))
}

/// Replaces the tenant's gateway settings.
#[utoipa::path(put, path = "/api/v1/ai/gateway/settings", tag = "gateway", request_body = GatewaySettings,
    responses((status = 200, body = GatewaySettings)), security(("bearer" = [])))]
pub async fn put_settings(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(settings): JsonBody<GatewaySettings>,
) -> ApiResult<Json<GatewaySettings>> {
    require(&p, Action::ManageTenant)?;
    let stored = state.gateway.put_settings(p.tenant_id, settings).await?;
    let entry = Entry::success(Some(p.tenant_id), action::GATEWAY_SETTINGS_SET, None)
        .details(serde_json::to_value(&stored).unwrap_or_default());
    state.access.record_by(&p, ip, entry).await;
    Ok(Json(stored))
}

/// Seed 003: the model for a task, from its complexity, budget weight and quality need,
/// each model's tier and the tenant's own measured quality, latency, errors and cost, with
/// the reasons and the runners-up.
#[utoipa::path(post, path = "/api/v1/ai/openai/recommend_model", tag = "gateway",
    request_body = tally_gateway::recommend::RecommendInput,
    responses((status = 200, body = tally_gateway::recommend::Recommendation)),
    security(("bearer" = [])))]
pub async fn recommend_model(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(input): JsonBody<tally_gateway::recommend::RecommendInput>,
) -> ApiResult<Json<tally_gateway::recommend::Recommendation>> {
    require(&p, Action::Read)?;
    Ok(Json(state.gateway.recommend(p.tenant_id, input).await?))
}
