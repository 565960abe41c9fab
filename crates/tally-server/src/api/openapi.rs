//! The OpenAPI document, generated from the handlers' annotations.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::content::Content;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{admin, analytics, audit, auth, dto, gateway, health, insights, quotas, usage};

#[derive(OpenApi)]
#[openapi(
    info(title = "tally", description = "AI and API observability and governance in one binary."),
    paths(
        health::healthz, health::readyz,
        auth::login, auth::me, auth::logout, auth::logout_all,
        admin::create_tenant, admin::list_tenants, admin::create_account,
        admin::list_accounts, admin::update_account, admin::delete_account,
        admin::end_account_sessions, audit::list, admin::delete_tenant, insights::erase_user,
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
        gateway::v1_chat, gateway::v1_models, gateway::v1_embeddings,
        gateway::seed_chat, gateway::seed_models, gateway::providers, gateway::providers_health,
        gateway::list_credentials, gateway::put_credential, gateway::delete_credential,
        gateway::provider_quota_status, gateway::test_connection, gateway::test_providers,
        gateway::get_settings, gateway::put_settings, gateway::recommend_model,
        serve,
    ),
    components(schemas(
        crate::error::ErrorEnvelope, crate::error::ErrorBody, dto::EventBody,
        gateway::OpenAiErrorEnvelope, gateway::OpenAiErrorBody,
        analytics::PeriodName, analytics::ExportFormat,
        tally_core::usage::Generation, tally_core::usage::CallStatus, tally_core::event::EventType,
        tally_core::quota::QuotaMetric, tally_core::quota::QuotaWindow,
    )),
    modifiers(&BearerAuth, &ErrorResponses, &Links, &IdentifyNeedsUserId),
    tags(
        (name = "insights", description = "Event tracking and activity analytics (seed 001)"),
        (name = "ai", description = "LLM usage and costs (seeds 000 and 003)"),
        (name = "gateway", description = "The LLM gateway: OpenAI-compatible calls, providers and credentials (seeds 003 and 000)"),
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

/// The error answers every operation can give, added to each operation from what it
/// takes, so that no operation documents fewer statuses than the server's layers produce:
/// 400 for bad parameters or bodies, 401/403 for secured operations, 404 for resources
/// named in the path, 413/415 for bodies.
struct ErrorResponses;

fn error_response(description: &str, schema: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name(schema))),
            )
            .build(),
    )
}

/// Operations that store data through the free-space floor (`sqlite/headroom.rs`):
/// below it they answer 507. Security changes and deletions pass the floor.
const STORING: &[&str] = &[
    "create_account",
    "create_key",
    "create_project",
    "create_tenant",
    "configure",
    "identify",
    "ingest",
    "put_price",
    "put_project",
    "put_user",
    "put_credential",
    "put_settings",
    "track",
    "track_batch",
];

fn add_errors(op: &mut Operation, path: &str) {
    let stores = op
        .operation_id
        .as_deref()
        .is_some_and(|id| STORING.contains(&id));
    let params = op.parameters.as_deref().unwrap_or_default();
    let takes_path = path.contains('{');
    let takes_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let body = op.request_body.is_some();
    // OpenAI's own paths answer in OpenAI's error shape.
    let schema = if path.starts_with("/v1/") {
        "OpenAiErrorEnvelope"
    } else {
        "ErrorEnvelope"
    };
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description, schema));
    };
    if body || takes_query || takes_path {
        add(
            "400",
            "VALIDATION_ERROR, INVALID_JSON, UNKNOWN_PARAMETER or a seed code, naming the field",
        );
    }
    if secured {
        add("401", "missing, malformed, expired or revoked credentials");
        add(
            "403",
            "the credentials lack the role or scope, or name another tenant",
        );
    }
    if takes_path {
        add("404", "no such resource in the caller's tenant");
    }
    if takes_query {
        add("414", "the URI exceeds 16 KiB");
    }
    if body {
        add(
            "408",
            "REQUEST_TIMEOUT: the body did not arrive within the body-read timeout",
        );
        add("413", "the body exceeds the size limit");
        add("415", "the body is not application/json");
    }
    if stores {
        add(
            "507",
            "INSUFFICIENT_STORAGE: free disk space is below the floor; retry later",
        );
    }
}

/// Every operation of the document with its path.
fn operations_mut(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        .map(move |op| (path, op))
    })
}

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations_mut(openapi) {
            add_errors(op, path);
        }
    }
}

/// `POST /insights/users/` takes the profile body with `user_id` required (on `PUT` the
/// path names the user): the same schema, narrowed with `allOf`.
struct IdentifyNeedsUserId;

impl Modify for IdentifyNeedsUserId {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder};
        for (_, op) in operations_mut(openapi) {
            if op.operation_id.as_deref() != Some("identify") {
                continue;
            }
            let Some(content) = op
                .request_body
                .as_mut()
                .and_then(|b| b.content.get_mut("application/json"))
            else {
                continue;
            };
            let required = ObjectBuilder::new()
                .property("user_id", super::schemas::id_input())
                .required("user_id");
            content.schema = Some(
                AllOfBuilder::new()
                    .item(Ref::from_schema_name("UserProfileBody"))
                    .item(required)
                    .into(),
            );
        }
    }
}

/// OpenAPI links from each operation that creates something to the operations that read
/// or change it by the id it answers with, so clients (and schemathesis' stateful phase)
/// can follow real sequences: track → activity, identify → user → summary, …
struct Links;

/// A link: the operation that creates, the statuses it hangs on, the link's name, the
/// operation that takes the id, its parameter, and where the id is in the answer.
struct LinkSpec(
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const LINKS: &[LinkSpec] = &[
    LinkSpec(
        "track",
        &["200", "201"],
        "GetActivity",
        "get_activity",
        "activity_id",
        "$response.body#/activity_id",
    ),
    LinkSpec(
        "track_batch",
        &["201", "207"],
        "GetFirstActivity",
        "get_activity",
        "activity_id",
        "$response.body#/results/0/activity_id",
    ),
    LinkSpec(
        "identify",
        &["200", "201"],
        "GetUser",
        "get_user",
        "user_id",
        "$response.body#/user_id",
    ),
    LinkSpec(
        "identify",
        &["200", "201"],
        "PutUser",
        "put_user",
        "user_id",
        "$response.body#/user_id",
    ),
    LinkSpec(
        "identify",
        &["200", "201"],
        "UserSummary",
        "user_summary",
        "user_id",
        "$response.body#/user_id",
    ),
    LinkSpec(
        "put_user",
        &["200", "201"],
        "GetUser",
        "get_user",
        "user_id",
        "$response.body#/user_id",
    ),
    LinkSpec(
        "create_project",
        &["200", "201"],
        "GetProject",
        "get_project",
        "project_id",
        "$response.body#/project_id",
    ),
    LinkSpec(
        "create_project",
        &["200", "201"],
        "PutProject",
        "put_project",
        "project_id",
        "$response.body#/project_id",
    ),
    LinkSpec(
        "put_project",
        &["200", "201"],
        "GetProject",
        "get_project",
        "project_id",
        "$response.body#/project_id",
    ),
    LinkSpec(
        "create_tenant",
        &["201"],
        "TenantStats",
        "tenant_stats",
        "tenant_id",
        "$response.body#/id",
    ),
    LinkSpec(
        "create_tenant",
        &["201"],
        "TenantDashboard",
        "dashboard",
        "tenant_id",
        "$response.body#/id",
    ),
    LinkSpec(
        "create_key",
        &["201"],
        "RevokeKey",
        "revoke_key",
        "key_id",
        "$response.body#/id",
    ),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        for (_, op) in operations_mut(openapi) {
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            for LinkSpec(from, statuses, name, to, param, expr) in LINKS {
                if *from != id {
                    continue;
                }
                for status in *statuses {
                    if let Some(RefOr::T(resp)) = op.responses.responses.get_mut(*status) {
                        let link = LinkBuilder::new()
                            .operation_id(*to)
                            .parameter(*param, *expr)
                            .build();
                        resp.links.insert((*name).to_owned(), RefOr::T(link));
                    }
                }
            }
        }
    }
}

/// The OpenAPI 3.1 document of this server, generated once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as served: utoipa 5 writes a link's `operationId`, `operationRef` and
/// `requestBody` in snake case, which OpenAPI tools do not read; they are renamed here.
pub fn document_json() -> &'static serde_json::Value {
    static JSON: OnceLock<serde_json::Value> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(document()).unwrap_or_default();
        if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
            let links = paths
                .values_mut()
                .filter_map(|item| item.as_object_mut())
                .flat_map(|item| item.values_mut())
                .filter_map(|op| op.get_mut("responses")?.as_object_mut())
                .flat_map(|responses| responses.values_mut())
                .filter_map(|r| r.get_mut("links")?.as_object_mut())
                .flat_map(|links| links.values_mut())
                .filter_map(|l| l.as_object_mut());
            for link in links {
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.to_owned(), v);
                    }
                }
            }
        }
        doc
    })
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn serve() -> Json<&'static serde_json::Value> {
    Json(document_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every link names an operation that exists and takes the linked parameter, and every
    /// linking operation answers with the statuses the link hangs on.
    #[test]
    fn links_join_real_operations() {
        let doc = document();
        let mut ops = std::collections::HashMap::new();
        for item in doc.paths.paths.values() {
            for op in [&item.get, &item.post, &item.put, &item.delete]
                .into_iter()
                .flatten()
            {
                ops.insert(op.operation_id.clone().unwrap_or_default(), op);
            }
        }
        for LinkSpec(from, statuses, name, to, param, _) in LINKS {
            let source = ops
                .get(*from)
                .unwrap_or_else(|| panic!("no operation {from}"));
            let target = ops.get(*to).unwrap_or_else(|| panic!("no operation {to}"));
            assert!(
                target.parameters.iter().flatten().any(|p| p.name == *param),
                "{to} takes no {param}"
            );
            for s in *statuses {
                match source.responses.responses.get(*s) {
                    Some(RefOr::T(r)) => {
                        assert!(r.links.contains_key(*name), "{from} {s} lacks {name}")
                    }
                    _ => panic!("{from} has no {s} answer"),
                }
            }
        }
    }
}
