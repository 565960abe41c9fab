//! Seed 003's model recommendation (`POST /ai/openai/recommend_model/`): ranks the chat
//! models of the catalog for a task from its complexity, the weight of its budget and the
//! quality it needs, using each model's tier and the tenant's own measurements over the
//! last 30 days (quality score, latency, error rate, tokens and cost per call), and says
//! why, with the runners-up.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_core::models::{ModelKind, ModelSpec};
use tally_core::pricing::TokenUsage;
use tally_core::{FieldError, TenantId};

use crate::error::GatewayResult;
use crate::Gateway;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendInput {
    /// What the call is for (1–4,000 characters, not only white space).
    #[schema(min_length = 1, max_length = 4000, pattern = r"\S")]
    pub task_description: String,
    /// 0 (trivial) to 1 (hard multi-step reasoning). Default 0.5.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub complexity_score: Option<f64>,
    /// 0 (cost does not matter) to 1 (cost matters most). Default 0.5.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub budget_constraint: Option<f64>,
    /// 0 (any answer will do) to 1 (the best answer is needed). Default 0.5.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub quality_requirement: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Candidate {
    pub model: String,
    pub provider: String,
    pub generation: tally_core::models::Generation,
    pub score: f64,
    /// 0–1: the tier's quality, blended with the tenant's measured quality scores.
    pub quality: f64,
    /// For a typical call of this tenant (its measured tokens per call, else 1,000 in and
    /// 500 out), USD.
    pub estimated_cost_per_call: f64,
    pub avg_latency_ms: Option<f64>,
    pub error_rate: Option<f64>,
    /// Calls of this model measured in the last 30 days.
    pub measured_calls: u64,
    /// Whether one of the tenant's credentials serves it.
    pub available: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub recommended_model: String,
    pub provider: String,
    pub score: f64,
    pub reasoning: String,
    /// Suggested request parameters for the model (e.g. `reasoning_effort`).
    #[schema(value_type = Object)]
    pub suggested_params: Value,
    pub alternatives: Vec<Candidate>,
    pub recommended: Candidate,
}

/// The tier's quality, 0–1, from public benchmarks' ordering (a prior the tenant's own
/// quality scores refine).
fn tier(spec: &ModelSpec) -> f64 {
    match spec.model.as_str() {
        "o3" | "claude-opus-4" => 0.95,
        "o1" | "claude-sonnet-4" | "gemini-2.5-pro" => 0.9,
        "gpt-4.1" => 0.88,
        "gpt-4o" | "o4-mini" | "claude-3-7-sonnet" => 0.85,
        "claude-3-5-sonnet" => 0.82,
        "o3-mini" => 0.8,
        "gpt-4-turbo" | "gemini-2.5-flash" => 0.78,
        "gpt-4.1-mini" | "gemini-1.5-pro" => 0.75,
        "gpt-4o-mini" => 0.7,
        "claude-3-5-haiku" | "gemini-2.0-flash" => 0.68,
        "gpt-4.1-nano" | "gemini-1.5-flash" => 0.6,
        _ => 0.6,
    }
}

fn unit(field: &str, v: Option<f64>) -> Result<f64, FieldError> {
    match v {
        None => Ok(0.5),
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Some(_) => Err(FieldError::invalid(field, "must be a number from 0 to 1")),
    }
}

impl Gateway {
    pub async fn recommend(
        &self,
        tenant: TenantId,
        input: RecommendInput,
    ) -> GatewayResult<Recommendation> {
        let task = input.task_description.trim();
        if task.is_empty() || task.chars().count() > 4000 {
            return Err(
                FieldError::invalid("task_description", "must be 1 to 4000 characters").into(),
            );
        }
        let complexity = unit("complexity_score", input.complexity_score)?;
        let budget = unit("budget_constraint", input.budget_constraint)?;
        let quality_need = unit("quality_requirement", input.quality_requirement)?;
        let t = self.tenant(tenant).await?;
        let now = self.clock.now_micros();
        let totals = self
            .usage
            .totals(tenant, tally_ai::usage::Period::last_hours(now, 30 * 24))
            .await?;
        let catalog = self.usage.catalog(tenant).await?;
        let today = tally_core::time::to_datetime(now).date_naive();
        // The tenant's typical call, from all its measured calls.
        let (calls, input_tokens, output_tokens) =
            totals.values().fold((0u64, 0u64, 0u64), |a, r| {
                (a.0 + r.calls, a.1 + r.tokens.input, a.2 + r.tokens.output)
            });
        let typical = TokenUsage {
            input: input_tokens.checked_div(calls).unwrap_or(1000),
            output: output_tokens.checked_div(calls).map_or(500, |o| o.max(1)),
            ..TokenUsage::default()
        };
        let mut candidates: Vec<Candidate> = t
            .catalog
            .all()
            .into_iter()
            .filter(|s| s.kind != ModelKind::Embedding)
            .filter_map(|s| {
                let price = catalog.lookup(&s.provider, &s.model, today)?;
                let measured = totals.get(&(s.provider.clone(), s.model.clone()));
                let measured_calls = measured.map_or(0, |m| m.calls);
                let measured_quality = measured
                    .filter(|m| m.quality_count > 0)
                    .map(|m| (m.quality_sum / m.quality_count as f64 / 10.0).clamp(0.0, 1.0));
                let quality = match measured_quality {
                    Some(q) => 0.5 * tier(s) + 0.5 * q,
                    None => tier(s),
                };
                let error_rate = measured
                    .filter(|m| m.calls > 0)
                    .map(|m| m.errors as f64 / m.calls as f64);
                let avg_latency_ms = measured
                    .filter(|m| m.calls > 0)
                    .map(|m| m.latency_sum_ms / m.calls as f64);
                Some(Candidate {
                    available: t.deployments.iter().any(|d| d.provider() == s.provider),
                    model: s.model.clone(),
                    provider: s.provider.clone(),
                    generation: s.generation,
                    score: 0.0,
                    quality,
                    estimated_cost_per_call: price.cost(&typical).usd_rounded(6),
                    avg_latency_ms: avg_latency_ms.map(|l| tally_core::activity::round_to(l, 1)),
                    error_rate: error_rate.map(|e| tally_core::activity::round_to(e, 3)),
                    measured_calls,
                    reasons: if s.kind == ModelKind::Reasoning {
                        vec!["reasoning model".into()]
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect();
        if candidates.is_empty() {
            return Err(crate::GatewayError::new(
                404,
                "NOT_FOUND",
                "invalid_request_error",
                "no priced chat model in the catalog",
            ));
        }
        // Cost scores: the cheapest 1, the dearest 0, on a log scale (prices span 100×).
        let costs: Vec<f64> = candidates
            .iter()
            .map(|c| c.estimated_cost_per_call.max(1e-9).ln())
            .collect();
        let (lo, hi) = costs
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), c| (l.min(*c), h.max(*c)));
        for (c, cost) in candidates.iter_mut().zip(&costs) {
            let cheapness = if hi > lo {
                (hi - cost) / (hi - lo)
            } else {
                1.0
            };
            let reasoning = c.reasons.iter().any(|r| r == "reasoning model");
            let fit = if reasoning {
                complexity
            } else {
                1.0 - 0.6 * complexity
            };
            let reliability = 1.0 - c.error_rate.unwrap_or(0.0).min(1.0);
            let weights = quality_need + budget + complexity + 0.25;
            let mut score = (quality_need * c.quality
                + budget * cheapness
                + complexity * fit
                + 0.25 * reliability)
                / weights;
            if c.quality + 0.1 < quality_need {
                score *= 0.7;
                c.reasons.push(format!(
                    "quality {:.2} is below the {quality_need:.2} required",
                    c.quality
                ));
            }
            if !c.available {
                score *= 0.8;
                c.reasons.push("no credential serves it yet".into());
            }
            if cheapness > 0.7 {
                c.reasons.push("among the cheapest".into());
            }
            if c.quality >= 0.88 {
                c.reasons.push("top quality tier".into());
            }
            if c.measured_calls > 0 {
                c.reasons
                    .push(format!("{} calls measured in 30 days", c.measured_calls));
            }
            c.score = tally_core::activity::round_to(score, 3);
            c.quality = tally_core::activity::round_to(c.quality, 3);
        }
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.model.cmp(&b.model)));
        let best = candidates.remove(0);
        let reasoning_model = best.reasons.iter().any(|r| r == "reasoning model");
        let suggested_params = if reasoning_model {
            let effort = if complexity >= 0.75 {
                "high"
            } else if complexity >= 0.4 {
                "medium"
            } else {
                "low"
            };
            serde_json::json!({"reasoning_effort": effort, "max_completion_tokens": (typical.output * 4).clamp(500, 20_000)})
        } else {
            serde_json::json!({"temperature": if complexity > 0.6 { 0.2 } else { 0.7 }, "max_tokens": (typical.output * 2).clamp(256, 8_000)})
        };
        let reasoning = format!(
            "{} scores {:.3} for complexity {complexity:.2}, budget weight {budget:.2} and quality {quality_need:.2}: {}; about ${:.6} a call",
            best.model,
            best.score,
            best.reasons.join(", "),
            best.estimated_cost_per_call
        );
        Ok(Recommendation {
            recommended_model: best.model.clone(),
            provider: best.provider.clone(),
            score: best.score,
            reasoning,
            suggested_params,
            alternatives: candidates.into_iter().take(3).collect(),
            recommended: best,
        })
    }
}
