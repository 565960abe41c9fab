//! LLM usage ingestion and prices (seeds 000 and 003).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tally_core::auth::Action;
use tally_core::pricing::{ModelPrice, Nanos};
use tally_core::usage::{CostSource, UsageInput};
use tally_core::FieldError;

use super::batch::{self, Counted, Report};
use super::dto::ItemError;
use super::extract::ClientIp;
use super::extract::{parse_item, ApiQuery, Auth, JsonBody};
use super::extract::{require, tenant_for, TenantQuery};
use crate::error::ApiResult;
use crate::AppState;
use tally_access::audit::Entry;
use tally_ai::usage::{PriceInput, UsageResult};
use tally_core::audit::action;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageBatch {
    records: Vec<Box<RawValue>>,
}

/// One LLM call (documentation schema; fields are checked one by one). Rules across
/// fields: `cached_tokens` ≤ `input_tokens`, `reasoning_tokens` ≤ `output_tokens`,
/// `time_to_first_token_ms` ≤ `latency_ms`, a cost (given or computed) of at most
/// $1,000,000, a timestamp from 2000 to 5 minutes ahead.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// Client id: retries with the same id and timestamp are stored once.
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub id: Option<Value>,
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub user_id: Option<Value>,
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub conversation_id: Option<Value>,
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub job_id: Option<Value>,
    /// e.g. `openai`, `anthropic`, `google` (stored lower-case).
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub provider: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub model: String,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub input_tokens: Option<u64>,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub output_tokens: Option<u64>,
    /// Part of `input_tokens` served from the prompt cache.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub cached_tokens: Option<u64>,
    /// Part of `output_tokens` spent reasoning.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub reasoning_tokens: Option<u64>,
    #[schema(minimum = 0, maximum = 3600000)]
    pub latency_ms: Option<f64>,
    #[schema(minimum = 0, maximum = 3600000)]
    pub time_to_first_token_ms: Option<f64>,
    /// `success` (default), `error`, `timeout`, `cancelled`.
    pub status: Option<tally_core::usage::CallStatus>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub error_type: Option<String>,
    #[schema(minimum = 0, maximum = 10)]
    pub quality_score: Option<f64>,
    /// Exact decimal USD (a string, or a number), at most $1,000,000; computed from the
    /// price catalog when absent.
    #[schema(schema_with = crate::api::schemas::usd_amount_or_null)]
    pub cost_usd: Option<Value>,
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    /// A JSON object of at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Several calls at once: each is checked and reported on its own.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatchBody {
    #[schema(min_items = 1, max_items = 1000)]
    pub records: Vec<UsageBody>,
}

/// One record, or a batch.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UsageRequest {
    One(Box<UsageBody>),
    Batch(UsageBatchBody),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageItem {
    pub index: usize,
    /// `accepted` or `rejected`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Cost in USD, 6 decimals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_source: Option<CostSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageResponse {
    pub records_count: usize,
    pub processed_count: usize,
    pub failed_count: usize,
    pub duplicate_count: usize,
    pub total_cost_usd: f64,
    pub results: Vec<UsageItem>,
}

fn parse_usage(raw: &str) -> Result<UsageInput, FieldError> {
    parse_item(raw, "record")
}

/// Record LLM calls: one record, or `{"records": [...]}` for a batch. Each record is
/// validated, priced and reported on its own.
#[utoipa::path(post, path = "/api/v1/ai/usage", tag = "ai",
    request_body = UsageRequest,
    responses(
        (status = 201, body = UsageResponse, description = "every record stored"),
        (status = 207, body = UsageResponse, description = "some records rejected; see results"),
        (status = 200, body = UsageResponse, description = "a single record that was already stored"),
        (status = 400, body = crate::error::ErrorEnvelope, description = "no record accepted (BATCH_REJECTED, or the single record's error)"),
        (status = 413, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn ingest(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(raw): JsonBody<Box<RawValue>>,
) -> ApiResult<(StatusCode, Json<UsageResponse>)> {
    require(&p, Action::Ingest)?;
    let (items, single) = match serde_json::from_str::<UsageBatch>(raw.get()) {
        Ok(batch) => {
            batch::check_len(
                "records",
                "record",
                batch.records.len(),
                state.config.max_batch_events,
            )?;
            (
                batch
                    .records
                    .iter()
                    .map(|r| parse_usage(r.get()))
                    .collect::<Vec<_>>(),
                false,
            )
        }
        Err(_) => (vec![parse_usage(raw.get())], true),
    };
    let results = state
        .usage
        .ingest(p.tenant_id, p.api_key_id(), items)
        .await?;
    if single {
        if let Some(UsageResult::Rejected(e)) = results.first() {
            return Err(e.clone().into());
        }
    }
    let mut total = Nanos::ZERO;
    let report = Report::of(results, |index, r| match r {
        UsageResult::Stored {
            id,
            duplicate,
            cost,
            cost_source,
        } => {
            if !duplicate {
                total += cost;
            }
            Counted::Accepted {
                duplicate,
                item: UsageItem {
                    index,
                    status: "accepted",
                    id: Some(id),
                    duplicate: Some(duplicate),
                    cost_usd: Some(cost.usd_rounded(6)),
                    cost_source: Some(cost_source),
                    error: None,
                },
            }
        }
        UsageResult::Rejected(e) => Counted::Rejected(UsageItem {
            index,
            status: "rejected",
            id: None,
            duplicate: None,
            cost_usd: None,
            cost_source: None,
            error: Some(batch::item_error(&e)),
        }),
    });
    let response = UsageResponse {
        records_count: report.results.len(),
        processed_count: report.accepted,
        failed_count: report.rejected,
        duplicate_count: report.duplicates,
        total_cost_usd: total.usd_rounded(6),
        results: report.results,
    };
    let mut status = batch::status(
        response.processed_count,
        response.failed_count,
        "record",
        &response,
    )?;
    // A single record sent again: it exists, nothing was created.
    if single && response.duplicate_count == 1 {
        status = StatusCode::OK;
    }
    Ok((status, Json(response)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PriceEntry {
    pub provider: String,
    pub model: String,
    pub effective_from: String,
    /// Exact decimal USD per million tokens.
    pub input_per_mtok_usd: String,
    pub output_per_mtok_usd: String,
    pub cached_input_per_mtok_usd: Option<String>,
    /// `default` (shipped) or `override` (this tenant's).
    pub source: &'static str,
}

fn entry(p: &ModelPrice, source: &'static str) -> PriceEntry {
    PriceEntry {
        provider: p.provider.clone(),
        model: p.model.clone(),
        effective_from: p.effective_from.to_string(),
        input_per_mtok_usd: p.input_per_mtok.to_string(),
        output_per_mtok_usd: p.output_per_mtok.to_string(),
        cached_input_per_mtok_usd: p.cached_input_per_mtok.map(|c| c.to_string()),
        source,
    }
}

/// The prices the tenant's calls are costed with: its overrides, then the shipped defaults.
#[utoipa::path(get, path = "/api/v1/ai/prices", tag = "ai", params(TenantQuery),
    responses((status = 200, body = Vec<PriceEntry>)), security(("bearer" = [])))]
pub async fn list_prices(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Vec<PriceEntry>>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let catalog = state.usage.catalog(tenant).await?;
    let mut out: Vec<PriceEntry> = catalog
        .overrides()
        .iter()
        .map(|o| entry(o, "override"))
        .collect();
    out.extend(catalog.defaults().iter().map(|d| entry(d, "default")));
    Ok(Json(out))
}

/// Set the tenant's price for a model from a date on (negotiated rates, private models).
/// Past calls keep the cost they were recorded with.
#[utoipa::path(post, path = "/api/v1/ai/prices", tag = "ai", request_body = PriceInput,
    responses((status = 201, body = PriceEntry), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn put_price(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<PriceInput>,
) -> ApiResult<(StatusCode, Json<PriceEntry>)> {
    require(&p, Action::ManageTenant)?;
    let price = state.usage.put_price(p.tenant_id, body).await?;
    let shown = entry(&price, "override");
    let audited = Entry::success(
        Some(p.tenant_id),
        action::PRICE_SET,
        Some(format!("price:{}/{}", shown.provider, shown.model)),
    )
    .details(serde_json::to_value(&shown).unwrap_or_default());
    state.access.record_by(&p, ip, audited).await;
    Ok((StatusCode::CREATED, Json(shown)))
}
