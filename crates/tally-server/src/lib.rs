//! tally's HTTP server: the axum application (`api`) over the capability crates
//! (`tally-access`, `tally-insights`, `tally-ai`), configuration, the supervisor of
//! background tasks, and start-up/shutdown. Architecture invariant: only this crate knows
//! axum, and within it only `api` (and `http`, the connection loop).

pub mod api;
pub mod config;
pub mod demo;
pub mod error;
mod http;
pub mod supervisor;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tally_access::Access;
use tally_core::auth::TokenSigner;
use tally_core::enrich::Enricher;
use tally_core::ratelimit::Quota;
use tally_core::time::{SharedClock, SystemClock};
use tally_store::{datadir, FreeSpaceProbe, SqliteConfig, StoreConfig, Stores};

pub use api::app;
pub use config::Config;
use tally_access::auth::Authenticator;
use tally_insights::Insights;

/// Settings handlers need at request time.
#[derive(Debug, Clone)]
pub struct RequestConfig {
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub trust_forwarded_for: bool,
    pub body_read_timeout: std::time::Duration,
}

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<RequestConfig>,
    pub stores: Stores,
    /// Where every service reads the time.
    pub clock: SharedClock,
    pub access: Access,
    pub auth: Arc<Authenticator>,
    pub insights: Arc<Insights>,
    pub usage: Arc<tally_ai::usage::Usage>,
    pub quotas: Arc<tally_ai::quota::Quotas>,
    pub analytics: Arc<tally_ai::analytics::Analytics>,
    pub gateway: Arc<tally_gateway::Gateway>,
    /// The background tasks' states (`/readyz`).
    pub tasks: supervisor::TaskBoard,
}

impl AppState {
    /// Wires services over the given stores, on the system clock.
    pub async fn new(config: &Config, stores: Stores) -> anyhow::Result<Self> {
        Self::with_clock(config, stores, SystemClock::shared()).await
    }

    /// Wires services over the given stores, reading time from `clock`.
    pub async fn with_clock(
        config: &Config,
        stores: Stores,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let access = Access::new(stores.clone(), clock.clone());
        let secret = access
            .signing_secret(config.auth.jwt_secret.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("failed to load the JWT signing secret")?;
        if config.auth.token_ttl_secs <= 0 {
            anyhow::bail!("auth.token_ttl_secs must be positive");
        }
        let signer = TokenSigner::new(secret.as_bytes(), config.auth.token_ttl_secs);
        let enricher = match &config.geoip.database {
            Some(path) => {
                Enricher::with_geoip(path).context("failed to load the GeoIP database")?
            }
            None => Enricher::new(),
        };
        let limiter = Arc::new(tally_core::limiter::RateLimiter::new());
        if config.auth.login_attempts_per_account == 0 || config.auth.login_attempts_per_ip == 0 {
            anyhow::bail!("auth.login_attempts_per_account and _per_ip must be at least 1");
        }
        let login_limits = tally_access::auth::LoginLimits {
            per_account: Quota::per_minute(config.auth.login_attempts_per_account),
            per_ip: Quota::per_minute(config.auth.login_attempts_per_ip),
        };
        let auth = Authenticator::new(access.clone(), signer, limiter.clone(), login_limits)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let quotas = Arc::new(tally_ai::quota::Quotas::new(stores.clone(), clock.clone()));
        let usage = Arc::new(tally_ai::usage::Usage::new(
            stores.clone(),
            quotas.clone(),
            config.events.max_future_skew_secs,
            clock.clone(),
        ));
        let policy = tally_core::outbound::OutboundPolicy::new(
            &config.outbound.allow,
            config.outbound.allow_public,
        )
        .map_err(|e| anyhow::anyhow!("outbound.allow: {e}"))?;
        let (gateway, _recorder) = tally_gateway::Gateway::new(
            stores.clone(),
            usage.clone(),
            quotas.clone(),
            clock.clone(),
            master_key(config)?,
            policy,
            config.gateway.clone(),
            limiter.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            gateway: Arc::new(gateway),
            config: Arc::new(RequestConfig {
                max_body_bytes: config.limits.max_body_bytes,
                max_batch_events: config.limits.max_batch_events,
                trust_forwarded_for: config.limits.trust_forwarded_for,
                body_read_timeout: config.http.durations()?.body_read,
            }),
            auth: Arc::new(auth),
            insights: Arc::new(Insights::new(
                stores.clone(),
                Arc::new(enricher),
                config.events.clone(),
                clock.clone(),
            )),
            analytics: Arc::new(tally_ai::analytics::Analytics::new(
                stores.clone(),
                usage.clone(),
                quotas.clone(),
                clock.clone(),
            )),
            usage,
            quotas,
            tasks: supervisor::TaskBoard::default(),
            stores,
            clock,
            access,
        })
    }
}

/// The master key provider credentials are sealed under: the configured one, the file
/// named, or the data dir's own (generated at first start, with a warning).
pub fn master_key(config: &Config) -> anyhow::Result<tally_gateway::secrets::MasterKey> {
    use tally_gateway::secrets::{MasterKey, MASTER_KEY_FILE};
    if let Some(text) = &config.secrets.master_key {
        return MasterKey::parse(text).context("secrets.master_key (TALLY_MASTER_KEY)");
    }
    if let Some(path) = &config.secrets.master_key_file {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("failed to read secrets.master_key_file {}", path.display())
        })?;
        return MasterKey::parse(&text)
            .with_context(|| format!("secrets.master_key_file {}", path.display()));
    }
    let path = config.data_dir.join(MASTER_KEY_FILE);
    let (key, created) = MasterKey::load_or_create(&path)?;
    if created {
        tracing::warn!(path = %path.display(), fingerprint = key.fingerprint(),
            "generated a master key for provider credentials in the data dir; whoever can read \
             the data dir can open them: give secrets.master_key_file (or TALLY_MASTER_KEY) in production");
    }
    Ok(key)
}

/// Makes the data dir private and takes ownership of it for `command` (see
/// `tally_store::datadir`): fails naming the holder when another process owns it.
pub fn own_data_dir(config: &Config, command: &str) -> anyhow::Result<datadir::Ownership> {
    datadir::prepare(&config.data_dir)?;
    Ok(datadir::lock(&config.data_dir, command)?)
}

/// Opens the embedded store in the data directory: as its owner (holding the lock from
/// [`own_data_dir`]), or as a guest beside the owner (`SqliteConfig::guest`).
pub fn open_store(config: &Config, guest: bool) -> anyhow::Result<Stores> {
    open_store_with(config, guest, None)
}

/// [`open_store`] reading free space from `probe` instead of the OS, on every write
/// (tests: a change of the probe's answer takes effect at once).
pub fn open_store_with(
    config: &Config,
    guest: bool,
    probe: Option<FreeSpaceProbe>,
) -> anyhow::Result<Stores> {
    let mut sc = SqliteConfig::new(config.database_path());
    if let Some(mb) = config.storage.min_free_mb {
        sc.min_free_bytes = mb.saturating_mul(1024 * 1024);
    }
    if let Some(probe) = probe {
        sc.free_space = probe;
        sc.free_space_every = std::time::Duration::ZERO;
    }
    sc.readers = config.storage.readers.max(1);
    sc.cache_mb = config.storage.cache_mb.max(1);
    sc.guest = guest;
    Stores::open(StoreConfig::Sqlite(sc))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "failed to open database {}",
                config.database_path().display()
            )
        })
}

/// Runs the server until `shutdown` resolves, then drains in-flight requests and commits
/// every pending write before returning.
pub async fn serve(
    mut config: Config,
    demo: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let timeouts = config.http.durations()?;
    if config.audit.retention_days == 0 {
        anyhow::bail!("audit.retention_days must be at least 1");
    }
    // Held until the writer has stopped, at the end of this function.
    let ownership = own_data_dir(&config, "serve")?;
    if demo && config.geoip.database.is_none() {
        let path = config.data_dir.join(demo::DEMO_GEOIP_FILE);
        demo::write_geoip(&path)?;
        config.geoip.database = Some(path);
    }
    let stores = open_store(&config, false)?;
    let created = Access::new(stores.clone(), SystemClock::shared())
        .bootstrap_admin(
            &config.auth.admin_email,
            config.auth.admin_password.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("failed to create the first admin account")?;
    if let Some((email, password)) = created {
        // Printed, not logged: logs must never carry secrets.
        if config.auth.admin_password.is_some() {
            println!("created admin account {email} with the password from TALLY_ADMIN_PASSWORD");
        } else {
            println!("created admin account {email} with password: {password}");
            println!("(shown once: store it now; `tally admin account create` adds more accounts)");
        }
    } else if config.auth.admin_password.is_some() {
        tracing::warn!(
            "TALLY_ADMIN_PASSWORD (auth.admin_password) was not used: this data dir already \
             has accounts, and it only sets the first admin's password on an empty one"
        );
    }
    let state = AppState::new(&config, stores.clone()).await?;
    if demo {
        let report = demo::seed(&state)
            .await
            .context("failed to load demo data")?;
        println!("{report}");
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("failed to read the bound address")?;
    println!("tally listening on http://{addr}");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "tally started");

    let retention = std::time::Duration::from_secs(u64::from(config.audit.retention_days) * 86_400);
    let mut supervisor = supervisor::Supervisor::new(state.tasks.clone());
    let audit_access = state.access.clone();
    supervisor.spawn("audit_retention", move |mut stop| {
        let access = audit_access.clone();
        async move {
            loop {
                access
                    .apply_retention(retention)
                    .await
                    .map_err(|e| anyhow::anyhow!("failed to apply the audit retention: {e}"))?;
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(6 * 3600)) => {}
                    () = stop.stopped() => return Ok(()),
                }
            }
        }
    });
    let interval = config.gateway.health_check_interval_secs;
    if interval > 0.0 {
        let gateway = state.gateway.clone();
        supervisor.spawn("provider_health_checks", move |mut stop| {
            let gateway = gateway.clone();
            async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs_f64(interval)) => {}
                        () = stop.stopped() => return Ok(()),
                    }
                    if let Err(e) = gateway.check_all().await {
                        tracing::warn!(error = %e.message, "provider health checks failed");
                    }
                }
            }
        });
    }
    let gateway = state.gateway.clone();
    let limits = http::ConnectionLimits {
        timeouts,
        max_connections: http::fit_connection_cap(config.http.max_connections),
    };
    http::run(listener, api::service(state), limits, shutdown).await;
    supervisor.shutdown(timeouts.shutdown).await;

    tracing::info!("draining pending writes");
    gateway.flush().await;
    let closing = stores.clone();
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .context("failed to stop the writer")?;
    drop(ownership);
    tracing::info!("tally stopped");
    Ok(())
}
