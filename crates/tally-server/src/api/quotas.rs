//! Quotas and budgets (seed 000 QuotaStatusDto, seed 003 budget rules).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tally_core::activity::round_to as round;
use tally_core::auth::Action;
use tally_core::pricing::{Nanos, TokenUsage};
use tally_core::quota::{
    percent, project, Decision, QuotaEvent, QuotaInput, QuotaMetric, QuotaScope, QuotaStatus,
    QuotaWindow,
};
use tally_core::time::rfc3339;
use tally_core::usage::{reported_cost, MAX_TOKENS};
use tally_core::FieldError;

use super::extract::ClientIp;
use super::extract::{parse_item, ApiQuery, Auth, JsonBody};
use super::extract::{require, tenant_for, TenantQuery};
use crate::error::ApiResult;
use crate::AppState;
use tally_access::audit::Entry;
use tally_ai::quota::{display_amount, is_tenant_budget, Tracked};
use tally_ai::usage::PreflightCall;
use tally_core::audit::action;

/// A tenant-wide USD budget (seed 000's `daily_limit` / `monthly_limit`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    pub limit_usd: f64,
    pub used_usd: f64,
    pub usage_percent: f64,
    pub status: QuotaStatus,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantBudgets {
    pub daily_limit: Option<BudgetStatus>,
    pub monthly_limit: Option<BudgetStatus>,
}

/// One configured quota and its current window.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaView {
    pub id: i64,
    pub name: String,
    pub metric: QuotaMetric,
    pub window: QuotaWindow,
    pub scope: QuotaScope,
    /// In the metric's unit: USD for `cost_usd`, else tokens or calls.
    pub limit: f64,
    pub used: f64,
    pub remaining: f64,
    pub usage_percent: f64,
    pub status: QuotaStatus,
    pub warn_percent: u8,
    /// Whether calls beyond the limit are refused (else only reported).
    pub enforce: bool,
    pub window_start: String,
    pub resets_at: String,
    /// Usage at the end of the window if the pace since it started holds.
    pub projected_usage: f64,
    pub projected_percent: f64,
    /// When the limit would be reached at this pace; null if not within this window.
    pub exhaustion_eta: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaPredictions {
    /// The tenant's USD cost expected by the end of today (UTC) at today's pace.
    pub daily_usage_projection: f64,
    /// The earliest exhaustion ETA among the quotas: the current time when one is already
    /// exhausted, null when none is on course to be within its window.
    pub quota_exhaustion_eta: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaEventView {
    pub id: i64,
    pub rule_id: i64,
    pub rule_name: String,
    pub metric: QuotaMetric,
    /// 100 for the limit, else the warning threshold.
    pub threshold: u8,
    pub used: f64,
    pub limit: f64,
    pub window_start: String,
    pub at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaStatusResponse {
    pub tenant_id: uuid::Uuid,
    pub timestamp: String,
    pub tenant_quotas: TenantBudgets,
    pub quotas: Vec<QuotaView>,
    pub predictions: QuotaPredictions,
    /// Thresholds crossed, newest first (the last 20).
    pub recent_events: Vec<QuotaEventView>,
}

fn view(t: &Tracked, now: i64) -> QuotaView {
    let m = t.rule.metric;
    let p = t.projection(now);
    QuotaView {
        id: t.rule.id,
        name: t.rule.name.clone(),
        metric: m,
        window: t.rule.window,
        scope: t.rule.scope.clone(),
        limit: display_amount(m, t.rule.limit.into()),
        used: display_amount(m, t.used),
        remaining: display_amount(m, (i128::from(t.rule.limit) - t.used).max(0)),
        usage_percent: t.usage_percent(),
        status: t.status(),
        warn_percent: t.rule.warn_percent,
        enforce: t.rule.enforce,
        window_start: rfc3339(t.window.0),
        resets_at: rfc3339(t.window.1),
        projected_usage: display_amount(m, p.at_window_end.round() as i128),
        projected_percent: round(percent(p.at_window_end.round() as i128, t.rule.limit), 1),
        exhaustion_eta: p.exhaustion_at.map(rfc3339),
    }
}

fn event_view(e: QuotaEvent) -> QuotaEventView {
    QuotaEventView {
        id: e.id,
        rule_id: e.rule_id,
        rule_name: e.rule_name,
        metric: e.metric,
        threshold: e.threshold,
        used: display_amount(e.metric, e.used.into()),
        limit: display_amount(e.metric, e.limit.into()),
        window_start: rfc3339(e.window_start),
        at: rfc3339(e.ts),
    }
}

async fn status_of(
    state: &AppState,
    tenant: tally_core::TenantId,
) -> ApiResult<QuotaStatusResponse> {
    let snap = state.quotas.snapshot(tenant).await?;
    let now = snap.at;
    let budget = |window| {
        snap.rules
            .iter()
            .find(|t| is_tenant_budget(t, window))
            .map(|t| BudgetStatus {
                limit_usd: Nanos::from(t.rule.limit).usd(),
                used_usd: Nanos(t.used).usd(),
                usage_percent: t.usage_percent(),
                status: t.status(),
            })
    };
    let quotas: Vec<QuotaView> = snap.rules.iter().map(|t| view(t, now)).collect();
    let daily = project(snap.today.cost.0, i64::MAX, snap.today_window, now);
    // A quota already exhausted is the earliest exhaustion: it is now, whatever the pace
    // of the others.
    let eta = if snap
        .rules
        .iter()
        .any(|t| t.status() == QuotaStatus::Exceeded)
    {
        Some(now)
    } else {
        snap.rules
            .iter()
            .filter_map(|t| t.projection(now).exhaustion_at)
            .min()
    };
    Ok(QuotaStatusResponse {
        tenant_id: tenant.0,
        timestamp: rfc3339(now),
        tenant_quotas: TenantBudgets {
            daily_limit: budget(QuotaWindow::Day),
            monthly_limit: budget(QuotaWindow::Month),
        },
        quotas,
        predictions: QuotaPredictions {
            daily_usage_projection: round(daily.at_window_end / 1e9, 6),
            quota_exhaustion_eta: eta.map(rfc3339),
        },
        recent_events: state
            .quotas
            .events(tenant, 20)
            .await?
            .into_iter()
            .map(event_view)
            .collect(),
    })
}

/// Every quota of the tenant with its usage, status, projection and exhaustion ETA.
#[utoipa::path(get, path = "/api/v1/ai/quotas", tag = "ai", params(TenantQuery),
    responses((status = 200, body = QuotaStatusResponse)), security(("bearer" = [])))]
pub async fn quota_status(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<QuotaStatusResponse>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    Ok(Json(status_of(&state, tenant).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaConfig {
    quotas: Vec<Box<RawValue>>,
}

/// One quota rule (documentation schema; fields are checked one by one).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaRuleBody {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: Option<String>,
    #[schema(value_type = QuotaMetric)]
    pub metric: String,
    /// UTC calendar day or month.
    #[schema(value_type = QuotaWindow)]
    pub window: String,
    /// For `cost_usd`, USD as an exact decimal string or number up to 1,000,000,000;
    /// otherwise a positive integer.
    #[schema(schema_with = limit_schema)]
    pub limit: Value,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub provider: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$")]
    pub model: Option<String>,
    /// A user rule counts that user's calls to every model.
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub user_id: Option<Value>,
    /// An API key rule counts every call made with (or reported by) one of the tenant's
    /// keys: a team's or an app's budget. Stands alone: no provider, model or user_id.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub api_key_id: Option<String>,
    /// 1–99, default 80.
    #[schema(minimum = 1, maximum = 99)]
    pub warn_percent: Option<u8>,
    /// Refuse calls beyond the limit (default true) or only report them.
    pub enforce: Option<bool>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfigBody {
    /// The whole configuration (at most 200 rules, no two with the same metric, window
    /// and scope); an empty list removes every quota.
    #[schema(max_items = 200)]
    pub quotas: Vec<QuotaRuleBody>,
}

fn limit_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\d{1,10}(\.\d{1,9})?$")),
        )
        .into()
}

/// Replace the tenant's quota configuration. Rules are validated as a whole: one bad rule
/// rejects the request, naming its field (`quotas[2].limit`). A rule keeping its metric,
/// window and scope keeps its id and history.
#[utoipa::path(post, path = "/api/v1/ai/quotas/config", tag = "ai", request_body = QuotaConfigBody,
    responses((status = 200, body = QuotaStatusResponse), (status = 400, body = crate::error::ErrorEnvelope),
              (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn configure(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(raw): JsonBody<Box<RawValue>>,
) -> ApiResult<Json<QuotaStatusResponse>> {
    require(&p, Action::ManageTenant)?;
    let config: QuotaConfig = parse_item(raw.get(), "quotas")?;
    let inputs = config
        .quotas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let what = format!("quotas[{i}]");
            parse_item::<QuotaInput>(r.get(), &what).map_err(|mut e| {
                if e.field != what {
                    e.field = format!("{what}.{}", e.field);
                }
                e
            })
        })
        .collect();
    state.quotas.configure(p.tenant_id, inputs).await?;
    // The rules as sent (amounts and scopes; no secrets in a quota).
    let sent: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
    let entry = Entry::success(Some(p.tenant_id), action::QUOTAS_REPLACED, None)
        .details(serde_json::json!({ "rules": sent.get("quotas") }));
    state.access.record_by(&p, ip, entry).await;
    Ok(Json(status_of(&state, p.tenant_id).await?))
}

/// A call to test against the quotas. Give its estimated cost, or its token counts to
/// price it with the tenant's catalog.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaTestBody {
    #[schema(value_type = String, required = true, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$")]
    pub provider: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$")]
    pub model: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub user_id: Option<String>,
    /// Test the call as made with this API key (its key-scoped quotas count).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub api_key_id: Option<String>,
    /// Exact decimal USD, e.g. "0.25"; priced from the tokens when absent.
    #[schema(schema_with = crate::api::schemas::usd_amount_or_null)]
    pub estimated_cost_usd: Option<Value>,
    #[serde(default, deserialize_with = "tally_core::number::deserialize_opt_u64")]
    #[schema(minimum = 0, maximum = 1000000000)]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "tally_core::number::deserialize_opt_u64")]
    #[schema(minimum = 0, maximum = 1000000000)]
    pub output_tokens: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RuleCheck {
    pub id: i64,
    pub name: String,
    pub metric: QuotaMetric,
    pub window: QuotaWindow,
    pub limit: f64,
    pub used: f64,
    /// What the call would add.
    pub amount: f64,
    pub usage_percent_after: f64,
    pub remaining_after: f64,
    pub decision: Decision,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Alternative {
    pub provider: String,
    pub model: String,
    pub estimated_cost_usd: f64,
    pub decision: Decision,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaTestResponse {
    /// The strictest verdict of the matching quotas.
    pub decision: Decision,
    pub allowed: bool,
    pub estimated_cost_usd: f64,
    pub estimated_tokens: u64,
    /// One sentence per quota that warns or blocks.
    pub reasons: Vec<String>,
    pub quotas: Vec<RuleCheck>,
    /// Cheaper models of the same family, when the call would not pass cleanly and its
    /// tokens are known.
    pub alternatives: Vec<Alternative>,
}

fn text(field: &str, v: Option<String>) -> Result<String, FieldError> {
    let v = v.ok_or_else(|| FieldError::required(field))?;
    tally_core::check_id(field, &v, 128)?;
    match v.trim() {
        "" => Err(FieldError::invalid(field, "must not be blank")),
        t => Ok(t.to_owned()),
    }
}

/// Would a call of this estimated cost pass, warn or be blocked, and why. Nothing is
/// recorded.
#[utoipa::path(post, path = "/api/v1/ai/quotas/test", tag = "ai", request_body = QuotaTestBody,
    params(TenantQuery),
    responses((status = 200, body = QuotaTestResponse), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn test(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TenantQuery>,
    JsonBody(body): JsonBody<QuotaTestBody>,
) -> ApiResult<Json<QuotaTestResponse>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let provider = text("provider", body.provider)?.to_ascii_lowercase();
    let model = text("model", body.model)?;
    let user_id = body.user_id.map(|u| text("user_id", Some(u))).transpose()?;
    let api_key_id = body
        .api_key_id
        .map(|k| {
            k.trim()
                .parse::<tally_core::ApiKeyId>()
                .map_err(|_| FieldError::invalid("api_key_id", "must be an API key id (a UUID)"))
        })
        .transpose()?;
    for (field, n) in [
        ("input_tokens", body.input_tokens),
        ("output_tokens", body.output_tokens),
    ] {
        if n.is_some_and(|n| n > MAX_TOKENS) {
            return Err(FieldError::invalid(field, format!("must be at most {MAX_TOKENS}")).into());
        }
    }
    let call = PreflightCall {
        provider,
        model,
        user_id,
        api_key_id,
        estimated_cost: body
            .estimated_cost_usd
            .map(|v| reported_cost("estimated_cost_usd", &v))
            .transpose()?,
        tokens: TokenUsage {
            input: body.input_tokens.unwrap_or(0),
            output: body.output_tokens.unwrap_or(0),
            ..Default::default()
        },
    };
    let check = state.usage.preflight(tenant, call).await?;
    let quotas = check
        .verdict
        .rules
        .iter()
        .map(|r| {
            let t = &r.tracked;
            let m = t.rule.metric;
            let after = t.used.saturating_add(r.amount);
            RuleCheck {
                id: t.rule.id,
                name: t.rule.name.clone(),
                metric: m,
                window: t.rule.window,
                limit: display_amount(m, t.rule.limit.into()),
                used: display_amount(m, t.used),
                amount: display_amount(m, r.amount),
                usage_percent_after: round(percent(after, t.rule.limit), 1),
                remaining_after: display_amount(m, (i128::from(t.rule.limit) - after).max(0)),
                decision: r.decision,
            }
        })
        .collect();
    let alternatives = check
        .alternatives
        .into_iter()
        .map(|a| Alternative {
            provider: a.provider,
            model: a.model,
            estimated_cost_usd: a.cost.usd_rounded(6),
            decision: a.decision,
        })
        .collect();
    let decision = check.verdict.decision;
    Ok(Json(QuotaTestResponse {
        decision,
        allowed: decision != Decision::Block,
        estimated_cost_usd: check.cost.usd_rounded(6),
        estimated_tokens: check.tokens,
        reasons: check.reasons,
        quotas,
        alternatives,
    }))
}
