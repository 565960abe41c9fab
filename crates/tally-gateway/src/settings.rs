//! How the gateway behaves: the operator's options (TOML `[gateway]`) and each tenant's
//! settings (a JSON document set through the API): rate limits, fallback chains, the
//! response cache and the tenant's own model descriptions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_core::models::ModelSpec;
use tally_core::FieldError;

/// The operator's options. Durations are seconds and may be fractional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Time to open a connection to a provider.
    pub connect_timeout_secs: f64,
    /// Time from sending a request to the answer's first byte.
    pub first_byte_timeout_secs: f64,
    /// Time for a whole call, streams included.
    pub total_timeout_secs: f64,
    /// Attempts after the first on 429, 5xx and timeouts, before any byte reached the
    /// client (per deployment chain; fallbacks come after).
    pub max_retries: u32,
    /// First backoff; doubled each retry, jittered, capped by `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Gateway usage records are committed in groups at most this far apart (a `kill -9`
    /// loses at most this interval of them, plus the commit in flight).
    pub record_interval_ms: u64,
    /// Consecutive failures that open a deployment's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one trial call.
    pub breaker_cooldown_secs: f64,
    /// Rate limits every tenant has, before its own.
    pub rate_limits: Vec<RateLimitRule>,
    /// Interval of the active provider health checks; 0 turns them off.
    pub health_check_interval_secs: f64,
    /// Most cached answers held (all tenants).
    pub max_cache_entries: usize,
    /// Timeouts of one provider (by credential name: `openai`, `local-vllm`…) instead of
    /// the three above, for every tenant; a tenant's own settings come first.
    pub timeouts: BTreeMap<String, ProviderTimeouts>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 5.0,
            first_byte_timeout_secs: 120.0,
            total_timeout_secs: 600.0,
            max_retries: 2,
            retry_base_ms: 200,
            retry_max_ms: 5_000,
            record_interval_ms: 100,
            breaker_failures: 5,
            breaker_cooldown_secs: 30.0,
            rate_limits: Vec::new(),
            health_check_interval_secs: 60.0,
            max_cache_entries: 10_000,
            timeouts: BTreeMap::new(),
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("first_byte_timeout_secs", self.first_byte_timeout_secs),
            ("total_timeout_secs", self.total_timeout_secs),
            ("breaker_cooldown_secs", self.breaker_cooldown_secs),
        ] {
            if !(v > 0.0 && v <= 86_400.0) {
                return Err(format!(
                    "gateway.{name} must be more than 0 and at most 86400"
                ));
            }
        }
        if !(0.0..=86_400.0).contains(&self.health_check_interval_secs) {
            return Err("gateway.health_check_interval_secs must be 0 to 86400".into());
        }
        if self.record_interval_ms == 0 || self.record_interval_ms > 60_000 {
            return Err("gateway.record_interval_ms must be 1 to 60000".into());
        }
        if self.breaker_failures == 0 {
            return Err("gateway.breaker_failures must be at least 1".into());
        }
        if self.max_retries > 10 {
            return Err("gateway.max_retries must be at most 10".into());
        }
        for (i, r) in self.rate_limits.iter().enumerate() {
            r.validate(&format!("gateway.rate_limits[{i}]"))
                .map_err(|e| format!("{}: {}", e.field, e.message))?;
        }
        validate_timeouts(&self.timeouts, "gateway.timeouts")
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        Ok(())
    }

    /// The timeouts calls to the provider named `name` get: the tenant's, else the
    /// operator's for that provider, else the operator's defaults, field by field.
    pub fn timeouts_for(&self, name: &str, tenant: &GatewaySettings) -> Timeouts {
        let pick = |f: fn(&ProviderTimeouts) -> Option<f64>, default: f64| {
            tenant
                .timeouts
                .get(name)
                .and_then(f)
                .or_else(|| self.timeouts.get(name).and_then(f))
                .unwrap_or(default)
        };
        Timeouts {
            connect: secs(pick(|t| t.connect_secs, self.connect_timeout_secs)),
            first_byte: secs(pick(|t| t.first_byte_secs, self.first_byte_timeout_secs)),
            total: secs(pick(|t| t.total_secs, self.total_timeout_secs)),
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.001, 86_400.0))
}

/// Provider name → timeouts, as the operator's options and a tenant's settings hold them:
/// at most one entry a credential a tenant may have, each named like a credential.
fn validate_timeouts(
    timeouts: &BTreeMap<String, ProviderTimeouts>,
    at: &str,
) -> Result<(), FieldError> {
    if timeouts.len() > crate::credentials::MAX_CREDENTIALS {
        return Err(FieldError::invalid(
            at,
            format!("at most {} providers", crate::credentials::MAX_CREDENTIALS),
        ));
    }
    for (name, t) in timeouts {
        let at = format!("{at}.{name}");
        if !crate::credentials::valid_name(name) {
            return Err(FieldError::invalid(
                at,
                "must be named by a provider name: 1 to 64 lower-case letters, digits, '-' or '_'",
            ));
        }
        t.validate(&at)?;
    }
    Ok(())
}

/// One provider's timeouts; each one left out is the operator's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderTimeouts {
    /// Time to open a connection, 0.01 to 300 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 300.0)]
    pub connect_secs: Option<f64>,
    /// Time from sending the request to the answer's first byte, 0.01 to 86400 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 86400.0)]
    pub first_byte_secs: Option<f64>,
    /// Time for the whole call, streams included, 0.01 to 86400 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 86400.0)]
    pub total_secs: Option<f64>,
}

impl ProviderTimeouts {
    fn validate(&self, at: &str) -> Result<(), FieldError> {
        for (name, v, max) in [
            ("connect_secs", self.connect_secs, 300.0),
            ("first_byte_secs", self.first_byte_secs, 86_400.0),
            ("total_secs", self.total_secs, 86_400.0),
        ] {
            if let Some(v) = v {
                if !(0.01..=max).contains(&v) {
                    return Err(FieldError::invalid(
                        format!("{at}.{name}"),
                        format!("must be 0.01 to {max} seconds"),
                    ));
                }
            }
        }
        if let (Some(f), Some(t)) = (self.first_byte_secs, self.total_secs) {
            if f > t {
                return Err(FieldError::invalid(
                    format!("{at}.first_byte_secs"),
                    "must not be more than total_secs",
                ));
            }
        }
        Ok(())
    }
}

/// The timeouts of calls to one deployment, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
}

/// What a rate limit counts calls by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Each API key on its own.
    Key,
    /// The whole tenant.
    Tenant,
    /// Each model on its own (or only `model` when it is given).
    Model,
}

/// Requests and/or tokens a minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    pub scope: LimitScope,
    /// With `scope: model`: only this model (else every model separately).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Prompt plus answer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
}

impl RateLimitRule {
    fn validate(&self, at: &str) -> Result<(), FieldError> {
        if self.requests_per_minute.is_none() && self.tokens_per_minute.is_none() {
            return Err(FieldError::invalid(
                at,
                "needs requests_per_minute, tokens_per_minute or both",
            ));
        }
        for (name, v) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
        ] {
            if v == Some(0) {
                return Err(FieldError::invalid(
                    format!("{at}.{name}"),
                    "must be at least 1",
                ));
            }
        }
        if self.model.is_some() && self.scope != LimitScope::Model {
            return Err(FieldError::invalid(
                format!("{at}.model"),
                "is only allowed with scope \"model\"",
            ));
        }
        Ok(())
    }
}

/// The exact-match response cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub enabled: bool,
    /// 1 to 86400 seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u32,
}

fn default_ttl() -> u32 {
    300
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl_secs: default_ttl(),
        }
    }
}

/// A tenant's gateway settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    pub rate_limits: Vec<RateLimitRule>,
    /// Model → the models to try, in order, when it fails, its providers are down or its
    /// budget refuses it (e.g. `"gpt-4o": ["claude-sonnet-4"]`).
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// When a budget refuses a call, try the model's cheaper sibling of the same family
    /// (`gpt-4o` → `gpt-4o-mini`) if the budget allows that.
    pub cheaper_on_budget: bool,
    pub cache: CacheSettings,
    /// Descriptions of models the catalog lacks (a vLLM server's) or replacements for
    /// shipped ones.
    #[schema(value_type = Vec<Object>)]
    pub models: Vec<ModelSpec>,
    /// Provider (credential name) → its timeouts, over the operator's.
    pub timeouts: BTreeMap<String, ProviderTimeouts>,
}

pub const MAX_RATE_LIMITS: usize = 100;
pub const MAX_FALLBACKS: usize = 100;
pub const MAX_CHAIN: usize = 5;
pub const MAX_MODELS: usize = 200;

impl GatewaySettings {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.rate_limits.len() > MAX_RATE_LIMITS {
            return Err(FieldError::invalid(
                "rate_limits",
                format!("at most {MAX_RATE_LIMITS} rules"),
            ));
        }
        for (i, r) in self.rate_limits.iter().enumerate() {
            r.validate(&format!("rate_limits[{i}]"))?;
        }
        if self.fallbacks.len() > MAX_FALLBACKS {
            return Err(FieldError::invalid(
                "fallbacks",
                format!("at most {MAX_FALLBACKS} chains"),
            ));
        }
        for (model, chain) in &self.fallbacks {
            let at = format!("fallbacks.{model}");
            if chain.is_empty() || chain.len() > MAX_CHAIN {
                return Err(FieldError::invalid(
                    at,
                    format!("must list 1 to {MAX_CHAIN} models"),
                ));
            }
            if chain
                .iter()
                .any(|m| m == model || m.trim().is_empty() || m.len() > 200)
            {
                return Err(FieldError::invalid(
                    at,
                    "must list other, non-empty model names (at most 200 characters)",
                ));
            }
        }
        if self.cache.ttl_secs == 0 || self.cache.ttl_secs > 86_400 {
            return Err(FieldError::invalid("cache.ttl_secs", "must be 1 to 86400"));
        }
        if self.models.len() > MAX_MODELS {
            return Err(FieldError::invalid(
                "models",
                format!("at most {MAX_MODELS} models"),
            ));
        }
        validate_timeouts(&self.timeouts, "timeouts")?;
        for (i, m) in self.models.iter().enumerate() {
            let at = format!("models[{i}]");
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 128
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
            };
            if !ok(&m.provider) || m.provider.to_ascii_lowercase() != m.provider {
                return Err(FieldError::invalid(
                    format!("{at}.provider"),
                    "must be 1 to 128 lower-case letters, digits, '-', '.', '_' or ':'",
                ));
            }
            if !ok(&m.model) || m.model.to_ascii_lowercase() != m.model {
                return Err(FieldError::invalid(
                    format!("{at}.model"),
                    "must be 1 to 128 lower-case letters, digits, '-', '.', '_' or ':'",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_come_from_the_tenant_then_the_operators_provider_then_the_defaults() {
        let mut options = Options::default();
        options.timeouts.insert(
            "anthropic".into(),
            ProviderTimeouts {
                first_byte_secs: Some(30.0),
                total_secs: Some(300.0),
                ..Default::default()
            },
        );
        let mut tenant = GatewaySettings::default();
        tenant.timeouts.insert(
            "anthropic".into(),
            ProviderTimeouts {
                first_byte_secs: Some(10.0),
                ..Default::default()
            },
        );
        let t = options.timeouts_for("anthropic", &tenant);
        assert_eq!(t.first_byte, Duration::from_secs(10), "the tenant's");
        assert_eq!(
            t.total,
            Duration::from_secs(300),
            "the operator's for anthropic"
        );
        assert_eq!(t.connect, Duration::from_secs(5), "the default");
        let t = options.timeouts_for("openai", &tenant);
        assert_eq!(
            (t.connect, t.first_byte, t.total),
            (
                Duration::from_secs(5),
                Duration::from_secs(120),
                Duration::from_secs(600)
            )
        );
        options.timeouts.insert(
            "openai".into(),
            ProviderTimeouts {
                connect_secs: Some(301.0),
                ..Default::default()
            },
        );
        assert_eq!(
            options.validate().unwrap_err(),
            "gateway.timeouts.openai.connect_secs: must be 0.01 to 300 seconds"
        );
    }
}
