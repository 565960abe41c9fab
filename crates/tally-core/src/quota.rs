//! Quotas and budgets (seed 000 QuotaStatusDto, seed 003 budget rules): a limit in USD,
//! tokens or requests per UTC day or calendar month, for a whole tenant or narrowed to a
//! provider, a model, a user or one API key (a team's or an app's). The rules here are pure: validation, which calls a rule
//! counts, the status of a usage level, projections and the admission decision.

use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FieldError;
use crate::ids::ApiKeyId;
use crate::pricing::Nanos;
use crate::time::{self, MICROS_PER_DAY};
use crate::usage::UsageRecord;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaMetric {
    /// Cost in USD (stored as nano-dollars).
    CostUsd,
    /// Input plus output tokens.
    Tokens,
    /// Calls.
    Requests,
}

impl QuotaMetric {
    pub const ALL: [QuotaMetric; 3] = [Self::CostUsd, Self::Tokens, Self::Requests];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CostUsd => "cost_usd",
            Self::Tokens => "tokens",
            Self::Requests => "requests",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// How much of this metric one call uses.
    pub fn amount(self, cost: Nanos, tokens: u64) -> i128 {
        self.of(&WindowUsage {
            calls: 1,
            tokens,
            cost,
        })
    }

    /// How much of this metric a set of calls used.
    /// In `i128`, like money: usage sums never saturate.
    pub fn of(self, u: &WindowUsage) -> i128 {
        match self {
            Self::CostUsd => u.cost.0.max(0),
            Self::Tokens => i128::from(u.tokens),
            Self::Requests => i128::from(u.calls),
        }
    }
}

/// What a set of calls used, in every metric's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowUsage {
    pub calls: u64,
    /// Input plus output tokens.
    pub tokens: u64,
    pub cost: Nanos,
}

/// The window a quota resets on (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaWindow {
    Day,
    Month,
}

impl QuotaWindow {
    pub const ALL: [QuotaWindow; 2] = [Self::Day, Self::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.as_str() == s)
    }

    /// `[start, end)` of the window holding `ts`, UTC microseconds.
    pub fn bounds(self, ts: i64) -> (i64, i64) {
        match self {
            Self::Day => {
                let start = ts.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
                (start, start + MICROS_PER_DAY)
            }
            Self::Month => {
                let d = time::to_datetime(ts).date_naive();
                let first = NaiveDate::from_ymd_opt(d.year(), d.month(), 1).unwrap_or(d);
                let next = if d.month() == 12 {
                    NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)
                }
                .unwrap_or(first);
                let micros = |day: NaiveDate| {
                    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
                        .timestamp_micros()
                };
                (micros(first), micros(next))
            }
        }
    }
}

/// Which calls a rule counts. Provider and model narrow by what was called; a user rule
/// counts that user's calls to every model, and an API key rule every call made with that
/// key (each of the three stands alone: never combined with another).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaScope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The API key the calls were made (or reported) with.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub api_key_id: Option<ApiKeyId>,
}

/// What a rule looks at in a call to decide whether it counts it.
#[derive(Debug, Clone, Copy)]
pub struct CallScope<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub user_id: Option<&'a str>,
    pub api_key_id: Option<ApiKeyId>,
}

impl<'a> CallScope<'a> {
    pub fn of(r: &'a UsageRecord) -> Self {
        Self {
            provider: &r.provider,
            model: &r.model,
            user_id: r.user_id.as_deref(),
            api_key_id: r.api_key_id,
        }
    }
}

impl QuotaScope {
    pub fn matches(&self, call: CallScope<'_>) -> bool {
        self.provider.as_deref().is_none_or(|p| p == call.provider)
            && self.model.as_deref().is_none_or(|m| m == call.model)
            && self
                .user_id
                .as_deref()
                .is_none_or(|u| Some(u) == call.user_id)
            && self.api_key_id.is_none_or(|k| Some(k) == call.api_key_id)
    }

    pub fn is_tenant_wide(&self) -> bool {
        self.provider.is_none()
            && self.model.is_none()
            && self.user_id.is_none()
            && self.api_key_id.is_none()
    }
}

/// A configured quota. `limit` is in the metric's unit: nano-dollars, tokens or calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRule {
    pub id: i64,
    pub name: String,
    pub metric: QuotaMetric,
    pub window: QuotaWindow,
    pub limit: i64,
    pub scope: QuotaScope,
    /// Percent of the limit at which calls are let through with a warning.
    pub warn_percent: u8,
    /// Whether calls beyond the limit are refused (`true`) or only reported.
    pub enforce: bool,
}

impl QuotaRule {
    /// Whether the rule counts `r`: a call it narrows to, that was made (a refused call
    /// used nothing).
    pub fn counts(&self, r: &UsageRecord) -> bool {
        r.status.was_called() && self.scope.matches(CallScope::of(r))
    }

    pub fn amount_of(&self, r: &UsageRecord) -> i128 {
        self.metric
            .amount(r.cost, r.tokens.input.saturating_add(r.tokens.output))
    }
}

/// How close usage is to its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaStatus {
    /// Below the warning threshold.
    Safe,
    /// At or above the warning threshold (80 % by default).
    Warning,
    /// At or above 95 %.
    Critical,
    /// At or above the limit.
    Exceeded,
}

pub const CRITICAL_PERCENT: f64 = 95.0;
/// The largest cost limit a quota may have: $1,000,000,000 (stored as `i64` nano-dollars).
pub const MAX_QUOTA_COST: Nanos = Nanos(1_000_000_000 * crate::pricing::NANOS_PER_USD);
pub const DEFAULT_WARN_PERCENT: u8 = 80;

pub fn percent(used: i128, limit: i64) -> f64 {
    if limit <= 0 {
        return if used > 0 { f64::INFINITY } else { 0.0 };
    }
    used as f64 / limit as f64 * 100.0
}

pub fn status(used: i128, limit: i64, warn_percent: u8) -> QuotaStatus {
    let p = percent(used, limit);
    if p >= 100.0 {
        QuotaStatus::Exceeded
    } else if p >= CRITICAL_PERCENT {
        QuotaStatus::Critical
    } else if p >= f64::from(warn_percent) {
        QuotaStatus::Warning
    } else {
        QuotaStatus::Safe
    }
}

/// The thresholds (percent) crossed when usage goes from `before` to `after`: the warning
/// threshold and 100, each reported once per window.
pub fn crossed(before: i128, after: i128, limit: i64, warn_percent: u8) -> Vec<u8> {
    [warn_percent, 100]
        .into_iter()
        .filter(|t| {
            let at = |u: i128| percent(u, limit) >= f64::from(*t);
            !at(before) && at(after)
        })
        .collect()
}

/// Run-rate projection over a window: where usage ends at the window's end if it keeps the
/// pace it has had since the window started, and when it would reach the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Usage expected at the end of the window, in the metric's unit.
    pub at_window_end: f64,
    /// When the limit would be reached at this pace, if before the window ends and not
    /// reached already (UTC microseconds).
    pub exhaustion_at: Option<i64>,
}

pub fn project(used: i128, limit: i64, window: (i64, i64), now: i64) -> Projection {
    let (start, end) = window;
    // At least one minute elapsed, so a window's first seconds do not extrapolate wildly.
    let elapsed = (now - start).max(60 * time::MICROS_PER_SEC) as f64;
    let rate = used as f64 / elapsed;
    let at_window_end = used as f64 + rate * (end - now).max(0) as f64;
    let exhaustion_at = if used < i128::from(limit) && rate > 0.0 {
        // A time, not money: float-to-int casts saturate and so does this sum.
        let at = now.saturating_add(((i128::from(limit) - used) as f64 / rate).ceil() as i64);
        (at < end).then_some(at)
    } else {
        None
    };
    Projection {
        at_window_end,
        exhaustion_at,
    }
}

/// The verdict for a call that would use `amount` more of a rule's metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    /// Allowed, but it takes usage to the warning threshold or beyond.
    Warn,
    /// Refused: it would take usage beyond an enforced limit.
    Block,
}

pub fn decide(rule: &QuotaRule, used: i128, amount: i128) -> Decision {
    let limit = i128::from(rule.limit);
    let after = used + amount;
    if after > limit || (used >= limit && amount > 0) {
        if rule.enforce {
            Decision::Block
        } else {
            Decision::Warn
        }
    } else if percent(after, rule.limit) >= f64::from(rule.warn_percent) {
        Decision::Warn
    } else {
        Decision::Allow
    }
}

/// Usage crossing a rule's warning threshold or its limit, once per rule, window and
/// threshold. The alerting work notifies on these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaEvent {
    pub id: i64,
    pub rule_id: i64,
    pub rule_name: String,
    pub metric: QuotaMetric,
    pub window_start: i64,
    /// Percent: the rule's warning threshold or 100.
    pub threshold: u8,
    pub used: i64,
    pub limit: i64,
    pub ts: i64,
}

/// A quota rule as the API takes it; checked field by field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaInput {
    pub name: Option<Value>,
    pub metric: Option<Value>,
    pub window: Option<Value>,
    /// USD as an exact decimal (string or number) for `cost_usd`; an integer otherwise.
    pub limit: Option<Value>,
    pub provider: Option<Value>,
    pub model: Option<Value>,
    pub user_id: Option<Value>,
    /// The id of one of the tenant's API keys.
    pub api_key_id: Option<Value>,
    pub warn_percent: Option<Value>,
    pub enforce: Option<Value>,
}

pub const MAX_RULES: usize = 200;

/// Validates one rule; field names are prefixed with `prefix` (e.g. `quotas[2]`).
pub fn validate_rule(input: QuotaInput, prefix: &str) -> Result<QuotaRule, FieldError> {
    let f = |name: &str| format!("{prefix}.{name}");
    let text = |name: &str, v: Option<Value>, max: usize| -> Result<Option<String>, FieldError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let t = s.trim();
                if t.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
                    Err(FieldError::invalid(
                        f(name),
                        format!("must be 1 to {max} printable characters"),
                    ))
                } else {
                    Ok(Some(t.to_owned()))
                }
            }
            Some(Value::Number(n)) if name == "user_id" && crate::number::integer(&n).is_some() => {
                Ok(crate::number::id_text(&n))
            }
            Some(_) => Err(FieldError::invalid(f(name), "must be a string")),
        }
    };
    let metric = match text("metric", input.metric, 16)? {
        None => return Err(FieldError::required(f("metric"))),
        Some(m) => QuotaMetric::parse(&m).ok_or_else(|| {
            FieldError::invalid(f("metric"), "must be cost_usd, tokens or requests")
        })?,
    };
    let window = match text("window", input.window, 16)? {
        None => return Err(FieldError::required(f("window"))),
        Some(w) => QuotaWindow::parse(&w)
            .ok_or_else(|| FieldError::invalid(f("window"), "must be day or month"))?,
    };
    let limit = match (metric, input.limit) {
        (_, None | Some(Value::Null)) => return Err(FieldError::required(f("limit"))),
        (QuotaMetric::CostUsd, Some(v)) => match Nanos::parse_usd_json(&v) {
            Ok(n) if n > Nanos::ZERO && n <= MAX_QUOTA_COST => n.0 as i64,
            _ => {
                return Err(FieldError::invalid(
                    f("limit"),
                    format!(
                        "must be a positive amount in USD up to {MAX_QUOTA_COST}, e.g. \"100.00\""
                    ),
                ))
            }
        },
        (_, Some(Value::Number(n))) => match crate::number::integer(&n)
            .and_then(|i| i64::try_from(i).ok())
            .filter(|n| *n > 0)
        {
            Some(n) => n,
            None => {
                return Err(FieldError::invalid(
                    f("limit"),
                    "must be a positive integer",
                ))
            }
        },
        (_, Some(_)) => {
            return Err(FieldError::invalid(
                f("limit"),
                "must be a positive integer",
            ))
        }
    };
    let api_key_id =
        match text("api_key_id", input.api_key_id, 36)? {
            None => None,
            Some(k) => Some(k.parse::<ApiKeyId>().map_err(|_| {
                FieldError::invalid(f("api_key_id"), "must be an API key id (a UUID)")
            })?),
        };
    let scope = QuotaScope {
        provider: text("provider", input.provider, 64)?.map(|p| p.to_ascii_lowercase()),
        model: text("model", input.model, 128)?,
        user_id: text("user_id", input.user_id, 128)?,
        api_key_id,
    };
    if scope.user_id.is_some() && (scope.provider.is_some() || scope.model.is_some()) {
        return Err(FieldError::invalid(
            f("user_id"),
            "a user quota counts the user's calls to every model; leave provider and model out",
        ));
    }
    if scope.api_key_id.is_some()
        && (scope.provider.is_some() || scope.model.is_some() || scope.user_id.is_some())
    {
        return Err(FieldError::invalid(
            f("api_key_id"),
            "an API key quota counts every call made with the key; leave provider, model and user_id out",
        ));
    }
    let warn_percent = match input.warn_percent {
        None | Some(Value::Null) => DEFAULT_WARN_PERCENT,
        Some(Value::Number(n)) => crate::number::unsigned(&n)
            .filter(|p| (1..=99).contains(p))
            .map(|p| p as u8)
            .ok_or_else(|| {
                FieldError::invalid(f("warn_percent"), "must be an integer from 1 to 99")
            })?,
        Some(_) => {
            return Err(FieldError::invalid(
                f("warn_percent"),
                "must be an integer from 1 to 99",
            ))
        }
    };
    let enforce = match input.enforce {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(FieldError::invalid(f("enforce"), "must be true or false")),
    };
    let name = text("name", input.name, 100)?.unwrap_or_else(|| {
        let mut n = format!("{} {}", window.as_str(), metric.as_str());
        for part in [&scope.provider, &scope.model, &scope.user_id]
            .into_iter()
            .flatten()
        {
            n.push(' ');
            n.push_str(part);
        }
        if let Some(k) = scope.api_key_id {
            n.push_str(&format!(" key {k}"));
        }
        n
    });
    Ok(QuotaRule {
        id: 0,
        name,
        metric,
        window,
        limit,
        scope,
        warn_percent,
        enforce,
    })
}

/// Rejects two rules with the same metric, window and scope: the second would be redundant
/// or contradictory.
pub fn check_unique(rules: &[QuotaRule]) -> Result<(), FieldError> {
    for (i, r) in rules.iter().enumerate() {
        if let Some(j) = rules[..i]
            .iter()
            .position(|o| o.metric == r.metric && o.window == r.window && o.scope == r.scope)
        {
            return Err(FieldError::invalid(
                format!("quotas[{i}]"),
                format!("has the same metric, window and scope as quotas[{j}]"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Result<QuotaRule, FieldError> {
        validate_rule(serde_json::from_value(v).unwrap(), "quotas[0]")
    }

    #[test]
    fn cost_limits_are_exact_and_names_default_from_the_scope() {
        let r =
            rule(json!({"metric": "cost_usd", "window": "day", "limit": "100.50", "model": "o3"}))
                .unwrap();
        assert_eq!(r.limit, 100_500_000_000);
        assert_eq!(r.name, "day cost_usd o3");
        assert_eq!((r.warn_percent, r.enforce), (80, true));
        let r = rule(json!({"metric": "requests", "window": "month", "limit": 50, "user_id": 7}))
            .unwrap();
        assert_eq!((r.limit, r.scope.user_id.as_deref()), (50, Some("7")));
    }

    /// A key rule counts the key's calls to every model and no other key's.
    #[test]
    fn key_rules_count_every_call_of_their_key_alone() {
        let (a, b) = (ApiKeyId::generate(), ApiKeyId::generate());
        let r = rule(json!({"metric": "cost_usd", "window": "day", "limit": "5", "api_key_id": a.to_string()}))
            .unwrap();
        assert_eq!(r.scope.api_key_id, Some(a));
        assert_eq!(r.name, format!("day cost_usd key {a}"));
        assert!(!r.scope.is_tenant_wide());
        let call = |model, key| CallScope {
            provider: "openai",
            model,
            user_id: Some("alice"),
            api_key_id: key,
        };
        assert!(r.scope.matches(call("gpt-4o", Some(a))));
        assert!(r.scope.matches(call("o3", Some(a))));
        assert!(!r.scope.matches(call("gpt-4o", Some(b))));
        assert!(!r.scope.matches(call("gpt-4o", None)));
        // A tenant rule counts calls with and without a key.
        assert!(QuotaScope::default().matches(call("gpt-4o", Some(b))));
        let field = |v: Value| rule(v).unwrap_err();
        let e =
            field(json!({"metric": "tokens", "window": "day", "limit": 1, "api_key_id": "abc"}));
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("quotas[0].api_key_id", "must be an API key id (a UUID)")
        );
        let e = field(
            json!({"metric": "tokens", "window": "day", "limit": 1, "api_key_id": a.to_string(), "model": "o3"}),
        );
        assert_eq!(e.field, "quotas[0].api_key_id");
        let e = field(json!({"metric": "tokens", "window": "day", "limit": 1, "api_key_id": 7}));
        assert_eq!(e.field, "quotas[0].api_key_id");
    }

    #[test]
    fn bad_rules_name_the_field() {
        let field = |v: Value| rule(v).unwrap_err().field;
        assert_eq!(
            field(json!({"window": "day", "limit": 1})),
            "quotas[0].metric"
        );
        assert_eq!(
            field(json!({"metric": "tokens", "window": "week", "limit": 1})),
            "quotas[0].window"
        );
        assert_eq!(
            field(json!({"metric": "tokens", "window": "day", "limit": 0})),
            "quotas[0].limit"
        );
        assert_eq!(
            field(json!({"metric": "tokens", "window": "day", "limit": 1.5})),
            "quotas[0].limit"
        );
        assert_eq!(
            field(json!({"metric": "cost_usd", "window": "day", "limit": "-3"})),
            "quotas[0].limit"
        );
        assert_eq!(
            field(
                json!({"metric": "tokens", "window": "day", "limit": 5, "user_id": "u", "model": "o3"})
            ),
            "quotas[0].user_id"
        );
        assert_eq!(
            field(json!({"metric": "tokens", "window": "day", "limit": 5, "warn_percent": 100})),
            "quotas[0].warn_percent"
        );
    }

    #[test]
    fn statuses_follow_the_thresholds() {
        assert_eq!(status(79, 100, 80), QuotaStatus::Safe);
        assert_eq!(status(80, 100, 80), QuotaStatus::Warning);
        assert_eq!(status(95, 100, 80), QuotaStatus::Critical);
        assert_eq!(status(100, 100, 80), QuotaStatus::Exceeded);
        assert_eq!(crossed(70, 85, 100, 80), vec![80]);
        assert_eq!(crossed(70, 120, 100, 80), vec![80, 100]);
        assert_eq!(crossed(85, 99, 100, 80), Vec::<u8>::new());
    }

    #[test]
    fn projection_with_a_huge_limit_does_not_overflow() {
        let p = project(10, i64::MAX, (0, 100 * MICROS_PER_DAY), MICROS_PER_DAY);
        assert_eq!(p.exhaustion_at, None);
        assert_eq!(p.at_window_end, 1000.0);
    }

    #[test]
    fn projections_extrapolate_the_run_rate() {
        let day = QuotaWindow::Day.bounds(10 * MICROS_PER_DAY + 5);
        assert_eq!(day, (10 * MICROS_PER_DAY, 11 * MICROS_PER_DAY));
        // A quarter of the day gone, 30 used: 120 by midnight; 100 reached at 20:00.
        let now = day.0 + MICROS_PER_DAY / 4;
        let p = project(30, 100, day, now);
        assert!((p.at_window_end - 120.0).abs() < 1e-6);
        let eta = p.exhaustion_at.unwrap();
        assert!((eta - (day.0 + MICROS_PER_DAY * 20 / 24)).abs() <= 1);
        // Slow enough pace: no exhaustion in the window.
        assert_eq!(project(10, 100, day, now).exhaustion_at, None);
    }

    #[test]
    fn month_windows_follow_the_calendar() {
        let ts = Utc
            .with_ymd_and_hms(2024, 12, 15, 8, 0, 0)
            .unwrap()
            .timestamp_micros();
        let (s, e) = QuotaWindow::Month.bounds(ts);
        assert_eq!(time::rfc3339(s), "2024-12-01T00:00:00Z");
        assert_eq!(time::rfc3339(e), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn decisions_warn_then_block_enforced_limits() {
        let r = rule(json!({"metric": "cost_usd", "window": "day", "limit": "10"})).unwrap();
        let usd = |x: i128| x * 1_000_000_000;
        assert_eq!(decide(&r, usd(1), usd(1)), Decision::Allow);
        assert_eq!(decide(&r, usd(7), usd(1)), Decision::Warn);
        assert_eq!(decide(&r, usd(7), usd(3)), Decision::Warn);
        assert_eq!(decide(&r, usd(7), usd(4)), Decision::Block);
        let soft = QuotaRule {
            enforce: false,
            ..r
        };
        assert_eq!(decide(&soft, usd(7), usd(4)), Decision::Warn);
    }
}
