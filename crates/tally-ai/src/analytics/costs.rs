//! Costs by provider, model, conversation and user, and one conversation's calls.

use super::*;

// ---------------------------------------------------------------------------------------
// Costs

#[derive(Serialize, utoipa::ToSchema)]
pub struct CostRow {
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub cost_usd: f64,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub avg_cost_per_call: f64,
    /// Percent of the period's cost.
    pub share_percent: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TotalsRow {
    pub cost_usd: f64,
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub avg_response_time_ms: Option<f64>,
    pub first_at: Option<String>,
    pub last_at: Option<String>,
}

impl TotalsRow {
    pub(crate) fn of(t: &UsageTotals) -> Self {
        TotalsRow {
            cost_usd: t.cost.usd(),
            calls: t.calls,
            errors: t.errors,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            avg_response_time_ms: (t.calls > 0)
                .then(|| round(t.latency_sum_ms / t.calls as f64, 1)),
            first_at: (t.calls > 0).then(|| rfc3339(t.first_ts)),
            last_at: (t.calls > 0).then(|| rfc3339(t.last_ts)),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationCostRow {
    pub conversation_id: String,
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub totals: TotalsRow,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserCostRow {
    pub user_id: String,
    #[serde(flatten)]
    pub totals: TotalsRow,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CostReport {
    pub period: String,
    pub from: String,
    pub to: String,
    pub total_cost_usd: f64,
    pub total_calls: u64,
    pub by_provider: Vec<CostRow>,
    pub by_model: Vec<CostRow>,
    /// The most expensive conversations last active in the period (all their calls).
    pub by_conversation: Vec<ConversationCostRow>,
    /// The most expensive users over the whole UTC days the period overlaps.
    pub by_user: Vec<UserCostRow>,
    pub recommendations: Vec<Recommendation>,
    pub potential_saving_usd: f64,
}

impl Tabular for CostReport {
    fn table(&self) -> Table {
        let mut rows = Vec::new();
        for (dimension, list) in [("provider", &self.by_provider), ("model", &self.by_model)] {
            for r in list {
                let key = match &r.model {
                    Some(m) => format!("{}/{m}", r.provider),
                    None => r.provider.clone(),
                };
                rows.push(vec![
                    dimension.into(),
                    key,
                    r.cost_usd.to_string(),
                    r.calls.to_string(),
                    (r.input_tokens + r.output_tokens).to_string(),
                    r.share_percent.to_string(),
                ]);
            }
        }
        for c in &self.by_conversation {
            rows.push(vec![
                "conversation".into(),
                c.conversation_id.clone(),
                c.totals.cost_usd.to_string(),
                c.totals.calls.to_string(),
                (c.totals.input_tokens + c.totals.output_tokens).to_string(),
                String::new(),
            ]);
        }
        for u in &self.by_user {
            rows.push(vec![
                "user".into(),
                u.user_id.clone(),
                u.totals.cost_usd.to_string(),
                u.totals.calls.to_string(),
                (u.totals.input_tokens + u.totals.output_tokens).to_string(),
                String::new(),
            ]);
        }
        Table {
            headers: vec![
                "dimension",
                "key",
                "cost_usd",
                "calls",
                "tokens",
                "share_percent",
            ],
            rows,
        }
    }
}

pub(crate) fn cost_row(
    provider: &str,
    model: Option<&str>,
    r: &UsageRollup,
    total: Nanos,
) -> CostRow {
    CostRow {
        provider: provider.to_owned(),
        model: model.map(str::to_owned),
        cost_usd: r.cost.usd(),
        calls: r.calls,
        input_tokens: r.tokens.input,
        output_tokens: r.tokens.output,
        avg_cost_per_call: per_call(r.cost, r.calls),
        share_percent: share(r.cost, total),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CallRow {
    pub id: i64,
    pub timestamp: String,
    pub provider: String,
    pub model: String,
    pub user_id: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: Option<f64>,
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationCost {
    pub conversation_id: String,
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub totals: TotalsRow,
    pub avg_cost_per_message: f64,
    /// Cost by model within the conversation (from the listed calls).
    pub by_model: Vec<CostRow>,
    /// The most recent calls, newest first (at most 500); `calls` is their count.
    pub recent_calls: Vec<CallRow>,
    /// Whether the conversation has more calls than listed.
    pub recent_calls_truncated: bool,
}

pub const CONVERSATION_CALLS: u32 = 500;

impl Analytics {
    pub async fn costs(&self, tenant: TenantId, period: &PeriodSpec) -> AiResult<CostReport> {
        let (label, period, now) = self.resolve(period)?;
        let totals = self.usage.totals(tenant, period).await?;
        let all = overall(&totals)?;
        let mut providers: Vec<CostRow> = by_provider(&totals)?
            .iter()
            .map(|(p, r)| cost_row(p, None, r, all.cost))
            .collect();
        providers.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let mut models: Vec<CostRow> = totals
            .iter()
            .map(|((p, m), r)| cost_row(p, Some(m), r, all.cost))
            .collect();
        models.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let conversations = self
            .stores
            .usage
            .top_conversations(tenant, period.from, period.to, TOP_N)
            .await?;
        let by_user = self.top_users(tenant, period, None).await?;
        let catalog = self.usage.catalog(tenant).await?;
        let recs = recommendations(&totals, &catalog, now);
        let potential: Nanos = recs.iter().map(|r| r.saving).sum();
        Ok(CostReport {
            period: label,
            from: rfc3339(period.from),
            to: rfc3339(period.to),
            total_cost_usd: all.cost.usd(),
            total_calls: all.calls,
            by_provider: providers,
            by_model: models,
            by_conversation: conversations
                .into_iter()
                .map(|c| ConversationCostRow {
                    conversation_id: c.conversation_id,
                    user_id: c.user_id,
                    totals: TotalsRow::of(&c.totals),
                })
                .collect(),
            by_user,
            recommendations: recs,
            potential_saving_usd: usd(potential),
        })
    }

    pub async fn conversation(
        &self,
        tenant: TenantId,
        conversation_id: String,
    ) -> AiResult<ConversationCost> {
        let Some(conv) = self
            .stores
            .usage
            .conversation(tenant, conversation_id.clone())
            .await?
        else {
            return Err(AiError::NotFound("conversation"));
        };
        let filter = tally_core::usage::UsageFilter {
            conversation_id: Some(conversation_id),
            ..Default::default()
        };
        let (count, rows) = self
            .stores
            .usage
            .list_usage(
                tenant,
                filter,
                0,
                CONVERSATION_CALLS,
                u64::from(CONVERSATION_CALLS) + 1,
            )
            .await?;
        let mut models: BTreeMap<(String, String), UsageRollup> = BTreeMap::new();
        for s in &rows {
            let r = &s.record;
            models
                .entry((r.provider.clone(), r.model.clone()))
                .or_default()
                .add(r);
        }
        let listed_cost = Nanos(models.values().map(|r| r.cost.0).sum());
        let mut by_model: Vec<CostRow> = models
            .iter()
            .map(|((p, m), r)| cost_row(p, Some(m), r, listed_cost))
            .collect();
        by_model.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd));
        let t = &conv.totals;
        Ok(ConversationCost {
            conversation_id: conv.conversation_id,
            user_id: conv.user_id,
            avg_cost_per_message: per_call(t.cost, t.calls),
            totals: TotalsRow::of(t),
            by_model,
            recent_calls: rows
                .into_iter()
                .map(|s| CallRow {
                    id: s.id,
                    timestamp: rfc3339(s.record.timestamp),
                    provider: s.record.provider,
                    model: s.record.model,
                    user_id: s.record.user_id,
                    input_tokens: s.record.tokens.input,
                    output_tokens: s.record.tokens.output,
                    cost_usd: s.record.cost.usd(),
                    latency_ms: s.record.latency_ms,
                    status: s.record.status.as_str(),
                })
                .collect(),
            recent_calls_truncated: count > u64::from(CONVERSATION_CALLS),
        })
    }
}
