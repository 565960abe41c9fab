//! Usage across every tenant (the platform admin's view).

use super::*;

// ---------------------------------------------------------------------------------------
// Cross-tenant usage (admin)

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantUsageRow {
    pub rank: usize,
    pub tenant_id: uuid::Uuid,
    pub tenant_name: String,
    pub total_cost_usd: f64,
    pub total_messages: u64,
    pub total_tokens: u64,
    pub avg_response_time: Option<f64>,
    pub error_rate: f64,
    pub share_percent: f64,
    /// Cost change versus the previous period, percent; null without previous cost.
    pub growth_rate: Option<f64>,
    pub top_provider: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GlobalUsage {
    pub period: String,
    pub from: String,
    pub to: String,
    pub total_cost_usd: f64,
    pub total_messages: u64,
    pub active_tenants: usize,
    pub growth_rate: Option<f64>,
    /// Tenants by cost, highest first (tenants without calls last).
    pub tenants: Vec<TenantUsageRow>,
}

impl Tabular for GlobalUsage {
    fn table(&self) -> Table {
        Table {
            headers: vec![
                "rank",
                "tenant_id",
                "tenant_name",
                "period",
                "total_cost",
                "total_messages",
                "avg_response_time",
                "error_rate",
                "growth_rate",
            ],
            rows: self
                .tenants
                .iter()
                .map(|t| {
                    vec![
                        t.rank.to_string(),
                        t.tenant_id.to_string(),
                        t.tenant_name.clone(),
                        self.period.clone(),
                        t.total_cost_usd.to_string(),
                        t.total_messages.to_string(),
                        cell(t.avg_response_time),
                        t.error_rate.to_string(),
                        cell(t.growth_rate),
                    ]
                })
                .collect(),
        }
    }
}

impl Analytics {
    pub async fn global(&self, period: &PeriodSpec) -> AiResult<GlobalUsage> {
        let (label, period, _) = self.resolve(period)?;
        let tenants = self.stores.identity.list_tenants().await?;
        let mut rows = Vec::with_capacity(tenants.len());
        let (mut cost, mut prev_cost, mut calls) = (Nanos::ZERO, Nanos::ZERO, 0u64);
        for t in tenants {
            let totals = self.usage.totals(t.id, period).await?;
            let previous = self.usage.totals(t.id, period.previous()).await?;
            let all = overall(&totals)?;
            let prev = total_cost(&previous);
            cost += all.cost;
            prev_cost += prev;
            calls += all.calls;
            let top_provider = by_provider(&totals)?
                .into_iter()
                .max_by(|a, b| a.1.cost.cmp(&b.1.cost))
                .filter(|(_, r)| r.calls > 0)
                .map(|(p, _)| p);
            rows.push((
                all.cost,
                TenantUsageRow {
                    rank: 0,
                    tenant_id: t.id.0,
                    tenant_name: t.name,
                    total_cost_usd: usd(all.cost),
                    total_messages: all.calls,
                    total_tokens: all.tokens.input + all.tokens.output,
                    avg_response_time: avg_latency(&all),
                    error_rate: error_rate(&all),
                    share_percent: 0.0,
                    growth_rate: growth(all.cost, prev),
                    top_provider,
                },
            ));
        }
        rows.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.total_messages.cmp(&a.1.total_messages))
        });
        let active = rows.iter().filter(|(_, r)| r.total_messages > 0).count();
        let tenants = rows
            .into_iter()
            .enumerate()
            .map(|(i, (c, mut r))| {
                r.rank = i + 1;
                r.share_percent = share(c, cost);
                r
            })
            .collect();
        Ok(GlobalUsage {
            period: label,
            from: rfc3339(period.from),
            to: rfc3339(period.to),
            total_cost_usd: usd(cost),
            total_messages: calls,
            active_tenants: active,
            growth_rate: growth(cost, prev_cost),
            tenants,
        })
    }
}
