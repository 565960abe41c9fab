//! LLM usage ingestion and prices (seeds 000 and 003).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tally_core::activity::round_to as round;
use tally_core::auth::Action;
use tally_core::pricing::{ModelPrice, Nanos};
use tally_core::usage::{CostSource, UsageInput};
use tally_core::FieldError;

use super::dto::ItemError;
use super::extract::{parse_item, ApiQuery, Auth, JsonBody};
use super::insights::{item_error, require, tenant_for, TenantQuery};
use crate::error::{ApiError, ApiResult};
use crate::service::usage::{PriceInput, UsageResult};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageBatch {
    records: Vec<Box<RawValue>>,
}

/// One LLM call (documentation schema; fields are checked one by one).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageBody {
    /// Client id: retries with the same id and timestamp are stored once.
    pub id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub user_id: Option<Value>,
    pub conversation_id: Option<String>,
    pub job_id: Option<String>,
    /// e.g. `openai`, `anthropic`, `google`.
    pub provider: String,
    pub model: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Part of `input_tokens` served from the prompt cache.
    pub cached_tokens: Option<u64>,
    /// Part of `output_tokens` spent reasoning.
    pub reasoning_tokens: Option<u64>,
    pub latency_ms: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    /// `success` (default), `error`, `timeout`, `cancelled`.
    pub status: Option<String>,
    pub error_type: Option<String>,
    /// 0 to 10.
    pub quality_score: Option<f64>,
    /// Exact decimal; computed from the price catalog when absent.
    pub cost_usd: Option<String>,
    pub timestamp: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
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
    request_body = UsageBody,
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
            let n = batch.records.len();
            if n == 0 {
                return Err(
                    FieldError::invalid("records", "must contain at least one record").into(),
                );
            }
            if n > state.config.max_batch_events {
                return Err(ApiError::TooManyItems(format!(
                    "records holds {n} records; the limit is {} per request",
                    state.config.max_batch_events
                )));
            }
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
    let results = state.usage.ingest(p.tenant_id, items).await?;
    if single {
        if let Some(UsageResult::Rejected(e)) = results.first() {
            return Err(e.clone().into());
        }
    }
    let mut out = Vec::with_capacity(results.len());
    let (mut ok, mut failed, mut dup) = (0, 0, 0);
    let mut total = Nanos::ZERO;
    for (index, r) in results.into_iter().enumerate() {
        out.push(match r {
            UsageResult::Stored {
                id,
                duplicate,
                cost,
                cost_source,
            } => {
                ok += 1;
                dup += usize::from(duplicate);
                if !duplicate {
                    total = total.saturating_add(cost);
                }
                UsageItem {
                    index,
                    status: "accepted",
                    id: Some(id),
                    duplicate: Some(duplicate),
                    cost_usd: Some(cost.usd_rounded(6)),
                    cost_source: Some(cost_source),
                    error: None,
                }
            }
            UsageResult::Rejected(e) => {
                failed += 1;
                UsageItem {
                    index,
                    status: "rejected",
                    id: None,
                    duplicate: None,
                    cost_usd: None,
                    cost_source: None,
                    error: Some(item_error(&e)),
                }
            }
        });
    }
    let response = UsageResponse {
        records_count: out.len(),
        processed_count: ok,
        failed_count: failed,
        duplicate_count: dup,
        total_cost_usd: total.usd_rounded(6),
        results: out,
    };
    if ok == 0 {
        return Err(ApiError::BadRequest {
            code: "BATCH_REJECTED",
            message: "no record of the batch was accepted; see details.results".into(),
            details: serde_json::to_value(&response).map_err(ApiError::internal)?,
        });
    }
    let status = if failed > 0 {
        StatusCode::MULTI_STATUS
    } else if single && dup == 1 {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
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
    JsonBody(body): JsonBody<PriceInput>,
) -> ApiResult<(StatusCode, Json<PriceEntry>)> {
    require(&p, Action::ManageTenant)?;
    let price = state.usage.put_price(p.tenant_id, body).await?;
    Ok((StatusCode::CREATED, Json(entry(&price, "override"))))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct StatsQuery {
    /// `last_24h`, `last_7d` (default), `last_30d` or `last_90d`.
    period: Option<String>,
    /// Alternative to `period`: the last N days (1–366), as seed 003 does.
    days: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderShare {
    pub provider: String,
    pub total_cost: f64,
    pub calls: u64,
    /// Percent of the tenant's cost over the period.
    pub market_share: f64,
    /// Share of calls that succeeded.
    pub reliability: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Insight {
    /// `cost_optimization`, `high_error_rate`, `unpriced_model`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `low`, `medium`, `high`.
    pub severity: &'static str,
    pub recommendation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_saving_usd: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Projections {
    /// This period's daily run rate × 30.
    pub monthly_cost_estimate: f64,
    /// Cost change versus the previous period of the same length, percent; null when the
    /// previous period had no cost.
    pub growth_rate: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantStats {
    pub tenant_id: uuid::Uuid,
    pub period: String,
    pub from: String,
    pub to: String,
    pub total_cost_usd: f64,
    /// LLM calls.
    pub total_messages: u64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub error_rate: f64,
    pub provider_breakdown: Vec<ProviderShare>,
    pub insights: Vec<Insight>,
    pub projections: Projections,
}

fn parse_period(q: &StatsQuery) -> Result<(String, i64), FieldError> {
    use tally_core::error::codes::INVALID_PERIOD;
    if let Some(d) = q.days.as_deref().filter(|d| !d.is_empty()) {
        let n: i64 = d
            .parse()
            .ok()
            .filter(|n| (1..=366).contains(n))
            .ok_or_else(|| {
                FieldError::new(INVALID_PERIOD, "days", "must be an integer from 1 to 366")
            })?;
        return Ok((format!("last_{n}d"), n * 24));
    }
    match q.period.as_deref().unwrap_or("last_7d") {
        "last_24h" => Ok(("last_24h".into(), 24)),
        "last_7d" => Ok(("last_7d".into(), 7 * 24)),
        "last_30d" => Ok(("last_30d".into(), 30 * 24)),
        "last_90d" => Ok(("last_90d".into(), 90 * 24)),
        _ => Err(FieldError::new(
            INVALID_PERIOD,
            "period",
            "must be last_24h, last_7d, last_30d or last_90d",
        )),
    }
}

/// Cost, usage, reliability, insights and projections of one tenant's AI calls.
#[utoipa::path(get, path = "/api/v1/ai/stats/{tenant_id}", tag = "ai",
    params(("tenant_id" = String, Path), StatsQuery),
    responses((status = 200, body = TenantStats), (status = 400, body = crate::error::ErrorEnvelope, description = "INSIGHTS_003 invalid period"),
              (status = 403, body = crate::error::ErrorEnvelope, description = "another tenant, without the admin role")),
    security(("bearer" = [])))]
pub async fn tenant_stats(
    State(state): State<AppState>,
    Auth(p): Auth,
    axum::extract::Path(tenant_id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> ApiResult<Json<TenantStats>> {
    use crate::service::usage::{Period, CHEAPER_SIBLING, SHORT_OUTPUT_TOKENS};
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, Some(&tenant_id))?;
    let (label, hours) = parse_period(&q)?;
    let now = tally_core::time::now_micros();
    let period = Period::last_hours(now, hours);
    let totals = state.usage.totals(tenant, period).await?;
    let previous = state.usage.totals(tenant, period.previous()).await?;

    let mut cost = Nanos::ZERO;
    let (mut calls, mut errors, mut input, mut output) = (0u64, 0u64, 0u64, 0u64);
    let mut by_provider: std::collections::BTreeMap<&str, (Nanos, u64, u64)> = Default::default();
    for ((provider, _), r) in &totals {
        cost = cost.saturating_add(r.cost);
        calls += r.calls;
        errors += r.errors;
        input += r.tokens.input;
        output += r.tokens.output;
        let e = by_provider.entry(provider.as_str()).or_default();
        e.0 = e.0.saturating_add(r.cost);
        e.1 += r.calls;
        e.2 += r.errors;
    }
    let share = |part: Nanos| {
        if cost.0 > 0 {
            round(part.0 as f64 / cost.0 as f64 * 100.0, 1)
        } else {
            0.0
        }
    };
    let mut provider_breakdown: Vec<ProviderShare> = by_provider
        .iter()
        .map(|(provider, (c, n, e))| ProviderShare {
            provider: (*provider).to_owned(),
            total_cost: c.usd_rounded(2),
            calls: *n,
            market_share: share(*c),
            reliability: if *n > 0 {
                round(1.0 - *e as f64 / *n as f64, 3)
            } else {
                1.0
            },
        })
        .collect();
    provider_breakdown.sort_by(|a, b| {
        b.total_cost
            .total_cmp(&a.total_cost)
            .then(a.provider.cmp(&b.provider))
    });

    let mut insights = Vec::new();
    let catalog = state.usage.catalog(tenant).await?;
    let today = tally_core::time::to_datetime(now).date_naive();
    for ((provider, model), r) in &totals {
        if r.calls > 0 && r.tokens.output / r.calls < SHORT_OUTPUT_TOKENS {
            if let Some((_, _, cheaper)) = CHEAPER_SIBLING.iter().find(|(p, m, _)| {
                p == provider
                    && catalog
                        .lookup(p, model, today)
                        .is_some_and(|x| x.model == *m)
            }) {
                if let Some(price) = catalog.lookup(provider, cheaper, today) {
                    let saving = Nanos(r.cost.0 - price.cost(&r.tokens).0);
                    if saving > Nanos::ZERO {
                        insights.push(Insight {
                            kind: "cost_optimization",
                            severity: if saving.0 as f64 > cost.0 as f64 * 0.1 { "high" } else { "medium" },
                            recommendation: format!(
                                "{} calls to {model} average {} output tokens; on {cheaper} they would have cost ${} less",
                                r.calls,
                                r.tokens.output / r.calls,
                                saving.usd_rounded(2)
                            ),
                            estimated_saving_usd: Some(saving.usd_rounded(2)),
                        });
                    }
                }
            }
        }
        if r.calls >= 20 && r.errors as f64 / r.calls as f64 > 0.05 {
            insights.push(Insight {
                kind: "high_error_rate",
                severity: "high",
                recommendation: format!(
                    "{provider}/{model} failed {:.1} % of {} calls",
                    r.errors as f64 / r.calls as f64 * 100.0,
                    r.calls
                ),
                estimated_saving_usd: None,
            });
        }
        if r.unpriced_calls > 0 {
            insights.push(Insight {
                kind: "unpriced_model",
                severity: "low",
                recommendation: format!(
                    "{} calls to {provider}/{model} have no price; set one with POST /api/v1/ai/prices",
                    r.unpriced_calls
                ),
                estimated_saving_usd: None,
            });
        }
    }
    let previous_cost: i64 = previous.values().map(|r| r.cost.0).sum();
    Ok(Json(TenantStats {
        tenant_id: tenant.0,
        period: label,
        from: tally_core::time::rfc3339(period.from),
        to: tally_core::time::rfc3339(period.to),
        total_cost_usd: cost.usd_rounded(2),
        total_messages: calls,
        total_input_tokens: input,
        total_output_tokens: output,
        error_rate: if calls > 0 {
            round(errors as f64 / calls as f64, 4)
        } else {
            0.0
        },
        provider_breakdown,
        insights,
        projections: Projections {
            monthly_cost_estimate: round(cost.0 as f64 / 1e9 / period.days() * 30.0, 2),
            growth_rate: (previous_cost > 0).then(|| {
                round(
                    (cost.0 - previous_cost) as f64 / previous_cost as f64 * 100.0,
                    1,
                )
            }),
        },
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub avg: Option<f64>,
}

impl LatencySummary {
    fn of(sketch: &tally_core::sketch::LatencySketch, sum_ms: f64) -> Self {
        let q = |x: f64| sketch.quantile(x).map(|v| round(v, 1));
        let n = sketch.count();
        LatencySummary {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            avg: (n > 0).then(|| round(sum_ms / n as f64, 1)),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PerformanceRow {
    pub provider: String,
    /// Absent on provider rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub calls: u64,
    pub error_rate: f64,
    pub reliability: f64,
    pub latency_ms: LatencySummary,
    pub time_to_first_token_ms: LatencySummary,
    /// The same figures over the previous period of equal length.
    pub previous: PreviousPerformance,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PreviousPerformance {
    pub calls: u64,
    pub error_rate: f64,
    pub latency_p95_ms: Option<f64>,
    /// Percent change of the p95 latency; null without a previous p95.
    pub latency_p95_change_pct: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PerformanceResponse {
    pub period: String,
    pub from: String,
    pub to: String,
    pub by_provider: Vec<PerformanceRow>,
    pub by_model: Vec<PerformanceRow>,
}

fn performance_row(
    provider: &str,
    model: Option<&str>,
    cur: &tally_core::usage::UsageRollup,
    prev: Option<&tally_core::usage::UsageRollup>,
) -> PerformanceRow {
    let rate = |r: &tally_core::usage::UsageRollup| {
        if r.calls > 0 {
            round(r.errors as f64 / r.calls as f64, 4)
        } else {
            0.0
        }
    };
    let latency = LatencySummary::of(&cur.latency, cur.latency_sum_ms);
    let prev_p95 = prev
        .and_then(|p| p.latency.quantile(0.95))
        .map(|v| round(v, 1));
    PerformanceRow {
        provider: provider.to_owned(),
        model: model.map(str::to_owned),
        calls: cur.calls,
        error_rate: rate(cur),
        reliability: round(1.0 - rate(cur), 4),
        previous: PreviousPerformance {
            calls: prev.map_or(0, |p| p.calls),
            error_rate: prev.map_or(0.0, rate),
            latency_p95_ms: prev_p95,
            latency_p95_change_pct: match (latency.p95, prev_p95) {
                (Some(now), Some(before)) if before > 0.0 => {
                    Some(round((now - before) / before * 100.0, 1))
                }
                _ => None,
            },
        },
        latency_ms: latency,
        time_to_first_token_ms: LatencySummary::of(&cur.ttft, cur.ttft_sum_ms),
    }
}

/// Latency percentiles (from merged sketches, 1 % relative error), time to first token,
/// error rate and reliability per provider and model, against the previous period.
#[utoipa::path(get, path = "/api/v1/ai/performance", tag = "ai", params(StatsQuery, TenantQuery),
    responses((status = 200, body = PerformanceResponse), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn performance(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<StatsQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> ApiResult<Json<PerformanceResponse>> {
    use crate::service::usage::Period;
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, t.tenant_id.as_deref())?;
    let (label, hours) = parse_period(&q)?;
    let period = Period::last_hours(tally_core::time::now_micros(), hours);
    let cur = state.usage.totals(tenant, period).await?;
    let prev = state.usage.totals(tenant, period.previous()).await?;

    let by_provider_of = |totals: &crate::service::usage::ModelTotals| -> ApiResult<
        std::collections::BTreeMap<String, tally_core::usage::UsageRollup>,
    > {
        let mut out: std::collections::BTreeMap<String, tally_core::usage::UsageRollup> =
            Default::default();
        for ((provider, _), r) in totals {
            match out.get_mut(provider) {
                Some(acc) => acc.merge(r).map_err(ApiError::internal)?,
                None => {
                    out.insert(provider.clone(), r.clone());
                }
            }
        }
        Ok(out)
    };
    let (cur_p, prev_p) = (by_provider_of(&cur)?, by_provider_of(&prev)?);
    let mut by_provider: Vec<PerformanceRow> = cur_p
        .iter()
        .map(|(provider, r)| performance_row(provider, None, r, prev_p.get(provider)))
        .collect();
    by_provider.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
    let mut by_model: Vec<PerformanceRow> = cur
        .iter()
        .map(|((provider, model), r)| {
            performance_row(
                provider,
                Some(model),
                r,
                prev.get(&(provider.clone(), model.clone())),
            )
        })
        .collect();
    by_model.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.model.cmp(&b.model)));
    Ok(Json(PerformanceResponse {
        period: label,
        from: tally_core::time::rfc3339(period.from),
        to: tally_core::time::rfc3339(period.to),
        by_provider,
        by_model,
    }))
}
