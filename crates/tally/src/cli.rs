//! Command line: `tally serve`, `tally demo` and `tally admin …`. Configuration comes from
//! an optional TOML file, then `TALLY_*` environment variables and flags, over defaults that
//! need no file at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tally_access::audit::{Actor, Entry};
use tally_access::tenancy::NewAccount;
use tally_access::Access;
use tally_core::audit::action;
use tally_core::auth::{Role, Scope};
use tally_core::time::SystemClock;
use tally_core::TenantId;
use tally_server::Config;
use tally_store::datadir::DataDirError;
use tally_store::Stores;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "AI and API observability and governance in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text or json.
    #[arg(long, global = true, env = "TALLY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server with a demo tenant and 30 days of events (same as `serve --demo`).
    Demo(ServeArgs),
    /// Operator commands on the data directory (the server may be running).
    Admin(AdminArgs),
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (default ./tally-data).
    #[arg(long, env = "TALLY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The master key provider credentials are sealed under (32 bytes, base64 or hex);
    /// default: secrets.master_key(_file), else the data dir's own `master.key`.
    #[arg(long, env = "TALLY_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Listen address (default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long, env = "TALLY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Load the demo tenant on start (once).
    #[arg(long, env = "TALLY_DEMO")]
    demo: bool,
    /// MaxMind-format City database for geo enrichment.
    #[arg(long, env = "TALLY_GEOIP_DATABASE")]
    geoip_database: Option<PathBuf>,
    /// JWT signing secret (≥ 32 chars); generated and stored when absent.
    #[arg(long, env = "TALLY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Session token lifetime in seconds.
    #[arg(long, env = "TALLY_TOKEN_TTL_SECS")]
    token_ttl_secs: Option<i64>,
    /// Password of the admin account created on first start (generated when absent).
    #[arg(long, env = "TALLY_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// E-mail of the admin account created on first start.
    #[arg(long, env = "TALLY_ADMIN_EMAIL")]
    admin_email: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "TALLY_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most events per batch.
    #[arg(long, env = "TALLY_MAX_BATCH_EVENTS")]
    max_batch_events: Option<usize>,
}

#[derive(Args)]
struct AdminArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Accounts (people who log in).
    #[command(subcommand)]
    Account(AccountCommand),
    /// API keys (machines).
    #[command(subcommand)]
    Key(KeyCommand),
    /// The master key provider credentials are sealed under.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
}

#[derive(Subcommand)]
enum MasterKeyCommand {
    /// Print a new random master key (base64), for secrets.master_key_file.
    Generate,
    /// Re-seal every tenant's provider credentials under a new master key, in one
    /// transaction. Needs the server stopped. When the current key is the data dir's own
    /// `master.key`, the file is replaced by the new key; otherwise point
    /// secrets.master_key_file (or TALLY_MASTER_KEY) at the new key before starting.
    Rotate {
        /// A file holding the new key.
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its id.
    Create {
        #[arg(long)]
        name: String,
        /// Storage limit in events (unlimited when absent).
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// List tenants: id, name.
    List,
    /// Delete a tenant and all its data (its audit trail stays). Needs the server stopped
    /// (or use DELETE /api/v1/tenants/{id}).
    Delete {
        tenant: TenantId,
        /// The tenant's name, typed again to confirm.
        #[arg(long)]
        confirm: String,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; prints its id (and a generated password on stderr).
    Create {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        email: String,
        /// admin, owner, member or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Password; generated when absent.
        #[arg(long, env = "TALLY_ACCOUNT_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key; prints the key (shown once).
    Create {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        name: String,
        /// Comma-separated: ingest, read, gateway, predict, admin.
        #[arg(long, default_value = "ingest")]
        scopes: String,
    },
    /// List a tenant's keys: id, prefix, scopes, state, name.
    List {
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a key.
    Revoke {
        #[arg(long)]
        tenant: TenantId,
        key_id: tally_core::ApiKeyId,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("unknown role '{s}'; expected admin, owner, member or viewer"))
}

pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log redirected to a file or a collector
    // gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(key) = &args.master_key {
        config.secrets.master_key = Some(key.clone());
    }
    Ok(config)
}

fn serve_config(a: &ServeArgs) -> anyhow::Result<Config> {
    let mut c = load_config(&a.config)?;
    if let Some(v) = a.listen {
        c.listen = v;
    }
    if let Some(v) = &a.geoip_database {
        c.geoip.database = Some(v.clone());
    }
    if let Some(v) = &a.jwt_secret {
        c.auth.jwt_secret = Some(v.clone());
    }
    if let Some(v) = a.token_ttl_secs {
        c.auth.token_ttl_secs = v;
    }
    if let Some(v) = &a.admin_password {
        c.auth.admin_password = Some(v.clone());
    }
    if let Some(v) = &a.admin_email {
        c.auth.admin_email = v.clone();
    }
    if let Some(v) = a.max_body_bytes {
        c.limits.max_body_bytes = v;
    }
    if let Some(v) = a.max_batch_events {
        c.limits.max_batch_events = v;
    }
    Ok(c)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "failed to listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            tally_server::serve(serve_config(&a)?, a.demo, shutdown_signal()).await
        }
        Command::Demo(a) => tally_server::serve(serve_config(&a)?, true, shutdown_signal()).await,
        Command::Admin(a) => {
            let config = load_config(&a.config)?;
            // Owning the data dir when no server does; beside the server otherwise, where
            // SQLite serialises these few writes with its own (see `datadir`).
            let ownership = match tally_server::own_data_dir(&config, "admin") {
                Ok(o) => Some(o),
                Err(e) => match e.downcast_ref::<DataDirError>() {
                    Some(DataDirError::Held { holder, .. }) => {
                        tracing::debug!(%holder, "data dir is owned; working beside it");
                        None
                    }
                    _ => return Err(e),
                },
            };
            let stores = tally_server::open_store(&config, ownership.is_none())?;
            let result = admin(&config, &stores, a.command, ownership.is_some()).await;
            close(stores).await?;
            drop(ownership);
            result
        }
    }
}

async fn close(stores: Stores) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || stores.shutdown())
        .await
        .context("failed to close the database")
}

async fn admin(
    config: &Config,
    stores: &Stores,
    command: AdminCommand,
    owner: bool,
) -> anyhow::Result<()> {
    let access = Access::new(stores.clone(), SystemClock::shared());
    match command {
        AdminCommand::MasterKey(MasterKeyCommand::Generate) => {
            println!("{}", tally_gateway::secrets::MasterKey::generate_text());
        }
        AdminCommand::MasterKey(MasterKeyCommand::Rotate { new_key_file }) => {
            use tally_gateway::secrets::{MasterKey, MASTER_KEY_FILE};
            if !owner {
                bail!("a running server owns the data dir; stop it first (it holds the old key)");
            }
            let old = tally_server::master_key(config)?;
            let text = std::fs::read_to_string(&new_key_file)
                .with_context(|| format!("failed to read {}", new_key_file.display()))?;
            let new =
                MasterKey::parse(&text).with_context(|| format!("{}", new_key_file.display()))?;
            if new.version() == old.version() {
                bail!("the new key is the current key; nothing was re-sealed");
            }
            let n = tally_gateway::credentials::rotate_master_key(stores, &old, &new)
                .await
                .map_err(|e| anyhow::anyhow!("nothing was re-sealed: {e}"))?;
            let own_file =
                config.secrets.master_key.is_none() && config.secrets.master_key_file.is_none();
            if own_file {
                let path = config.data_dir.join(MASTER_KEY_FILE);
                let tmp = config.data_dir.join(format!("{MASTER_KEY_FILE}.new"));
                write_private(&tmp, text.trim())?;
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("failed to replace {}", path.display()))?;
                eprintln!(
                    "re-sealed {n} credentials; {} now holds the new key",
                    path.display()
                );
            } else {
                eprintln!(
                    "re-sealed {n} credentials under key {}; point secrets.master_key_file \
                     (or TALLY_MASTER_KEY) at the new key before starting the server",
                    new.fingerprint()
                );
            }
        }
        AdminCommand::Tenant(TenantCommand::Delete { tenant, confirm }) => {
            if !owner {
                bail!(
                    "a running server owns the data dir; stop it first, or use \
                     DELETE /api/v1/tenants/{tenant} as the platform admin"
                );
            }
            let t = access.require_tenant(tenant).await?;
            if confirm != t.name {
                bail!(
                    "--confirm must repeat the tenant's name exactly ({:?}); nothing was deleted",
                    t.name
                );
            }
            let admins = access.list_accounts(tenant).await?;
            if admins.iter().any(|a| a.role == Role::Admin) {
                bail!("tenant {tenant} holds platform admin accounts; nothing was deleted");
            }
            let report = access.delete_tenant(None, &t).await?;
            let entry = Entry::tenant_deleted(&t, &report.rows);
            access.record(&Actor::cli(), entry).await;
            for (table, n) in &report.rows {
                if *n > 0 {
                    eprintln!("{table}\t{n}");
                }
            }
            eprintln!("deleted tenant {tenant} ({})", t.name);
        }
        AdminCommand::Tenant(TenantCommand::Create { name, max_events }) => {
            let t = access.create_tenant(&name, max_events).await?;
            let entry = Entry::tenant_created(&t);
            access.record(&Actor::cli(), entry).await;
            println!("{}", t.id);
        }
        AdminCommand::Tenant(TenantCommand::List) => {
            for t in access.list_tenants().await? {
                println!("{}\t{}", t.id, t.name);
            }
        }
        AdminCommand::Account(AccountCommand::Create {
            tenant,
            email,
            role,
            password,
        }) => {
            let generated = password.is_none();
            let password = password.unwrap_or_else(tally_core::auth::generate_password);
            let a = access
                .create_account(NewAccount {
                    tenant_id: tenant,
                    email: &email,
                    password: &password,
                    role,
                })
                .await?;
            let entry = Entry::account(&a, action::ACCOUNT_CREATED)
                .details(json!({ "email": a.email, "role": a.role }));
            access.record(&Actor::cli(), entry).await;
            println!("{}", a.id);
            if generated {
                eprintln!("generated password: {password}");
            }
        }
        AdminCommand::Key(KeyCommand::Create {
            tenant,
            name,
            scopes,
        }) => {
            let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
            let (created, key) = access.create_api_key(tenant, &name, scopes).await?;
            let entry = Entry::key_created(&created);
            access.record(&Actor::cli(), entry).await;
            println!("{key}");
        }
        AdminCommand::Key(KeyCommand::List { tenant }) => {
            access.require_tenant(tenant).await?;
            for k in access.list_api_keys(tenant).await? {
                let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.display_prefix(),
                    scopes.join(","),
                    state,
                    k.name
                );
            }
        }
        AdminCommand::Key(KeyCommand::Revoke { tenant, key_id }) => {
            match access.revoke_api_key(tenant, key_id).await {
                Err(tally_access::AccessError::NotFound(_)) => {
                    bail!("no active key {key_id} in tenant {tenant}")
                }
                other => other?,
            }
            let entry = Entry::key_revoked(tenant, key_id);
            access.record(&Actor::cli(), entry).await;
            eprintln!("revoked {key_id}");
        }
    }
    Ok(())
}

/// Writes `text` to a new owner-only file.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
