//! Tenants, accounts and API keys as records.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::auth::{Role, Scope};
use crate::ids::{AccountId, ApiKeyId, TenantId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    /// Most events the tenant may store (`INSIGHTS_006` beyond it); `None` is unlimited.
    pub max_events: Option<u64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub tenant_id: TenantId,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: i64,
    /// Set while the account is disabled: it cannot log in and its tokens are refused.
    pub disabled_at: Option<i64>,
    /// Tokens carry the version they were issued under; moving it on ends every session.
    pub session_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: String,
    /// Visible part of the key, stored in clear to find and show it.
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub key_hash: String,
    pub scopes: BTreeSet<Scope>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl ApiKey {
    pub fn display_prefix(&self) -> String {
        format!("{}{}_", crate::auth::API_KEY_MARKER, self.prefix)
    }
}

/// Checks an e-mail address well enough to catch typos (one `@`, a dot in the domain).
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.contains(char::is_whitespace)
        && !s.contains(char::is_control)
        && !domain.contains('@')
        && s.chars().count() <= 254
}

#[cfg(test)]
mod tests {
    #[test]
    fn emails() {
        assert!(super::valid_email("a@b.co"));
        assert!(!super::valid_email("a@b"));
        assert!(!super::valid_email("@b.co"));
        assert!(!super::valid_email("a b@c.co"));
    }
}
