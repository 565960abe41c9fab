//! The audit trail's records: who did what to which thing, when and from where. Records
//! never hold secrets (passwords, keys, tokens); `details` names what changed.

use serde::{Deserialize, Serialize};

use crate::auth::{Credential, Principal};
use crate::TenantId;

/// Actions recorded in the trail; later capabilities add theirs.
pub mod action {
    pub const LOGIN: &str = "auth.login";
    pub const LOGIN_FAILED: &str = "auth.login_failed";
    pub const LOGOUT: &str = "auth.logout";
    pub const SESSIONS_ENDED: &str = "auth.sessions_ended";
    pub const TENANT_CREATED: &str = "tenant.created";
    pub const TENANT_DELETED: &str = "tenant.deleted";
    pub const ACCOUNT_CREATED: &str = "account.created";
    pub const ACCOUNT_DISABLED: &str = "account.disabled";
    pub const ACCOUNT_ENABLED: &str = "account.enabled";
    pub const ACCOUNT_DELETED: &str = "account.deleted";
    pub const KEY_CREATED: &str = "api_key.created";
    pub const KEY_REVOKED: &str = "api_key.revoked";
    pub const QUOTAS_REPLACED: &str = "quotas.replaced";
    pub const PRICE_SET: &str = "price.set";
    pub const CREDENTIAL_SET: &str = "credential.set";
    pub const CREDENTIAL_DELETED: &str = "credential.deleted";
    pub const GATEWAY_SETTINGS_SET: &str = "gateway_settings.set";
    pub const USER_ERASED: &str = "tracked_user.erased";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// One entry. `id` is 0 until stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    /// Microseconds since the epoch.
    pub at: i64,
    /// The tenant the action concerns; `None` for platform-wide actions.
    pub tenant_id: Option<TenantId>,
    /// `account:<uuid>`, `api_key:<uuid>`, `cli` or `anonymous`.
    pub actor: String,
    /// A human name for the actor at the time (an e-mail), when known.
    pub actor_label: Option<String>,
    pub ip: Option<String>,
    pub action: String,
    /// What was acted on, e.g. `account:<uuid>`.
    pub target: Option<String>,
    pub outcome: Outcome,
    /// What changed (JSON object), never a secret.
    pub details: serde_json::Value,
}

/// The actor string of an authenticated caller.
pub fn actor_of(p: &Principal) -> String {
    match &p.credential {
        Credential::Account { id, .. } => format!("account:{id}"),
        Credential::ApiKey { id, .. } => format!("api_key:{id}"),
    }
}

/// What a listing of the trail selects, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// `None`: every tenant and the platform-wide entries (platform admins only).
    pub tenant_id: Option<TenantId>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<Outcome>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Only entries with a smaller id (the cursor of the previous page).
    pub before_id: Option<i64>,
    pub limit: u32,
}
