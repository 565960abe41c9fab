//! One tenant's AI stats (seed 000 `TenantAIStatsDto`): cost, usage, reliability, insights,
//! projections and the cheaper-model recommendations.

use super::*;

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

pub(crate) fn growth(current: Nanos, previous: Nanos) -> Option<f64> {
    (previous.0 > 0).then(|| {
        round(
            (current.0 - previous.0) as f64 / previous.0 as f64 * 100.0,
            1,
        )
    })
}

impl Analytics {
    pub async fn stats(&self, tenant: TenantId, period: &PeriodSpec) -> AiResult<TenantStats> {
        let (label, period, now) = self.resolve(period)?;
        let totals = self.usage.totals(tenant, period).await?;
        self.stats_of(tenant, label, period, now, &totals).await
    }

    /// The stats of `period` from its already merged `totals`.
    pub(crate) async fn stats_of(
        &self,
        tenant: TenantId,
        label: String,
        period: Period,
        now: i64,
        totals: &ModelTotals,
    ) -> AiResult<TenantStats> {
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
}
