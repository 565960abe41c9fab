//! AI analytics endpoints (seeds 000 and 003): stats, costs, performance, real time,
//! dashboards, cross-tenant usage, seed 003's views, raw records and exports. Handlers
//! parse and authorise; the reports come from `tally_ai::analytics`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tally_core::auth::{Action, Principal};
use tally_core::time::rfc3339;
use tally_core::usage::{CallStatus, Generation};
use tally_core::{FieldError, TenantId};

use super::extract::{parse_u32, require, tenant_for, TenantQuery};
use super::extract::{ApiQuery, Auth, JsonBody};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use tally_ai::analytics::{
    ConversationCost, CostBreakdown, CostReport, Dashboard, Efficiency, GlobalUsage,
    ModelComparison, PerformanceReport, PeriodSpec, Realtime, Table, Tabular, TenantStats, Trends,
    UsageDashboard,
};
use tally_ai::records::RecordFilters;

/// A period as the API takes it: `period=last_24h|last_7d|last_30d|last_90d`, `days=N`
/// (seed 003), or `from`/`to` (RFC 3339 or YYYY-MM-DD; `to` exclusive).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// `last_24h`, `last_7d` (default), `last_30d` or `last_90d`.
    #[param(value_type = Option<PeriodName>)]
    #[schema(value_type = Option<PeriodName>)]
    pub period: Option<String>,
    /// The last N days (1–366), as seed 003 does.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 366)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 366)]
    pub days: Option<String>,
    /// Start of an explicit range (RFC 3339 or YYYY-MM-DD), rounded down to the hour; not
    /// in the future.
    #[param(schema_with = super::schemas::date_or_time)]
    #[schema(schema_with = super::schemas::date_or_time)]
    pub from: Option<String>,
    /// End of an explicit range, exclusive, rounded up to the hour and never past now;
    /// default now.
    #[param(schema_with = super::schemas::date_or_time)]
    #[schema(schema_with = super::schemas::date_or_time)]
    pub to: Option<String>,
}

impl From<PeriodQuery> for PeriodSpec {
    fn from(q: PeriodQuery) -> Self {
        PeriodSpec {
            period: q.period,
            days: q.days,
            from: q.from,
            to: q.to,
        }
    }
}

/// The named periods.
#[derive(utoipa::ToSchema)]
#[allow(non_camel_case_types, dead_code)] // documentation only: the wire names
pub enum PeriodName {
    last_24h,
    last_7d,
    last_30d,
    last_90d,
}

fn read_tenant(p: &Principal, requested: Option<&str>) -> ApiResult<TenantId> {
    require(p, Action::Read)?;
    tenant_for(p, requested)
}

/// Cost, usage, reliability, insights and projections of one tenant's AI calls.
#[utoipa::path(get, path = "/api/v1/ai/stats/{tenant_id}", tag = "ai",
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant (another one needs the admin role)"), PeriodQuery),
    responses((status = 200, body = TenantStats), (status = 400, body = crate::error::ErrorEnvelope, description = "INSIGHTS_003 invalid period"),
              (status = 403, body = crate::error::ErrorEnvelope, description = "another tenant, without the admin role")),
    security(("bearer" = [])))]
pub async fn tenant_stats(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(tenant_id): Path<String>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> ApiResult<Json<TenantStats>> {
    let tenant = read_tenant(&p, Some(&tenant_id))?;
    let period = PeriodSpec::from(q);
    Ok(Json(state.analytics.stats(tenant, &period).await?))
}

/// Latency percentiles (from merged sketches, 1 % relative error), time to first token,
/// error rate and reliability per provider and model, against the previous period.
#[utoipa::path(get, path = "/api/v1/ai/performance", tag = "ai", params(PeriodQuery, TenantQuery),
    responses((status = 200, body = PerformanceReport), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn performance(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<PerformanceReport>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    Ok(Json(state.analytics.performance(tenant, &period).await?))
}

/// The last five minutes: active conversations, messages per minute, response time, and
/// each provider's status (healthy, degraded, down, idle) against its 24-hour baseline.
#[utoipa::path(get, path = "/api/v1/ai/performance/realtime", tag = "ai", params(TenantQuery),
    responses((status = 200, body = Realtime)), security(("bearer" = [])))]
pub async fn realtime(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Realtime>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let mut report = state.analytics.realtime(tenant).await?;
    state.gateway.merge_health(tenant, &mut report).await?;
    Ok(Json(report))
}

/// Costs by provider, model, conversation and user, with recommendations that each carry
/// a saving computed by repricing the period's tokens.
#[utoipa::path(get, path = "/api/v1/ai/costs", tag = "ai", params(PeriodQuery, TenantQuery),
    responses((status = 200, body = CostReport), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn costs(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<CostReport>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    Ok(Json(state.analytics.costs(tenant, &period).await?))
}

/// One conversation's cost: totals, cost by model and its most recent calls.
#[utoipa::path(get, path = "/api/v1/ai/costs/{conversation_id}", tag = "ai",
    params(("conversation_id" = String, Path, max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"), TenantQuery),
    responses((status = 200, body = ConversationCost), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn conversation_cost(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(conversation_id): Path<String>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<ConversationCost>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    tally_core::check_id("conversation_id", &conversation_id, 256)?;
    Ok(Json(
        state
            .analytics
            .conversation(tenant, conversation_id)
            .await?,
    ))
}

/// The tenant's summary with chart-ready daily and hourly series, top models and quotas.
#[utoipa::path(get, path = "/api/v1/ai/dashboard/{tenant_id}", tag = "ai",
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant (another one needs the admin role)"), PeriodQuery),
    responses((status = 200, body = Dashboard), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn dashboard(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(tenant_id): Path<String>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> ApiResult<Json<Dashboard>> {
    let tenant = read_tenant(&p, Some(&tenant_id))?;
    let period = PeriodSpec::from(q);
    Ok(Json(state.analytics.dashboard(tenant, &period).await?))
}

/// Seed 003's `/ai/usage/dashboard/?days=7`: jobs (LLM calls) and cost in total and by
/// model generation, with efficiency insights.
#[utoipa::path(get, path = "/api/v1/ai/usage/dashboard", tag = "ai", params(PeriodQuery, TenantQuery),
    responses((status = 200, body = UsageDashboard)), security(("bearer" = [])))]
pub async fn usage_dashboard(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<UsageDashboard>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    Ok(Json(
        state.analytics.usage_dashboard(tenant, &period).await?,
    ))
}

/// Every tenant's AI usage, ranked by cost, with growth versus the previous period.
/// Admin role only.
#[utoipa::path(get, path = "/api/v1/ai/usage", tag = "ai", params(PeriodQuery),
    responses((status = 200, body = GlobalUsage), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn global_usage(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> ApiResult<Json<GlobalUsage>> {
    require(&p, Action::Platform)?;
    let period = PeriodSpec::from(q);
    Ok(Json(state.analytics.global(&period).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelsQuery {
    /// Comma-separated models to keep (default: all): at most 50, of up to 128
    /// characters, 2,000 characters in all.
    #[param(max_length = 2000)]
    models: Option<String>,
    /// One model.
    #[param(max_length = 128)]
    model: Option<String>,
}

/// Seed 003's `cost_breakdown/?model=o3`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelQuery {
    /// One model (default: all).
    #[param(max_length = 128)]
    model: Option<String>,
}

/// `models` (comma-separated) and `model` (one name, commas included) as one list.
fn model_list(q: &ModelsQuery) -> Result<Vec<String>, FieldError> {
    if q.models.as_ref().is_some_and(|m| m.chars().count() > 2000) {
        return Err(FieldError::invalid(
            "models",
            "must be at most 2000 characters",
        ));
    }
    if q.model.as_ref().is_some_and(|m| m.chars().count() > 128) {
        return Err(FieldError::invalid(
            "model",
            "must be at most 128 characters",
        ));
    }
    let list: Vec<String> = q
        .models
        .iter()
        .flat_map(|s| s.split(','))
        .map(|m| m.trim().to_owned())
        .chain(q.model.iter().cloned())
        .filter(|m| !m.is_empty())
        .collect();
    if list.len() > 50 || list.iter().any(|m| m.chars().count() > 128) {
        return Err(FieldError::invalid(
            "models",
            "at most 50 models of up to 128 characters",
        ));
    }
    Ok(list)
}

/// Seed 003: models side by side (cost, quality, speed, reliability), by generation.
#[utoipa::path(get, path = "/api/v1/ai/usage/model_comparison", tag = "ai",
    params(PeriodQuery, ModelsQuery, TenantQuery),
    responses((status = 200, body = ModelComparison)), security(("bearer" = [])))]
pub async fn model_comparison(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(m): ApiQuery<ModelsQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<ModelComparison>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    let models = model_list(&m)?;
    Ok(Json(
        state
            .analytics
            .model_comparison(tenant, &period, &models)
            .await?,
    ))
}

/// Seed 003: cost per 1k tokens, per successful call, tokens per second and quality per
/// dollar, cheapest first.
#[utoipa::path(get, path = "/api/v1/ai/usage/efficiency", tag = "ai",
    params(PeriodQuery, ModelsQuery, TenantQuery),
    responses((status = 200, body = Efficiency)), security(("bearer" = [])))]
pub async fn efficiency(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(m): ApiQuery<ModelsQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Efficiency>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    let models = model_list(&m)?;
    Ok(Json(
        state.analytics.efficiency(tenant, &period, &models).await?,
    ))
}

/// Seed 003: cost by model (with token kinds), by day and by user; `?model=` narrows it.
#[utoipa::path(get, path = "/api/v1/ai/usage/cost_breakdown", tag = "ai",
    params(PeriodQuery, ModelQuery, TenantQuery),
    responses((status = 200, body = CostBreakdown)), security(("bearer" = [])))]
pub async fn cost_breakdown(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(m): ApiQuery<ModelQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<CostBreakdown>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    let mut models = model_list(&ModelsQuery {
        models: None,
        model: m.model,
    })?;
    Ok(Json(
        state
            .analytics
            .cost_breakdown(tenant, &period, models.pop())
            .await?,
    ))
}

/// Seed 003: daily series and whether cost, calls and latency trend up or down.
#[utoipa::path(get, path = "/api/v1/ai/usage/trends", tag = "ai", params(PeriodQuery, TenantQuery),
    responses((status = 200, body = Trends)), security(("bearer" = [])))]
pub async fn trends(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PeriodQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Trends>> {
    let tenant = read_tenant(&p, t.tenant_id.as_deref())?;
    let period = PeriodSpec::from(q);
    Ok(Json(state.analytics.trends(tenant, &period).await?))
}

/// Seed 003's Django-style filters on raw usage records.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)] // the names are seed 003's query parameters
pub struct RecordsQuery {
    /// RFC 3339 or YYYY-MM-DD, inclusive.
    #[param(schema_with = crate::api::schemas::date_or_time)]
    created_at__gte: Option<String>,
    /// RFC 3339 or YYYY-MM-DD, exclusive.
    #[param(schema_with = crate::api::schemas::date_or_time)]
    created_at__lt: Option<String>,
    /// USD, e.g. `0.05`.
    #[param(pattern = r"^\d{1,15}(\.\d{1,9})?$")]
    total_cost__gte: Option<String>,
    /// USD.
    #[param(pattern = r"^\d{1,15}(\.\d{1,9})?$")]
    total_cost__lte: Option<String>,
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    model_name: Option<String>,
    /// Comma-separated, at most 50.
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    model_name__in: Option<String>,
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    provider: Option<String>,
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    user_id: Option<String>,
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    conversation_id: Option<String>,
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    job_id: Option<String>,
    #[param(value_type = Option<CallStatus>)]
    status: Option<String>,
    #[param(value_type = Option<f64>)]
    quality_score__gte: Option<String>,
    /// The model's generation: `new` (reasoning and latest models) or `legacy`.
    #[param(value_type = Option<Generation>)]
    generation: Option<String>,
    /// Minimum cost efficiency: quality points per dollar.
    #[param(value_type = Option<f64>, minimum = 0)]
    cost_efficiency__gte: Option<String>,
    /// Case-insensitive text in the model, ids, error type or metadata.
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 256)]
    search: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    page: Option<String>,
    /// 1 to 100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    page_size: Option<String>,
    /// Platform admins only: another tenant.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageRecordView {
    pub id: i64,
    pub client_id: Option<String>,
    pub created_at: String,
    pub provider: String,
    pub model_name: String,
    pub user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub job_id: Option<String>,
    /// The API key the call was made (gateway) or reported with; none when a signed-in
    /// account reported it.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub api_key_id: Option<tally_core::ApiKeyId>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub total_cost: f64,
    pub cost_source: tally_core::usage::CostSource,
    pub latency_ms: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    pub status: &'static str,
    pub error_type: Option<String>,
    pub quality_score: Option<f64>,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageRecordList {
    /// Matching records, counted up to 1,000.
    pub count: u64,
    /// True when `count` stopped at the cap (there may be more).
    pub count_capped: bool,
    pub page: u32,
    pub page_size: u32,
    pub results: Vec<UsageRecordView>,
    #[schema(value_type = Object)]
    pub filters_applied: Value,
}

impl RecordsQuery {
    fn filters(&self) -> RecordFilters {
        RecordFilters {
            created_at__gte: self.created_at__gte.clone(),
            created_at__lt: self.created_at__lt.clone(),
            total_cost__gte: self.total_cost__gte.clone(),
            total_cost__lte: self.total_cost__lte.clone(),
            model_name: self.model_name.clone(),
            model_name__in: self.model_name__in.clone(),
            provider: self.provider.clone(),
            user_id: self.user_id.clone(),
            conversation_id: self.conversation_id.clone(),
            job_id: self.job_id.clone(),
            status: self.status.clone(),
            quality_score__gte: self.quality_score__gte.clone(),
            generation: self.generation.clone(),
            cost_efficiency__gte: self.cost_efficiency__gte.clone(),
            search: self.search.clone(),
        }
    }
}

/// Raw usage records, newest first, with seed 003's filters (`created_at__gte`,
/// `total_cost__gte`, `model_name__in`, `search`, …).
#[utoipa::path(get, path = "/api/v1/ai/usage/records", tag = "ai", params(RecordsQuery),
    responses((status = 200, body = UsageRecordList), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn records(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<RecordsQuery>,
) -> ApiResult<Json<UsageRecordList>> {
    let tenant = read_tenant(&p, q.tenant_id.as_deref())?;
    let page = parse_u32("page", q.page.as_deref(), 1, 1, 10_000)?;
    let page_size = parse_u32("page_size", q.page_size.as_deref(), 20, 1, 100)?;
    let mut applied = Map::new();
    let pairs: [(&str, &Option<String>); 15] = [
        ("created_at__gte", &q.created_at__gte),
        ("created_at__lt", &q.created_at__lt),
        ("total_cost__gte", &q.total_cost__gte),
        ("total_cost__lte", &q.total_cost__lte),
        ("model_name", &q.model_name),
        ("model_name__in", &q.model_name__in),
        ("provider", &q.provider),
        ("user_id", &q.user_id),
        ("conversation_id", &q.conversation_id),
        ("job_id", &q.job_id),
        ("status", &q.status),
        ("quality_score__gte", &q.quality_score__gte),
        ("generation", &q.generation),
        ("cost_efficiency__gte", &q.cost_efficiency__gte),
        ("search", &q.search),
    ];
    for (k, v) in pairs {
        if let Some(v) = v.as_deref().filter(|s| !s.is_empty()) {
            applied.insert(k.into(), Value::from(v));
        }
    }
    let filters = q.filters();
    let found = state
        .usage
        .records(tenant, &filters, page, page_size)
        .await?;
    Ok(Json(UsageRecordList {
        count: found.count,
        count_capped: found.count_capped,
        page,
        page_size,
        results: found
            .records
            .into_iter()
            .map(|s| {
                let r = s.record;
                UsageRecordView {
                    id: s.id,
                    client_id: r.client_id,
                    created_at: rfc3339(r.timestamp),
                    provider: r.provider,
                    model_name: r.model,
                    user_id: r.user_id,
                    conversation_id: r.conversation_id,
                    job_id: r.job_id,
                    api_key_id: r.api_key_id,
                    input_tokens: r.tokens.input,
                    output_tokens: r.tokens.output,
                    cached_tokens: r.tokens.cached_input,
                    reasoning_tokens: r.tokens.reasoning,
                    total_cost: r.cost.usd_rounded(6),
                    cost_source: r.cost_source,
                    latency_ms: r.latency_ms,
                    time_to_first_token_ms: r.time_to_first_token_ms,
                    status: r.status.as_str(),
                    error_type: r.error_type,
                    quality_score: r.quality_score,
                    metadata: serde_json::from_str(&r.metadata).unwrap_or(Value::Null),
                }
            })
            .collect(),
        filters_applied: Value::Object(applied),
    }))
}

// ---------------------------------------------------------------------------------------
// Exports

/// What to export: a format and the report's period.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// `json` (default) or `csv`.
    #[schema(value_type = Option<ExportFormat>)]
    pub format: Option<String>,
    /// As the reports' query parameters; one of `period`, `days` or `from`/`to`.
    #[schema(value_type = Option<PeriodName>)]
    pub period: Option<String>,
    #[serde(default, deserialize_with = "integer_text")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 366)]
    pub days: Option<String>,
    #[schema(schema_with = crate::api::schemas::date_or_time_or_null)]
    pub from: Option<String>,
    #[schema(schema_with = crate::api::schemas::date_or_time_or_null)]
    pub to: Option<String>,
    /// Platform admins only: another tenant (not for the stats export, which names it in
    /// the path).
    #[schema(value_type = Option<uuid::Uuid>)]
    pub tenant_id: Option<String>,
}

/// `days` in a JSON body: an integer (kept as text, as the query string gives it).
fn integer_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::Number(n)) => tally_core::number::id_text(&n)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid value: {n}, expected an integer"))),
        Some(other) => Err(D::Error::custom(format!(
            "invalid type: {other}, expected an integer"
        ))),
    }
}

/// Export file formats.
#[derive(utoipa::ToSchema)]
#[allow(non_camel_case_types, dead_code)] // documentation only: the wire names
pub enum ExportFormat {
    json,
    csv,
}

impl ExportBody {
    fn period(&self) -> PeriodQuery {
        PeriodQuery {
            period: self.period.clone(),
            days: self.days.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }
}

enum Format {
    Json,
    Csv,
}

fn format_of(body: &ExportBody) -> Result<Format, FieldError> {
    match body.format.as_deref().unwrap_or("json") {
        "json" => Ok(Format::Json),
        "csv" => Ok(Format::Csv),
        _ => Err(FieldError::invalid("format", "must be json or csv")),
    }
}

/// Metadata of an export (seed 000's export JSON).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExportMetadata {
    pub tenant_id: Option<uuid::Uuid>,
    pub format: &'static str,
    pub metrics_included: Vec<&'static str>,
    pub record_count: usize,
    pub generated_at: String,
    pub period: String,
}

fn render_csv(table: &Table) -> ApiResult<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&table.headers).map_err(ApiError::internal)?;
    for row in &table.rows {
        w.write_record(row).map_err(ApiError::internal)?;
    }
    w.into_inner().map_err(ApiError::internal)
}

/// Renders an export as a download: JSON with metadata and summary, or the report's table
/// as CSV.
/// A report that can be exported: a table for CSV, and the period it covers.
trait Exportable: Serialize + Tabular {
    fn period(&self) -> &str;
}

macro_rules! exportable {
    ($($t:ty),*) => {$(
        impl Exportable for $t {
            fn period(&self) -> &str {
                &self.period
            }
        }
    )*};
}
exportable!(TenantStats, GlobalUsage, CostReport, PerformanceReport);

fn export<T: Exportable>(
    stamp: (uuid::Uuid, i64),
    kind: &'static str,
    format: Format,
    tenant: Option<TenantId>,
    metrics: Vec<&'static str>,
    summary: Value,
    report: &T,
) -> ApiResult<Response> {
    let table = report.table();
    let (export_id, generated_at) = stamp;
    let period = report.period();
    let scope = tenant.map_or_else(|| "all".to_owned(), |t| t.0.to_string());
    let (bytes, content_type, file_name) = match format {
        Format::Csv => (
            render_csv(&table)?,
            "text/csv; charset=utf-8",
            format!("{kind}-{scope}-{period}.csv"),
        ),
        Format::Json => {
            let file_name = format!("{kind}-{scope}-{period}.json");
            let body = json!({
                "export_id": export_id,
                "file_name": file_name,
                "metadata": ExportMetadata {
                    tenant_id: tenant.map(|t| t.0),
                    format: "json",
                    metrics_included: metrics,
                    record_count: table.rows.len(),
                    generated_at: rfc3339(generated_at),
                    period: period.to_owned(),
                },
                "summary": summary,
                "data": report,
            });
            (
                serde_json::to_vec(&body).map_err(ApiError::internal)?,
                "application/json",
                file_name,
            )
        }
    };
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// Export one tenant's stats as JSON or CSV (`tenant_id,period,provider,total_cost,…`).
#[utoipa::path(post, path = "/api/v1/ai/stats/{tenant_id}/export", tag = "ai",
    params(("tenant_id" = uuid::Uuid, Path, description = "the tenant (another one needs the admin role)")), request_body = ExportBody,
    responses((status = 200, description = "the file (application/json or text/csv)"),
              (status = 400, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn export_stats(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(tenant_id): Path<String>,
    JsonBody(body): JsonBody<ExportBody>,
) -> ApiResult<Response> {
    let tenant = read_tenant(&p, Some(&tenant_id))?;
    let format = format_of(&body)?;
    let period = PeriodSpec::from(body.period());
    let stats = state.analytics.stats(tenant, &period).await?;
    let summary = json!({
        "total_cost": stats.total_cost_usd,
        "total_messages": stats.total_messages,
        "top_provider": stats.provider_breakdown.first().map(|p| p.provider.clone()),
    });
    export(
        state.analytics.export_stamp(),
        "stats",
        format,
        Some(tenant),
        vec!["cost", "usage", "reliability"],
        summary,
        &stats,
    )
}

/// Export every tenant's usage (admin role only).
#[utoipa::path(post, path = "/api/v1/ai/usage/export", tag = "ai", request_body = ExportBody,
    responses((status = 200, description = "the file"), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn export_usage(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<ExportBody>,
) -> ApiResult<Response> {
    require(&p, Action::Platform)?;
    let format = format_of(&body)?;
    let period = PeriodSpec::from(body.period());
    let usage = state.analytics.global(&period).await?;
    let summary = json!({
        "total_cost": usage.total_cost_usd,
        "total_messages": usage.total_messages,
        "active_tenants": usage.active_tenants,
    });
    export(
        state.analytics.export_stamp(),
        "usage",
        format,
        None,
        vec!["cost", "usage", "growth"],
        summary,
        &usage,
    )
}

/// Export the cost analysis.
#[utoipa::path(post, path = "/api/v1/ai/costs/export", tag = "ai", request_body = ExportBody,
    responses((status = 200, description = "the file"), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn export_costs(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<ExportBody>,
) -> ApiResult<Response> {
    let tenant = read_tenant(&p, body.tenant_id.as_deref())?;
    let format = format_of(&body)?;
    let period = PeriodSpec::from(body.period());
    let costs = state.analytics.costs(tenant, &period).await?;
    let summary = json!({
        "total_cost": costs.total_cost_usd,
        "top_provider": costs.by_provider.first().map(|p| p.provider.clone()),
        "potential_saving": costs.potential_saving_usd,
    });
    export(
        state.analytics.export_stamp(),
        "costs",
        format,
        Some(tenant),
        vec!["cost"],
        summary,
        &costs,
    )
}

/// Export the performance report.
#[utoipa::path(post, path = "/api/v1/ai/performance/export", tag = "ai", request_body = ExportBody,
    responses((status = 200, description = "the file"), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn export_performance(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<ExportBody>,
) -> ApiResult<Response> {
    let tenant = read_tenant(&p, body.tenant_id.as_deref())?;
    let format = format_of(&body)?;
    let period = PeriodSpec::from(body.period());
    let perf = state.analytics.performance(tenant, &period).await?;
    let summary = json!({
        "calls": perf.by_provider.iter().map(|r| r.calls).sum::<u64>(),
        "top_provider": perf.by_provider.first().map(|p| p.provider.clone()),
    });
    export(
        state.analytics.export_stamp(),
        "performance",
        format,
        Some(tenant),
        vec!["performance"],
        summary,
        &perf,
    )
}
