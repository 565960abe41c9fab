//! Raw usage records as seed 003 lists them: its Django-style filters, checked, and one
//! page of matching records.

use tally_core::pricing::Nanos;
use tally_core::usage::{CallStatus, Generation, StoredUsage, UsageFilter};
use tally_core::{FieldError, TenantId};

use crate::analytics::parse_instant;
use crate::usage::Usage;
use crate::AiResult;

/// Matching records are counted up to this many (a larger count reads "at least").
pub const RECORD_COUNT_CAP: u64 = 1_000;

/// The filters as the caller sent them, under seed 003's names; [`RecordFilters::parse`]
/// checks them.
#[derive(Debug, Clone, Default)]
#[allow(non_snake_case)] // seed 003's filter names
pub struct RecordFilters {
    pub created_at__gte: Option<String>,
    pub created_at__lt: Option<String>,
    pub total_cost__gte: Option<String>,
    pub total_cost__lte: Option<String>,
    pub model_name: Option<String>,
    pub model_name__in: Option<String>,
    pub provider: Option<String>,
    pub user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub job_id: Option<String>,
    pub status: Option<String>,
    pub quality_score__gte: Option<String>,
    pub generation: Option<String>,
    pub cost_efficiency__gte: Option<String>,
    pub search: Option<String>,
}

/// One page of records and how many match (up to [`RECORD_COUNT_CAP`]).
pub struct RecordPage {
    pub count: u64,
    /// The count reached the cap: at least that many match.
    pub count_capped: bool,
    pub records: Vec<StoredUsage>,
}

pub fn text_filter(field: &str, v: Option<&str>) -> Result<Option<String>, FieldError> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) if s.len() > 256 => {
            Err(FieldError::invalid(field, "must be at most 256 characters"))
        }
        Some(s) => Ok(Some(s.to_owned())),
    }
}

fn usd_filter(field: &str, v: Option<&str>) -> Result<Option<Nanos>, FieldError> {
    text_filter(field, v)?
        .map(|s| match Nanos::parse_usd(&s) {
            Ok(n) if n >= Nanos::ZERO => Ok(n),
            _ => Err(FieldError::invalid(
                field,
                "must be a non-negative decimal, e.g. 1.00",
            )),
        })
        .transpose()
}

fn time_filter(field: &str, v: Option<&str>) -> Result<Option<i64>, FieldError> {
    text_filter(field, v)?
        .map(|s| {
            parse_instant(field, &s).map_err(|_| {
                FieldError::invalid(field, "must be an RFC 3339 time or a YYYY-MM-DD date")
            })
        })
        .transpose()
}

impl RecordFilters {
    /// The store's filter, or the first filter that breaks its rule (named as sent).
    pub fn parse(&self) -> Result<UsageFilter, FieldError> {
        let mut models: Vec<String> =
            text_filter("model_name__in", self.model_name__in.as_deref())?
                .map(|s| {
                    s.split(',')
                        .map(|m| m.trim().to_owned())
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default();
        if let Some(m) = text_filter("model_name", self.model_name.as_deref())? {
            models.push(m);
        }
        if models.len() > 50 {
            return Err(FieldError::invalid("model_name__in", "at most 50 models"));
        }
        let status = text_filter("status", self.status.as_deref())?
            .map(|s| {
                CallStatus::parse(&s).ok_or_else(|| {
                    FieldError::invalid(
                        "status",
                        "must be success, error, timeout, cancelled or refused",
                    )
                })
            })
            .transpose()?;
        let number = |field: &'static str, v: Option<&str>| {
            text_filter(field, v)?
                .map(|s| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| FieldError::invalid(field, "must be a number"))
                })
                .transpose()
        };
        let min_quality = number("quality_score__gte", self.quality_score__gte.as_deref())?;
        let min_cost_efficiency =
            number("cost_efficiency__gte", self.cost_efficiency__gte.as_deref())?;
        if min_cost_efficiency.is_some_and(|e| e < 0.0) {
            return Err(FieldError::invalid(
                "cost_efficiency__gte",
                "must not be negative",
            ));
        }
        let generation = text_filter("generation", self.generation.as_deref())?
            .map(|g| {
                Generation::parse(&g)
                    .ok_or_else(|| FieldError::invalid("generation", "must be new or legacy"))
            })
            .transpose()?;
        let filter = UsageFilter {
            from: time_filter("created_at__gte", self.created_at__gte.as_deref())?,
            to: time_filter("created_at__lt", self.created_at__lt.as_deref())?,
            min_cost: usd_filter("total_cost__gte", self.total_cost__gte.as_deref())?,
            max_cost: usd_filter("total_cost__lte", self.total_cost__lte.as_deref())?,
            provider: text_filter("provider", self.provider.as_deref())?
                .map(|p| p.to_ascii_lowercase()),
            models,
            user_id: text_filter("user_id", self.user_id.as_deref())?,
            conversation_id: text_filter("conversation_id", self.conversation_id.as_deref())?,
            job_id: text_filter("job_id", self.job_id.as_deref())?,
            status,
            min_quality,
            generation,
            min_cost_efficiency,
            search: text_filter("search", self.search.as_deref())?,
        };
        Ok(filter)
    }
}

impl Usage {
    /// One page of the tenant's records matching `filters`, newest first.
    pub async fn records(
        &self,
        tenant: TenantId,
        filters: &RecordFilters,
        page: u32,
        page_size: u32,
    ) -> AiResult<RecordPage> {
        let filter = filters.parse()?;
        let offset = u64::from(page.saturating_sub(1)) * u64::from(page_size);
        let (count, records) = self
            .stores
            .usage
            .list_usage(tenant, filter, offset, page_size, RECORD_COUNT_CAP)
            .await?;
        Ok(RecordPage {
            count,
            count_capped: count >= RECORD_COUNT_CAP,
            records,
        })
    }
}
