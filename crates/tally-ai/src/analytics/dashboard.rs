//! The dashboard summary: daily cost and call series and the budgets in force.

use super::*;

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
pub(crate) fn series(
    rows: &[UsageRollup],
    from: i64,
    to: i64,
    step: i64,
) -> AiResult<Vec<SeriesPoint>> {
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

impl Analytics {
    pub async fn dashboard(&self, tenant: TenantId, period: &PeriodSpec) -> AiResult<Dashboard> {
        let (label, period, now) = self.resolve(period)?;
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
        let quotas = self.quotas.snapshot(tenant).await?;
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
}
