//! tally's LLM gateway (seeds 003 and 000): OpenAI-format chat completions and embeddings
//! to OpenAI, Anthropic, Gemini and OpenAI-compatible servers, with the model rules
//! applied before any provider is called, the call's cost estimated (a real tokenizer) and
//! held against the budgets until it settles, rate limits, retries, fallbacks, a circuit
//! breaker per deployment, weighted load balancing, an exact-match cache, and every call
//! recorded as usage off the response path. Provider credentials are sealed under the
//! master key (`secrets`). No HTTP server here: `tally-server` routes to it.

// A gateway error carries both of its faces (the envelope and OpenAI's shape) with the
// seed's details: large, and only on the cold path of a call that costs milliseconds.
#![allow(clippy::result_large_err)]

pub mod catalog;
pub mod chat;
pub mod credentials;
pub mod error;
pub mod health;
pub mod net;
pub mod providers;
pub mod recommend;
pub mod recorder;
pub mod secrets;
pub mod settings;
pub mod sse;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use tally_ai::quota::Quotas;
use tally_ai::usage::Usage;
use tally_core::cache::TtlCache;
use tally_core::credential::ProviderKind;
use tally_core::limiter::RateLimiter;
use tally_core::models::ModelCatalog;
use tally_core::outbound::OutboundPolicy;
use tally_core::time::SharedClock;
use tally_core::TenantId;
use tally_store::Stores;

pub use error::{GatewayError, GatewayResult};
pub use settings::{GatewaySettings, Options};

use crate::health::Health;
use crate::recorder::Recorder;
use crate::secrets::MasterKey;

/// One deployment a tenant can route to: a credential, opened.
#[derive(Clone)]
pub struct Deployment {
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    secret: String,
    pub models: Vec<String>,
    pub weight: u32,
    pub timeouts: settings::Timeouts,
    /// The pooled client whose connect timeout is this deployment's.
    http: reqwest::Client,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// The provider name calls to this deployment are priced and recorded under: the
    /// kind's for OpenAI, Anthropic and Google, the credential's own name otherwise.
    pub fn provider(&self) -> &str {
        match self.kind {
            ProviderKind::OpenaiCompatible => &self.name,
            k => k.as_str(),
        }
    }
}

/// Distinct provider connect timeouts the gateway keeps a client (a pool) for.
pub const MAX_CLIENTS: usize = 32;

/// What the gateway holds for a tenant between changes: its opened deployments, its
/// settings and its model catalog.
#[derive(Debug)]
pub struct TenantGateway {
    pub deployments: Vec<Deployment>,
    pub settings: GatewaySettings,
    pub catalog: ModelCatalog,
}

/// A cached answer: the body, and until when it may be served.
#[derive(Clone)]
struct Cached {
    body: Arc<serde_json::Value>,
    expires_at: i64,
}

pub struct Gateway {
    stores: Stores,
    usage: Arc<Usage>,
    quotas: Arc<Quotas>,
    clock: SharedClock,
    key: MasterKey,
    http: reqwest::Client,
    /// Clients for connect timeouts other than the operator's (reqwest sets it per
    /// client), by timeout; at most [`MAX_CLIENTS`].
    clients: std::sync::Mutex<std::collections::HashMap<Duration, reqwest::Client>>,
    policy: Arc<OutboundPolicy>,
    options: Options,
    limiter: Arc<RateLimiter>,
    catalog: ModelCatalog,
    tenants: TtlCache<TenantId, Arc<TenantGateway>>,
    health: Health,
    recorder: Recorder,
    cache: TtlCache<[u8; 32], Cached>,
}

impl Gateway {
    /// Wires the gateway; returns the recorder task's handle, which ends after the last
    /// record is written once the gateway is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: Stores,
        usage: Arc<Usage>,
        quotas: Arc<Quotas>,
        clock: SharedClock,
        key: MasterKey,
        policy: OutboundPolicy,
        options: Options,
        limiter: Arc<RateLimiter>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        options.validate()?;
        let policy = Arc::new(policy);
        let http = net::client(
            policy.clone(),
            Duration::from_secs_f64(options.connect_timeout_secs),
        );
        let (recorder, task) = Recorder::start(
            usage.clone(),
            Duration::from_millis(options.record_interval_ms),
        );
        // Off the start-up path: the first call waits for it only if it comes first.
        tokio::task::spawn_blocking(tokens::warm_up);
        Ok((
            Self {
                health: Health::new(
                    options.breaker_failures,
                    (options.breaker_cooldown_secs * 1e6) as i64,
                ),
                cache: TtlCache::new(Duration::from_secs(86_400), options.max_cache_entries),
                stores,
                usage,
                quotas,
                clock,
                key,
                http,
                clients: Default::default(),
                policy,
                options,
                limiter,
                catalog: ModelCatalog::default(),
                tenants: TtlCache::new(Duration::from_secs(30), 10_000),
                recorder,
            },
            task,
        ))
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Waits until every usage record of calls made so far is written.
    pub async fn flush(&self) {
        self.recorder.flush().await;
    }

    /// The tenant's deployments, settings and catalog (cached; dropped on every change).
    pub async fn tenant(&self, tenant: TenantId) -> GatewayResult<Arc<TenantGateway>> {
        if let Some(t) = self.tenants.get(&tenant) {
            return Ok(t);
        }
        let settings = self.settings(tenant).await?;
        let mut deployments = Vec::new();
        for c in self.stores.gateway.credentials(tenant).await? {
            let secret = match self.key.open(tenant, &c.name, c.key_version, &c.sealed) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(tenant = %tenant.0, credential = %c.name, error = %e,
                        "a provider credential does not open; it is skipped");
                    continue;
                }
            };
            deployments.push(self.deployment(
                &settings, c.name, c.kind, c.base_url, secret, c.models, c.weight,
            ));
        }
        let t = Arc::new(TenantGateway {
            catalog: self.catalog.with_overrides(settings.models.clone()),
            deployments,
            settings,
        });
        self.tenants.insert(tenant, t.clone());
        Ok(t)
    }

    /// A deployment as calls use it: the kind's public endpoint when no base URL is given,
    /// and the timeouts (and the pooled client) of its provider name under `settings`.
    #[allow(clippy::too_many_arguments)]
    fn deployment(
        &self,
        settings: &GatewaySettings,
        name: String,
        kind: ProviderKind,
        base_url: Option<String>,
        secret: String,
        models: Vec<String>,
        weight: u32,
    ) -> Deployment {
        let base_url = base_url
            .or_else(|| kind.default_base_url().map(str::to_owned))
            .unwrap_or_default();
        let timeouts = self.options.timeouts_for(&name, settings);
        Deployment {
            http: self.client_for(timeouts.connect),
            base_url: base_url.trim_end_matches('/').to_owned(),
            name,
            kind,
            secret,
            models,
            weight: weight.max(1),
            timeouts,
        }
    }

    /// The pooled client connecting within `connect`: the shared one for the operator's
    /// timeout, else one per distinct timeout (its own pool). Past [`MAX_CLIENTS`]
    /// distinct timeouts, the shared client (the first-byte and total timeouts still
    /// apply).
    fn client_for(&self, connect: Duration) -> reqwest::Client {
        if connect == Duration::from_secs_f64(self.options.connect_timeout_secs) {
            return self.http.clone();
        }
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&connect) {
            return c.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            tracing::warn!(
                connect_secs = connect.as_secs_f64(),
                "too many distinct provider connect timeouts; this one uses the default"
            );
            return self.http.clone();
        }
        let c = net::client(self.policy.clone(), connect);
        clients.insert(connect, c.clone());
        c
    }

    /// Drops what is held for the tenant (after a change to its credentials or settings,
    /// or its deletion).
    pub fn forget(&self, tenant: TenantId) {
        self.tenants.remove(&tenant);
    }

    /// The tenant's settings (defaults when it never set any).
    pub async fn settings(&self, tenant: TenantId) -> GatewayResult<GatewaySettings> {
        match self.stores.gateway.gateway_settings(tenant).await? {
            Some(body) => serde_json::from_str(&body).map_err(GatewayError::internal),
            None => Ok(GatewaySettings::default()),
        }
    }

    /// Validates and stores the tenant's settings, replacing the previous ones.
    pub async fn put_settings(
        &self,
        tenant: TenantId,
        settings: GatewaySettings,
    ) -> GatewayResult<GatewaySettings> {
        settings.validate()?;
        let body = serde_json::to_string(&settings).map_err(GatewayError::internal)?;
        self.stores
            .gateway
            .put_gateway_settings(tenant, body, self.clock.now_micros())
            .await?;
        self.forget(tenant);
        Ok(settings)
    }

    /// The status of each of the tenant's deployments.
    pub async fn health(
        &self,
        tenant: TenantId,
    ) -> GatewayResult<Vec<(Deployment, health::DeploymentHealth)>> {
        let t = self.tenant(tenant).await?;
        let now = self.clock.now_micros();
        Ok(t.deployments
            .iter()
            .map(|d| (d.clone(), self.health.of(tenant, &d.name, now)))
            .collect())
    }

    /// The health status of the deployments serving `provider` (the realtime report's
    /// provider status): the best of them.
    pub async fn provider_status(
        &self,
        tenant: TenantId,
        provider: &str,
    ) -> GatewayResult<Option<health::HealthStatus>> {
        use health::HealthStatus::*;
        let rank = |s: health::HealthStatus| match s {
            Healthy => 0,
            Degraded => 1,
            Unknown => 2,
            Down => 3,
        };
        Ok(self
            .health(tenant)
            .await?
            .into_iter()
            .filter(|(d, _)| d.provider() == provider)
            .map(|(_, h)| h.status)
            .min_by_key(|s| rank(*s)))
    }

    /// Takes the gateway's view of the providers (circuits, active checks) into the
    /// realtime report: a provider whose deployments are all down is down whatever the last
    /// minutes' records say, and one with failing deployments is at best degraded.
    pub async fn merge_health(
        &self,
        tenant: TenantId,
        report: &mut tally_ai::analytics::Realtime,
    ) -> GatewayResult<()> {
        for s in &mut report.provider_status {
            match self.provider_status(tenant, &s.provider).await? {
                Some(health::HealthStatus::Down) => {
                    s.status = "down";
                    s.reason = Some(
                        "every gateway deployment of this provider is failing (circuit open or failed checks)"
                            .into(),
                    );
                }
                Some(health::HealthStatus::Degraded) if s.status == "healthy" => {
                    s.status = "degraded";
                    s.reason =
                        Some("the gateway sees errors or failed checks on its deployments".into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks every deployment of every tenant with a cheap authenticated request (its
    /// model list): the supervised task's tick.
    pub async fn check_all(&self) -> GatewayResult<usize> {
        let mut n = 0;
        let mut tenants: Vec<TenantId> = self
            .stores
            .gateway
            .all_credentials()
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        tenants.dedup();
        for tenant in tenants {
            let t = self.tenant(tenant).await?;
            for d in &t.deployments {
                let check = self.probe(d).await;
                self.health.record_check(tenant, &d.name, check);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The outbound policy calls go through.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }
}
