//! Seed 003's views: model comparison, efficiency, the usage dashboard, cost breakdowns and
//! trends.

use super::*;

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
) -> AiResult<BTreeMap<Generation, (Vec<String>, UsageRollup)>> {
    let mut gens: BTreeMap<Generation, (Vec<String>, UsageRollup)> = BTreeMap::new();
    for ((_, m), r) in totals {
        let (models, rollup) = gens.entry(Generation::of(m)).or_default();
        if !models.contains(m) {
            models.push(m.clone());
        }
        rollup.merge(r).map_err(AiError::internal)?;
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

impl Analytics {
    /// Model statistics of the period, narrowed to `models` when any are given.
    async fn model_stats(
        &self,
        tenant: TenantId,
        period: Period,
        models: &[String],
    ) -> AiResult<(ModelTotals, Vec<ModelStats>)> {
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
        period: &PeriodSpec,
        models: &[String],
    ) -> AiResult<ModelComparison> {
        let (label, period, _) = self.resolve(period)?;
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
        period: &PeriodSpec,
    ) -> AiResult<UsageDashboard> {
        let (label, period, _) = self.resolve(period)?;
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
        period: &PeriodSpec,
        models: &[String],
    ) -> AiResult<Efficiency> {
        let (label, period, _) = self.resolve(period)?;
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
        period: &PeriodSpec,
        model: Option<String>,
    ) -> AiResult<CostBreakdown> {
        let (label, period, _) = self.resolve(period)?;
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

    pub async fn trends(&self, tenant: TenantId, period: &PeriodSpec) -> AiResult<Trends> {
        let (label, period, _) = self.resolve(period)?;
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
            .collect::<AiResult<Vec<_>>>()?;
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
