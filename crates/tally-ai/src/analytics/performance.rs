//! Latency percentiles, time to first token, error rates and reliability per provider and
//! model, against the previous period.

use super::*;

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

pub(crate) fn error_rate(r: &UsageRollup) -> f64 {
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

impl Analytics {
    pub async fn performance(
        &self,
        tenant: TenantId,
        period: &PeriodSpec,
    ) -> AiResult<PerformanceReport> {
        let (label, period, _) = self.resolve(period)?;
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
}
