//! Server configuration. Every field has a default that works with no file at all; the CLI
//! layers a TOML file, `TALLY_*` variables and flags on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_core::event::EventLimits;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the database and other state live.
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub geoip: GeoIpConfig,
    pub events: EventLimits,
    pub storage: StorageConfig,
    pub audit: AuditConfig,
    pub secrets: SecretsConfig,
    pub outbound: OutboundConfig,
    pub gateway: tally_gateway::Options,
}

/// The master key provider credentials are sealed under (32 bytes, base64 or hex). With
/// neither set, a key is generated into the data dir (`master.key`, owner-only) at first
/// start, with a warning: whoever holds the data dir then holds the key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// The key itself (`TALLY_MASTER_KEY`).
    pub master_key: Option<String>,
    /// A file holding the key.
    pub master_key_file: Option<PathBuf>,
}

/// Where tally may send requests (provider base URLs, connection tests): private,
/// loopback, link-local and metadata addresses are refused unless `allow` names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// CIDR blocks or addresses allowed although restricted (e.g. a vLLM server at
    /// "10.0.0.5" or "127.0.0.1/32").
    pub allow: Vec<String>,
    /// Whether public addresses may be called (tests and CI: false, loopback allowed).
    pub allow_public: bool,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_public: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit entries older than this many days are dropped (checked every six hours).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 365,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Use the first `X-Forwarded-For` hop as the client IP (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

/// Connection timeouts and limits. Durations are seconds and may be fractional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Once a client starts sending a request head, it has this long to finish it.
    pub header_read_timeout_secs: f64,
    /// A connection with no request in flight and no bytes moving is closed after this.
    pub idle_timeout_secs: f64,
    /// A request body must arrive in full within this (answered 408 otherwise).
    pub body_read_timeout_secs: f64,
    /// After shutdown starts, connections still open after this are closed.
    pub shutdown_deadline_secs: f64,
    /// Open connections beyond this are answered 503 and closed. The server also keeps it
    /// below its open-file limit (raised to the hard limit at start).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            body_read_timeout_secs: 60.0,
            shutdown_deadline_secs: 30.0,
            max_connections: 10_000,
        }
    }
}

impl HttpConfig {
    /// The durations, checked: each must be positive and at most a day.
    pub fn durations(&self) -> anyhow::Result<HttpTimeouts> {
        let d = |name: &str, secs: f64| {
            if !(secs > 0.0 && secs <= 86_400.0) {
                anyhow::bail!("http.{name} must be more than 0 and at most 86400 seconds");
            }
            Ok(Duration::from_secs_f64(secs))
        };
        if self.max_connections == 0 {
            anyhow::bail!("http.max_connections must be at least 1");
        }
        Ok(HttpTimeouts {
            header_read: d("header_read_timeout_secs", self.header_read_timeout_secs)?,
            idle: d("idle_timeout_secs", self.idle_timeout_secs)?,
            body_read: d("body_read_timeout_secs", self.body_read_timeout_secs)?,
            shutdown: d("shutdown_deadline_secs", self.shutdown_deadline_secs)?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub shutdown: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing secret (≥ 32 chars). Generated once and stored when absent.
    pub jwt_secret: Option<String>,
    /// Session token lifetime, seconds.
    pub token_ttl_secs: i64,
    /// E-mail of the admin account created on first start.
    pub admin_email: String,
    /// Its password; generated and printed once when absent.
    pub admin_password: Option<String>,
    /// Login attempts a minute per e-mail address (429 beyond).
    pub login_attempts_per_account: u32,
    /// Login attempts a minute per client IP (429 beyond).
    pub login_attempts_per_ip: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind-format City database (GeoLite2-City.mmdb or compatible). Optional.
    pub database: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Reader connections.
    pub readers: usize,
    /// Page cache per connection, MiB.
    pub cache_mb: i64,
    /// Writes are refused (507, `/readyz` 503) while the data dir's filesystem has less
    /// free space than this, and resume when it returns. Default: 128 MiB, twice the
    /// log size at which checkpoints restart it, so a checkpoint always fits.
    pub min_free_mb: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./tally-data"),
            limits: Limits::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            geoip: GeoIpConfig::default(),
            events: EventLimits::default(),
            storage: StorageConfig::default(),
            audit: AuditConfig::default(),
            secrets: SecretsConfig::default(),
            outbound: OutboundConfig::default(),
            gateway: tally_gateway::Options::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 5 * 1024 * 1024,
            max_batch_events: 1_000,
            trust_forwarded_for: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_secs: 3_600,
            admin_email: "admin@tally.local".into(),
            admin_password: None,
            login_attempts_per_account: 10,
            login_attempts_per_ip: 30,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            readers: 4,
            cache_mb: 16,
            min_free_mb: None,
        }
    }
}

impl Config {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("tally.db")
    }
}
