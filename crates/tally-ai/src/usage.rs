//! LLM usage ingestion and prices (seeds 000 and 003): validate and price each record with
//! the tenant's catalog, store it durably, manage price overrides.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use tally_core::error::codes;
use tally_core::pricing::{default_catalog, ModelPrice, Nanos, PriceCatalog, MAX_RECORD_COST};
use tally_core::time::SharedClock;
use tally_core::usage::{validate_usage, CostSource, UsageInput, UsageRecord};
use tally_core::{ApiKeyId, FieldError, TenantId};
use tally_store::{Stores, UsageInsert, UsageOutcome};

use crate::error::{AiError, AiResult};
use crate::quota::{CallEstimate, Quotas, Reservation, RuleVerdict, Verdict};
use tally_core::cache::TtlCache;
use tally_core::pricing::TokenUsage;
use tally_core::quota::Decision;

pub struct Usage {
    pub(crate) stores: Stores,
    quotas: Arc<Quotas>,
    defaults: PriceCatalog,
    catalogs: TtlCache<TenantId, Arc<PriceCatalog>>,
    max_future_skew_secs: i64,
    clock: SharedClock,
}

/// The result of one record of an ingest call.
#[derive(Debug, Clone)]
pub enum UsageResult {
    Stored {
        id: i64,
        duplicate: bool,
        cost: Nanos,
        cost_source: CostSource,
    },
    Rejected(FieldError),
}

impl Usage {
    pub fn new(
        stores: Stores,
        quotas: Arc<Quotas>,
        max_future_skew_secs: i64,
        clock: SharedClock,
    ) -> Self {
        Self {
            clock,
            stores,
            quotas,
            defaults: default_catalog(),
            catalogs: TtlCache::new(Duration::from_secs(30), 10_000),
            max_future_skew_secs,
        }
    }

    /// The prices a tenant's calls are costed with: its overrides, then the defaults.
    pub async fn catalog(&self, tenant: TenantId) -> AiResult<Arc<PriceCatalog>> {
        if let Some(c) = self.catalogs.get(&tenant) {
            return Ok(c);
        }
        let overrides = self.stores.usage.price_overrides(tenant).await?;
        let catalog = Arc::new(self.defaults.with_overrides(&overrides));
        self.catalogs.insert(tenant, catalog.clone());
        Ok(catalog)
    }

    /// Would a call pass, warn or be blocked by the tenant's quotas, why, and which
    /// cheaper model of the same family would do better. Nothing is recorded: the check a
    /// gateway runs before it forwards a call, and what `POST /ai/quotas/test` answers.
    /// Without an estimated cost the tokens are priced from the tenant's catalog; without
    /// either, only the request and token quotas are tested.
    pub async fn preflight(&self, tenant: TenantId, call: PreflightCall) -> AiResult<Preflight> {
        Ok(self.admit(tenant, call, false).await?.0)
    }

    /// [`preflight`](Self::preflight) for a call about to be made: unless it is blocked,
    /// its cost and tokens are held against the quotas (concurrent calls see them) until
    /// the reservation is dropped, which the caller does once the call's usage record is
    /// stored.
    pub async fn reserve(
        &self,
        tenant: TenantId,
        call: PreflightCall,
    ) -> AiResult<(Preflight, Option<Reservation>)> {
        self.admit(tenant, call, true).await
    }

    async fn admit(
        &self,
        tenant: TenantId,
        call: PreflightCall,
        hold: bool,
    ) -> AiResult<(Preflight, Option<Reservation>)> {
        let now = self.clock.now_micros();
        let catalog = self.catalog(tenant).await?;
        let today = tally_core::time::to_datetime(now).date_naive();
        let mut reasons = Vec::new();
        let cost = match call.estimated_cost {
            Some(cost) => cost,
            None => match catalog.lookup(&call.provider, &call.model, today) {
                Some(price) => {
                    tally_core::usage::priced_cost("input_tokens", price.cost(&call.tokens))?
                }
                None => {
                    if call.tokens.input + call.tokens.output > 0 {
                        reasons.push(format!(
                            "no price for {}/{}: cost quotas were tested at $0; \
                             give estimated_cost_usd to test them",
                            call.provider, call.model
                        ));
                    }
                    Nanos::ZERO
                }
            },
        };
        let tokens = call.tokens.input + call.tokens.output;
        let estimate = CallEstimate {
            provider: call.provider.clone(),
            model: call.model.clone(),
            user_id: call.user_id.clone(),
            api_key_id: call.api_key_id,
            cost,
            tokens,
        };
        let (verdict, reservation) = if hold {
            self.quotas.reserve(tenant, &estimate).await?
        } else {
            (self.quotas.check(tenant, &estimate).await?, None)
        };
        reasons.extend(verdict.rules.iter().filter_map(reason));
        let mut alternatives = Vec::new();
        if verdict.decision != Decision::Allow && tokens > 0 {
            if let Some((cheaper, price)) =
                cheaper_sibling(&catalog, &call.provider, &call.model, today)
            {
                let alt = CallEstimate {
                    model: cheaper.to_owned(),
                    cost: price.cost(&call.tokens),
                    ..estimate.clone()
                };
                let v = self.quotas.check(tenant, &alt).await?;
                alternatives.push(Alternative {
                    provider: alt.provider,
                    model: alt.model,
                    cost: alt.cost,
                    decision: v.decision,
                });
            }
        }
        Ok((
            Preflight {
                verdict,
                cost,
                tokens,
                reasons,
                alternatives,
            },
            reservation,
        ))
    }

    /// Validates, prices and stores records reported (or made, by the gateway) with
    /// `api_key` (none for a signed-in account or the demo); the key is recorded on each,
    /// for the quotas scoped to it.
    pub async fn ingest(
        &self,
        tenant: TenantId,
        api_key: Option<ApiKeyId>,
        items: Vec<Result<UsageInput, FieldError>>,
    ) -> AiResult<Vec<UsageResult>> {
        let catalog = self.catalog(tenant).await?;
        let received_at = self.clock.now_micros();
        let mut valid: Vec<UsageRecord> = Vec::with_capacity(items.len());
        let mut priced: Vec<Result<(Nanos, CostSource), FieldError>> =
            Vec::with_capacity(items.len());
        for item in items {
            match item.and_then(|input| {
                validate_usage(input, &catalog, received_at, self.max_future_skew_secs)
            }) {
                Ok(mut record) => {
                    record.api_key_id = api_key;
                    priced.push(Ok((record.cost, record.cost_source)));
                    valid.push(record);
                }
                Err(e) => priced.push(Err(e)),
            }
        }
        let valid: Arc<[UsageRecord]> = valid.into();
        let UsageInsert { outcomes, commit } = self
            .stores
            .usage
            .insert_usage(tenant, valid.clone())
            .await?;
        let inserted: Vec<&UsageRecord> = outcomes
            .iter()
            .zip(valid.iter())
            .filter_map(|(o, r)| match o {
                UsageOutcome::Inserted { .. } => Some(r),
                UsageOutcome::Duplicate { .. } => None,
            })
            .collect();
        // The records are committed: a failure to update quota state must not fail the
        // call (the state reloads from the store), so it is logged instead.
        if let Err(e) = self.quotas.observe(tenant, &inserted, commit).await {
            tracing::error!(error = %e, "failed to update quota usage");
        }
        let mut stored = outcomes.into_iter();
        priced
            .into_iter()
            .map(|r| match r {
                Err(e) => Ok(UsageResult::Rejected(e)),
                Ok((cost, cost_source)) => {
                    let (id, duplicate) = match stored.next() {
                        Some(UsageOutcome::Inserted { id }) => (id, false),
                        Some(UsageOutcome::Duplicate { id }) => (id, true),
                        None => {
                            return Err(AiError::Internal(
                                "store returned fewer outcomes than records".into(),
                            ))
                        }
                    };
                    Ok(UsageResult::Stored {
                        id,
                        duplicate,
                        cost,
                        cost_source,
                    })
                }
            })
            .collect()
    }

    /// Sets the tenant's price for a model from a date on.
    pub async fn put_price(&self, tenant: TenantId, input: PriceInput) -> AiResult<ModelPrice> {
        let text = |field: &str, t: &str, max: usize| -> Result<String, FieldError> {
            if t.is_empty()
                || t.chars().count() > max
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(FieldError::invalid(
                    field,
                    format!("must be 1 to {max} characters without spaces"),
                ));
            }
            Ok(t.to_ascii_lowercase())
        };
        let money = |field: &str, v: &str| -> Result<Nanos, FieldError> {
            match Nanos::parse_usd(v) {
                Ok(n) if n >= Nanos::ZERO && n <= MAX_RECORD_COST => Ok(n),
                _ => Err(FieldError::invalid(
                    field,
                    format!(
                        "must be a non-negative decimal string up to {MAX_RECORD_COST}, e.g. \"2.50\""
                    ),
                )),
            }
        };
        let effective_from =
            NaiveDate::parse_from_str(&input.effective_from, "%Y-%m-%d").map_err(|_| {
                FieldError::new(
                    codes::VALIDATION_ERROR,
                    "effective_from",
                    "must be a date in YYYY-MM-DD form",
                )
            })?;
        let price = ModelPrice {
            provider: text("provider", &input.provider, 64)?,
            model: text("model", &input.model, 128)?,
            effective_from,
            input_per_mtok: money("input_per_mtok_usd", &input.input_per_mtok_usd)?,
            output_per_mtok: money("output_per_mtok_usd", &input.output_per_mtok_usd)?,
            cached_input_per_mtok: input
                .cached_input_per_mtok_usd
                .as_deref()
                .map(|c| money("cached_input_per_mtok_usd", c))
                .transpose()?,
        };
        self.stores
            .usage
            .put_price_override(tenant, price.clone())
            .await?;
        self.catalogs.remove(&tenant);
        Ok(price)
    }
}

/// A tenant price override as the API takes it: dollar amounts as exact decimal strings.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    #[schema(pattern = r"^[^\s\u0000-\u001F\u007F-\u009F]{1,64}$")]
    pub provider: String,
    #[schema(pattern = r"^[^\s\u0000-\u001F\u007F-\u009F]{1,128}$")]
    pub model: String,
    /// YYYY-MM-DD: calls from this day on use this price.
    #[schema(format = Date)]
    pub effective_from: String,
    /// USD per million tokens as an exact decimal string, e.g. "2.50"; at most 1,000,000.
    #[schema(pattern = r"^(\d{1,6}(\.\d{1,9})?|1000000(\.0{1,9})?)$")]
    pub input_per_mtok_usd: String,
    #[schema(pattern = r"^(\d{1,6}(\.\d{1,9})?|1000000(\.0{1,9})?)$")]
    pub output_per_mtok_usd: String,
    #[schema(pattern = r"^(\d{1,6}(\.\d{1,9})?|1000000(\.0{1,9})?)$")]
    pub cached_input_per_mtok_usd: Option<String>,
}

/// A time range for analytics: `[from, to)` in UTC microseconds, aligned to whole hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: i64,
    pub to: i64,
}

impl Period {
    /// The last `hours` hourly buckets, the current (partial) one included: from the start
    /// of the hour `hours − 1` hours ago to now. The end is `now` itself (exclusive bound
    /// one microsecond later), never in the future.
    pub fn last_hours(now: i64, hours: i64) -> Self {
        let h = tally_core::time::MICROS_PER_HOUR;
        let end_of_hour = now.div_euclid(h) * h + h;
        Period {
            from: end_of_hour - hours * h,
            to: now + 1,
        }
    }

    /// The period of the same length just before this one.
    pub fn previous(self) -> Self {
        Period {
            from: 2 * self.from - self.to,
            to: self.from,
        }
    }

    pub fn days(self) -> f64 {
        (self.to - self.from) as f64 / tally_core::time::MICROS_PER_DAY as f64
    }
}

/// Per provider and model totals over a period, merged from rollup buckets.
pub type ModelTotals = std::collections::BTreeMap<(String, String), tally_core::usage::UsageRollup>;

impl Usage {
    /// Merges the rollups of `period`: whole days from day buckets, the hours at either
    /// edge from hour buckets.
    pub async fn totals(&self, tenant: TenantId, period: Period) -> AiResult<ModelTotals> {
        use tally_core::time::MICROS_PER_DAY;
        use tally_core::usage::Granularity;
        let first_day =
            (period.from + MICROS_PER_DAY - 1).div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
        let last_day = period.to.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
        let mut ranges = Vec::new();
        if first_day < last_day {
            ranges.push((Granularity::Hour, period.from, first_day));
            ranges.push((Granularity::Day, first_day, last_day));
            ranges.push((Granularity::Hour, last_day, period.to));
        } else {
            ranges.push((Granularity::Hour, period.from, period.to));
        }
        let mut totals = ModelTotals::new();
        for (g, from, to) in ranges {
            if from >= to {
                continue;
            }
            for r in self.stores.usage.usage_rollups(tenant, g, from, to).await? {
                let key = (r.provider.clone(), r.model.clone());
                match totals.get_mut(&key) {
                    Some(t) => t.merge(&r).map_err(AiError::internal)?,
                    None => {
                        totals.insert(key, r);
                    }
                }
            }
        }
        Ok(totals)
    }
}

/// Cheaper models of the same family, for cost recommendations.
const CHEAPER_SIBLING: [(&str, &str, &str); 6] = [
    ("openai", "gpt-4o", "gpt-4o-mini"),
    ("openai", "gpt-4.1", "gpt-4.1-mini"),
    ("openai", "o3", "o4-mini"),
    ("anthropic", "claude-opus-4", "claude-sonnet-4"),
    ("anthropic", "claude-sonnet-4", "claude-3-5-haiku"),
    ("google", "gemini-2.5-pro", "gemini-2.5-flash"),
];

/// The cheaper sibling of the model a call to `provider`/`model` is priced as on `day`,
/// with that sibling's price.
pub fn cheaper_sibling<'c>(
    catalog: &'c PriceCatalog,
    provider: &str,
    model: &str,
    day: NaiveDate,
) -> Option<(&'static str, &'c ModelPrice)> {
    let (_, _, cheaper) = CHEAPER_SIBLING.iter().find(|(p, m, _)| {
        *p == provider && catalog.lookup(p, model, day).is_some_and(|x| x.model == *m)
    })?;
    Some((cheaper, catalog.lookup(provider, cheaper, day)?))
}

/// Calls averaging fewer output tokens than this are candidates for a cheaper model.
pub const SHORT_OUTPUT_TOKENS: u64 = 300;

/// A call to check against the quotas before it is made.
#[derive(Debug, Clone)]
pub struct PreflightCall {
    /// Lower case.
    pub provider: String,
    pub model: String,
    pub user_id: Option<String>,
    /// The API key the call is made with.
    pub api_key_id: Option<ApiKeyId>,
    /// The caller's estimate; priced from the tokens when absent.
    pub estimated_cost: Option<Nanos>,
    pub tokens: TokenUsage,
}

/// A cheaper model of the same family and how the quotas would judge it.
#[derive(Debug, Clone)]
pub struct Alternative {
    pub provider: String,
    pub model: String,
    pub cost: Nanos,
    pub decision: Decision,
}

/// The answer of a pre-call check.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// Every matching rule's verdict; its decision is the strictest.
    pub verdict: Verdict,
    pub cost: Nanos,
    /// Input plus output tokens.
    pub tokens: u64,
    /// One sentence per rule that warns or blocks (and a note when the call could not be
    /// priced).
    pub reasons: Vec<String>,
    pub alternatives: Vec<Alternative>,
}

/// Why one rule warns or blocks, in a sentence; `None` when it allows.
fn reason(r: &RuleVerdict) -> Option<String> {
    let t = &r.tracked;
    let after = t.used.saturating_add(r.amount);
    let pct = tally_core::activity::round_to(tally_core::quota::percent(after, t.rule.limit), 1);
    match r.decision {
        Decision::Block => Some(format!(
            "'{}' would reach {pct} % of its {} limit of {}; it is enforced",
            t.rule.name,
            t.rule.window.as_str(),
            crate::quota::display_amount(t.rule.metric, t.rule.limit.into())
        )),
        Decision::Warn if after > i128::from(t.rule.limit) => Some(format!(
            "'{}' would reach {pct} % of its limit; it is not enforced, so the call is only reported",
            t.rule.name
        )),
        Decision::Warn => Some(format!(
            "'{}' would reach {pct} %, at or above its {} % warning threshold",
            t.rule.name, t.rule.warn_percent
        )),
        Decision::Allow => None,
    }
}
