//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, analytics, auth, dto, health, insights, quotas, usage};

#[derive(OpenApi)]
#[openapi(
    info(title = "tally", description = "AI and API observability and governance in one binary."),
    paths(
        health::healthz, health::readyz,
        auth::login, auth::me,
        admin::create_tenant, admin::list_tenants, admin::create_account,
        admin::create_key, admin::list_keys, admin::revoke_key,
        insights::track, insights::track_batch, insights::track_test,
        insights::list_activities, insights::get_activity, insights::user_summary,
        insights::identify, insights::put_user, insights::list_users, insights::get_user,
        insights::create_project, insights::put_project, insights::list_projects, insights::get_project,
        usage::ingest, usage::list_prices, usage::put_price, analytics::tenant_stats, analytics::export_stats, analytics::global_usage, analytics::export_usage,
        analytics::costs, analytics::conversation_cost, analytics::export_costs,
        analytics::performance, analytics::realtime, analytics::export_performance,
        analytics::dashboard, analytics::usage_dashboard, analytics::model_comparison,
        analytics::efficiency, analytics::cost_breakdown, analytics::trends, analytics::records,
        quotas::quota_status, quotas::configure, quotas::test,
    ),
    components(schemas(crate::error::ErrorEnvelope, crate::error::ErrorBody, dto::EventBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "insights", description = "Event tracking and activity analytics (seed 001)"),
        (name = "ai", description = "LLM usage and costs (seeds 000 and 003)"),
        (name = "auth", description = "Sessions"),
        (name = "admin", description = "Tenants, accounts and API keys"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description =
            Some("A session JWT from /api/v1/auth/login, or an API key (tly_…)".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// The OpenAPI 3 document of this server.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
