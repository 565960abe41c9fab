//! The audit trail (seed 004's security section, seed 003's credential audit): every
//! administrative action and every login, with who, when, from where and what changed.
//! An entry is appended right after the action commits; a failure to append is logged
//! loudly and does not undo the action. Entries outlive what they describe (a deleted
//! tenant's trail stays) until the retention drops them.

use std::net::IpAddr;
use std::time::Duration;

use crate::Access;
use tally_core::audit::{action, actor_of, AuditFilter, AuditRecord, Outcome};
use tally_core::auth::Principal;
use tally_core::TenantId;

use crate::error::AccessResult;

/// Who acted, from where.
#[derive(Debug, Clone)]
pub struct Actor {
    pub actor: String,
    pub label: Option<String>,
    pub ip: Option<IpAddr>,
}

impl Actor {
    pub fn principal(p: &Principal, ip: Option<IpAddr>) -> Self {
        Self {
            actor: actor_of(p),
            label: None,
            ip,
        }
    }

    /// A logged-in account (its own login or logout).
    pub fn account(account: &tally_core::tenancy::Account, ip: Option<IpAddr>) -> Self {
        Self {
            actor: format!("account:{}", account.id),
            label: Some(account.email.clone()),
            ip,
        }
    }

    /// An operator at the data dir (`tally admin`).
    pub fn cli() -> Self {
        Self {
            actor: "cli".into(),
            label: std::env::var("USER").ok(),
            ip: None,
        }
    }

    /// Not authenticated (a login attempt), named by what it claimed to be.
    pub fn anonymous(label: &str, ip: Option<IpAddr>) -> Self {
        Self {
            actor: "anonymous".into(),
            label: Some(label.to_owned()),
            ip,
        }
    }
}

/// One action to record.
pub struct Entry<'a> {
    pub tenant: Option<TenantId>,
    pub action: &'a str,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub details: serde_json::Value,
}

impl<'a> Entry<'a> {
    pub fn success(tenant: Option<TenantId>, action: &'a str, target: Option<String>) -> Self {
        Self {
            tenant,
            action,
            target,
            outcome: Outcome::Success,
            details: serde_json::json!({}),
        }
    }

    /// An action on an account of its tenant.
    pub fn account(account: &tally_core::tenancy::Account, action: &'a str) -> Self {
        Self::success(
            Some(account.tenant_id),
            action,
            Some(format!("account:{}", account.id)),
        )
    }

    pub fn tenant_created(t: &tally_core::tenancy::Tenant) -> Self {
        Self::success(
            Some(t.id),
            action::TENANT_CREATED,
            Some(format!("tenant:{}", t.id)),
        )
        .details(serde_json::json!({ "name": t.name, "max_events": t.max_events }))
    }

    pub fn tenant_deleted(
        t: &tally_core::tenancy::Tenant,
        rows: &std::collections::BTreeMap<String, u64>,
    ) -> Self {
        Self::success(
            Some(t.id),
            action::TENANT_DELETED,
            Some(format!("tenant:{}", t.id)),
        )
        .details(serde_json::json!({ "name": t.name, "deleted_rows": rows }))
    }

    /// A new key: its name, display prefix and scopes (never the key).
    pub fn key_created(k: &tally_core::tenancy::ApiKey) -> Self {
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
        Self::success(
            Some(k.tenant_id),
            action::KEY_CREATED,
            Some(format!("api_key:{}", k.id)),
        )
        .details(
            serde_json::json!({ "name": k.name, "prefix": k.display_prefix(), "scopes": scopes }),
        )
    }

    pub fn key_revoked(tenant: TenantId, id: tally_core::ApiKeyId) -> Self {
        Self::success(
            Some(tenant),
            action::KEY_REVOKED,
            Some(format!("api_key:{id}")),
        )
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

impl Access {
    /// Appends `entry` by `actor`. Never fails the caller: the action has happened.
    pub async fn record(&self, actor: &Actor, entry: Entry<'_>) {
        let record = AuditRecord {
            id: 0,
            at: self.clock.now_micros(),
            tenant_id: entry.tenant,
            actor: actor.actor.clone(),
            actor_label: actor.label.clone(),
            ip: actor.ip.map(|ip| ip.to_string()),
            action: entry.action.to_owned(),
            target: entry.target,
            outcome: entry.outcome,
            details: entry.details,
        };
        if let Err(error) = self.stores.audit.append_audit(record).await {
            tracing::error!(%error, action = entry.action, actor = %actor.actor, "failed to append to the audit trail");
        }
    }

    /// Appends `entry` by an authenticated caller.
    pub async fn record_by(&self, p: &Principal, ip: Option<IpAddr>, entry: Entry<'_>) {
        self.record(&Actor::principal(p, ip), entry).await;
    }

    pub async fn list(&self, filter: AuditFilter) -> AccessResult<Vec<AuditRecord>> {
        Ok(self.stores.audit.list_audit(filter).await?)
    }

    /// Drops entries older than `retention`; returns how many. The server runs it as a
    /// supervised task, now and then every six hours.
    pub async fn apply_retention(&self, retention: Duration) -> AccessResult<u64> {
        let before =
            self.clock.now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let n = self.stores.audit.purge_audit(before).await?;
        if n > 0 {
            tracing::info!(entries = n, "dropped audit entries past retention");
        }
        Ok(n)
    }
}
