//! Storage for tally: small per-topic traits (`EventStore`, `IdentityStore`,
//! `ProfileStore`) and their embedded SQLite backend. All SQL lives in this crate, with bind
//! parameters only. Every call that touches tenant data takes the tenant explicitly: the
//! caller passes the authenticated principal's tenant, never one read from a request body.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tally_core::activity::{ActivityFilter, Project, StoredEvent, UserHourCount, UserProfile};
use tally_core::audit::{AuditFilter, AuditRecord};
use tally_core::credential::StoredCredential;
use tally_core::event::NewEvent;
use tally_core::pricing::ModelPrice;
use tally_core::quota::{QuotaEvent, QuotaRule, QuotaScope, WindowUsage};
use tally_core::tenancy::{Account, ApiKey, Tenant};
use tally_core::usage::{
    ConversationUsage, Granularity, StoredUsage, UsageFilter, UsageRecord, UsageRollup, UserUsage,
};
use tally_core::{AccountId, ApiKeyId, TenantId};
use uuid::Uuid;

#[cfg(unix)]
pub mod datadir;
pub mod sqlite;

use sqlite::SqliteStore;
pub use sqlite::{FreeSpaceProbe, SqliteConfig};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken; the message names what.
    #[error("conflict: {0}")]
    Conflict(String),
    /// What the operation is for no longer exists (e.g. its tenant was deleted).
    #[error("{0} not found")]
    NotFound(String),
    /// The disk is full.
    #[error("storage is full")]
    Full,
    /// Free space is below the floor that keeps the store recoverable: writes wait for
    /// space to return.
    #[error("free space on the data dir's filesystem is {free_bytes} bytes, below the {min_free_bytes} bytes writes need")]
    LowSpace {
        free_bytes: u64,
        min_free_bytes: u64,
    },
    /// The writer has stopped (shutting down or failed).
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What happened to one event of an insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted {
        id: i64,
        tracking_id: Uuid,
    },
    /// The client id (and timestamp) was seen before: the original is reported.
    Duplicate {
        id: i64,
        tracking_id: Uuid,
    },
    /// The tenant's storage limit left no room for it.
    OverLimit {
        limit: u64,
    },
}

/// How an activity is named in a URL: its numeric id or its tracking UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityRef {
    Id(i64),
    Tracking(Uuid),
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores events durably: returns once the transaction holding them has committed.
    /// `max_events` is the tenant's storage limit, enforced atomically with the insert.
    async fn insert_events(
        &self,
        tenant: TenantId,
        max_events: Option<u64>,
        events: Vec<NewEvent>,
    ) -> StoreResult<Vec<InsertOutcome>>;

    /// One page of activities, newest first, and the total number matching the filter.
    async fn list_activities(
        &self,
        tenant: TenantId,
        filter: &ActivityFilter,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(u64, Vec<StoredEvent>)>;

    /// One activity of the tenant, by id or tracking id; `None` if the tenant has none such.
    async fn get_activity(
        &self,
        tenant: TenantId,
        at: ActivityRef,
    ) -> StoreResult<Option<StoredEvent>>;

    /// Hourly rollup rows of one user, hours in `[from_hour, to_hour)`.
    async fn user_activity(
        &self,
        tenant: TenantId,
        user_id: &str,
        from_hour: Option<i64>,
        to_hour: Option<i64>,
    ) -> StoreResult<Vec<UserHourCount>>;

    /// Events stored for the tenant, from the rollups.
    async fn event_count(&self, tenant: TenantId) -> StoreResult<u64>;
}

#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Stores a new tenant; a conflict if its id exists.
    async fn create_tenant(&self, tenant: Tenant) -> StoreResult<()>;
    /// The tenant, if it exists.
    async fn get_tenant(&self, id: TenantId) -> StoreResult<Option<Tenant>>;
    /// Every tenant, oldest first (the platform admin's listing).
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;

    /// Stores a new account; a conflict if its e-mail is taken (e-mails are unique across
    /// tenants).
    async fn create_account(&self, account: Account) -> StoreResult<()>;
    /// The account with this e-mail (compared case-insensitively), in any tenant.
    async fn find_account_by_email(&self, email: &str) -> StoreResult<Option<Account>>;
    /// The account, in any tenant: callers check the tenant against the caller's.
    async fn get_account(&self, id: AccountId) -> StoreResult<Option<Account>>;
    /// The tenant's accounts, oldest first.
    async fn list_accounts(&self, tenant: TenantId) -> StoreResult<Vec<Account>>;
    /// Accounts across all tenants (zero on a fresh data dir: the bootstrap creates one).
    async fn count_accounts(&self) -> StoreResult<u64>;
    /// Disables (`Some(at)`) or enables (`None`) an account; `false` if the tenant has no
    /// such account.
    async fn set_account_disabled(
        &self,
        tenant: TenantId,
        id: AccountId,
        disabled_at: Option<i64>,
    ) -> StoreResult<bool>;
    /// Ends every session of the account (moves its session version on).
    async fn end_all_sessions(&self, tenant: TenantId, id: AccountId) -> StoreResult<bool>;
    /// Deletes the account; `false` if the tenant has no such account.
    async fn delete_account(&self, tenant: TenantId, id: AccountId) -> StoreResult<bool>;
    /// Ends one session until `expires_at` (Unix seconds), when its token expires anyway.
    async fn revoke_session(
        &self,
        session: Uuid,
        account: AccountId,
        expires_at: i64,
        now_secs: i64,
    ) -> StoreResult<()>;
    /// Whether the session was ended by `revoke_session` (kept until its token expires).
    async fn session_revoked(&self, session: Uuid) -> StoreResult<bool>;

    /// Stores a new key (its hash, never the key); a conflict if its prefix exists.
    async fn create_api_key(&self, key: ApiKey) -> StoreResult<()>;
    /// The key with this prefix, revoked or not, in any tenant: the caller compares the
    /// hash in constant time and checks revocation.
    async fn find_api_key(&self, prefix: &str) -> StoreResult<Option<ApiKey>>;
    /// The tenant's keys, active and revoked, newest first.
    async fn list_api_keys(&self, tenant: TenantId) -> StoreResult<Vec<ApiKey>>;
    /// Marks a key revoked; `false` if the tenant has no such active key.
    async fn revoke_api_key(&self, tenant: TenantId, id: ApiKeyId, at: i64) -> StoreResult<bool>;

    /// A server-wide setting (the JWT secret, the demo's markers).
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Stores (`Some`) or removes (`None`) a setting.
    async fn put_setting(&self, key: &str, value: Option<&str>) -> StoreResult<()> {
        self.put_settings(vec![(key.to_owned(), value.map(str::to_owned))])
            .await
    }
    /// Stores or removes several settings in one transaction.
    async fn put_settings(&self, settings: Vec<(String, Option<String>)>) -> StoreResult<()>;
    /// Replaces an account's password hash and ends its sessions; `false` if the tenant
    /// has no such account.
    async fn set_password(&self, tenant: TenantId, id: AccountId, hash: &str) -> StoreResult<bool>;
    /// Stores a setting unless one exists; returns the value in force.
    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String>;
}

/// What a deletion removed: rows per table (both database files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionReport {
    /// Whether there was anything to delete (the tenant existed; the user had data).
    pub found: bool,
    pub rows: std::collections::BTreeMap<String, u64>,
}

/// The one deletion path (DESIGN: a tenant's or a tracked user's data across every table).
#[async_trait]
pub trait DeletionStore: Send + Sync {
    /// Deletes the tenant and everything it owns, except its audit trail.
    async fn delete_tenant(&self, tenant: TenantId) -> StoreResult<DeletionReport>;
    /// Deletes one tracked user's events, profile and usage rows (erasure requests).
    async fn erase_tracked_user(&self, tenant: TenantId, user: &str)
        -> StoreResult<DeletionReport>;
}

/// The audit trail: append-only, except for retention.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends one entry; returns its id.
    async fn append_audit(&self, record: AuditRecord) -> StoreResult<i64>;
    /// Entries matching `filter`, newest first.
    async fn list_audit(&self, filter: AuditFilter) -> StoreResult<Vec<AuditRecord>>;
    /// Drops entries older than `before` (microseconds); returns how many.
    async fn purge_audit(&self, before: i64) -> StoreResult<u64>;
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Creates or updates; `None` fields keep their stored value. Returns the record and
    /// whether it was created.
    async fn upsert_user(
        &self,
        tenant: TenantId,
        profile: UserProfile,
    ) -> StoreResult<(UserProfile, bool)>;
    /// The tenant's profiles among `ids`, keyed by user id; unknown ids are left out.
    async fn get_users(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> StoreResult<HashMap<String, UserProfile>>;
    /// One page of the tenant's profiles, by user id, and how many there are.
    async fn list_users(
        &self,
        tenant: TenantId,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(u64, Vec<UserProfile>)>;

    /// Creates or updates; `None` fields keep their stored value. Returns the record and
    /// whether it was created.
    async fn upsert_project(
        &self,
        tenant: TenantId,
        project: Project,
    ) -> StoreResult<(Project, bool)>;
    /// The tenant's projects among `ids`, keyed by project id; unknown ids are left out.
    async fn get_projects(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> StoreResult<HashMap<String, Project>>;
    /// One page of the tenant's projects, by project id, and how many there are.
    async fn list_projects(
        &self,
        tenant: TenantId,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(u64, Vec<Project>)>;
}

/// Where a write transaction stands in commit order. Every write transaction gets one,
/// unique and increasing in the order transactions commit (the SQLite writer moves a
/// counter row on inside each transaction, under the database's write lock; a PostgreSQL
/// backend does the same under the row's lock, which makes transactions that took a
/// sequence commit in its order). A snapshot that holds commit `n` holds every commit up
/// to `n` and none after: what callers compare instead of record ids, which a backend may
/// hand out in an order other than commits'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitSeq(pub i64);

/// What an insert of usage records did: one outcome per record, and the commit that
/// holds the new ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageInsert {
    pub outcomes: Vec<UsageOutcome>,
    pub commit: CommitSeq,
}

/// What happened to one usage record of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageOutcome {
    Inserted {
        id: i64,
    },
    /// The client id (and timestamp) was seen before: the original is reported.
    Duplicate {
        id: i64,
    },
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Stores records durably (answers after commit), once per client id and timestamp,
    /// and says which commit holds them. Shared, so the caller can still read the records
    /// once they are stored.
    async fn insert_usage(
        &self,
        tenant: TenantId,
        records: Arc<[UsageRecord]>,
    ) -> StoreResult<UsageInsert>;
    /// Usage records stored for the tenant.
    async fn usage_count(&self, tenant: TenantId) -> StoreResult<u64>;
    /// Rollup buckets with start in `[from, to)`, by provider and model. Exact: folded in
    /// the transaction that stored the records.
    async fn usage_rollups(
        &self,
        tenant: TenantId,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<UsageRollup>>;

    /// Per-user totals over UTC days `[from_day, to_day)` (days since the epoch), most
    /// expensive first; only `user` when given, only `model`'s calls when given. The
    /// ranking considers each overlapping month's 200 (or 10 × `limit`) most expensive users
    /// (of that model); their totals are exact.
    async fn user_usage(
        &self,
        tenant: TenantId,
        from_day: i64,
        to_day: i64,
        user: Option<String>,
        model: Option<String>,
        limit: u32,
    ) -> StoreResult<Vec<UserUsage>>;

    /// Conversations with calls in `[from, to)`, ranked by their cost within the range,
    /// most expensive first; totals count only the calls in the range. The candidates are
    /// the range's conversations with the highest lifetime cost (five per row asked for, at
    /// least 50, fewer when their lifetime cost shows they cannot enter), so a
    /// cheap-for-life conversation that was expensive in a short range can be missed.
    async fn top_conversations(
        &self,
        tenant: TenantId,
        from: i64,
        to: i64,
        limit: u32,
    ) -> StoreResult<Vec<ConversationUsage>>;

    /// Conversations with a call at or after `since`.
    async fn active_conversations(&self, tenant: TenantId, since: i64) -> StoreResult<u64>;

    /// One conversation's lifetime totals; `None` if the tenant has no call in it.
    async fn conversation(
        &self,
        tenant: TenantId,
        conversation_id: String,
    ) -> StoreResult<Option<ConversationUsage>>;

    /// Raw records matching `filter`, newest first, and how many match, counted up to
    /// `count_cap` (a count equal to the cap means "at least").
    async fn list_usage(
        &self,
        tenant: TenantId,
        filter: UsageFilter,
        offset: u64,
        limit: u32,
        count_cap: u64,
    ) -> StoreResult<(u64, Vec<StoredUsage>)>;

    /// The tenant's price overrides.
    async fn price_overrides(&self, tenant: TenantId) -> StoreResult<Vec<ModelPrice>>;
    /// Creates or replaces the override for (provider, model, effective_from).
    async fn put_price_override(&self, tenant: TenantId, price: ModelPrice) -> StoreResult<()>;
}

#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// The tenant's quota rules, by id (a rule kept across replacements keeps its id).
    async fn quota_rules(&self, tenant: TenantId) -> StoreResult<Vec<QuotaRule>>;

    /// Replaces the tenant's rules. A rule with the metric, window and scope of a stored one
    /// keeps that rule's id (so its events stay attached). Returns the rules as stored.
    async fn replace_quota_rules(
        &self,
        tenant: TenantId,
        rules: Vec<QuotaRule>,
        at: i64,
    ) -> StoreResult<Vec<QuotaRule>>;

    /// Stores the events not recorded before (same rule, window and threshold) and returns
    /// those, with their ids.
    async fn record_quota_events(
        &self,
        tenant: TenantId,
        events: Vec<QuotaEvent>,
    ) -> StoreResult<Vec<QuotaEvent>>;

    /// What the calls in each scope used over `[from, to)` (whole UTC days), read in one
    /// snapshot, with the last commit that snapshot holds: records an `insert_usage`
    /// answered with a later [`CommitSeq`] are not counted in it, and records with this
    /// one or an earlier one are. Ids play no part.
    async fn quota_usage(
        &self,
        tenant: TenantId,
        scopes: Vec<(QuotaScope, i64, i64)>,
    ) -> StoreResult<(CommitSeq, Vec<WindowUsage>)>;

    /// The most recent events, newest first.
    async fn quota_events(&self, tenant: TenantId, limit: u32) -> StoreResult<Vec<QuotaEvent>>;
}

/// What the gateway keeps: provider credentials (sealed before they get here) and each
/// tenant's gateway settings (a JSON document the gateway validates).
#[async_trait]
pub trait GatewayStore: Send + Sync {
    /// The tenant's credentials, by name.
    async fn credentials(&self, tenant: TenantId) -> StoreResult<Vec<StoredCredential>>;

    /// Creates the credential, or replaces the one of the same name (keeping its id and
    /// creation time). Returns it as stored.
    async fn put_credential(
        &self,
        tenant: TenantId,
        credential: StoredCredential,
    ) -> StoreResult<StoredCredential>;

    /// Deletes the tenant's credential of that name; whether there was one.
    async fn delete_credential(&self, tenant: TenantId, name: String) -> StoreResult<bool>;

    /// Every tenant's credentials (cross-tenant: for the operator's master-key rotation).
    async fn all_credentials(&self) -> StoreResult<Vec<(TenantId, StoredCredential)>>;

    /// Replaces sealed secrets in one transaction: `(tenant, id, sealed, key_version)`
    /// each. All or nothing.
    async fn reseal_credentials(
        &self,
        sealed: Vec<(TenantId, i64, Vec<u8>, u32)>,
    ) -> StoreResult<()>;

    /// The tenant's gateway settings document, if it has one.
    async fn gateway_settings(&self, tenant: TenantId) -> StoreResult<Option<String>>;

    /// Replaces the tenant's gateway settings document.
    async fn put_gateway_settings(
        &self,
        tenant: TenantId,
        body: String,
        at: i64,
    ) -> StoreResult<()>;
}

/// Which backend to open, and its settings.
#[derive(Clone)]
pub enum StoreConfig {
    /// The embedded default: one SQLite database file (and its user-index file).
    Sqlite(SqliteConfig),
}

/// What a backend does besides its topics: starting is [`Stores::open`]; these are the
/// rest of its life.
trait Backend: Send + Sync {
    /// Commits everything queued, stops background threads, and returns once done.
    fn shutdown(&self);
}

impl Backend for SqliteStore {
    fn shutdown(&self) {
        SqliteStore::shutdown(self);
    }
}

/// The stores the server runs on, as trait objects so another backend slots in. Opened
/// with [`Stores::open`], stopped with [`Stores::shutdown`]; nothing outside this crate
/// names a backend's type.
#[derive(Clone)]
pub struct Stores {
    pub events: Arc<dyn EventStore>,
    pub identity: Arc<dyn IdentityStore>,
    pub profiles: Arc<dyn ProfileStore>,
    pub usage: Arc<dyn UsageStore>,
    pub quotas: Arc<dyn QuotaStore>,
    pub gateway: Arc<dyn GatewayStore>,
    pub audit: Arc<dyn AuditStore>,
    pub deletion: Arc<dyn DeletionStore>,
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// Opens the backend `config` names (creating and migrating it as its owner, unless it
    /// is opened as a guest) and starts its background work.
    pub fn open(config: StoreConfig) -> StoreResult<Self> {
        match config {
            StoreConfig::Sqlite(config) => {
                let store = Arc::new(SqliteStore::open(config)?);
                Ok(Self {
                    events: store.clone(),
                    identity: store.clone(),
                    profiles: store.clone(),
                    usage: store.clone(),
                    quotas: store.clone(),
                    gateway: store.clone(),
                    audit: store.clone(),
                    deletion: store.clone(),
                    backend: store,
                })
            }
        }
    }

    /// Commits every write already queued, stops the backend's background work and
    /// returns once it has. Blocks: call it from a blocking thread. Writes after it fail
    /// with [`StoreError::Unavailable`].
    pub fn shutdown(&self) {
        self.backend.shutdown();
    }

    /// Whether the store answers a read and commits a write; the error says why not (low
    /// free space is [`StoreError::LowSpace`]).
    pub async fn ready(&self) -> StoreResult<()> {
        self.identity.get_setting(READY_PROBE).await?;
        self.identity.init_setting(READY_PROBE, "ok").await?;
        Ok(())
    }
}

/// The setting `ready` reads and writes (once: later writes keep it).
const READY_PROBE: &str = "readyz.probe";
