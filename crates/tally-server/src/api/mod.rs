//! The HTTP API (axum): routing, layers (request ids, tracing, body limits, trailing-slash
//! normalisation) and the handlers. Handlers extract inputs, call `service`, and shape the
//! JSON the seeds show.

mod admin;
mod analytics;
mod audit;
mod auth;
mod batch;
pub mod contract;
pub mod dto;
pub mod extract;
pub(crate) mod gateway;
mod health;
mod insights;
mod limits;
pub mod openapi;
mod quotas;
pub mod schemas;
mod usage;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use tower::Layer;
use tower_http::normalize_path::{NormalizePath, NormalizePathLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The application router. Routes are declared without trailing slashes; `service` adds
/// the normalisation that also accepts the seeds' trailing-slash forms.
pub fn app(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let api = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/me", get(auth::me))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/logout_all", post(auth::logout_all))
        .route(
            "/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route("/tenants/{tenant_id}", delete(admin::delete_tenant))
        .route(
            "/accounts",
            post(admin::create_account).get(admin::list_accounts),
        )
        .route(
            "/accounts/{account_id}",
            patch(admin::update_account).delete(admin::delete_account),
        )
        .route(
            "/accounts/{account_id}/end_sessions",
            post(admin::end_account_sessions),
        )
        .route("/api-keys", post(admin::create_key).get(admin::list_keys))
        .route("/api-keys/{key_id}", delete(admin::revoke_key))
        .route("/insights/track", post(insights::track))
        .route("/insights/track/batch", post(insights::track_batch))
        .route("/insights/track/test", post(insights::track_test))
        .route("/insights/activities", get(insights::list_activities))
        .route(
            "/insights/activities/{activity_id}",
            get(insights::get_activity),
        )
        .route(
            "/insights/activities/users/{user_id}/summary",
            get(insights::user_summary),
        )
        .route(
            "/insights/users",
            post(insights::identify).get(insights::list_users),
        )
        .route(
            "/insights/users/{user_id}",
            put(insights::put_user)
                .get(insights::get_user)
                .delete(insights::erase_user),
        )
        .route(
            "/insights/projects",
            post(insights::create_project).get(insights::list_projects),
        )
        .route(
            "/insights/projects/{project_id}",
            put(insights::put_project).get(insights::get_project),
        )
        .route(
            "/ai/usage",
            post(usage::ingest).get(analytics::global_usage),
        )
        .route("/ai/usage/export", post(analytics::export_usage))
        .route("/ai/usage/records", get(analytics::records))
        .route("/ai/usage/dashboard", get(analytics::usage_dashboard))
        .route(
            "/ai/usage/model_comparison",
            get(analytics::model_comparison),
        )
        .route("/ai/usage/cost_breakdown", get(analytics::cost_breakdown))
        .route("/ai/usage/efficiency", get(analytics::efficiency))
        .route("/ai/usage/trends", get(analytics::trends))
        .route("/ai/prices", get(usage::list_prices).post(usage::put_price))
        .route("/ai/stats/{tenant_id}", get(analytics::tenant_stats))
        .route(
            "/ai/stats/{tenant_id}/export",
            post(analytics::export_stats),
        )
        .route("/ai/costs", get(analytics::costs))
        .route("/ai/costs/export", post(analytics::export_costs))
        .route(
            "/ai/costs/{conversation_id}",
            get(analytics::conversation_cost),
        )
        .route("/ai/performance", get(analytics::performance))
        .route("/ai/performance/realtime", get(analytics::realtime))
        .route(
            "/ai/performance/export",
            post(analytics::export_performance),
        )
        .route("/ai/dashboard/{tenant_id}", get(analytics::dashboard))
        .route("/ai/quotas", get(quotas::quota_status))
        .route("/ai/quotas/config", post(quotas::configure))
        .route("/ai/quotas/test", post(quotas::test))
        .route(
            "/ai/openai/chat",
            post(gateway::seed_chat).get(gateway::seed_models),
        )
        .route("/ai/openai/recommend_model", post(gateway::recommend_model))
        .route("/ai/providers", get(gateway::providers))
        .route("/ai/providers/health", get(gateway::providers_health))
        .route(
            "/ai/credentials",
            get(gateway::list_credentials).post(gateway::put_credential),
        )
        .route(
            "/ai/credentials/quota_status",
            get(gateway::provider_quota_status),
        )
        .route(
            "/ai/credentials/test_connection",
            post(gateway::test_connection),
        )
        .route("/ai/credentials/{name}", delete(gateway::delete_credential))
        .route("/ai/test", post(gateway::test_providers))
        .route(
            "/ai/gateway/settings",
            get(gateway::get_settings).put(gateway::put_settings),
        )
        .route("/audit", get(audit::list))
        .route("/openapi.json", get(openapi::serve))
        .route_layer(axum::middleware::from_fn_with_state(
            query_contract(),
            contract::strict_query,
        ));

    Router::new()
        .nest("/api/v1", api)
        .route("/v1/chat/completions", post(gateway::v1_chat))
        .route("/v1/models", get(gateway::v1_models))
        .route("/v1/embeddings", post(gateway::v1_embeddings))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(limits::request_head))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The query contract, read once from the OpenAPI document.
fn query_contract() -> std::sync::Arc<contract::QueryContract> {
    static CONTRACT: std::sync::OnceLock<std::sync::Arc<contract::QueryContract>> =
        std::sync::OnceLock::new();
    CONTRACT
        .get_or_init(|| {
            std::sync::Arc::new(contract::QueryContract::from_document(openapi::document()))
        })
        .clone()
}

/// The router behind trailing-slash normalisation: `/insights/track/` and
/// `/insights/track` are the same resource.
pub fn service(state: AppState) -> NormalizePath<Router> {
    NormalizePathLayer::trim_trailing_slash().layer(app(state))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
