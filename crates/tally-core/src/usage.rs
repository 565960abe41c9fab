//! LLM usage records (seeds 000 and 003): one call to a model, as sent to
//! `POST /api/v1/ai/usage` or recorded by the gateway, validated field by field and priced
//! at ingest when it does not carry its own cost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{codes, FieldError};
use crate::ids::ApiKeyId;
use crate::pricing::{Nanos, PriceCatalog, TokenUsage, MAX_RECORD_COST};
use crate::sketch::LatencySketch;
use crate::time::{self, MICROS_PER_SEC};

/// Seed 003's model generations: `new` (reasoning models, GPT-4.1 and later, Claude 4,
/// Gemini 2.5) or `legacy`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    New,
    Legacy,
}

/// Model-name prefixes (lowercase) of the new generation.
pub const NEW_GENERATION_PREFIXES: [&str; 8] = [
    "o1",
    "o3",
    "o4",
    "gpt-4.1",
    "gpt-5",
    "claude-opus-4",
    "claude-sonnet-4",
    "gemini-2.5",
];

impl Generation {
    pub fn of(model: &str) -> Generation {
        let m = model.to_ascii_lowercase();
        if NEW_GENERATION_PREFIXES.iter().any(|p| m.starts_with(p)) {
            Generation::New
        } else {
            Generation::Legacy
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Generation::New => "new",
            Generation::Legacy => "legacy",
        }
    }

    pub fn parse(s: &str) -> Option<Generation> {
        match s {
            "new" => Some(Generation::New),
            "legacy" => Some(Generation::Legacy),
            _ => None,
        }
    }
}

/// Outcome of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Success,
    Error,
    Timeout,
    Cancelled,
    /// Refused before any provider call (a budget, a rate limit, the model's rules): kept
    /// as a record to list and filter, never counted in usage sums, reports or quotas,
    /// since no call was made.
    Refused,
}

impl CallStatus {
    pub const ALL: [CallStatus; 5] = [
        CallStatus::Success,
        CallStatus::Error,
        CallStatus::Timeout,
        CallStatus::Cancelled,
        CallStatus::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Success => "success",
            CallStatus::Error => "error",
            CallStatus::Timeout => "timeout",
            CallStatus::Cancelled => "cancelled",
            CallStatus::Refused => "refused",
        }
    }

    /// Whether a provider was called (every status but `refused`): only those count in
    /// usage sums and quotas.
    pub fn was_called(self) -> bool {
        self != CallStatus::Refused
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Where a record's cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// The client sent `cost_usd`.
    Reported,
    /// Computed from the price catalog in force on the call's day.
    Catalog,
    /// No cost sent and the model has no price: counted at zero and flagged.
    Unpriced,
}

/// A usage record as clients send it; kept raw so validation names the exact field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageInput {
    pub id: Option<Value>,
    pub user_id: Option<Value>,
    pub conversation_id: Option<Value>,
    pub job_id: Option<Value>,
    pub provider: Option<Value>,
    pub model: Option<Value>,
    pub input_tokens: Option<Value>,
    pub output_tokens: Option<Value>,
    pub cached_tokens: Option<Value>,
    pub reasoning_tokens: Option<Value>,
    pub latency_ms: Option<Value>,
    pub time_to_first_token_ms: Option<Value>,
    pub status: Option<Value>,
    pub error_type: Option<Value>,
    pub quality_score: Option<Value>,
    pub cost_usd: Option<Value>,
    pub timestamp: Option<Value>,
    pub metadata: Option<Value>,
}

pub const MAX_TOKENS: u64 = 1_000_000_000;
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
const MAX_ID_LEN: usize = 128;

/// A validated, priced usage record, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub client_id: Option<String>,
    pub user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub job_id: Option<String>,
    /// The API key the call was made (gateway) or reported (`POST /ai/usage`) with: set by
    /// the server from the request's authentication, never from the record's body.
    pub api_key_id: Option<ApiKeyId>,
    /// Lower-case.
    pub provider: String,
    pub model: String,
    pub tokens: TokenUsage,
    pub latency_ms: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    pub status: CallStatus,
    pub error_type: Option<String>,
    pub quality_score: Option<f64>,
    pub cost: Nanos,
    pub cost_source: CostSource,
    /// Call time (client's if given, else receive time), UTC microseconds.
    pub timestamp: i64,
    pub timestamp_provided: bool,
    pub received_at: i64,
    /// JSON object text.
    pub metadata: String,
}

/// Validates one record and prices it with `catalog` (the tenant's view of prices).
pub fn validate_usage(
    input: UsageInput,
    catalog: &PriceCatalog,
    received_at: i64,
    max_future_skew_secs: i64,
) -> Result<UsageRecord, FieldError> {
    let provider = required_text("provider", input.provider, 64)?.to_ascii_lowercase();
    if !provider
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(FieldError::invalid(
            "provider",
            "may contain only letters, digits, '-', '_' and '.'",
        ));
    }
    let model = required_text("model", input.model, MAX_ID_LEN)?;
    let tokens = TokenUsage {
        input: count("input_tokens", input.input_tokens)?,
        output: count("output_tokens", input.output_tokens)?,
        cached_input: count("cached_tokens", input.cached_tokens)?,
        reasoning: count("reasoning_tokens", input.reasoning_tokens)?,
    };
    if tokens.cached_input > tokens.input {
        return Err(FieldError::invalid(
            "cached_tokens",
            "must not exceed input_tokens",
        ));
    }
    if tokens.reasoning > tokens.output {
        return Err(FieldError::invalid(
            "reasoning_tokens",
            "must not exceed output_tokens (reasoning is part of the output)",
        ));
    }
    let latency_ms = duration_ms("latency_ms", input.latency_ms)?;
    let time_to_first_token_ms =
        duration_ms("time_to_first_token_ms", input.time_to_first_token_ms)?;
    if let (Some(l), Some(t)) = (latency_ms, time_to_first_token_ms) {
        if t > l {
            return Err(FieldError::invalid(
                "time_to_first_token_ms",
                "must not exceed latency_ms",
            ));
        }
    }
    let status = match input.status {
        None | Some(Value::Null) => CallStatus::Success,
        Some(Value::String(s)) => CallStatus::parse(&s).ok_or_else(|| {
            FieldError::invalid(
                "status",
                "must be one of success, error, timeout, cancelled, refused",
            )
        })?,
        Some(_) => return Err(FieldError::invalid("status", "must be a string")),
    };
    if status == CallStatus::Refused && (tokens.input > 0 || tokens.output > 0) {
        return Err(FieldError::invalid(
            "status",
            "a refused call was never sent: its input_tokens and output_tokens must be 0",
        ));
    }
    let error_type = optional_text("error_type", input.error_type, MAX_ID_LEN)?;
    let quality_score = match number("quality_score", input.quality_score)? {
        Some(q) if !(0.0..=10.0).contains(&q) => {
            return Err(FieldError::invalid(
                "quality_score",
                "must be between 0 and 10",
            ))
        }
        q => q,
    };
    let (timestamp, timestamp_provided) =
        crate::event::client_timestamp(input.timestamp, received_at, max_future_skew_secs)?;
    let metadata = match input.metadata {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(FieldError::invalid("metadata", "must be a JSON object")),
    };
    let metadata = serde_json::to_string(&metadata)
        .map_err(|e| FieldError::invalid("metadata", e.to_string()))?;
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(FieldError::invalid(
            "metadata",
            format!("exceeds {MAX_METADATA_BYTES} bytes"),
        ));
    }

    let reported = match input.cost_usd {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Number(_) | Value::String(_))) => Some(v),
        Some(_) => {
            return Err(FieldError::invalid(
                "cost_usd",
                "must be a decimal number or string",
            ))
        }
    };
    let (cost, cost_source) = match reported {
        Some(value) => (reported_cost("cost_usd", &value)?, CostSource::Reported),
        None => {
            let day = time::to_datetime(timestamp).date_naive();
            match catalog.lookup(&provider, &model, day) {
                Some(price) => (
                    priced_cost("cost_usd", price.cost(&tokens))?,
                    CostSource::Catalog,
                ),
                None => (Nanos::ZERO, CostSource::Unpriced),
            }
        }
    };
    if status == CallStatus::Refused && cost > Nanos::ZERO {
        return Err(FieldError::invalid(
            "cost_usd",
            "a refused call was never sent: it costs 0",
        ));
    }

    Ok(UsageRecord {
        client_id: optional_id("id", input.id)?,
        user_id: optional_id("user_id", input.user_id)?,
        conversation_id: optional_id("conversation_id", input.conversation_id)?,
        job_id: optional_id("job_id", input.job_id)?,
        api_key_id: None,
        provider,
        model,
        tokens,
        latency_ms,
        time_to_first_token_ms,
        status,
        error_type,
        quality_score,
        cost,
        cost_source,
        timestamp,
        timestamp_provided,
        received_at,
        metadata,
    })
}

/// A call's cost as a client gives it (decimal string or number): from 0 to
/// [`MAX_RECORD_COST`].
pub fn reported_cost(field: &str, value: &Value) -> Result<Nanos, FieldError> {
    match Nanos::parse_usd_json(value) {
        Ok(cost) if cost < Nanos::ZERO => Err(FieldError::invalid(field, "must not be negative")),
        Ok(cost) if cost > MAX_RECORD_COST => Err(FieldError::invalid(
            field,
            format!("must be at most {MAX_RECORD_COST} USD per call"),
        )),
        Ok(cost) => Ok(cost),
        Err(_) => Err(FieldError::invalid(
            field,
            "must be a non-negative decimal with at most 9 places",
        )),
    }
}

/// A call's cost priced from its tokens, refused (naming `field`) above
/// [`MAX_RECORD_COST`].
pub fn priced_cost(field: &str, cost: Nanos) -> Result<Nanos, FieldError> {
    if cost > MAX_RECORD_COST {
        return Err(FieldError::invalid(
            field,
            format!(
                "the tokens priced at the catalog's price cost {cost} USD, above the \
                 {MAX_RECORD_COST} USD a call may cost"
            ),
        ));
    }
    Ok(cost)
}

fn required_text(field: &str, v: Option<Value>, max: usize) -> Result<String, FieldError> {
    optional_text(field, v, max)?.ok_or_else(|| {
        FieldError::new(
            codes::MISSING_REQUIRED,
            field,
            format!("{field} is required"),
        )
    })
}

fn optional_text(field: &str, v: Option<Value>, max: usize) -> Result<Option<String>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        // Kept exactly as sent: an identifier is matched byte for byte later.
        Some(Value::String(s)) => {
            if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
                return Err(FieldError::invalid(
                    field,
                    format!("must be 1 to {max} printable characters"),
                ));
            }
            Ok(Some(s))
        }
        Some(_) => Err(FieldError::invalid(field, "must be a string")),
    }
}

/// Identifiers may be strings or integers (kept as decimal text).
fn optional_id(field: &str, v: Option<Value>) -> Result<Option<String>, FieldError> {
    match v {
        Some(Value::Number(n)) if crate::number::integer(&n).is_some() => {
            Ok(crate::number::id_text(&n))
        }
        Some(Value::Number(_)) => Err(FieldError::invalid(field, "must be a string or an integer")),
        other => optional_text(field, other, MAX_ID_LEN),
    }
}

fn count(field: &str, v: Option<Value>) -> Result<u64, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => crate::number::unsigned(&n)
            .filter(|n| *n <= MAX_TOKENS)
            .ok_or_else(|| {
                FieldError::invalid(field, format!("must be an integer from 0 to {MAX_TOKENS}"))
            }),
        Some(_) => Err(FieldError::invalid(field, "must be an integer")),
    }
}

fn number(field: &str, v: Option<Value>) -> Result<Option<f64>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| FieldError::invalid(field, "must be a finite number")),
        Some(_) => Err(FieldError::invalid(field, "must be a number")),
    }
}

fn duration_ms(field: &str, v: Option<Value>) -> Result<Option<f64>, FieldError> {
    match number(field, v)? {
        Some(ms) if !(0.0..=MAX_LATENCY_MS).contains(&ms) => Err(FieldError::invalid(
            field,
            format!("must be between 0 and {MAX_LATENCY_MS} milliseconds"),
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::default_catalog;
    use serde_json::json;

    const NOW: i64 = 1_754_006_400_000_000; // 2025-08-01T00:00:00Z

    fn parse(v: Value) -> UsageInput {
        serde_json::from_value(v).unwrap()
    }

    fn check(v: Value) -> Result<UsageRecord, FieldError> {
        validate_usage(parse(v), &default_catalog(), NOW, 300)
    }

    #[test]
    fn a_call_is_priced_from_the_catalog_on_its_day() {
        let r = check(json!({
            "id": "call-1", "user_id": 42, "conversation_id": "conv-9", "provider": "OpenAI",
            "model": "gpt-4o-2024-08-06", "input_tokens": 1000, "output_tokens": 500,
            "cached_tokens": 400, "latency_ms": 850.5, "time_to_first_token_ms": 120,
            "timestamp": "2025-07-31T12:00:00Z", "metadata": {"feature": "summary"}
        }))
        .unwrap();
        assert_eq!(r.provider, "openai");
        assert_eq!(r.user_id.as_deref(), Some("42"));
        assert_eq!(r.cost, Nanos(7_000_000)); // 600×2.50 + 400×1.25 + 500×10 per M
        assert_eq!(r.cost_source, CostSource::Catalog);
        assert_eq!(r.status, CallStatus::Success);
        assert_eq!(r.metadata, r#"{"feature":"summary"}"#);

        // The same call before the o3 price cut costs five times more.
        let at = |ts: &str| {
            check(json!({"provider": "openai", "model": "o3", "input_tokens": 1_000_000, "timestamp": ts})).unwrap().cost
        };
        assert_eq!(at("2025-06-09T23:59:59Z"), Nanos(10_000_000_000));
        assert_eq!(at("2025-06-10T00:00:00Z"), Nanos(2_000_000_000));
    }

    /// A refused call used nothing: reported with tokens or a cost, it is refused itself.
    #[test]
    fn a_refused_call_reports_no_usage() {
        let r = check(
            json!({"provider": "openai", "model": "gpt-4o", "status": "refused",
                             "error_type": "RATE_LIMITED"}),
        )
        .unwrap();
        assert_eq!((r.status, r.cost), (CallStatus::Refused, Nanos::ZERO));
        let e = check(json!({"provider": "openai", "model": "gpt-4o", "status": "refused", "input_tokens": 5}))
            .unwrap_err();
        assert_eq!(e.field, "status");
        let e = check(json!({"provider": "openai", "model": "gpt-4o", "status": "refused", "cost_usd": "0.01"}))
            .unwrap_err();
        assert_eq!(e.field, "cost_usd");
    }

    #[test]
    fn reported_costs_are_kept_exactly_and_unknown_models_are_flagged() {
        let r = check(json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "cost_usd": "0.000123"})).unwrap();
        assert_eq!(
            (r.cost, r.cost_source),
            (Nanos(123_000), CostSource::Reported)
        );
        let r =
            check(json!({"provider": "openai", "model": "gpt-4o", "cost_usd": 0.0075})).unwrap();
        assert_eq!(r.cost, Nanos(7_500_000));
        let r =
            check(json!({"provider": "acme", "model": "in-house-7b", "input_tokens": 10})).unwrap();
        assert_eq!((r.cost, r.cost_source), (Nanos::ZERO, CostSource::Unpriced));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (json!({"model": "gpt-4o"}), "INSIGHTS_002", "provider"),
            (json!({"provider": "openai"}), "INSIGHTS_002", "model"),
            (
                json!({"provider": "open ai", "model": "x"}),
                "VALIDATION_ERROR",
                "provider",
            ),
            (
                json!({"provider": "openai", "model": "x", "input_tokens": -1}),
                "VALIDATION_ERROR",
                "input_tokens",
            ),
            (
                json!({"provider": "openai", "model": "x", "input_tokens": 1.5}),
                "VALIDATION_ERROR",
                "input_tokens",
            ),
            (
                json!({"provider": "openai", "model": "x", "input_tokens": 5, "cached_tokens": 6}),
                "VALIDATION_ERROR",
                "cached_tokens",
            ),
            (
                json!({"provider": "openai", "model": "x", "output_tokens": 5, "reasoning_tokens": 6}),
                "VALIDATION_ERROR",
                "reasoning_tokens",
            ),
            (
                json!({"provider": "openai", "model": "x", "latency_ms": 100, "time_to_first_token_ms": 200}),
                "VALIDATION_ERROR",
                "time_to_first_token_ms",
            ),
            (
                json!({"provider": "openai", "model": "x", "latency_ms": -3}),
                "VALIDATION_ERROR",
                "latency_ms",
            ),
            (
                json!({"provider": "openai", "model": "x", "status": "ok"}),
                "VALIDATION_ERROR",
                "status",
            ),
            (
                json!({"provider": "openai", "model": "x", "quality_score": 11}),
                "VALIDATION_ERROR",
                "quality_score",
            ),
            (
                json!({"provider": "openai", "model": "x", "cost_usd": "-1"}),
                "VALIDATION_ERROR",
                "cost_usd",
            ),
            (
                json!({"provider": "openai", "model": "x", "cost_usd": "1e-3"}),
                "VALIDATION_ERROR",
                "cost_usd",
            ),
            (
                json!({"provider": "openai", "model": "x", "timestamp": "2030-01-01T00:00:00Z"}),
                "INVALID_TIMESTAMP",
                "timestamp",
            ),
            (
                json!({"provider": "openai", "model": "x", "metadata": [1]}),
                "VALIDATION_ERROR",
                "metadata",
            ),
            (
                json!({"provider": "openai", "model": "x", "user_id": 1.5}),
                "VALIDATION_ERROR",
                "user_id",
            ),
        ];
        for (input, code, field) in cases {
            let err = check(input.clone()).unwrap_err();
            assert_eq!((err.code, err.field.as_str()), (code, field), "{input}");
        }
        assert!(
            serde_json::from_value::<UsageInput>(json!({"provider": "openai", "tokens": 1}))
                .is_err()
        );
    }

    #[test]
    fn failed_calls_keep_their_error_type() {
        let r = check(json!({"provider": "anthropic", "model": "claude-sonnet-4", "status": "timeout", "error_type": "upstream_timeout", "latency_ms": 30000})).unwrap();
        assert_eq!(
            (r.status, r.error_type.as_deref()),
            (CallStatus::Timeout, Some("upstream_timeout"))
        );
        assert_eq!(r.cost, Nanos::ZERO); // no tokens, no cost
    }
}

/// Rollup bucket sizes. Endpoints pick the coarsest that fits their range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn micros(self) -> i64 {
        match self {
            Granularity::Minute => 60 * MICROS_PER_SEC,
            Granularity::Hour => time::MICROS_PER_HOUR,
            Granularity::Day => time::MICROS_PER_DAY,
        }
    }

    /// Start of the bucket holding `ts` (UTC microseconds).
    pub fn bucket(self, ts: i64) -> i64 {
        ts.div_euclid(self.micros()) * self.micros()
    }
}

/// Everything dashboards need about the calls to one model in one bucket. Sums are exact;
/// percentiles come from the sketches (1 % relative error), mergeable across buckets.
#[derive(Debug, Clone, Default)]
pub struct UsageRollup {
    /// Bucket start, UTC microseconds.
    pub bucket: i64,
    pub provider: String,
    pub model: String,
    pub calls: u64,
    /// Calls whose status is not `success`.
    pub errors: u64,
    pub tokens: TokenUsage,
    pub cost: Nanos,
    pub latency: LatencySketch,
    pub latency_sum_ms: f64,
    pub ttft: LatencySketch,
    pub ttft_sum_ms: f64,
    pub quality_count: u64,
    pub quality_sum: f64,
    pub unpriced_calls: u64,
}

impl UsageRollup {
    pub fn add(&mut self, r: &UsageRecord) {
        self.calls += 1;
        self.errors += u64::from(r.status != CallStatus::Success);
        self.tokens.input += r.tokens.input;
        self.tokens.output += r.tokens.output;
        self.tokens.cached_input += r.tokens.cached_input;
        self.tokens.reasoning += r.tokens.reasoning;
        self.cost += r.cost;
        if let Some(l) = r.latency_ms {
            self.latency.add(l);
            self.latency_sum_ms += l;
        }
        if let Some(t) = r.time_to_first_token_ms {
            self.ttft.add(t);
            self.ttft_sum_ms += t;
        }
        if let Some(q) = r.quality_score {
            self.quality_count += 1;
            self.quality_sum += q;
        }
        self.unpriced_calls += u64::from(r.cost_source == CostSource::Unpriced);
    }

    /// Folds another bucket of the same provider and model into this one.
    pub fn merge(&mut self, o: &UsageRollup) -> Result<(), crate::sketch::SketchError> {
        self.calls += o.calls;
        self.errors += o.errors;
        self.tokens.input += o.tokens.input;
        self.tokens.output += o.tokens.output;
        self.tokens.cached_input += o.tokens.cached_input;
        self.tokens.reasoning += o.tokens.reasoning;
        self.cost += o.cost;
        self.latency.merge(&o.latency)?;
        self.latency_sum_ms += o.latency_sum_ms;
        self.ttft.merge(&o.ttft)?;
        self.ttft_sum_ms += o.ttft_sum_ms;
        self.quality_count += o.quality_count;
        self.quality_sum += o.quality_sum;
        self.unpriced_calls += o.unpriced_calls;
        Ok(())
    }
}

/// Sums over the calls of one user or one conversation (no sketches: these dimensions have
/// too many members to carry one each).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Nanos,
    pub latency_sum_ms: f64,
    /// First and last call times, UTC microseconds.
    pub first_ts: i64,
    pub last_ts: i64,
}

impl UsageTotals {
    pub fn add(&mut self, r: &UsageRecord) {
        let first = self.calls == 0;
        self.calls += 1;
        self.errors += u64::from(r.status != CallStatus::Success);
        self.input_tokens += r.tokens.input;
        self.output_tokens += r.tokens.output;
        self.cost += r.cost;
        self.latency_sum_ms += r.latency_ms.unwrap_or(0.0);
        self.first_ts = if first {
            r.timestamp
        } else {
            self.first_ts.min(r.timestamp)
        };
        self.last_ts = if first {
            r.timestamp
        } else {
            self.last_ts.max(r.timestamp)
        };
    }

    /// Adds `other`'s calls, as if each had been added here.
    pub fn merge(&mut self, other: &UsageTotals) {
        if other.calls == 0 {
            return;
        }
        let first = self.calls == 0;
        self.calls += other.calls;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost += other.cost;
        self.latency_sum_ms += other.latency_sum_ms;
        (self.first_ts, self.last_ts) = if first {
            (other.first_ts, other.last_ts)
        } else {
            (
                self.first_ts.min(other.first_ts),
                self.last_ts.max(other.last_ts),
            )
        };
    }
}

/// One user's calls over a range of days.
#[derive(Debug, Clone, PartialEq)]
pub struct UserUsage {
    pub user_id: String,
    pub totals: UsageTotals,
}

/// One conversation's calls, all time.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationUsage {
    pub conversation_id: String,
    /// The user of its first stored call.
    pub user_id: Option<String>,
    pub totals: UsageTotals,
}

/// A stored usage record with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUsage {
    pub id: i64,
    pub record: UsageRecord,
}

/// Filters for listing raw usage records (seed 003's Django-style filters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageFilter {
    /// `[from, to)` on the call time, UTC microseconds.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub min_cost: Option<Nanos>,
    pub max_cost: Option<Nanos>,
    pub provider: Option<String>,
    /// Any of these models.
    pub models: Vec<String>,
    pub user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub job_id: Option<String>,
    pub status: Option<CallStatus>,
    pub min_quality: Option<f64>,
    pub generation: Option<Generation>,
    /// Minimum quality points per dollar (`quality_score / cost`); a call with a quality
    /// score and no cost counts as infinitely efficient.
    pub min_cost_efficiency: Option<f64>,
    /// Case-insensitive substring of the model, conversation, job, error type or metadata.
    pub search: Option<String>,
}
