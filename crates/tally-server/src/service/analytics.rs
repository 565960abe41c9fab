//! AI analytics reports (seeds 000 and 003): tenant stats, costs, performance, real time,
//! dashboard, cross-tenant usage and seed 003's comparison views. Every report reads
//! rollups (per provider and model by minute, hour and day; per user by day; per
//! conversation), never raw rows, so it costs the same at any volume. Exports render the
//! same reports as CSV tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tally_core::activity::round_to as round;
use tally_core::error::codes::INVALID_PERIOD;
use tally_core::pricing::{Nanos, PriceCatalog};
use tally_core::time::{
    day_of, parse_rfc3339, rfc3339, to_datetime, MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE,
};
use tally_core::usage::Generation;
use tally_core::usage::{Granularity, UsageRollup, UsageTotals};
use tally_core::{FieldError, TenantId};
use tally_store::Stores;

use super::usage::{cheaper_sibling, ModelTotals, Period, Usage, SHORT_OUTPUT_TOKENS};
use crate::error::{ApiError, ApiResult};

/// The longest period a report covers.
pub const MAX_PERIOD_DAYS: i64 = 366;
/// Rows of the per-conversation and per-user breakdowns.
pub const TOP_N: u32 = 20;

/// A period as the API takes it: `period=last_24h|last_7d|last_30d|last_90d`, `days=N`
/// (seed 003), or `from`/`to` (RFC 3339 or YYYY-MM-DD; `to` exclusive).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
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
    #[param(schema_with = crate::api::schemas::date_or_time)]
    #[schema(schema_with = crate::api::schemas::date_or_time)]
    pub from: Option<String>,
    /// End of an explicit range, exclusive, rounded up to the hour and never past now;
    /// default now.
    #[param(schema_with = crate::api::schemas::date_or_time)]
    #[schema(schema_with = crate::api::schemas::date_or_time)]
    pub to: Option<String>,
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

/// An RFC 3339 time or a YYYY-MM-DD date (midnight UTC), in microseconds.
pub fn parse_instant(field: &str, s: &str) -> Result<i64, FieldError> {
    parse_rfc3339(s)
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| tally_core::time::day_of_date(d) * MICROS_PER_DAY)
        })
        .ok_or_else(|| {
            FieldError::new(
                INVALID_PERIOD,
                field,
                "must be an RFC 3339 time or a YYYY-MM-DD date",
            )
        })
}

impl PeriodQuery {
    /// The label and range this query names, relative to `now`. One way of naming a period
    /// at a time: `period`, `days` and `from`/`to` exclude each other. A range never ends in
    /// the future (`to` is at most `now`, exclusive of the instant after it) and may not
    /// end before 2000-01-01 or start after `now`: no data can lie there.
    pub fn resolve(&self, now: i64) -> Result<(String, Period), FieldError> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let given: Vec<&str> = [
            ("period", nonempty(&self.period).is_some()),
            ("days", nonempty(&self.days).is_some()),
            ("from", nonempty(&self.from).is_some()),
            ("to", nonempty(&self.to).is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let explicit = given.iter().any(|g| *g == "from" || *g == "to");
        let named = given
            .iter()
            .filter(|g| **g == "period" || **g == "days")
            .count();
        if named + usize::from(explicit) > 1 {
            let (first, second) = (given[0], given[1]);
            return Err(FieldError::new(
                INVALID_PERIOD,
                second,
                format!("cannot be combined with {first}: give one of period, days or from/to"),
            ));
        }
        let end = now + 1;
        if explicit {
            let from = nonempty(&self.from)
                .ok_or_else(|| FieldError::new(INVALID_PERIOD, "from", "is required with to"))?;
            let from = parse_instant("from", &from)?.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR;
            let to = match nonempty(&self.to) {
                Some(t) => parse_instant("to", &t)?,
                None => end,
            };
            let to = (to.saturating_add(MICROS_PER_HOUR - 1))
                .div_euclid(MICROS_PER_HOUR)
                .saturating_mul(MICROS_PER_HOUR)
                .min(end);
            if from > now {
                return Err(FieldError::new(INVALID_PERIOD, "from", "is in the future"));
            }
            if to <= tally_core::event::MIN_TIMESTAMP_MICROS {
                return Err(FieldError::new(
                    INVALID_PERIOD,
                    "to",
                    "ends before 2000-01-01, before any data tally accepts",
                ));
            }
            if to <= from {
                return Err(FieldError::new(INVALID_PERIOD, "to", "must be after from"));
            }
            if to - from > MAX_PERIOD_DAYS * MICROS_PER_DAY {
                return Err(FieldError::new(
                    INVALID_PERIOD,
                    "to",
                    format!("the range may span at most {MAX_PERIOD_DAYS} days"),
                ));
            }
            return Ok(("custom".into(), Period { from, to }));
        }
        if let Some(d) = nonempty(&self.days) {
            let n: i64 = d
                .parse()
                .ok()
                .filter(|n| (1..=MAX_PERIOD_DAYS).contains(n))
                .ok_or_else(|| {
                    FieldError::new(INVALID_PERIOD, "days", "must be an integer from 1 to 366")
                })?;
            return Ok((format!("last_{n}d"), Period::last_hours(now, n * 24)));
        }
        let hours = match self.period.as_deref().unwrap_or("last_7d") {
            "last_24h" => 24,
            "last_7d" => 7 * 24,
            "last_30d" => 30 * 24,
            "last_90d" => 90 * 24,
            _ => {
                return Err(FieldError::new(
                    INVALID_PERIOD,
                    "period",
                    "must be last_24h, last_7d, last_30d or last_90d",
                ))
            }
        };
        let label = self.period.clone().unwrap_or_else(|| "last_7d".into());
        Ok((label, Period::last_hours(now, hours)))
    }
}

/// A report as rows, for CSV exports.
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// A report that can be exported as a table.
pub trait Tabular {
    fn table(&self) -> Table;
}

/// Money in answers: dollars to 6 decimals (`docs/numbers.md`).
fn usd(n: Nanos) -> f64 {
    n.usd()
}

fn ratio(part: u64, whole: u64, digits: i32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round(part as f64 / whole as f64, digits)
    }
}

/// Average USD per call, 6 decimals (0 without calls).
fn per_call(cost: Nanos, calls: u64) -> f64 {
    if calls > 0 {
        round(cost.0 as f64 / calls as f64 / 1e9, 6)
    } else {
        0.0
    }
}

/// A CSV cell for an optional figure (empty when absent).
fn cell(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The summed cost of every model (no sketch merging).
fn total_cost(totals: &ModelTotals) -> Nanos {
    Nanos(totals.values().map(|r| r.cost.0).sum())
}

fn share(part: Nanos, whole: Nanos) -> f64 {
    if whole.0 > 0 {
        round(part.0 as f64 / whole.0 as f64 * 100.0, 1)
    } else {
        0.0
    }
}

fn avg_latency(r: &UsageRollup) -> Option<f64> {
    let n = r.latency.count();
    (n > 0).then(|| round(r.latency_sum_ms / n as f64, 1))
}

fn merge_into<K: Ord>(
    map: &mut BTreeMap<K, UsageRollup>,
    key: K,
    r: &UsageRollup,
) -> ApiResult<()> {
    match map.get_mut(&key) {
        Some(acc) => acc.merge(r).map_err(ApiError::internal),
        None => {
            map.insert(key, r.clone());
            Ok(())
        }
    }
}

/// All models of `totals` merged into one rollup.
fn overall(totals: &ModelTotals) -> ApiResult<UsageRollup> {
    let mut all = UsageRollup::default();
    for r in totals.values() {
        all.merge(r).map_err(ApiError::internal)?;
    }
    Ok(all)
}

fn by_provider(totals: &ModelTotals) -> ApiResult<BTreeMap<String, UsageRollup>> {
    let mut out = BTreeMap::new();
    for ((provider, _), r) in totals {
        merge_into(&mut out, provider.clone(), r)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Recommendations

/// Moving a model's short-output calls to a cheaper sibling, with the saving computed by
/// repricing the period's tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Recommendation {
    /// `cheaper_model`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub provider: String,
    pub model: String,
    pub alternative_model: String,
    pub calls: u64,
    pub avg_output_tokens: u64,
    pub current_cost_usd: f64,
    pub alternative_cost_usd: f64,
    pub estimated_saving_usd: f64,
    pub saving_percent: f64,
    pub description: String,
    /// The saving, exact, for sums.
    #[serde(skip)]
    pub saving: Nanos,
}

pub fn recommendations(
    totals: &ModelTotals,
    catalog: &PriceCatalog,
    now: i64,
) -> Vec<Recommendation> {
    let today = to_datetime(now).date_naive();
    let mut out = Vec::new();
    for ((provider, model), r) in totals {
        if r.calls == 0 || r.tokens.output / r.calls >= SHORT_OUTPUT_TOKENS {
            continue;
        }
        let Some((cheaper, price)) = cheaper_sibling(catalog, provider, model, today) else {
            continue;
        };
        let alternative = price.cost(&r.tokens);
        let saving = Nanos(r.cost.0 - alternative.0);
        if saving <= Nanos::ZERO {
            continue;
        }
        out.push(Recommendation {
            kind: "cheaper_model",
            provider: provider.clone(),
            model: model.clone(),
            alternative_model: cheaper.to_owned(),
            calls: r.calls,
            avg_output_tokens: r.tokens.output / r.calls,
            current_cost_usd: usd(r.cost),
            alternative_cost_usd: usd(alternative),
            estimated_saving_usd: usd(saving),
            saving_percent: share(saving, r.cost),
            description: format!(
                "{} calls to {model} average {} output tokens; on {cheaper} they would have cost ${} less",
                r.calls,
                r.tokens.output / r.calls,
                usd(saving)
            ),
            saving,
        });
    }
    out.sort_by(|a, b| b.estimated_saving_usd.total_cmp(&a.estimated_saving_usd));
    out
}

// ---------------------------------------------------------------------------------------
// Tenant stats (seed 000 TenantAIStatsDto)

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
    pub avg_response_time_ms: Option<f64>,
    pub error_rate: f64,
    pub provider_breakdown: Vec<ProviderShare>,
    pub insights: Vec<Insight>,
    pub projections: Projections,
}

impl Tabular for TenantStats {
    fn table(&self) -> Table {
        let mut rows = vec![vec![
            self.tenant_id.to_string(),
            self.period.clone(),
            "all".into(),
            self.total_cost_usd.to_string(),
            self.total_messages.to_string(),
            cell(self.avg_response_time_ms),
            self.error_rate.to_string(),
        ]];
        for p in &self.provider_breakdown {
            rows.push(vec![
                self.tenant_id.to_string(),
                self.period.clone(),
                p.provider.clone(),
                p.total_cost.to_string(),
                p.calls.to_string(),
                String::new(),
                round(1.0 - p.reliability, 4).to_string(),
            ]);
        }
        Table {
            headers: vec![
                "tenant_id",
                "period",
                "provider",
                "total_cost",
                "total_messages",
                "avg_response_time",
                "error_rate",
            ],
            rows,
        }
    }
}

fn growth(current: Nanos, previous: Nanos) -> Option<f64> {
    (previous.0 > 0).then(|| {
        round(
            (current.0 - previous.0) as f64 / previous.0 as f64 * 100.0,
            1,
        )
    })
}

// ---------------------------------------------------------------------------------------
// Performance

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
pub struct PerformanceReport {
    pub period: String,
    pub from: String,
    pub to: String,
    pub by_provider: Vec<PerformanceRow>,
    pub by_model: Vec<PerformanceRow>,
}

impl Tabular for PerformanceReport {
    fn table(&self) -> Table {
        Table {
            headers: vec![
                "period",
                "provider",
                "model",
                "calls",
                "error_rate",
                "latency_p50_ms",
                "latency_p95_ms",
                "latency_p99_ms",
                "avg_response_time",
                "ttft_p50_ms",
                "previous_latency_p95_ms",
            ],
            rows: self
                .by_model
                .iter()
                .map(|r| {
                    vec![
                        self.period.clone(),
                        r.provider.clone(),
                        r.model.clone().unwrap_or_default(),
                        r.calls.to_string(),
                        r.error_rate.to_string(),
                        cell(r.latency_ms.p50),
                        cell(r.latency_ms.p95),
                        cell(r.latency_ms.p99),
                        cell(r.latency_ms.avg),
                        cell(r.time_to_first_token_ms.p50),
                        cell(r.previous.latency_p95_ms),
                    ]
                })
                .collect(),
        }
    }
}

fn error_rate(r: &UsageRollup) -> f64 {
    ratio(r.errors, r.calls, 4)
}

fn performance_row(
    provider: &str,
    model: Option<&str>,
    cur: &UsageRollup,
    prev: Option<&UsageRollup>,
) -> PerformanceRow {
    let latency = LatencySummary::of(&cur.latency, cur.latency_sum_ms);
    let prev_p95 = prev
        .and_then(|p| p.latency.quantile(0.95))
        .map(|v| round(v, 1));
    PerformanceRow {
        provider: provider.to_owned(),
        model: model.map(str::to_owned),
        calls: cur.calls,
        error_rate: error_rate(cur),
        reliability: round(1.0 - error_rate(cur), 4),
        previous: PreviousPerformance {
            calls: prev.map_or(0, |p| p.calls),
            error_rate: prev.map_or(0.0, error_rate),
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

// ---------------------------------------------------------------------------------------
// Costs

#[derive(Serialize, utoipa::ToSchema)]
pub struct CostRow {
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub cost_usd: f64,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub avg_cost_per_call: f64,
    /// Percent of the period's cost.
    pub share_percent: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TotalsRow {
    pub cost_usd: f64,
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub avg_response_time_ms: Option<f64>,
    pub first_at: Option<String>,
    pub last_at: Option<String>,
}

impl TotalsRow {
    fn of(t: &UsageTotals) -> Self {
        TotalsRow {
            cost_usd: t.cost.usd(),
            calls: t.calls,
            errors: t.errors,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            avg_response_time_ms: (t.calls > 0)
                .then(|| round(t.latency_sum_ms / t.calls as f64, 1)),
            first_at: (t.calls > 0).then(|| rfc3339(t.first_ts)),
            last_at: (t.calls > 0).then(|| rfc3339(t.last_ts)),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationCostRow {
    pub conversation_id: String,
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub totals: TotalsRow,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserCostRow {
    pub user_id: String,
    #[serde(flatten)]
    pub totals: TotalsRow,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CostReport {
    pub period: String,
    pub from: String,
    pub to: String,
    pub total_cost_usd: f64,
    pub total_calls: u64,
    pub by_provider: Vec<CostRow>,
    pub by_model: Vec<CostRow>,
    /// The most expensive conversations last active in the period (all their calls).
    pub by_conversation: Vec<ConversationCostRow>,
    /// The most expensive users over the whole UTC days the period overlaps.
    pub by_user: Vec<UserCostRow>,
    pub recommendations: Vec<Recommendation>,
    pub potential_saving_usd: f64,
}

impl Tabular for CostReport {
    fn table(&self) -> Table {
        let mut rows = Vec::new();
        for (dimension, list) in [("provider", &self.by_provider), ("model", &self.by_model)] {
            for r in list {
                let key = match &r.model {
                    Some(m) => format!("{}/{m}", r.provider),
                    None => r.provider.clone(),
                };
                rows.push(vec![
                    dimension.into(),
                    key,
                    r.cost_usd.to_string(),
                    r.calls.to_string(),
                    (r.input_tokens + r.output_tokens).to_string(),
                    r.share_percent.to_string(),
                ]);
            }
        }
        for c in &self.by_conversation {
            rows.push(vec![
                "conversation".into(),
                c.conversation_id.clone(),
                c.totals.cost_usd.to_string(),
                c.totals.calls.to_string(),
                (c.totals.input_tokens + c.totals.output_tokens).to_string(),
                String::new(),
            ]);
        }
        for u in &self.by_user {
            rows.push(vec![
                "user".into(),
                u.user_id.clone(),
                u.totals.cost_usd.to_string(),
                u.totals.calls.to_string(),
                (u.totals.input_tokens + u.totals.output_tokens).to_string(),
                String::new(),
            ]);
        }
        Table {
            headers: vec![
                "dimension",
                "key",
                "cost_usd",
                "calls",
                "tokens",
                "share_percent",
            ],
            rows,
        }
    }
}

fn cost_row(provider: &str, model: Option<&str>, r: &UsageRollup, total: Nanos) -> CostRow {
    CostRow {
        provider: provider.to_owned(),
        model: model.map(str::to_owned),
        cost_usd: r.cost.usd(),
        calls: r.calls,
        input_tokens: r.tokens.input,
        output_tokens: r.tokens.output,
        avg_cost_per_call: per_call(r.cost, r.calls),
        share_percent: share(r.cost, total),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CallRow {
    pub id: i64,
    pub timestamp: String,
    pub provider: String,
    pub model: String,
    pub user_id: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: Option<f64>,
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationCost {
    pub conversation_id: String,
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub totals: TotalsRow,
    pub avg_cost_per_message: f64,
    /// Cost by model within the conversation (from the listed calls).
    pub by_model: Vec<CostRow>,
    /// The most recent calls, newest first (at most 500); `calls` is their count.
    pub recent_calls: Vec<CallRow>,
    /// Whether the conversation has more calls than listed.
    pub recent_calls_truncated: bool,
}

pub const CONVERSATION_CALLS: u32 = 500;

// ---------------------------------------------------------------------------------------
// Real time (seed 000 RealTimePerformanceDto)

#[derive(Serialize, utoipa::ToSchema)]
pub struct RealtimeCurrent {
    pub active_conversations: u64,
    pub messages_per_minute: f64,
    pub avg_response_time: Option<f64>,
    pub active_providers: Vec<String>,
    pub error_rate: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderStatus {
    pub provider: String,
    /// `healthy`, `degraded`, `down`, or `idle` (no call in the window, some in the last 24 h).
    pub status: &'static str,
    pub response_time: Option<f64>,
    pub error_rate: f64,
    pub calls: u64,
    /// The 24-hour average response time the window is compared with.
    pub baseline_response_time: Option<f64>,
    pub reason: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Realtime {
    pub timestamp: String,
    pub window_minutes: i64,
    pub current: RealtimeCurrent,
    pub provider_status: Vec<ProviderStatus>,
    /// Calls per minute over the window, oldest first.
    pub per_minute: Vec<MinutePoint>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MinutePoint {
    pub minute: String,
    pub calls: u64,
    pub errors: u64,
    pub avg_response_time: Option<f64>,
}

pub const REALTIME_MINUTES: i64 = 5;
/// Error rate at or above which a provider is degraded, and down.
pub const DEGRADED_ERROR_RATE: f64 = 0.05;
pub const DOWN_ERROR_RATE: f64 = 0.5;
/// Average latency at or above this multiple of the 24-hour average is degraded.
pub const DEGRADED_LATENCY_FACTOR: f64 = 2.0;

/// The status a provider's recent calls give it against its own 24-hour baseline.
pub fn provider_status(
    recent: &UsageRollup,
    baseline_avg_ms: Option<f64>,
) -> (&'static str, Option<String>) {
    if recent.calls == 0 {
        return ("idle", None);
    }
    let rate = recent.errors as f64 / recent.calls as f64;
    if rate >= DOWN_ERROR_RATE && recent.calls >= 3 {
        return (
            "down",
            Some(format!(
                "{:.0} % of the last {} calls failed",
                rate * 100.0,
                recent.calls
            )),
        );
    }
    if rate >= DEGRADED_ERROR_RATE {
        return (
            "degraded",
            Some(format!(
                "{:.1} % of the last {} calls failed",
                rate * 100.0,
                recent.calls
            )),
        );
    }
    if let (Some(now), Some(base)) = (avg_latency(recent), baseline_avg_ms) {
        if base > 0.0 && now >= base * DEGRADED_LATENCY_FACTOR {
            return (
                "degraded",
                Some(format!(
                    "average response time {now} ms is {:.1}× the 24-hour average",
                    now / base
                )),
            );
        }
    }
    ("healthy", None)
}

// ---------------------------------------------------------------------------------------
// Dashboard and series

#[derive(Serialize, utoipa::ToSchema)]
pub struct SeriesPoint {
    /// Bucket start, RFC 3339.
    pub t: String,
    pub cost_usd: f64,
    pub calls: u64,
    pub errors: u64,
    pub tokens: u64,
    pub avg_response_time: Option<f64>,
    pub p95_response_time: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    pub summary: TenantStats,
    /// One point per UTC day of the period (zeros included), oldest first.
    pub daily: Vec<SeriesPoint>,
    /// One point per hour of the last 24 hours.
    pub hourly: Vec<SeriesPoint>,
    pub top_models: Vec<CostRow>,
    pub quota_status: Vec<DashboardQuota>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DashboardQuota {
    pub name: String,
    pub usage_percent: f64,
    pub status: tally_core::quota::QuotaStatus,
}

/// Rollups of every model summed per bucket, with empty buckets filled.
fn series(rows: &[UsageRollup], from: i64, to: i64, step: i64) -> ApiResult<Vec<SeriesPoint>> {
    let mut buckets: BTreeMap<i64, UsageRollup> = BTreeMap::new();
    for r in rows {
        merge_into(&mut buckets, r.bucket, r)?;
    }
    let mut out = Vec::new();
    let mut t = from.div_euclid(step) * step;
    while t < to {
        let empty = UsageRollup::default();
        let r = buckets.get(&t).unwrap_or(&empty);
        out.push(SeriesPoint {
            t: rfc3339(t),
            cost_usd: r.cost.usd(),
            calls: r.calls,
            errors: r.errors,
            tokens: r.tokens.input + r.tokens.output,
            avg_response_time: avg_latency(r),
            p95_response_time: r.latency.quantile(0.95).map(|v| round(v, 1)),
        });
        t += step;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Cross-tenant usage (admin)

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantUsageRow {
    pub rank: usize,
    pub tenant_id: uuid::Uuid,
    pub tenant_name: String,
    pub total_cost_usd: f64,
    pub total_messages: u64,
    pub total_tokens: u64,
    pub avg_response_time: Option<f64>,
    pub error_rate: f64,
    pub share_percent: f64,
    /// Cost change versus the previous period, percent; null without previous cost.
    pub growth_rate: Option<f64>,
    pub top_provider: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GlobalUsage {
    pub period: String,
    pub from: String,
    pub to: String,
    pub total_cost_usd: f64,
    pub total_messages: u64,
    pub active_tenants: usize,
    pub growth_rate: Option<f64>,
    /// Tenants by cost, highest first (tenants without calls last).
    pub tenants: Vec<TenantUsageRow>,
}

impl Tabular for GlobalUsage {
    fn table(&self) -> Table {
        Table {
            headers: vec![
                "rank",
                "tenant_id",
                "tenant_name",
                "period",
                "total_cost",
                "total_messages",
                "avg_response_time",
                "error_rate",
                "growth_rate",
            ],
            rows: self
                .tenants
                .iter()
                .map(|t| {
                    vec![
                        t.rank.to_string(),
                        t.tenant_id.to_string(),
                        t.tenant_name.clone(),
                        self.period.clone(),
                        t.total_cost_usd.to_string(),
                        t.total_messages.to_string(),
                        cell(t.avg_response_time),
                        t.error_rate.to_string(),
                        cell(t.growth_rate),
                    ]
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Seed 003 views

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelStats {
    pub provider: String,
    pub model: String,
    /// Seed 003's generation: `new` or `legacy`.
    pub generation: Generation,
    pub calls: u64,
    pub cost_usd: f64,
    pub avg_cost_per_call: f64,
    pub avg_quality: Option<f64>,
    pub avg_response_time: Option<f64>,
    pub p95_response_time: Option<f64>,
    pub error_rate: f64,
    /// Cost per thousand input + output tokens.
    pub cost_per_1k_tokens: Option<f64>,
    /// Cost divided by the successful calls.
    pub cost_per_successful_call: Option<f64>,
    /// Output tokens per second of response time.
    pub tokens_per_second: Option<f64>,
    /// Average quality per dollar per call: quality ÷ average cost.
    pub quality_per_dollar: Option<f64>,
}

fn model_stats(provider: &str, model: &str, r: &UsageRollup) -> ModelStats {
    let tokens = r.tokens.input + r.tokens.output;
    let ok = r.calls - r.errors.min(r.calls);
    let avg_cost = if r.calls > 0 {
        r.cost.0 as f64 / r.calls as f64 / 1e9
    } else {
        0.0
    };
    let avg_quality = (r.quality_count > 0).then(|| r.quality_sum / r.quality_count as f64);
    ModelStats {
        provider: provider.to_owned(),
        model: model.to_owned(),
        generation: Generation::of(model),
        calls: r.calls,
        cost_usd: r.cost.usd(),
        avg_cost_per_call: round(avg_cost, 6),
        avg_quality: avg_quality.map(|q| round(q, 2)),
        avg_response_time: avg_latency(r),
        p95_response_time: r.latency.quantile(0.95).map(|v| round(v, 1)),
        error_rate: error_rate(r),
        cost_per_1k_tokens: (tokens > 0)
            .then(|| round(r.cost.0 as f64 / 1e9 / tokens as f64 * 1000.0, 6)),
        cost_per_successful_call: (ok > 0).then(|| round(r.cost.0 as f64 / 1e9 / ok as f64, 6)),
        tokens_per_second: (r.latency_sum_ms > 0.0)
            .then(|| round(r.tokens.output as f64 / (r.latency_sum_ms / 1000.0), 1)),
        quality_per_dollar: match avg_quality {
            Some(q) if avg_cost > 0.0 => Some(round(q / avg_cost, 1)),
            _ => None,
        },
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GenerationSummary {
    pub models: Vec<String>,
    pub calls: u64,
    pub cost_usd: f64,
    pub percentage: f64,
    pub avg_quality: Option<f64>,
    pub avg_cost: f64,
    /// Average response time, seconds (seed 003's `avg_execution_time`).
    pub avg_execution_time: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EfficiencyInsights {
    /// Lowest cost per 1k tokens.
    pub most_cost_effective: Option<String>,
    /// Highest quality per dollar.
    pub highest_roi: Option<String>,
    /// Highest average quality.
    pub premium_choice: Option<String>,
    /// Lowest average response time.
    pub fastest: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelComparison {
    pub period: String,
    pub models: Vec<ModelStats>,
    /// Requested models with no call in the period (not in `models`).
    pub models_without_data: Vec<String>,
    pub generation_comparison: BTreeMap<String, GenerationSummary>,
    pub efficiency_insights: EfficiencyInsights,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Efficiency {
    pub period: String,
    pub models: Vec<ModelStats>,
    /// Requested models with no call in the period (not in `models`).
    pub models_without_data: Vec<String>,
    pub efficiency_insights: EfficiencyInsights,
}

/// Seed 003's usage dashboard (`/ai/usage/dashboard/?days=7`). A job is one LLM call.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageDashboard {
    pub period: DashboardPeriod,
    pub totals: JobTotals,
    /// New-generation and legacy models, most expensive first.
    pub by_generation: Vec<GenerationUsage>,
    pub efficiency_insights: EfficiencyInsights,
    /// Every model of the period, most expensive first.
    pub by_model: Vec<ModelStats>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DashboardPeriod {
    /// The period's label (`last_7d`, `last_30d`, `custom` …).
    pub label: String,
    /// Its length in days.
    pub days: f64,
    pub from: String,
    pub to: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobTotals {
    pub jobs: u64,
    pub cost: f64,
    pub avg_cost_per_job: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GenerationUsage {
    pub generation: tally_core::usage::Generation,
    pub models: Vec<String>,
    pub jobs: u64,
    pub cost: f64,
    /// Share of the period's cost, percent.
    pub percentage: f64,
    pub avg_quality: Option<f64>,
}

/// Average quality score of scored calls, 2 decimals.
fn avg_quality(r: &UsageRollup) -> Option<f64> {
    (r.quality_count > 0).then(|| round(r.quality_sum / r.quality_count as f64, 2))
}

/// The period's models grouped by generation: each generation's models and merged rollup.
fn by_generation(
    totals: &ModelTotals,
) -> ApiResult<BTreeMap<Generation, (Vec<String>, UsageRollup)>> {
    let mut gens: BTreeMap<Generation, (Vec<String>, UsageRollup)> = BTreeMap::new();
    for ((_, m), r) in totals {
        let (models, rollup) = gens.entry(Generation::of(m)).or_default();
        if !models.contains(m) {
            models.push(m.clone());
        }
        rollup.merge(r).map_err(ApiError::internal)?;
    }
    Ok(gens)
}

/// The requested models that have no statistics.
fn without_data(requested: &[String], stats: &[ModelStats]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    requested
        .iter()
        .filter(|m| !stats.iter().any(|s| &s.model == *m) && seen.insert(m.as_str()))
        .cloned()
        .collect()
}

fn efficiency_insights(models: &[ModelStats]) -> EfficiencyInsights {
    let best = |key: &dyn Fn(&ModelStats) -> Option<f64>, lowest: bool| {
        models
            .iter()
            .filter_map(|m| key(m).map(|v| (v, m.model.clone())))
            .min_by(|a, b| {
                if lowest {
                    a.0.total_cmp(&b.0)
                } else {
                    b.0.total_cmp(&a.0)
                }
            })
            .map(|(_, m)| m)
    };
    EfficiencyInsights {
        most_cost_effective: best(&|m| m.cost_per_1k_tokens, true),
        highest_roi: best(&|m| m.quality_per_dollar, false),
        premium_choice: best(&|m| m.avg_quality, false),
        fastest: best(&|m| m.avg_response_time, true),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DayCost {
    pub date: String,
    pub cost_usd: f64,
    pub calls: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CostBreakdownRow {
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub cost_usd: f64,
    pub percentage: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub unpriced_calls: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CostBreakdown {
    pub period: String,
    pub model: Option<String>,
    pub total_cost_usd: f64,
    pub total_calls: u64,
    pub avg_cost_per_call: f64,
    pub by_model: Vec<CostBreakdownRow>,
    pub by_day: Vec<DayCost>,
    pub by_user: Vec<UserCostRow>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Trend {
    /// `up`, `down` or `flat` (within ±5 %).
    pub direction: &'static str,
    /// Second half of the period versus the first half, percent; null if the first half is
    /// zero.
    pub change_percent: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Trends {
    pub period: String,
    pub daily: Vec<SeriesPoint>,
    pub cost_trend: Trend,
    pub calls_trend: Trend,
    pub latency_trend: Trend,
    /// Cost per day for each model, oldest first.
    pub by_model: Vec<ModelSeries>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelSeries {
    pub provider: String,
    pub model: String,
    pub daily_cost_usd: Vec<f64>,
}

/// Compares the second half of `values` with the first.
pub fn trend(values: &[f64]) -> Trend {
    let half = values.len() / 2;
    let first: f64 = values[..half].iter().sum();
    let second: f64 = values[values.len() - half..].iter().sum();
    let change = (first > 0.0).then(|| round((second - first) / first * 100.0, 1));
    let direction = match change {
        Some(c) if c > 5.0 => "up",
        Some(c) if c < -5.0 => "down",
        None if second > 0.0 => "up",
        _ => "flat",
    };
    Trend {
        direction,
        change_percent: change,
    }
}

// ---------------------------------------------------------------------------------------

pub struct Analytics {
    stores: Stores,
    usage: Arc<Usage>,
    quotas: Arc<super::quota::Quotas>,
}

impl Analytics {
    pub fn new(stores: Stores, usage: Arc<Usage>, quotas: Arc<super::quota::Quotas>) -> Self {
        Self {
            stores,
            usage,
            quotas,
        }
    }

    /// The most expensive users over the whole UTC days `period` overlaps, over every model
    /// or `model`'s calls only.
    async fn top_users(
        &self,
        tenant: TenantId,
        period: Period,
        model: Option<String>,
    ) -> ApiResult<Vec<UserCostRow>> {
        let users = self
            .stores
            .usage
            .user_usage(
                tenant,
                day_of(period.from),
                day_of(period.to - 1) + 1,
                None,
                model,
                TOP_N,
            )
            .await?;
        Ok(users
            .into_iter()
            .map(|u| UserCostRow {
                user_id: u.user_id,
                totals: TotalsRow::of(&u.totals),
            })
            .collect())
    }

    pub async fn stats(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        now: i64,
    ) -> ApiResult<TenantStats> {
        let totals = self.usage.totals(tenant, period).await?;
        self.stats_of(tenant, label, period, now, &totals).await
    }

    /// The stats of `period` from its already merged `totals`.
    async fn stats_of(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        now: i64,
        totals: &ModelTotals,
    ) -> ApiResult<TenantStats> {
        let previous = self.usage.totals(tenant, period.previous()).await?;
        let all = overall(totals)?;
        let mut provider_breakdown: Vec<ProviderShare> = by_provider(totals)?
            .into_iter()
            .map(|(provider, r)| ProviderShare {
                provider,
                total_cost: usd(r.cost),
                calls: r.calls,
                market_share: share(r.cost, all.cost),
                reliability: if r.calls > 0 {
                    round(1.0 - r.errors as f64 / r.calls as f64, 3)
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

        let catalog = self.usage.catalog(tenant).await?;
        let mut insights: Vec<Insight> = recommendations(totals, &catalog, now)
            .into_iter()
            .map(|r| Insight {
                kind: "cost_optimization",
                severity: if r.estimated_saving_usd > all.cost.0 as f64 / 1e9 * 0.1 {
                    "high"
                } else {
                    "medium"
                },
                recommendation: r.description,
                estimated_saving_usd: Some(r.estimated_saving_usd),
            })
            .collect();
        for ((provider, model), r) in totals {
            if r.calls >= 20 && r.errors as f64 / r.calls as f64 > DEGRADED_ERROR_RATE {
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
        let previous_cost = total_cost(&previous);
        Ok(TenantStats {
            tenant_id: tenant.0,
            period: label,
            from: rfc3339(period.from),
            to: rfc3339(period.to),
            total_cost_usd: usd(all.cost),
            total_messages: all.calls,
            total_input_tokens: all.tokens.input,
            total_output_tokens: all.tokens.output,
            avg_response_time_ms: avg_latency(&all),
            error_rate: error_rate(&all),
            provider_breakdown,
            insights,
            projections: Projections {
                monthly_cost_estimate: round(all.cost.0 as f64 / 1e9 / period.days() * 30.0, 6),
                growth_rate: growth(all.cost, previous_cost),
            },
        })
    }

    pub async fn performance(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
    ) -> ApiResult<PerformanceReport> {
        let cur = self.usage.totals(tenant, period).await?;
        let prev = self.usage.totals(tenant, period.previous()).await?;
        let (cur_p, prev_p) = (by_provider(&cur)?, by_provider(&prev)?);
        let mut by_provider_rows: Vec<PerformanceRow> = cur_p
            .iter()
            .map(|(provider, r)| performance_row(provider, None, r, prev_p.get(provider)))
            .collect();
        by_provider_rows.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
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
        Ok(PerformanceReport {
            period: label,
            from: rfc3339(period.from),
            to: rfc3339(period.to),
            by_provider: by_provider_rows,
            by_model,
        })
    }

    pub async fn costs(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        now: i64,
    ) -> ApiResult<CostReport> {
        let totals = self.usage.totals(tenant, period).await?;
        let all = overall(&totals)?;
        let mut providers: Vec<CostRow> = by_provider(&totals)?
            .iter()
            .map(|(p, r)| cost_row(p, None, r, all.cost))
            .collect();
        providers.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let mut models: Vec<CostRow> = totals
            .iter()
            .map(|((p, m), r)| cost_row(p, Some(m), r, all.cost))
            .collect();
        models.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let conversations = self
            .stores
            .usage
            .top_conversations(tenant, period.from, period.to, TOP_N)
            .await?;
        let by_user = self.top_users(tenant, period, None).await?;
        let catalog = self.usage.catalog(tenant).await?;
        let recs = recommendations(&totals, &catalog, now);
        let potential: Nanos = recs.iter().map(|r| r.saving).sum();
        Ok(CostReport {
            period: label,
            from: rfc3339(period.from),
            to: rfc3339(period.to),
            total_cost_usd: all.cost.usd(),
            total_calls: all.calls,
            by_provider: providers,
            by_model: models,
            by_conversation: conversations
                .into_iter()
                .map(|c| ConversationCostRow {
                    conversation_id: c.conversation_id,
                    user_id: c.user_id,
                    totals: TotalsRow::of(&c.totals),
                })
                .collect(),
            by_user,
            recommendations: recs,
            potential_saving_usd: usd(potential),
        })
    }

    pub async fn conversation(
        &self,
        tenant: TenantId,
        conversation_id: String,
    ) -> ApiResult<ConversationCost> {
        let Some(conv) = self
            .stores
            .usage
            .conversation(tenant, conversation_id.clone())
            .await?
        else {
            return Err(ApiError::NotFound("conversation"));
        };
        let filter = tally_core::usage::UsageFilter {
            conversation_id: Some(conversation_id),
            ..Default::default()
        };
        let (count, rows) = self
            .stores
            .usage
            .list_usage(
                tenant,
                filter,
                0,
                CONVERSATION_CALLS,
                u64::from(CONVERSATION_CALLS) + 1,
            )
            .await?;
        let mut models: BTreeMap<(String, String), UsageRollup> = BTreeMap::new();
        for s in &rows {
            let r = &s.record;
            models
                .entry((r.provider.clone(), r.model.clone()))
                .or_default()
                .add(r);
        }
        let listed_cost = Nanos(models.values().map(|r| r.cost.0).sum());
        let mut by_model: Vec<CostRow> = models
            .iter()
            .map(|((p, m), r)| cost_row(p, Some(m), r, listed_cost))
            .collect();
        by_model.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let t = &conv.totals;
        Ok(ConversationCost {
            conversation_id: conv.conversation_id,
            user_id: conv.user_id,
            avg_cost_per_message: per_call(t.cost, t.calls),
            totals: TotalsRow::of(t),
            by_model,
            recent_calls: rows
                .into_iter()
                .map(|s| CallRow {
                    id: s.id,
                    timestamp: rfc3339(s.record.timestamp),
                    provider: s.record.provider,
                    model: s.record.model,
                    user_id: s.record.user_id,
                    input_tokens: s.record.tokens.input,
                    output_tokens: s.record.tokens.output,
                    cost_usd: s.record.cost.usd(),
                    latency_ms: s.record.latency_ms,
                    status: s.record.status.as_str(),
                })
                .collect(),
            recent_calls_truncated: count > u64::from(CONVERSATION_CALLS),
        })
    }

    pub async fn realtime(&self, tenant: TenantId, now: i64) -> ApiResult<Realtime> {
        let to = now.div_euclid(MICROS_PER_MINUTE) * MICROS_PER_MINUTE + MICROS_PER_MINUTE;
        let from = to - REALTIME_MINUTES * MICROS_PER_MINUTE;
        let minutes = self
            .stores
            .usage
            .usage_rollups(tenant, Granularity::Minute, from, to)
            .await?;
        let baseline = self
            .usage
            .totals(tenant, Period::last_hours(now, 24))
            .await?;
        let baseline_by_provider = by_provider(&baseline)?;
        let mut recent: BTreeMap<String, UsageRollup> = BTreeMap::new();
        for r in &minutes {
            merge_into(&mut recent, r.provider.clone(), r)?;
        }
        let mut all = UsageRollup::default();
        for r in recent.values() {
            all.merge(r).map_err(ApiError::internal)?;
        }
        let mut statuses: Vec<ProviderStatus> = baseline_by_provider
            .iter()
            .map(|(provider, base)| {
                let empty = UsageRollup::default();
                let r = recent.get(provider).unwrap_or(&empty);
                let (status, reason) = provider_status(r, avg_latency(base));
                ProviderStatus {
                    provider: provider.clone(),
                    status,
                    response_time: avg_latency(r),
                    error_rate: error_rate(r),
                    calls: r.calls,
                    baseline_response_time: avg_latency(base),
                    reason,
                }
            })
            .collect();
        statuses.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
        let points = series(&minutes, from, to, MICROS_PER_MINUTE)?;
        Ok(Realtime {
            timestamp: rfc3339(now),
            window_minutes: REALTIME_MINUTES,
            current: RealtimeCurrent {
                active_conversations: self.stores.usage.active_conversations(tenant, from).await?,
                messages_per_minute: round(all.calls as f64 / REALTIME_MINUTES as f64, 2),
                avg_response_time: avg_latency(&all),
                active_providers: recent
                    .iter()
                    .filter(|(_, r)| r.calls > 0)
                    .map(|(p, _)| p.clone())
                    .collect(),
                error_rate: error_rate(&all),
            },
            provider_status: statuses,
            per_minute: points
                .into_iter()
                .map(|p| MinutePoint {
                    minute: p.t,
                    calls: p.calls,
                    errors: p.errors,
                    avg_response_time: p.avg_response_time,
                })
                .collect(),
        })
    }

    async fn daily(
        &self,
        tenant: TenantId,
        period: Period,
    ) -> ApiResult<(Vec<UsageRollup>, i64, i64)> {
        let from = period.from.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
        let to = (period.to + MICROS_PER_DAY - 1).div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
        let rows = self
            .stores
            .usage
            .usage_rollups(tenant, Granularity::Day, from, to)
            .await?;
        Ok((rows, from, to))
    }

    pub async fn dashboard(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        now: i64,
    ) -> ApiResult<Dashboard> {
        let totals = self.usage.totals(tenant, period).await?;
        let summary = self.stats_of(tenant, label, period, now, &totals).await?;
        let (days, from, to) = self.daily(tenant, period).await?;
        let day24 = Period::last_hours(now, 24);
        let hours = self
            .stores
            .usage
            .usage_rollups(tenant, Granularity::Hour, day24.from, day24.to)
            .await?;
        let all = overall(&totals)?;
        let mut top: Vec<CostRow> = totals
            .iter()
            .map(|((p, m), r)| cost_row(p, Some(m), r, all.cost))
            .collect();
        top.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        top.truncate(5);
        let quotas = self.quotas.snapshot(tenant, now).await?;
        Ok(Dashboard {
            summary,
            daily: series(&days, from, to, MICROS_PER_DAY)?,
            hourly: series(&hours, day24.from, day24.to, MICROS_PER_HOUR)?,
            top_models: top,
            quota_status: quotas
                .rules
                .iter()
                .map(|t| DashboardQuota {
                    name: t.rule.name.clone(),
                    usage_percent: t.usage_percent(),
                    status: t.status(),
                })
                .collect(),
        })
    }

    pub async fn global(&self, label: String, period: Period) -> ApiResult<GlobalUsage> {
        let tenants = self.stores.identity.list_tenants().await?;
        let mut rows = Vec::with_capacity(tenants.len());
        let (mut cost, mut prev_cost, mut calls) = (Nanos::ZERO, Nanos::ZERO, 0u64);
        for t in tenants {
            let totals = self.usage.totals(t.id, period).await?;
            let previous = self.usage.totals(t.id, period.previous()).await?;
            let all = overall(&totals)?;
            let prev = total_cost(&previous);
            cost += all.cost;
            prev_cost += prev;
            calls += all.calls;
            let top_provider = by_provider(&totals)?
                .into_iter()
                .max_by(|a, b| a.1.cost.cmp(&b.1.cost))
                .filter(|(_, r)| r.calls > 0)
                .map(|(p, _)| p);
            rows.push((
                all.cost,
                TenantUsageRow {
                    rank: 0,
                    tenant_id: t.id.0,
                    tenant_name: t.name,
                    total_cost_usd: usd(all.cost),
                    total_messages: all.calls,
                    total_tokens: all.tokens.input + all.tokens.output,
                    avg_response_time: avg_latency(&all),
                    error_rate: error_rate(&all),
                    share_percent: 0.0,
                    growth_rate: growth(all.cost, prev),
                    top_provider,
                },
            ));
        }
        rows.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.total_messages.cmp(&a.1.total_messages))
        });
        let active = rows.iter().filter(|(_, r)| r.total_messages > 0).count();
        let tenants = rows
            .into_iter()
            .enumerate()
            .map(|(i, (c, mut r))| {
                r.rank = i + 1;
                r.share_percent = share(c, cost);
                r
            })
            .collect();
        Ok(GlobalUsage {
            period: label,
            from: rfc3339(period.from),
            to: rfc3339(period.to),
            total_cost_usd: usd(cost),
            total_messages: calls,
            active_tenants: active,
            growth_rate: growth(cost, prev_cost),
            tenants,
        })
    }

    /// Model statistics of the period, narrowed to `models` when any are given.
    async fn model_stats(
        &self,
        tenant: TenantId,
        period: Period,
        models: &[String],
    ) -> ApiResult<(ModelTotals, Vec<ModelStats>)> {
        let mut totals = self.usage.totals(tenant, period).await?;
        if !models.is_empty() {
            totals.retain(|(_, m), _| models.contains(m));
        }
        let mut stats: Vec<ModelStats> = totals
            .iter()
            .map(|((p, m), r)| model_stats(p, m, r))
            .collect();
        stats.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then(a.model.cmp(&b.model))
        });
        Ok((totals, stats))
    }

    pub async fn model_comparison(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        models: &[String],
    ) -> ApiResult<ModelComparison> {
        let (totals, stats) = self.model_stats(tenant, period, models).await?;
        let all = overall(&totals)?;
        let generation_comparison = by_generation(&totals)?
            .into_iter()
            .map(|(g, (models, r))| {
                (
                    format!("{}_models", g.as_str()),
                    GenerationSummary {
                        models,
                        calls: r.calls,
                        cost_usd: r.cost.usd(),
                        percentage: share(r.cost, all.cost),
                        avg_quality: avg_quality(&r),
                        avg_cost: per_call(r.cost, r.calls),
                        avg_execution_time: avg_latency(&r).map(|ms| round(ms / 1000.0, 2)),
                    },
                )
            })
            .collect();
        Ok(ModelComparison {
            period: label,
            efficiency_insights: efficiency_insights(&stats),
            models_without_data: without_data(models, &stats),
            models: stats,
            generation_comparison,
        })
    }

    pub async fn usage_dashboard(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
    ) -> ApiResult<UsageDashboard> {
        let (totals, stats) = self.model_stats(tenant, period, &[]).await?;
        let all = overall(&totals)?;
        let mut generations: Vec<GenerationUsage> = by_generation(&totals)?
            .into_iter()
            .map(|(generation, (models, r))| GenerationUsage {
                generation,
                models,
                jobs: r.calls,
                cost: usd(r.cost),
                percentage: share(r.cost, all.cost),
                avg_quality: avg_quality(&r),
            })
            .collect();
        generations.sort_by(|a, b| b.cost.total_cmp(&a.cost));
        Ok(UsageDashboard {
            period: DashboardPeriod {
                label,
                days: round(period.days(), 2),
                from: rfc3339(period.from),
                to: rfc3339(period.to),
            },
            totals: JobTotals {
                jobs: all.calls,
                cost: usd(all.cost),
                avg_cost_per_job: per_call(all.cost, all.calls),
            },
            by_generation: generations,
            efficiency_insights: efficiency_insights(&stats),
            by_model: stats,
        })
    }

    pub async fn efficiency(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        models: &[String],
    ) -> ApiResult<Efficiency> {
        let (_, mut stats) = self.model_stats(tenant, period, models).await?;
        stats.sort_by(|a, b| {
            a.cost_per_1k_tokens
                .unwrap_or(f64::MAX)
                .total_cmp(&b.cost_per_1k_tokens.unwrap_or(f64::MAX))
        });
        Ok(Efficiency {
            period: label,
            efficiency_insights: efficiency_insights(&stats),
            models_without_data: without_data(models, &stats),
            models: stats,
        })
    }

    pub async fn cost_breakdown(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        model: Option<String>,
    ) -> ApiResult<CostBreakdown> {
        let mut totals = self.usage.totals(tenant, period).await?;
        if let Some(m) = &model {
            totals.retain(|(_, x), _| x == m);
        }
        let all = overall(&totals)?;
        let mut by_model: Vec<CostBreakdownRow> = totals
            .iter()
            .map(|((p, m), r)| CostBreakdownRow {
                provider: p.clone(),
                model: m.clone(),
                calls: r.calls,
                cost_usd: r.cost.usd(),
                percentage: share(r.cost, all.cost),
                input_tokens: r.tokens.input,
                output_tokens: r.tokens.output,
                cached_tokens: r.tokens.cached_input,
                reasoning_tokens: r.tokens.reasoning,
                unpriced_calls: r.unpriced_calls,
            })
            .collect();
        by_model.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let (mut days, from, to) = self.daily(tenant, period).await?;
        if let Some(m) = &model {
            days.retain(|r| &r.model == m);
        }
        let by_day = series(&days, from, to, MICROS_PER_DAY)?
            .into_iter()
            .map(|p| DayCost {
                date: p.t[..10].to_owned(),
                cost_usd: p.cost_usd,
                calls: p.calls,
            })
            .collect();
        let by_user = self.top_users(tenant, period, model.clone()).await?;
        Ok(CostBreakdown {
            period: label,
            model,
            total_cost_usd: all.cost.usd(),
            total_calls: all.calls,
            avg_cost_per_call: per_call(all.cost, all.calls),
            by_model,
            by_day,
            by_user,
        })
    }

    pub async fn trends(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
    ) -> ApiResult<Trends> {
        let (days, from, to) = self.daily(tenant, period).await?;
        let daily = series(&days, from, to, MICROS_PER_DAY)?;
        let mut per_model: BTreeMap<(String, String), Vec<UsageRollup>> = BTreeMap::new();
        for r in &days {
            per_model
                .entry((r.provider.clone(), r.model.clone()))
                .or_default()
                .push(r.clone());
        }
        let by_model = per_model
            .into_iter()
            .map(|((provider, model), rows)| {
                Ok(ModelSeries {
                    provider,
                    model,
                    daily_cost_usd: series(&rows, from, to, MICROS_PER_DAY)?
                        .into_iter()
                        .map(|p| p.cost_usd)
                        .collect(),
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let pick = |f: &dyn Fn(&SeriesPoint) -> f64| daily.iter().map(f).collect::<Vec<f64>>();
        Ok(Trends {
            period: label,
            cost_trend: trend(&pick(&|p| p.cost_usd)),
            calls_trend: trend(&pick(&|p| p.calls as f64)),
            latency_trend: trend(&pick(&|p| p.avg_response_time.unwrap_or(0.0))),
            daily,
            by_model,
        })
    }
}
