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
use tally_core::time::SharedClock;
use tally_core::time::{
    day_of, parse_rfc3339, rfc3339, to_datetime, MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE,
};
use tally_core::usage::Generation;
use tally_core::usage::{Granularity, UsageRollup, UsageTotals};
use tally_core::{FieldError, TenantId};
use tally_store::Stores;

use crate::error::{AiError, AiResult};
use crate::usage::{cheaper_sibling, ModelTotals, Period, Usage, SHORT_OUTPUT_TOKENS};

/// The longest period a report covers.
pub const MAX_PERIOD_DAYS: i64 = 366;
/// Rows of the per-conversation and per-user breakdowns.
pub const TOP_N: u32 = 20;

mod comparison;
mod costs;
mod dashboard;
mod global;
mod performance;
mod period;
mod realtime;
mod stats;

pub use comparison::*;
pub use costs::*;
pub use dashboard::*;
pub use global::*;
pub use performance::*;
pub use period::*;
pub use realtime::*;
pub use stats::*;

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

fn merge_into<K: Ord>(map: &mut BTreeMap<K, UsageRollup>, key: K, r: &UsageRollup) -> AiResult<()> {
    match map.get_mut(&key) {
        Some(acc) => acc.merge(r).map_err(AiError::internal),
        None => {
            map.insert(key, r.clone());
            Ok(())
        }
    }
}

/// All models of `totals` merged into one rollup.
fn overall(totals: &ModelTotals) -> AiResult<UsageRollup> {
    let mut all = UsageRollup::default();
    for r in totals.values() {
        all.merge(r).map_err(AiError::internal)?;
    }
    Ok(all)
}

fn by_provider(totals: &ModelTotals) -> AiResult<BTreeMap<String, UsageRollup>> {
    let mut out = BTreeMap::new();
    for ((provider, _), r) in totals {
        merge_into(&mut out, provider.clone(), r)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------

pub struct Analytics {
    stores: Stores,
    usage: Arc<Usage>,
    quotas: Arc<crate::quota::Quotas>,
    clock: SharedClock,
}

impl Analytics {
    pub fn new(
        stores: Stores,
        usage: Arc<Usage>,
        quotas: Arc<crate::quota::Quotas>,
        clock: SharedClock,
    ) -> Self {
        Self {
            stores,
            usage,
            quotas,
            clock,
        }
    }

    /// The label and range `spec` names as of now, and now.
    fn resolve(&self, spec: &PeriodSpec) -> AiResult<(String, Period, i64)> {
        let now = self.clock.now_micros();
        let (label, period) = spec.resolve(now)?;
        Ok((label, period, now))
    }
    /// The most expensive users over the whole UTC days `period` overlaps, over every model
    /// or `model`'s calls only.
    async fn top_users(
        &self,
        tenant: TenantId,
        period: Period,
        model: Option<String>,
    ) -> AiResult<Vec<UserCostRow>> {
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

    async fn daily(
        &self,
        tenant: TenantId,
        period: Period,
    ) -> AiResult<(Vec<UsageRollup>, i64, i64)> {
        let from = period.from.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
        let to = (period.to + MICROS_PER_DAY - 1).div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
        let rows = self
            .stores
            .usage
            .usage_rollups(tenant, Granularity::Day, from, to)
            .await?;
        Ok((rows, from, to))
    }
}

impl Analytics {
    /// A new export's id and generation time.
    pub fn export_stamp(&self) -> (uuid::Uuid, i64) {
        (uuid::Uuid::new_v4(), self.clock.now_micros())
    }
}
