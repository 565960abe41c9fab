//! What the gateway can call: `GET /v1/models` (OpenAI's list), seed 003's model list with
//! each model's specifics and prices, the providers a tenant has, their quota status, and
//! embeddings.

use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use tally_core::credential::ProviderKind;
use tally_core::models::{ModelKind, ModelSpec, Requirements};
use tally_core::pricing::{Nanos, TokenUsage};
use tally_core::TenantId;

use crate::chat::{CallMeta, Caller};
use crate::error::{GatewayError, GatewayResult};
use crate::providers::{openai::endpoint, Target, Tokens};
use crate::{tokens, Gateway};

/// One model with its specifics (seed 003 `GET /ai/openai/chat/`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    pub model: String,
    pub provider: String,
    pub family: String,
    pub generation: tally_core::models::Generation,
    pub kind: ModelKind,
    pub context_window: u32,
    pub max_output: u32,
    pub vision: bool,
    pub tools: bool,
    pub model_requirements: Requirements,
    pub suggested_params: Vec<&'static str>,
    /// USD per million tokens, from the tenant's price catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices: Option<Value>,
    /// Whether one of the tenant's credentials serves it.
    pub available: bool,
}

/// A provider the gateway speaks, and whether the tenant has a credential for it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    pub name: String,
    pub kind: ProviderKind,
    pub configured: bool,
    /// Deployments (credentials) serving it.
    pub deployments: usize,
    pub models: Vec<String>,
}

impl Gateway {
    /// Every catalog model (and the tenant's own) with its specifics and prices.
    pub async fn models(&self, tenant: TenantId) -> GatewayResult<Vec<ModelView>> {
        let t = self.tenant(tenant).await?;
        let catalog = self.usage.catalog(tenant).await?;
        let today = tally_core::time::to_datetime(self.clock.now_micros()).date_naive();
        let served = |s: &ModelSpec| {
            t.deployments
                .iter()
                .any(|d| d.models.contains(&s.model) || d.provider() == s.provider)
        };
        let mut out: Vec<ModelView> = t
            .catalog
            .all()
            .into_iter()
            .map(|s| ModelView {
                prices: catalog.lookup(&s.provider, &s.model, today).map(|p| {
                    json!({
                        "input_per_mtok_usd": p.input_per_mtok.usd_rounded(6),
                        "output_per_mtok_usd": p.output_per_mtok.usd_rounded(6),
                        "cached_input_per_mtok_usd": p.cached_input_per_mtok.map(|c| c.usd_rounded(6)),
                    })
                }),
                available: served(s),
                model: s.model.clone(),
                provider: s.provider.clone(),
                family: s.family.clone(),
                generation: s.generation,
                kind: s.kind,
                context_window: s.context_window,
                max_output: s.max_output,
                vision: s.vision,
                tools: s.tools,
                model_requirements: s.requirements(),
                suggested_params: s.suggested_params(),
            })
            .collect();
        // Models of the tenant's own servers the catalog does not describe.
        for d in &t.deployments {
            for m in &d.models {
                if !out.iter().any(|v| v.model == *m) {
                    let s = ModelSpec::unknown(d.provider(), m);
                    out.push(ModelView {
                        prices: None,
                        available: true,
                        model: format!("{}/{m}", d.name),
                        provider: s.provider.clone(),
                        family: s.family.clone(),
                        generation: s.generation,
                        kind: s.kind,
                        context_window: s.context_window,
                        max_output: s.max_output,
                        vision: s.vision,
                        tools: s.tools,
                        model_requirements: s.requirements(),
                        suggested_params: s.suggested_params(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// OpenAI's `GET /v1/models`: the models the tenant can call.
    pub async fn openai_models(&self, tenant: TenantId) -> GatewayResult<Value> {
        let data: Vec<Value> = self
            .models(tenant)
            .await?
            .into_iter()
            .filter(|m| m.available)
            .map(
                |m| json!({"id": m.model, "object": "model", "created": 0, "owned_by": m.provider}),
            )
            .collect();
        Ok(json!({"object": "list", "data": data}))
    }

    /// The providers the gateway speaks and the tenant's deployments of each.
    pub async fn providers(&self, tenant: TenantId) -> GatewayResult<Vec<ProviderView>> {
        let t = self.tenant(tenant).await?;
        let mut out: Vec<ProviderView> = [
            ProviderKind::Openai,
            ProviderKind::Anthropic,
            ProviderKind::Google,
        ]
        .into_iter()
        .map(|k| {
            let ds: Vec<_> = t.deployments.iter().filter(|d| d.kind == k).collect();
            ProviderView {
                name: k.as_str().into(),
                kind: k,
                configured: !ds.is_empty(),
                deployments: ds.len(),
                models: t
                    .catalog
                    .all()
                    .into_iter()
                    .filter(|s| s.provider == k.as_str())
                    .map(|s| s.model.clone())
                    .collect(),
            }
        })
        .collect();
        for d in t
            .deployments
            .iter()
            .filter(|d| d.kind == ProviderKind::OpenaiCompatible)
        {
            out.push(ProviderView {
                name: d.name.clone(),
                kind: d.kind,
                configured: true,
                deployments: 1,
                models: d.models.clone(),
            });
        }
        Ok(out)
    }

    /// `POST /v1/embeddings`: OpenAI and OpenAI-compatible deployments, with the same
    /// limits, budget hold and recording as chat calls.
    pub async fn embeddings(
        &self,
        caller: Caller,
        body: Value,
    ) -> GatewayResult<(Value, CallMeta)> {
        let Value::Object(body) = body else {
            return Err(GatewayError::invalid("body", "must be a JSON object"));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
            _ => {
                return Err(GatewayError::invalid(
                    "model",
                    "is required and must be a string",
                ))
            }
        };
        let input = body.get("input").cloned().unwrap_or(Value::Null);
        let ok_input = match &input {
            Value::String(s) => !s.is_empty(),
            Value::Array(items) => {
                !items.is_empty()
                    && items.len() <= 2048
                    && items.iter().all(|i| i.is_string() || i.is_array())
            }
            _ => false,
        };
        if !ok_input {
            return Err(GatewayError::invalid(
                "input",
                "must be a non-empty string or an array of 1 to 2048 strings or token arrays",
            ));
        }
        let t = self.tenant(caller.tenant).await?;
        let route = self.route_for(&t, &model)?;
        if route.spec.kind != ModelKind::Embedding {
            return Err(GatewayError::invalid(
                "model",
                format!("{model} is not an embedding model"),
            ));
        }
        let user = body
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(caller.user.clone());
        let prompt = tokens::count_embedding_input(&route.provider, &route.spec.model, &input);
        let request_id = format!("emb-{}", uuid::Uuid::new_v4().simple());
        let refused = |e: GatewayError| {
            let record =
                self.record_base(&caller, &route, &request_id, user.clone(), 0, Vec::new());
            self.submit_refused(&record, &e);
            e
        };
        let (rate_headers, token_limits) = self
            .rate_limit_for(&t, &caller, &route.spec.model, prompt)
            .map_err(refused)?;
        let (preflight, reservation) = self
            .reserve_for(&caller, &route, user.as_deref(), prompt, 0)
            .await?;
        let Some(reservation) = reservation else {
            return Err(refused(
                self.budget_error_for(&route, &preflight, &t, &model),
            ));
        };
        let mut send_body = body.clone();
        send_body.insert("model".into(), json!(route.model));
        let build = |target: &Target<'_>| {
            let mut headers = vec![("authorization", format!("Bearer {}", target.secret))];
            if target.kind == ProviderKind::OpenaiCompatible {
                headers.push(("api-key", target.secret.to_owned()));
            }
            (
                endpoint(target.base_url, "embeddings"),
                headers,
                // A tree of JSON values always serialises.
                serde_json::to_vec(&send_body).unwrap_or_default(),
            )
        };
        if route
            .deployments
            .iter()
            .all(|d| matches!(d.kind, ProviderKind::Anthropic | ProviderKind::Google))
        {
            return Err(GatewayError::invalid(
                "model",
                "embeddings are served by OpenAI and OpenAI-compatible deployments",
            ));
        }
        let started = Instant::now();
        let record = self.record_base(&caller, &route, &request_id, user, prompt, token_limits);
        let (d, resp) = match self.send_for(caller.tenant, &route, &build).await {
            Ok(x) => x,
            Err((e, outcome_timeout)) => {
                self.submit_failed(
                    &record,
                    &e,
                    outcome_timeout,
                    started.elapsed(),
                    Some(reservation),
                );
                return Err(e);
            }
        };
        let bytes = resp.bytes().await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let used = v
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(prompt);
        let tokens = Tokens {
            prompt: used,
            ..Tokens::default()
        };
        let cost = self
            .price_for(caller.tenant, &route.provider, &route.spec.model, tokens)
            .await;
        self.submit_success(
            &record,
            tokens,
            started.elapsed(),
            &d.name,
            Some(reservation),
        );
        let meta = CallMeta {
            request_id,
            provider: route.provider.clone(),
            model,
            deployment: Some(d.name.clone()),
            cost,
            budget_remaining: crate::chat::remaining_budget(&preflight.verdict.rules),
            rate_headers,
            ..CallMeta::default()
        };
        Ok((v, meta))
    }

    /// Seed 000's provider test: a real minimal call to each of the tenant's deployments
    /// (or the one named), through the gateway like any call.
    pub async fn test_providers(
        &self,
        caller: Caller,
        provider: Option<&str>,
    ) -> GatewayResult<Vec<Value>> {
        let t = self.tenant(caller.tenant).await?;
        let mut out = Vec::new();
        let targets: Vec<_> = t
            .deployments
            .iter()
            .filter(|d| provider.is_none_or(|p| d.name == p))
            .cloned()
            .collect();
        if targets.is_empty() {
            return Err(GatewayError::new(
                404,
                "NOT_FOUND",
                "invalid_request_error",
                match provider {
                    Some(p) => format!("no credential named '{p}'"),
                    None => "no provider credential is configured".to_owned(),
                },
            )
            .with_param("provider"));
        }
        for d in targets {
            let model = match d.kind {
                ProviderKind::Openai => "gpt-4o-mini".to_owned(),
                ProviderKind::Anthropic => "claude-3-5-haiku".to_owned(),
                ProviderKind::Google => "gemini-2.0-flash".to_owned(),
                ProviderKind::OpenaiCompatible => match d.models.first() {
                    Some(m) => format!("{}/{m}", d.name),
                    None => {
                        out.push(json!({"provider": d.name, "ok": false,
                            "error": "the credential lists no models to test with"}));
                        continue;
                    }
                },
            };
            let model = match d.kind {
                ProviderKind::OpenaiCompatible => model,
                _ => format!("{}/{model}", d.name),
            };
            let started = Instant::now();
            let result = self
                .chat(
                    caller.clone(),
                    json!({"model": model, "max_tokens": 1,
                        "messages": [{"role": "user", "content": "ping"}]}),
                )
                .await;
            let latency_ms =
                tally_core::activity::round_to(started.elapsed().as_secs_f64() * 1000.0, 2);
            out.push(match result {
                Ok(a) => {
                    let meta = match &a {
                        crate::chat::ChatAnswer::Complete { meta, .. }
                        | crate::chat::ChatAnswer::Stream { meta, .. } => meta.clone(),
                    };
                    json!({"provider": d.name, "model": model, "ok": true, "latency_ms": latency_ms,
                        "cost_usd": meta.cost.usd_rounded(6), "request_id": meta.request_id})
                }
                Err(e) => json!({"provider": d.name, "model": model, "ok": false,
                    "latency_ms": latency_ms, "status": e.status, "error_code": e.code, "error": e.message}),
            });
        }
        Ok(out)
    }

    /// Seed 003's quota status of one provider: the tenant's quotas that count its calls,
    /// what they used, and today's spend with it.
    pub async fn quota_status(&self, tenant: TenantId, provider: &str) -> GatewayResult<Value> {
        let providers = self.providers(tenant).await?;
        let Some(p) = providers.iter().find(|p| p.name == provider) else {
            return Err(GatewayError::invalid(
                "provider",
                format!(
                    "unknown provider '{provider}'; expected one of {}",
                    providers
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let snap = self.quotas.snapshot(tenant).await?;
        let now = snap.at;
        let rules: Vec<Value> = snap
            .rules
            .iter()
            .filter(|r| {
                r.rule
                    .scope
                    .provider
                    .as_deref()
                    .is_none_or(|x| x == provider)
            })
            .map(|r| {
                let limit = tally_ai::quota::display_amount(r.rule.metric, r.rule.limit.into());
                let used = tally_ai::quota::display_amount(r.rule.metric, r.used);
                json!({
                    "name": r.rule.name,
                    "metric": r.rule.metric.as_str(),
                    "window": r.rule.window.as_str(),
                    "scope": r.rule.scope,
                    "limit": limit,
                    "used": used,
                    "usage_percent": r.usage_percent(),
                    "status": r.status(),
                    "enforced": r.rule.enforce,
                    "resets_at": tally_core::time::rfc3339(r.window.1),
                })
            })
            .collect();
        let day = (snap.today_window.0, now + 1);
        let totals = self
            .usage
            .totals(
                tenant,
                tally_ai::usage::Period {
                    from: day.0,
                    to: day.1,
                },
            )
            .await?;
        let (mut calls, mut tokens, mut cost) = (0u64, 0u64, Nanos::ZERO);
        for ((prov, _), r) in &totals {
            if prov == provider {
                calls += r.calls;
                tokens += r.tokens.input + r.tokens.output;
                cost += r.cost;
            }
        }
        Ok(json!({
            "provider": provider,
            "configured": p.configured,
            "deployments": p.deployments,
            "today": {"calls": calls, "tokens": tokens, "cost_usd": cost.usd_rounded(6)},
            "quotas": rules,
            "in_flight_calls": self.quotas.reserved_calls(tenant),
            "at": tally_core::time::rfc3339(now),
        }))
    }

    pub(crate) async fn price_for(
        &self,
        tenant: TenantId,
        provider: &str,
        model: &str,
        t: Tokens,
    ) -> Nanos {
        let Ok(catalog) = self.usage.catalog(tenant).await else {
            return Nanos::ZERO;
        };
        let today = tally_core::time::to_datetime(self.clock.now_micros()).date_naive();
        catalog
            .lookup(provider, model, today)
            .map(|p| {
                p.cost(&TokenUsage {
                    input: t.prompt,
                    output: t.completion,
                    cached_input: t.cached.min(t.prompt),
                    reasoning: t.reasoning.min(t.completion),
                })
            })
            .unwrap_or(Nanos::ZERO)
    }
}
