//! One chat call through the gateway, in order: the request is checked (messages, tools,
//! `n`, the `user`), its model routed to a provider and its deployments, the model rules
//! applied (refusals before any provider call), the prompt counted and checked against the
//! context window, the rate limits checked, the estimate (prompt plus the largest answer
//! the request allows) held against the budgets, the cache consulted, and the call sent
//! with retries across the model's deployments, then down its fallback chain. The answer
//! (or the stream, translated chunk by chunk) goes back in OpenAI's format, and the call's
//! usage record goes to the recorder, which releases the hold once the record is counted.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::Digest;
use tally_ai::quota::{Reservation, RuleVerdict};
use tally_ai::usage::{Preflight, PreflightCall};
use tally_core::credential::ProviderKind;
use tally_core::limiter::RateLimiter;
use tally_core::models::{configure, provider_of, ModelKind, ModelSpec};
use tally_core::pricing::{Nanos, TokenUsage};
use tally_core::quota::{Decision, QuotaMetric};
use tally_core::ratelimit::Quota;
use tally_core::{ApiKeyId, TenantId};

use crate::error::{GatewayError, GatewayResult};
use crate::providers::{self, Target, Tokens, Translator, UpstreamError};
use crate::recorder::{Record, Recorder};
use crate::settings::{LimitScope, RateLimitRule};
use crate::sse::SseDecoder;
use crate::{tokens, Deployment, Gateway, TenantGateway};

/// Who is calling, as the server authenticated them.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    /// The API key's id, for per-key limits and budgets and the record (none for a
    /// signed-in account).
    pub api_key: Option<ApiKeyId>,
    /// The end user (`X-Tally-User`), when the request's `user` field does not name one.
    pub user: Option<String>,
    /// `X-Tally-Conversation`.
    pub conversation: Option<String>,
}

/// What the response headers tell the client.
#[derive(Debug, Clone, Default)]
pub struct CallMeta {
    pub request_id: String,
    pub provider: String,
    pub model: String,
    pub deployment: Option<String>,
    /// The held estimate (streams) or the actual cost (complete answers).
    pub cost: Nanos,
    /// The tightest cost budget's remaining amount once this call is counted: at its
    /// cost for complete answers (nothing for cached ones), at its hold for streams.
    /// Negative when the budget is overdrawn (a rule that only warns); shown as 0.
    pub budget_remaining: Option<Nanos>,
    pub cached: bool,
    /// When a fallback answered: the model first asked for.
    pub fallback_from: Option<String>,
    /// Same-meaning conversions made for the model.
    pub conversions: Vec<String>,
    /// `x-ratelimit-*` headers.
    pub rate_headers: Vec<(String, String)>,
}

/// A provider request: URL, headers, JSON body.
pub type UpstreamRequest = (String, Vec<(&'static str, String)>, Vec<u8>);

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

pub enum ChatAnswer {
    Complete { body: Value, meta: CallMeta },
    Stream { stream: ByteStream, meta: CallMeta },
}

/// Most messages a request may carry.
pub const MAX_MESSAGES: usize = 2_000;
pub const MAX_TOOLS: usize = 128;
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
/// The largest answer assumed when neither the request nor the catalog bounds it.
const DEFAULT_MAX_OUTPUT: u64 = 4_096;

/// A route: where a model's calls go.
pub(crate) struct Route {
    /// Priced and recorded as.
    pub(crate) provider: String,
    /// As the provider knows it (the name without a `provider/` prefix).
    pub(crate) model: String,
    pub(crate) spec: ModelSpec,
    pub(crate) deployments: Vec<Deployment>,
}

/// Checks an OpenAI chat request's shape: the fields every provider needs, with the
/// exact field at fault.
pub fn validate_chat(body: &Map<String, Value>) -> GatewayResult<()> {
    match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() && m.len() <= 256 => {}
        Some(_) => return Err(GatewayError::invalid("model", "must be a non-empty string")),
        None => return Err(GatewayError::invalid("model", "is required")),
    }
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(GatewayError::invalid(
                "messages",
                "must hold at least one message",
            ))
        }
        Some(_) => {
            return Err(GatewayError::invalid(
                "messages",
                "must be an array of messages",
            ))
        }
        None => return Err(GatewayError::invalid("messages", "is required")),
    };
    if messages.len() > MAX_MESSAGES {
        return Err(GatewayError::invalid(
            "messages",
            format!("at most {MAX_MESSAGES} messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(m) = m.as_object() else {
            return Err(GatewayError::invalid(&at, "must be an object"));
        };
        let role = m.get("role").and_then(Value::as_str);
        if !role.is_some_and(|r| ROLES.contains(&r)) {
            return Err(GatewayError::invalid(
                &format!("{at}.role"),
                format!("must be one of {}", ROLES.join(", ")),
            ));
        }
        match m.get("content") {
            Some(Value::String(_)) => {}
            None | Some(Value::Null)
                if role == Some("assistant") && m.contains_key("tool_calls") => {}
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    let pat = format!("{at}.content[{j}]");
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") if p.get("text").is_some_and(Value::is_string) => {}
                        Some("image_url")
                            if p.pointer("/image_url/url").is_some_and(Value::is_string) => {}
                        Some("input_audio" | "file" | "refusal") => {}
                        _ => {
                            return Err(GatewayError::invalid(
                                &pat,
                                "must be a text part ({\"type\":\"text\",\"text\":…}) or an image part ({\"type\":\"image_url\",\"image_url\":{\"url\":…}})",
                            ))
                        }
                    }
                }
            }
            _ => {
                return Err(GatewayError::invalid(
                    &format!("{at}.content"),
                    "must be a string or an array of content parts",
                ))
            }
        }
        if role == Some("tool") && !m.get("tool_call_id").is_some_and(Value::is_string) {
            return Err(GatewayError::invalid(
                &format!("{at}.tool_call_id"),
                "is required on tool messages",
            ));
        }
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        let Some(tools) = tools.as_array() else {
            return Err(GatewayError::invalid("tools", "must be an array"));
        };
        if tools.len() > MAX_TOOLS {
            return Err(GatewayError::invalid(
                "tools",
                format!("at most {MAX_TOOLS} tools"),
            ));
        }
        for (i, t) in tools.iter().enumerate() {
            let at = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(GatewayError::invalid(
                    &format!("{at}.type"),
                    "must be \"function\"",
                ));
            }
            let name = t.pointer("/function/name").and_then(Value::as_str);
            if !name.is_some_and(|n| {
                !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            }) {
                return Err(GatewayError::invalid(
                    &format!("{at}.function.name"),
                    "must be 1 to 64 letters, digits, '_' or '-'",
                ));
            }
            if let Some(p) = t.pointer("/function/parameters") {
                if !p.is_object() {
                    return Err(GatewayError::invalid(
                        &format!("{at}.function.parameters"),
                        "must be a JSON Schema object",
                    ));
                }
            }
        }
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null()) {
        if !n.as_u64().is_some_and(|n| (1..=128).contains(&n)) {
            return Err(GatewayError::invalid(
                "n",
                "must be an integer from 1 to 128",
            ));
        }
    }
    for p in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = body.get(p).filter(|v| !v.is_null()) {
            if !v.as_u64().is_some_and(|n| (1..=10_000_000).contains(&n)) {
                return Err(GatewayError::invalid(p, "must be a positive integer"));
            }
        }
    }
    if let Some(t) = body.get("temperature").filter(|v| !v.is_null()) {
        if !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
            return Err(GatewayError::invalid(
                "temperature",
                "must be a number from 0 to 2",
            ));
        }
    }
    if let Some(s) = body.get("stream").filter(|v| !v.is_null()) {
        if !s.is_boolean() {
            return Err(GatewayError::invalid("stream", "must be a boolean"));
        }
    }
    if let Some(f) = body.get("response_format").filter(|v| !v.is_null()) {
        let kind = f.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("text" | "json_object" | "json_schema")) {
            return Err(GatewayError::invalid(
                "response_format.type",
                "must be text, json_object or json_schema",
            ));
        }
    }
    if let Some(u) = body.get("user").filter(|v| !v.is_null()) {
        if !u.as_str().is_some_and(valid_id) {
            return Err(GatewayError::invalid(
                "user",
                "must be 1 to 128 printable characters",
            ));
        }
    }
    Ok(())
}

/// An end-user or conversation id as usage records take it.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 128 && !s.chars().any(char::is_control)
}

fn new_request_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

impl Gateway {
    /// Where `requested` goes for the tenant: `provider/model`, a bare name of a known
    /// provider, or a model one of the tenant's deployments lists.
    pub(crate) fn route(&self, t: &TenantGateway, requested: &str) -> GatewayResult<Route> {
        let (prefix, name) = match requested.split_once('/') {
            Some((p, m)) if !p.is_empty() && !m.is_empty() => (Some(p), m),
            _ => (None, requested),
        };
        let deployments: Vec<Deployment> = t
            .deployments
            .iter()
            .filter(|d| match prefix {
                Some(p) => {
                    d.name == p
                        || (d.kind != ProviderKind::OpenaiCompatible && d.kind.as_str() == p)
                }
                None => {
                    d.models.iter().any(|m| m == name)
                        || (d.kind != ProviderKind::OpenaiCompatible
                            && provider_of(name) == Some(d.kind.as_str()))
                }
            })
            .cloned()
            .collect();
        let price_provider = match prefix {
            Some(p) => ProviderKind::parse(p)
                .filter(|k| *k != ProviderKind::OpenaiCompatible)
                .map(|k| k.as_str().to_owned())
                .or_else(|| {
                    // A compatible deployment serving a catalog model (an Azure-style
                    // gpt-4o) is priced as that model.
                    provider_of(name)
                        .filter(|p| t.catalog.lookup(p, name).is_some())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| p.to_owned()),
            None => provider_of(name)
                .map(str::to_owned)
                .or_else(|| deployments.first().map(|d| d.provider().to_owned()))
                .unwrap_or_default(),
        };
        let spec = t.catalog.lookup(&price_provider, name).cloned();
        let spec = match spec {
            Some(s) => s,
            None if deployments
                .iter()
                .any(|d| d.kind == ProviderKind::OpenaiCompatible) =>
            {
                ModelSpec::unknown(&price_provider, name)
            }
            None => {
                return Err(GatewayError::model_not_found(
                    requested,
                    "it is not in the model catalog; describe it in the gateway settings' models, or name a provider of your own as provider/model",
                ))
            }
        };
        if deployments.is_empty() {
            return Err(GatewayError::new(
                400,
                "PROVIDER_NOT_CONFIGURED",
                "invalid_request_error",
                format!(
                    "no credential serves '{requested}': add one for {} with POST /api/v1/ai/credentials",
                    if price_provider.is_empty() { "its provider" } else { &price_provider }
                ),
            )
            .with_param("model")
            .with_openai_code("provider_not_configured")
            .with_details(json!({"field": "model", "model": requested, "provider": price_provider})));
        }
        Ok(Route {
            provider: price_provider,
            model: name.to_owned(),
            spec,
            deployments,
        })
    }

    /// A chat call. `body` is OpenAI's request (seed 003's fields are the same ones).
    pub async fn chat(&self, caller: Caller, body: Value) -> GatewayResult<ChatAnswer> {
        let Value::Object(body) = body else {
            return Err(GatewayError::invalid("body", "must be a JSON object"));
        };
        validate_chat(&body)?;
        let requested = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_owned();
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let user = body
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(caller.user.clone());
        let t = self.tenant(caller.tenant).await?;
        let request_id = new_request_id();

        let mut chain: VecDeque<String> = VecDeque::from([requested.clone()]);
        if let Some(f) = t.settings.fallbacks.get(&requested) {
            chain.extend(f.iter().cloned());
        }
        let mut first_error: Option<GatewayError> = None;
        let mut attempt = 0usize;
        let mut tried: Vec<String> = Vec::new();
        while let Some(candidate) = chain.pop_front() {
            if tried.contains(&candidate) {
                continue;
            }
            tried.push(candidate.clone());
            let primary = attempt == 0;
            attempt += 1;
            let step = self
                .prepare(&t, &caller, &body, &candidate, user.as_deref(), primary)
                .await;
            let prepared = match step {
                Ok(p) => p,
                Err(Step::Refuse(r)) => {
                    self.submit_refusal(
                        &caller,
                        &request_id,
                        user.as_deref(),
                        &requested,
                        &r,
                        attempt,
                        true,
                    );
                    return Err(r.error);
                }
                Err(Step::Next(r, cheaper)) => {
                    if let Some(c) = cheaper {
                        chain.push_front(c);
                    }
                    let last = chain.is_empty();
                    self.submit_refusal(
                        &caller,
                        &request_id,
                        user.as_deref(),
                        &requested,
                        &r,
                        attempt,
                        last,
                    );
                    first_error.get_or_insert(r.error);
                    continue;
                }
            };
            let mut meta = CallMeta {
                request_id: request_id.clone(),
                provider: prepared.route.provider.clone(),
                model: candidate.clone(),
                cost: prepared.estimate,
                budget_remaining: prepared.budget_remaining,
                fallback_from: (!primary).then(|| requested.clone()),
                conversions: prepared.conversions.clone(),
                rate_headers: prepared.rate_headers.clone(),
                ..CallMeta::default()
            };
            let record = RecordBase {
                tenant: caller.tenant,
                request_id: request_id.clone(),
                provider: prepared.route.provider.clone(),
                model: prepared.route.spec.model.clone(),
                user: user.clone(),
                conversation: caller.conversation.clone(),
                api_key: caller.api_key,
                fallback_from: meta.fallback_from.clone(),
                prompt_estimate: prepared.prompt.held,
                token_limits: prepared.token_limits.clone(),
            };
            if !stream {
                if let Some(hit) = self.cache_get(caller.tenant, &t, &prepared) {
                    meta.cached = true;
                    meta.cost = Nanos::ZERO;
                    meta.deployment = None;
                    let tokens = hit
                        .get("usage")
                        .and_then(Tokens::from_openai)
                        .unwrap_or_default();
                    // No provider was called: the token limits and the budget get back
                    // what the checks took.
                    refund_tokens(
                        &self.limiter,
                        &record.token_limits,
                        record.prompt_estimate,
                        0,
                    );
                    meta.budget_remaining = meta
                        .budget_remaining
                        .map(|r| Nanos(r.0 + prepared.estimate.0));
                    self.submit(&record, Outcome::cached(tokens), prepared.reservation);
                    let mut body = (*hit).clone();
                    body["id"] = json!(request_id);
                    return Ok(ChatAnswer::Complete { body, meta });
                }
            }
            let started = Instant::now();
            let build = |t: &Target<'_>| providers::chat_request(t, &prepared.body, stream);
            match self.send(caller.tenant, &prepared.route, &build).await {
                Ok((deployment, response)) => {
                    meta.deployment = Some(deployment.name.clone());
                    if stream {
                        let s = self.stream(
                            response,
                            deployment,
                            record,
                            prepared,
                            started,
                            include_usage,
                            candidate,
                        );
                        return Ok(ChatAnswer::Stream { stream: s, meta });
                    }
                    return self
                        .complete(response, deployment, record, prepared, started, meta, &t)
                        .await;
                }
                Err(failure) => {
                    let latency = started.elapsed();
                    let last = chain.is_empty() || !failure.provider_side;
                    self.give_back_bound(&record, &prepared);
                    self.submit(
                        &record.attempt(attempt, last),
                        Outcome::failed(&failure, latency),
                        prepared.reservation,
                    );
                    if failure.provider_side && !chain.is_empty() {
                        first_error.get_or_insert(failure.error);
                        continue;
                    }
                    return Err(failure.error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| GatewayError::internal("empty model chain")))
    }
}

/// A candidate model ready to send: routed, configured, counted, limited and held.
struct Prepared {
    route: Route,
    body: Arc<Map<String, Value>>,
    conversions: Vec<String>,
    prompt: Prompt,
    estimate: Nanos,
    budget_remaining: Option<Nanos>,
    reservation: Option<Reservation>,
    rate_headers: Vec<(String, String)>,
    /// Token-rate keys to charge with the actual tokens once known.
    token_limits: Vec<(String, Quota)>,
}

enum Step {
    /// Refuse the call now (a client error on the model first asked for).
    Refuse(Refusal),
    /// Try the next model of the chain (with a cheaper sibling to try first, maybe).
    Next(Refusal, Option<String>),
}

/// Why a candidate model was not sent.
struct Refusal {
    error: GatewayError,
    /// The provider and model when the candidate was routed, so the refusal is recorded
    /// (a model that routes nowhere has no record to make).
    routed: Option<(String, String)>,
}

impl Refusal {
    fn unrouted(error: GatewayError) -> Self {
        Self {
            error,
            routed: None,
        }
    }
}

/// A prompt's tokens as the checks before the call took them: counted with the model's
/// tokenizer (`exact`), or the bound of its bytes (`tokens::bound_chat`), which only an
/// answer that passes far from every limit keeps (a count at most the bound passes too).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prompt {
    /// The tokens charged to the rate limits and held against the budgets.
    pub(crate) held: u64,
    pub(crate) exact: bool,
}

impl Prompt {
    pub(crate) fn counted(n: u64) -> Self {
        Self {
            held: n,
            exact: true,
        }
    }

    fn count_with(&mut self, count: &dyn Fn() -> u64) {
        if !self.exact {
            self.held = count();
            self.exact = true;
        }
    }
}

/// Whether a call admitted on its prompt's bound stays far from every enforced budget:
/// under half of each, with what others hold; closer, the prompt is counted. The bounds
/// held in flight thus never pass half a budget; while they are held, a call that alone
/// needs more than what is left beside them is refused where exact holds could have let
/// it through (a single call of over half a small budget, at the moment others are in
/// flight). Never the other way: nothing is admitted that exact holds would refuse.
fn far_from_limits(preflight: &Preflight, admitted: bool) -> bool {
    admitted
        && preflight
            .verdict
            .rules
            .iter()
            .filter(|r| r.tracked.rule.enforce)
            .all(|r| {
                let after = r.tracked.used + r.tracked.reserved + r.amount;
                after.saturating_mul(2) <= i128::from(r.tracked.rule.limit)
            })
}

/// What a token check of `n` took from a limit (`ratelimit::check_n` takes 1 to a burst).
fn taken(n: u64, q: Quota) -> u64 {
    n.clamp(1, u64::from(q.burst.max(1)))
}

/// Gives each token limit the call was checked on back what a check of `from` tokens took
/// beyond one of `to`.
fn refund_tokens(limiter: &RateLimiter, keys: &[(String, Quota)], from: u64, to: u64) {
    for (key, q) in keys {
        let back = taken(from, *q).saturating_sub(taken(to, *q));
        if back > 0 {
            limiter.refund(key, *q, back);
        }
    }
}

impl Gateway {
    async fn prepare(
        &self,
        t: &TenantGateway,
        caller: &Caller,
        request: &Map<String, Value>,
        candidate: &str,
        user: Option<&str>,
        primary: bool,
    ) -> Result<Prepared, Step> {
        let skip = |r: Refusal| {
            if primary {
                Step::Refuse(r)
            } else {
                tracing::info!(model = %candidate, error = %r.error.message, "fallback model skipped");
                Step::Next(r, None)
            }
        };
        let route = self
            .route(t, candidate)
            .map_err(|e| skip(Refusal::unrouted(e)))?;
        let routed = Some((route.provider.clone(), route.spec.model.clone()));
        let refusal = |error: GatewayError| Refusal {
            error,
            routed: routed.clone(),
        };
        let client_error = |e: GatewayError| skip(refusal(e));
        if route.spec.kind == ModelKind::Embedding {
            return Err(client_error(GatewayError::invalid(
                "model",
                format!("{candidate} is an embedding model: call /v1/embeddings"),
            )));
        }
        let mut body = request.clone();
        body.remove("model");
        let conversions = match configure(&route.spec, &mut body) {
            Ok(c) => c,
            Err(v) if !primary => {
                // A fallback takes the request as far as it can: parameters it refuses
                // are dropped rather than failing the call.
                for p in &v.invalid_params {
                    body.remove(p);
                }
                configure(&route.spec, &mut body).map_err(|e| client_error(e.into()))?
            }
            Err(v) => return Err(Step::Refuse(refusal(v.into()))),
        };
        let n = body.get("n").and_then(Value::as_u64).unwrap_or(1);
        if n > 1
            && route
                .deployments
                .iter()
                .all(|d| matches!(d.kind, ProviderKind::Anthropic | ProviderKind::Google))
        {
            return Err(client_error(GatewayError::invalid(
                "n",
                format!("{} answers one choice per call", route.provider),
            )));
        }
        // The byte bound first: counting (a quarter of the gateway's CPU) happens only when
        // a check is close enough for the count to change its answer.
        let mut prompt = Prompt {
            held: tokens::bound_chat(&route.provider, &route.spec.model, &body),
            exact: false,
        };
        let count = || tokens::count_chat(&route.provider, &route.spec.model, &body);
        let max_output = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(if route.spec.max_output > 0 {
                u64::from(route.spec.max_output)
            } else {
                DEFAULT_MAX_OUTPUT
            })
            .saturating_mul(n);
        if route.spec.context_window > 0 {
            let window = u64::from(route.spec.context_window);
            if prompt.held > window {
                prompt.count_with(&count);
            }
            let prompt_tokens = prompt.held;
            if prompt_tokens > window {
                return Err(client_error(
                    GatewayError::new(
                        400,
                        "CONTEXT_LENGTH_EXCEEDED",
                        "invalid_request_error",
                        format!(
                            "This model's maximum context length is {window} tokens. However, your messages resulted in {prompt_tokens} tokens."
                        ),
                    )
                    .with_param("messages")
                    .with_openai_code("context_length_exceeded")
                    .with_details(json!({"field": "messages", "model": route.spec.model,
                        "context_window": window, "prompt_tokens": prompt_tokens})),
                ));
            }
        }
        let (rate_headers, token_limits) = self
            .rate_limit(t, caller, &route.spec.model, &mut prompt, &count, primary)
            .map_err(|e| {
                if primary {
                    Step::Refuse(refusal(e))
                } else {
                    Step::Next(refusal(e), None)
                }
            })?;
        // The quota state could not be read: not a refusal of the call.
        let unread = |e| Step::Refuse(Refusal::unrouted(e));
        let (mut preflight, mut reservation) = self
            .reserve_for(caller, &route, user, prompt.held, max_output)
            .await
            .map_err(unread)?;
        if !prompt.exact && !far_from_limits(&preflight, reservation.is_some()) {
            // Close to a budget: hold the counted prompt instead of the bound.
            drop(reservation);
            let bound = prompt.held;
            prompt.count_with(&count);
            refund_tokens(&self.limiter, &token_limits, bound, prompt.held);
            (preflight, reservation) = self
                .reserve_for(caller, &route, user, prompt.held, max_output)
                .await
                .map_err(unread)?;
        }
        if reservation.is_none() {
            let cheaper = if t.settings.cheaper_on_budget {
                preflight
                    .alternatives
                    .iter()
                    .find(|a| a.decision != Decision::Block)
                    .map(|a| a.model.clone())
            } else {
                None
            };
            let e = budget_error(&route, &preflight, &t.settings.fallbacks, candidate, &body);
            return Err(Step::Next(refusal(e), cheaper));
        }
        let budget_remaining = remaining_budget(&preflight.verdict.rules);
        Ok(Prepared {
            route,
            body: Arc::new(body),
            conversions,
            prompt,
            estimate: preflight.cost,
            budget_remaining,
            reservation,
            rate_headers,
            token_limits,
        })
    }

    /// Checks the rate limits that apply to the call; on success the headers to send and
    /// the token keys to charge with the actual tokens later.
    #[allow(clippy::type_complexity)]
    fn rate_limit(
        &self,
        t: &TenantGateway,
        caller: &Caller,
        model: &str,
        prompt: &mut Prompt,
        count: &dyn Fn() -> u64,
        primary: bool,
    ) -> GatewayResult<(Vec<(String, String)>, Vec<(String, Quota)>)> {
        let tenant = caller.tenant.0;
        let rules: Vec<&RateLimitRule> = self
            .options
            .rate_limits
            .iter()
            .chain(&t.settings.rate_limits)
            .collect();
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut token_keys = Vec::new();
        let mut tightest_req: Option<(u32, u64, Duration)> = None;
        let mut tightest_tok: Option<(u32, u64, Duration)> = None;
        for (i, r) in rules.iter().enumerate() {
            let base = match r.scope {
                LimitScope::Key => match &caller.api_key {
                    Some(k) if primary => format!("gw:{tenant}:key:{k}"),
                    _ => continue,
                },
                LimitScope::Tenant if primary => format!("gw:{tenant}:tenant"),
                LimitScope::Tenant => continue,
                LimitScope::Model => match &r.model {
                    Some(m) if m != model => continue,
                    _ => format!("gw:{tenant}:model:{model}"),
                },
            };
            let scope = match r.scope {
                LimitScope::Key => "key",
                LimitScope::Tenant => "tenant",
                LimitScope::Model => "model",
            };
            if let Some(rpm) = r.requests_per_minute {
                let key = format!("{base}:rpm:{i}");
                let q = Quota::per_minute(rpm);
                if let Err(wait) = self.limiter.check(&key, q) {
                    return Err(rate_limited(scope, "requests", rpm, wait));
                }
                let (left, reset) = self.limiter.remaining(&key, q);
                if tightest_req.is_none_or(|(_, l, _)| left < l) {
                    tightest_req = Some((rpm, left, reset));
                }
            }
            if let Some(tpm) = r.tokens_per_minute {
                let key = format!("{base}:tpm:{i}");
                let q = Quota::per_minute(tpm);
                let mut checked = self.limiter.check_n(&key, q, prompt.held);
                if checked.is_err() && !prompt.exact {
                    // Refused on the bound: count, give the earlier limits back the
                    // difference, and ask again.
                    let bound = prompt.held;
                    prompt.count_with(count);
                    refund_tokens(&self.limiter, &token_keys, bound, prompt.held);
                    checked = self.limiter.check_n(&key, q, prompt.held);
                }
                if let Err(wait) = checked {
                    return Err(rate_limited(scope, "tokens", tpm, wait));
                }
                let (left, reset) = self.limiter.remaining(&key, q);
                if tightest_tok.is_none_or(|(_, l, _)| left < l) {
                    tightest_tok = Some((tpm, left, reset));
                }
                token_keys.push((key, q));
            }
        }
        for (what, t) in [("requests", tightest_req), ("tokens", tightest_tok)] {
            if let Some((limit, left, reset)) = t {
                headers.push((format!("x-ratelimit-limit-{what}"), limit.to_string()));
                headers.push((format!("x-ratelimit-remaining-{what}"), left.to_string()));
                headers.push((
                    format!("x-ratelimit-reset-{what}"),
                    format!("{}ms", reset.as_millis()),
                ));
            }
        }
        Ok((headers, token_keys))
    }
}

fn rate_limited(scope: &str, what: &str, limit: u32, wait: Duration) -> GatewayError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut e = GatewayError::new(
        429,
        "RATE_LIMITED",
        "rate_limit_error",
        format!(
            "Rate limit reached: {limit} {what} per minute for this {scope}. Try again in {secs}s."
        ),
    )
    .with_openai_code("rate_limit_exceeded")
    .with_details(
        json!({"scope": scope, "limit": limit, "unit": format!("{what}_per_minute"),
        "retry_after_seconds": secs}),
    );
    e.retry_after = Some(secs);
    e.headers = vec![
        (format!("x-ratelimit-limit-{what}"), limit.to_string()),
        (format!("x-ratelimit-remaining-{what}"), "0".into()),
        (
            format!("x-ratelimit-reset-{what}"),
            format!("{}ms", wait.as_millis()),
        ),
    ];
    e
}

/// The tightest cost rule's room after this call's hold.
pub(crate) fn remaining_budget(rules: &[RuleVerdict]) -> Option<Nanos> {
    rules
        .iter()
        .filter(|r| r.tracked.rule.metric == QuotaMetric::CostUsd)
        .map(|r| {
            // Unclamped: a complete answer adds back its hold less its cost before the
            // header (clamped at 0) is written.
            Nanos(i128::from(r.tracked.rule.limit) - r.tracked.used - r.tracked.reserved - r.amount)
        })
        .min()
}

/// Seed 003's refusal of a call its budget cannot take: `O3_BUDGET_EXCEEDED` (any model's
/// cost budget; reasoning models are the seed's case) or `REASONING_QUOTA_EXCEEDED` /
/// `QUOTA_EXCEEDED` for request and token quotas.
fn budget_error(
    route: &Route,
    preflight: &Preflight,
    fallbacks: &std::collections::BTreeMap<String, Vec<String>>,
    requested: &str,
    body: &Map<String, Value>,
) -> GatewayError {
    let blocking = preflight
        .verdict
        .rules
        .iter()
        .find(|r| r.decision == Decision::Block);
    let mut alternatives: Vec<String> = preflight
        .alternatives
        .iter()
        .map(|a| a.model.clone())
        .collect();
    for f in fallbacks.get(requested).into_iter().flatten() {
        if !alternatives.contains(f) {
            alternatives.push(f.clone());
        }
    }
    let model = &route.spec.model;
    let reasoning = route.spec.kind == ModelKind::Reasoning;
    let usd = |n: i128| Nanos(n).usd_rounded(6);
    let Some(b) = blocking else {
        return GatewayError::internal("budget refusal without a blocking rule");
    };
    let rule = &b.tracked.rule;
    let reset = tally_core::time::rfc3339(b.tracked.window.1);
    let window = rule.window.as_str();
    let e = match rule.metric {
        QuotaMetric::CostUsd => {
            let remaining = (i128::from(rule.limit) - b.tracked.used - b.tracked.reserved).max(0);
            let mut suggestions = Vec::new();
            if let Some(a) = preflight.alternatives.first() {
                suggestions.push(format!("Use {} for cost optimization", a.model));
            }
            let limit_param = if reasoning {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            suggestions.push(format!("Reduce {limit_param}"));
            if reasoning && body.get("reasoning_effort").and_then(Value::as_str) != Some("low") {
                suggestions.push("Use reasoning_effort='low'".into());
            }
            GatewayError::new(
                403,
                "O3_BUDGET_EXCEEDED",
                "insufficient_quota",
                format!(
                    "Estimated cost exceeds {} {} budget limit ('{}')",
                    if window == "day" { "daily" } else { "monthly" },
                    model,
                    rule.name
                ),
            )
            .with_details(json!({
                "model": model,
                "estimated_cost": usd(preflight.cost.0),
                "daily_budget_remaining": usd(remaining),
                "budget_remaining": usd(remaining),
                "window": window,
                "rule": rule.name,
                "reset_time": reset,
                "suggestions": suggestions,
                "alternatives": alternatives,
                "reasons": preflight.reasons,
            }))
        }
        metric => {
            let (code, message) = if reasoning && metric == QuotaMetric::Requests {
                (
                    "REASONING_QUOTA_EXCEEDED",
                    format!(
                        "{} reasoning quota exceeded for {}",
                        if window == "day" { "Daily" } else { "Monthly" },
                        model
                    ),
                )
            } else {
                (
                    "QUOTA_EXCEEDED",
                    format!(
                        "Quota '{}' would be exceeded by this call to {model}",
                        rule.name
                    ),
                )
            };
            let used = b.tracked.used + b.tracked.reserved;
            GatewayError::new(403, code, "insufficient_quota", message).with_details(json!({
                "model": model,
                "metric": metric.as_str(),
                "daily_reasoning_jobs": used,
                "daily_limit": rule.limit,
                "used": used,
                "limit": rule.limit,
                "window": window,
                "rule": rule.name,
                "reset_time": reset,
                "alternatives": alternatives,
            }))
        }
    };
    e.with_openai_code("insufficient_quota")
}

/// Why a send failed, and whether another model may do better.
struct Failure {
    error: GatewayError,
    /// The provider's fault (429, 5xx, timeout, connection, all circuits open): retry
    /// elsewhere. Otherwise the request's fault.
    provider_side: bool,
    timeout: bool,
}

impl Gateway {
    /// Picks a deployment by weight among those whose circuit admits a call, preferring
    /// ones not yet tried by this call.
    fn pick(&self, tenant: TenantId, ds: &[Deployment], tried: &[String]) -> Option<Deployment> {
        let now = self.clock.now_micros();
        let fresh: Vec<&Deployment> = ds.iter().filter(|d| !tried.contains(&d.name)).collect();
        let pool: Vec<&Deployment> = if fresh.is_empty() {
            ds.iter().collect()
        } else {
            fresh
        };
        let total: u32 = pool.iter().map(|d| d.weight).sum();
        if total == 0 {
            return None;
        }
        // Weighted order, then the first the breaker admits.
        let mut order: Vec<&Deployment> = Vec::with_capacity(pool.len());
        let mut rest = pool;
        let mut rng = rand::thread_rng();
        while !rest.is_empty() {
            let sum: u32 = rest.iter().map(|d| d.weight).sum();
            let mut x = rng.gen_range(0..sum.max(1));
            let mut idx = 0;
            for (i, d) in rest.iter().enumerate() {
                if x < d.weight {
                    idx = i;
                    break;
                }
                x -= d.weight;
            }
            order.push(rest.remove(idx));
        }
        order
            .into_iter()
            .find(|d| self.health.admit(tenant, &d.name, now))
            .cloned()
    }

    /// Sends the call, retrying provider-side failures with jittered exponential backoff
    /// (honouring `Retry-After`) across the model's deployments. Returns the deployment
    /// and its 2xx response (body not yet read).
    async fn send(
        &self,
        tenant: TenantId,
        route: &Route,
        build: &(dyn Fn(&Target<'_>) -> UpstreamRequest + Sync),
    ) -> Result<(Deployment, reqwest::Response), Failure> {
        let attempts = 1 + self.options.max_retries;
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<Failure> = None;
        for attempt in 0..attempts {
            let Some(d) = self.pick(tenant, &route.deployments, &tried) else {
                break;
            };
            tried.push(d.name.clone());
            let target = Target {
                kind: d.kind,
                base_url: &d.base_url,
                secret: &d.secret,
                model: &route.model,
            };
            let (url, headers, body) = build(&target);
            let url = match crate::net::check_url(&self.policy, &url) {
                Ok(url) => url,
                Err(e) => {
                    let now = self.clock.now_micros();
                    self.health.record(tenant, &d.name, false, 0.0, now);
                    return Err(Failure {
                        error: GatewayError::new(
                            502,
                            "OUTBOUND_REFUSED",
                            "api_error",
                            format!("the provider '{}' may not be called: {e}", d.name),
                        ),
                        provider_side: true,
                        timeout: false,
                    });
                }
            };
            // The URL as checked, parsed once.
            let mut req = d
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            for (h, v) in headers {
                req = req.header(h, v);
            }
            let started = Instant::now();
            let first_byte = d.timeouts.first_byte.min(d.timeouts.total);
            let result = tokio::time::timeout(first_byte, req.send()).await;
            let now = self.clock.now_micros();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let (failure, retry_after) = match result {
                Err(_) => (
                    Failure {
                        error: GatewayError::new(
                            504,
                            "PROVIDER_TIMEOUT",
                            "timeout",
                            format!(
                                "the provider '{}' sent nothing within {}s",
                                d.name,
                                first_byte.as_secs_f64()
                            ),
                        ),
                        provider_side: true,
                        timeout: true,
                    },
                    None,
                ),
                Ok(Err(e)) => (
                    Failure {
                        error: GatewayError::new(
                            502,
                            "PROVIDER_UNREACHABLE",
                            "api_error",
                            format!(
                                "the provider '{}' could not be reached: {}",
                                d.name,
                                crate::credentials::describe_reqwest(&e)
                            ),
                        ),
                        provider_side: true,
                        timeout: e.is_timeout(),
                    },
                    None,
                ),
                Ok(Ok(resp)) if resp.status().is_success() => {
                    self.health.record(tenant, &d.name, true, ms, now);
                    return Ok((d, resp));
                }
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let up = providers::upstream_error(status, &bytes);
                    let provider_side = status == 429 || status >= 500;
                    let mut error = GatewayError::upstream(&d.name, &up);
                    if let Some(s) = retry_after {
                        error.retry_after = Some(s.ceil() as u64);
                    }
                    (
                        Failure {
                            error,
                            provider_side,
                            timeout: false,
                        },
                        retry_after,
                    )
                }
            };
            if !failure.provider_side {
                // The request's fault: no retry. The provider answered, so the deployment
                // is up (and a trial call through an open circuit closes it).
                self.health.record(tenant, &d.name, true, ms, now);
                return Err(failure);
            }
            self.health.record(tenant, &d.name, false, ms, now);
            last = Some(failure);
            if attempt + 1 < attempts {
                let backoff = self.backoff(attempt, retry_after);
                match backoff {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break,
                }
            }
        }
        Err(last.unwrap_or_else(|| Failure {
            error: GatewayError::new(
                503,
                "PROVIDER_UNAVAILABLE",
                "api_error",
                format!(
                    "every deployment of {} is failing (circuit open); try again shortly",
                    route.provider
                ),
            ),
            provider_side: true,
            timeout: false,
        }))
    }

    /// Jittered exponential backoff; a provider's `Retry-After` beyond the cap ends the
    /// retries (`None`) so the fallback chain is tried instead.
    fn backoff(&self, attempt: u32, retry_after: Option<f64>) -> Option<Duration> {
        let cap = self.options.retry_max_ms as f64;
        if let Some(s) = retry_after {
            let ms = s * 1000.0;
            return (ms <= cap).then(|| Duration::from_millis(ms.max(0.0) as u64));
        }
        let base = self.options.retry_base_ms as f64 * 2f64.powi(attempt as i32);
        let jittered = rand::thread_rng().gen_range(0.5..=1.0) * base.min(cap);
        Some(Duration::from_millis(jittered as u64))
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        response: reqwest::Response,
        d: Deployment,
        record: RecordBase,
        p: Prepared,
        started: Instant,
        mut meta: CallMeta,
        t: &TenantGateway,
    ) -> GatewayResult<ChatAnswer> {
        // The whole call's time, from its first attempt.
        let deadline = tokio::time::Instant::from_std(started + d.timeouts.total);
        let bytes = match tokio::time::timeout_at(deadline, response.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) | Err(_) => {
                let failure = Failure {
                    error: GatewayError::new(
                        504,
                        "PROVIDER_TIMEOUT",
                        "timeout",
                        format!("the provider '{}' did not finish its answer", d.name),
                    ),
                    provider_side: true,
                    timeout: true,
                };
                let e = failure.error.clone();
                self.give_back_bound(&record, &p);
                self.submit(
                    &record,
                    Outcome::failed(&failure, started.elapsed()),
                    p.reservation,
                );
                return Err(e);
            }
        };
        let latency = started.elapsed();
        let created = self.clock.now_micros() / 1_000_000;
        let parsed = serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                providers::chat_response(d.kind, &meta.model, &meta.request_id, created, v)
            });
        let (mut body, tokens) = match parsed {
            Ok(x) => x,
            Err(why) => {
                let failure = Failure {
                    error: GatewayError::new(
                        502,
                        "PROVIDER_ERROR",
                        "api_error",
                        format!(
                            "the provider '{}' answered something unreadable: {why}",
                            d.name
                        ),
                    ),
                    provider_side: true,
                    timeout: false,
                };
                let e = failure.error.clone();
                self.give_back_bound(&record, &p);
                self.submit(&record, Outcome::failed(&failure, latency), p.reservation);
                return Err(e);
            }
        };
        if meta.fallback_from.is_some() {
            body["model"] = json!(meta.model);
        }
        meta.cost = self
            .price_for(record.tenant, &record.provider, &record.model, tokens)
            .await;
        // What the budget has left once this call is counted at its cost, not its hold.
        meta.budget_remaining = meta
            .budget_remaining
            .map(|r| Nanos(r.0 + p.estimate.0 - meta.cost.0));
        self.charge_tokens(&record, tokens);
        self.cache_put(record.tenant, t, &p, &body);
        self.submit(
            &record,
            Outcome::success(tokens, latency, None, &d.name),
            p.reservation,
        );
        Ok(ChatAnswer::Complete { body, meta })
    }

    /// A call that failed without usage keeps its prompt on the token limits, counted: the
    /// limits checked on the bound get the difference back.
    fn give_back_bound(&self, record: &RecordBase, p: &Prepared) {
        if !p.prompt.exact {
            let counted = tokens::count_chat(&record.provider, &record.model, &p.body);
            refund_tokens(&self.limiter, &record.token_limits, p.prompt.held, counted);
        }
    }

    /// Charges the token rate limits with what the call used beyond its prompt estimate.
    fn charge_tokens(&self, record: &RecordBase, t: Tokens) {
        charge(&self.limiter, record, t);
    }

    /// Records a candidate the gateway refused before any provider call (its budget, a
    /// rate limit, the model's rules): listed with status `refused`, never summed.
    #[allow(clippy::too_many_arguments)]
    fn submit_refusal(
        &self,
        caller: &Caller,
        request_id: &str,
        user: Option<&str>,
        requested: &str,
        r: &Refusal,
        attempt: usize,
        last: bool,
    ) {
        let Some((provider, model)) = &r.routed else {
            return;
        };
        let record = RecordBase {
            tenant: caller.tenant,
            request_id: request_id.to_owned(),
            provider: provider.clone(),
            model: model.clone(),
            user: user.map(str::to_owned),
            conversation: caller.conversation.clone(),
            api_key: caller.api_key,
            fallback_from: (attempt > 1).then(|| requested.to_owned()),
            prompt_estimate: 0,
            token_limits: Vec::new(),
        };
        self.submit_refused(&record.attempt(attempt, last), &r.error);
    }

    pub(crate) fn submit_refused(&self, record: &RecordBase, error: &GatewayError) {
        self.recorder.offer(Record {
            tenant: record.tenant,
            api_key: record.api_key,
            input: record.input(&Outcome::refused(error)),
            reservation: None,
        });
    }

    fn submit(&self, record: &RecordBase, outcome: Outcome, reservation: Option<Reservation>) {
        self.recorder.submit(Record {
            tenant: record.tenant,
            api_key: record.api_key,
            input: record.input(&outcome),
            reservation,
        });
    }

    /// The cache key: the tenant (no tenant reads another's answers), the provider, the
    /// model and the configured request.
    fn cache_key(&self, tenant: TenantId, t: &TenantGateway, p: &Prepared) -> Option<[u8; 32]> {
        if !t.settings.cache.enabled {
            return None;
        }
        let mut h = sha2::Sha256::new();
        h.update(tenant.0.as_bytes());
        h.update(p.route.provider.as_bytes());
        h.update([0]);
        h.update(p.route.model.as_bytes());
        h.update([0]);
        // serde_json's maps are ordered: the same request serialises the same way.
        h.update(serde_json::to_vec(&*p.body).unwrap_or_default());
        Some(h.finalize().into())
    }

    fn cache_get(&self, tenant: TenantId, t: &TenantGateway, p: &Prepared) -> Option<Arc<Value>> {
        let key = self.cache_key(tenant, t, p)?;
        let hit = self.cache.get(&key)?;
        (hit.expires_at > self.clock.now_micros()).then_some(hit.body)
    }

    fn cache_put(&self, tenant: TenantId, t: &TenantGateway, p: &Prepared, body: &Value) {
        if let Some(key) = self.cache_key(tenant, t, p) {
            self.cache.insert(
                key,
                crate::Cached {
                    body: Arc::new(body.clone()),
                    expires_at: self.clock.now_micros()
                        + i64::from(t.settings.cache.ttl_secs) * 1_000_000,
                },
            );
        }
    }
}

impl Tokens {
    fn usage(self) -> TokenUsage {
        TokenUsage {
            input: self.prompt,
            output: self.completion,
            cached_input: self.cached.min(self.prompt),
            reasoning: self.reasoning.min(self.completion),
        }
    }
}

fn charge(limiter: &RateLimiter, record: &RecordBase, t: Tokens) {
    let actual = t.prompt + t.completion;
    for (key, q) in &record.token_limits {
        let taken = taken(record.prompt_estimate, *q);
        if actual > taken {
            limiter.charge(key, *q, actual - taken);
        } else {
            // Checked on the prompt's bound: what it took beyond the use comes back.
            limiter.refund(key, *q, taken - actual);
        }
    }
}

/// What every record of a call shares.
#[derive(Debug, Clone)]
pub(crate) struct RecordBase {
    tenant: TenantId,
    request_id: String,
    provider: String,
    model: String,
    user: Option<String>,
    conversation: Option<String>,
    api_key: Option<ApiKeyId>,
    fallback_from: Option<String>,
    prompt_estimate: u64,
    token_limits: Vec<(String, Quota)>,
}

impl RecordBase {
    /// The record of a failed attempt gets an id of its own, unless it is the call's
    /// last word.
    fn attempt(&self, n: usize, last: bool) -> Self {
        let mut r = self.clone();
        if !last {
            r.request_id = format!("{}-attempt-{n}", self.request_id);
        }
        r
    }

    fn input(&self, o: &Outcome) -> tally_core::usage::UsageInput {
        let mut meta = json!({"source": "gateway"});
        if let Some(d) = &o.deployment {
            meta["deployment"] = json!(d);
        }
        if o.cached {
            meta["cached"] = json!(true);
        }
        if let Some(f) = &self.fallback_from {
            meta["fallback_from"] = json!(f);
        }
        if let Some(m) = &o.message {
            meta["error"] = json!(m.chars().take(500).collect::<String>());
        }
        if o.estimated_tokens {
            meta["tokens_estimated"] = json!(true);
        }
        let t = o.tokens.usage();
        let mut v = json!({
            "id": self.request_id,
            "provider": self.provider,
            "model": self.model,
            "input_tokens": t.input,
            "output_tokens": t.output,
            "cached_tokens": t.cached_input,
            "reasoning_tokens": t.reasoning,
            "latency_ms": (o.latency.as_secs_f64() * 1000.0).min(3_600_000.0),
            "status": o.status,
            "metadata": meta,
        });
        if let Some(u) = &self.user {
            v["user_id"] = json!(u);
        }
        if let Some(c) = &self.conversation {
            v["conversation_id"] = json!(c);
        }
        if let Some(ttft) = o.first_token {
            v["time_to_first_token_ms"] =
                json!((ttft.as_secs_f64() * 1000.0).min(o.latency.as_secs_f64() * 1000.0));
        }
        if let Some(e) = &o.error_type {
            v["error_type"] = json!(e);
        }
        if o.cached {
            v["cost_usd"] = json!("0");
        }
        serde_json::from_value(v).unwrap_or_default()
    }
}

/// How a call (or one attempt) ended.
struct Outcome {
    tokens: Tokens,
    latency: Duration,
    first_token: Option<Duration>,
    status: &'static str,
    error_type: Option<String>,
    message: Option<String>,
    deployment: Option<String>,
    cached: bool,
    estimated_tokens: bool,
}

impl Outcome {
    fn success(tokens: Tokens, latency: Duration, first: Option<Duration>, d: &str) -> Self {
        Self {
            tokens,
            latency,
            first_token: first,
            status: "success",
            error_type: None,
            message: None,
            deployment: Some(d.to_owned()),
            cached: false,
            estimated_tokens: false,
        }
    }

    fn cached(tokens: Tokens) -> Self {
        Self {
            tokens,
            latency: Duration::ZERO,
            first_token: None,
            status: "success",
            error_type: None,
            message: None,
            deployment: None,
            cached: true,
            estimated_tokens: false,
        }
    }

    fn refused(e: &GatewayError) -> Self {
        Self {
            tokens: Tokens::default(),
            latency: Duration::ZERO,
            first_token: None,
            status: "refused",
            error_type: Some(e.code.to_owned()),
            message: Some(e.message.clone()),
            deployment: None,
            cached: false,
            estimated_tokens: false,
        }
    }

    fn failed(f: &Failure, latency: Duration) -> Self {
        Self {
            tokens: Tokens::default(),
            latency,
            first_token: None,
            status: if f.timeout { "timeout" } else { "error" },
            error_type: Some(f.error.code.to_owned()),
            message: Some(f.error.message.clone()),
            deployment: None,
            cached: false,
            estimated_tokens: false,
        }
    }
}

/// A stream's bookkeeping: what it streamed and whether it ended well. Dropped with the
/// stream (when it ends, or the client goes away), it records the call.
struct Settle {
    recorder: Recorder,
    limiter: Arc<RateLimiter>,
    record: RecordBase,
    reservation: Option<Reservation>,
    deployment: String,
    started: Instant,
    first_token: Option<Duration>,
    usage: Option<Tokens>,
    /// The answer's text and tool-call arguments, for counting when no usage came.
    streamed: String,
    prompt: Prompt,
    /// The request, to count its prompt when the provider reports no usage and only the
    /// bound was taken.
    body: Arc<Map<String, Value>>,
    outcome: Option<(&'static str, Option<String>, Option<String>)>,
}

impl Settle {
    /// The prompt's tokens when the provider reported none: counted now if the checks
    /// took the bound.
    fn prompt_tokens(&self) -> u64 {
        if self.prompt.exact {
            self.prompt.held
        } else {
            tokens::count_chat(&self.record.provider, &self.record.model, &self.body)
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let (status, error_type, message) = self.outcome.take().unwrap_or((
            "cancelled",
            Some("client_disconnected".into()),
            Some("the client went away before the stream ended".into()),
        ));
        let (tokens, estimated) = match self.usage {
            Some(u) => (u, false),
            None => (
                Tokens {
                    prompt: self.prompt_tokens(),
                    completion: tokens::count_answer(
                        &self.record.provider,
                        &self.record.model,
                        &self.streamed,
                    ),
                    ..Tokens::default()
                },
                true,
            ),
        };
        charge(&self.limiter, &self.record, tokens);
        let outcome = Outcome {
            tokens,
            latency: self.started.elapsed(),
            first_token: self.first_token,
            status,
            error_type,
            message,
            deployment: Some(self.deployment.clone()),
            cached: false,
            estimated_tokens: estimated,
        };
        self.recorder.submit(Record {
            tenant: self.record.tenant,
            api_key: self.record.api_key,
            input: self.record.input(&outcome),
            reservation: self.reservation.take(),
        });
    }
}

struct StreamState {
    upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: SseDecoder,
    translator: Translator,
    /// The events to send next, written out: one upstream read becomes one write to the
    /// client, not one per event.
    out: BytesMut,
    settle: Settle,
    include_usage: bool,
    deadline: tokio::time::Instant,
    ended: bool,
    id: String,
    created: i64,
    model: String,
}

/// Appends `json` as one server-sent event.
fn push_sse(out: &mut BytesMut, json: &[u8]) {
    out.put_slice(b"data: ");
    out.put_slice(json);
    out.put_slice(b"\n\n");
}

fn push_sse_value(out: &mut BytesMut, v: &Value) {
    out.put_slice(b"data: ");
    // Writing into memory cannot fail.
    let _ = serde_json::to_writer((&mut *out).writer(), v);
    out.put_slice(b"\n\n");
}

impl StreamState {
    fn on_event(&mut self, data: &str) {
        let t = self.translator.event(data);
        if self.settle.first_token.is_none() && (!t.chunks.is_empty() || !t.raw.is_empty()) {
            self.settle.first_token = Some(self.settle.started.elapsed());
        }
        for c in &t.chunks {
            push_sse_value(&mut self.out, c);
        }
        for json in &t.raw {
            push_sse(&mut self.out, json);
        }
        self.settle.streamed.push_str(&t.text);
        if let Some(u) = t.usage {
            self.settle.usage = Some(u);
        }
        if let Some(e) = t.error {
            self.fail("PROVIDER_ERROR", &e);
            return;
        }
        if t.done {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        if self.include_usage {
            let usage = self.settle.usage.unwrap_or(Tokens {
                prompt: self.settle.prompt_tokens(),
                completion: tokens::count_answer(
                    &self.settle.record.provider,
                    &self.settle.record.model,
                    &self.settle.streamed,
                ),
                ..Tokens::default()
            });
            push_sse_value(
                &mut self.out,
                &json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage.to_openai(),
                }),
            );
        }
        self.out.put_slice(b"data: [DONE]\n\n");
        self.settle.outcome = Some(("success", None, None));
    }

    fn fail(&mut self, code: &'static str, e: &UpstreamError) {
        if self.ended {
            return;
        }
        self.ended = true;
        push_sse_value(
            &mut self.out,
            &json!({"error": {
                "message": e.message, "type": e.kind, "param": e.param, "code": e.code,
            }}),
        );
        let status = if e.kind == "timeout" {
            "timeout"
        } else {
            "error"
        };
        self.settle.outcome = Some((status, Some(code.to_owned()), Some(e.message.clone())));
    }
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        response: reqwest::Response,
        d: Deployment,
        record: RecordBase,
        p: Prepared,
        started: Instant,
        include_usage: bool,
        model: String,
    ) -> ByteStream {
        let created = self.clock.now_micros() / 1_000_000;
        let id = record.request_id.clone();
        let state = StreamState {
            upstream: Box::pin(response.bytes_stream()),
            decoder: SseDecoder::default(),
            translator: Translator::new(d.kind, &model, &id, created),
            out: BytesMut::new(),
            settle: Settle {
                recorder: self.recorder.clone(),
                limiter: self.limiter.clone(),
                record,
                reservation: p.reservation,
                deployment: d.name.clone(),
                started,
                first_token: None,
                usage: None,
                streamed: String::new(),
                prompt: p.prompt,
                body: p.body.clone(),
                outcome: None,
            },
            include_usage,
            deadline: tokio::time::Instant::from_std(started + d.timeouts.total),
            ended: false,
            id,
            created,
            model,
        };
        Box::pin(futures_util::stream::unfold(state, |mut s| async move {
            loop {
                if !s.out.is_empty() {
                    return Some((Ok(s.out.split().freeze()), s));
                }
                if s.ended {
                    return None;
                }
                match tokio::time::timeout_at(s.deadline, s.upstream.next()).await {
                    Err(_) => s.fail(
                        "PROVIDER_TIMEOUT",
                        &UpstreamError {
                            status: 504,
                            message: "the provider's stream did not finish in time".into(),
                            kind: "timeout".into(),
                            code: None,
                            param: None,
                        },
                    ),
                    Ok(Some(Ok(bytes))) => match s.decoder.feed(&bytes) {
                        Ok(events) => {
                            for e in events {
                                s.on_event(&e);
                                if s.ended {
                                    break;
                                }
                            }
                        }
                        Err(why) => s.fail(
                            "PROVIDER_ERROR",
                            &UpstreamError {
                                status: 502,
                                message: why,
                                kind: "api_error".into(),
                                code: None,
                                param: None,
                            },
                        ),
                    },
                    Ok(Some(Err(e))) => s.fail(
                        "PROVIDER_ERROR",
                        &UpstreamError {
                            status: 502,
                            message: format!(
                                "the provider's stream broke: {}",
                                crate::credentials::describe_reqwest(&e)
                            ),
                            kind: "api_error".into(),
                            code: None,
                            param: None,
                        },
                    ),
                    Ok(None) => {
                        if let Some(last) = s.decoder.finish() {
                            s.on_event(&last);
                        }
                        if !s.ended {
                            // OpenAI-compatible servers may end without [DONE] once the
                            // usage chunk came; anything else is a truncated stream.
                            if s.settle.usage.is_some() {
                                s.finish();
                            } else {
                                s.fail(
                                    "STREAM_TRUNCATED",
                                    &UpstreamError {
                                        status: 502,
                                        message:
                                            "the provider's stream ended before its answer did"
                                                .into(),
                                        kind: "api_error".into(),
                                        code: Some("stream_truncated".into()),
                                        param: None,
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }))
    }
}

/// The pieces other calls (embeddings, provider tests) share with chat calls.
impl Gateway {
    /// Holds the estimate of a call of `prompt` tokens answering at most `max_output`.
    pub(crate) async fn reserve_for(
        &self,
        caller: &Caller,
        route: &Route,
        user: Option<&str>,
        prompt: u64,
        max_output: u64,
    ) -> GatewayResult<(Preflight, Option<Reservation>)> {
        Ok(self
            .usage
            .reserve(
                caller.tenant,
                PreflightCall {
                    provider: route.provider.clone(),
                    model: route.spec.model.clone(),
                    user_id: user.map(str::to_owned),
                    api_key_id: caller.api_key,
                    estimated_cost: None,
                    tokens: TokenUsage {
                        input: prompt,
                        output: max_output,
                        ..TokenUsage::default()
                    },
                },
            )
            .await?)
    }

    pub(crate) fn route_for(&self, t: &TenantGateway, model: &str) -> GatewayResult<Route> {
        self.route(t, model)
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn rate_limit_for(
        &self,
        t: &TenantGateway,
        caller: &Caller,
        model: &str,
        prompt: u64,
    ) -> GatewayResult<(Vec<(String, String)>, Vec<(String, Quota)>)> {
        let mut counted = Prompt::counted(prompt);
        self.rate_limit(t, caller, model, &mut counted, &|| prompt, true)
    }

    pub(crate) fn budget_error_for(
        &self,
        route: &Route,
        preflight: &Preflight,
        t: &TenantGateway,
        requested: &str,
    ) -> GatewayError {
        budget_error(
            route,
            preflight,
            &t.settings.fallbacks,
            requested,
            &Map::new(),
        )
    }

    pub(crate) fn record_base(
        &self,
        caller: &Caller,
        route: &Route,
        request_id: &str,
        user: Option<String>,
        prompt: u64,
        token_limits: Vec<(String, Quota)>,
    ) -> RecordBase {
        RecordBase {
            tenant: caller.tenant,
            request_id: request_id.to_owned(),
            provider: route.provider.clone(),
            model: route.spec.model.clone(),
            user,
            conversation: caller.conversation.clone(),
            api_key: caller.api_key,
            fallback_from: None,
            prompt_estimate: prompt,
            token_limits,
        }
    }

    /// [`send`](Self::send), the failure as its error and whether it timed out.
    pub(crate) async fn send_for(
        &self,
        tenant: TenantId,
        route: &Route,
        build: &(dyn Fn(&Target<'_>) -> UpstreamRequest + Sync),
    ) -> Result<(Deployment, reqwest::Response), (GatewayError, bool)> {
        self.send(tenant, route, build)
            .await
            .map_err(|f| (f.error, f.timeout))
    }

    pub(crate) fn submit_failed(
        &self,
        record: &RecordBase,
        error: &GatewayError,
        timeout: bool,
        latency: Duration,
        reservation: Option<Reservation>,
    ) {
        let failure = Failure {
            error: error.clone(),
            provider_side: true,
            timeout,
        };
        self.submit(record, Outcome::failed(&failure, latency), reservation);
    }

    pub(crate) fn submit_success(
        &self,
        record: &RecordBase,
        tokens: Tokens,
        latency: Duration,
        deployment: &str,
        reservation: Option<Reservation>,
    ) {
        charge(&self.limiter, record, tokens);
        self.submit(
            record,
            Outcome::success(tokens, latency, None, deployment),
            reservation,
        );
    }
}
