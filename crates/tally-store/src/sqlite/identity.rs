//! Tenants, accounts, API keys and settings.

use std::collections::BTreeSet;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};
use tally_core::auth::{Role, Scope};
use tally_core::tenancy::{Account, ApiKey, Tenant};
use tally_core::{AccountId, ApiKeyId, TenantId};

use super::{conversion_error, uuid_from, SqliteStore};
use crate::{IdentityStore, StoreError, StoreResult};

fn tenant_from_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    let max: Option<i64> = r.get(2)?;
    Ok(Tenant {
        id: TenantId(uuid_from(r.get(0)?)?),
        name: r.get(1)?,
        max_events: max.map(|m| m.max(0) as u64),
        created_at: r.get(3)?,
    })
}

fn account_from_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    let role: String = r.get(4)?;
    Ok(Account {
        id: AccountId(uuid_from(r.get(0)?)?),
        tenant_id: TenantId(uuid_from(r.get(1)?)?),
        email: r.get(2)?,
        password_hash: r.get(3)?,
        role: Role::parse(&role)
            .ok_or_else(|| conversion_error(4, format!("unknown role {role}")))?,
        created_at: r.get(5)?,
        disabled_at: r.get(6)?,
        session_version: r.get(7)?,
    })
}

const ACCOUNT_COLUMNS: &str =
    "id, tenant_id, email, password_hash, role, created_at, disabled_at, session_version";

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scopes: String = r.get(5)?;
    let scopes: BTreeSet<Scope> = Scope::parse_list(&scopes).map_err(|e| conversion_error(5, e))?;
    Ok(ApiKey {
        id: ApiKeyId(uuid_from(r.get(0)?)?),
        tenant_id: TenantId(uuid_from(r.get(1)?)?),
        name: r.get(2)?,
        prefix: r.get(3)?,
        key_hash: r.get(4)?,
        scopes,
        created_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

const KEY_COLUMNS: &str = "id, tenant_id, name, prefix, key_hash, scopes, created_at, revoked_at";

fn conflict(e: StoreError, what: &str) -> StoreError {
    match e {
        StoreError::Conflict(_) => StoreError::Conflict(what.to_owned()),
        other => other,
    }
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn create_tenant(&self, t: Tenant) -> StoreResult<()> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO tenants (id, name, max_events, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    t.id.0.as_bytes(),
                    t.name,
                    t.max_events.map(|m| m as i64),
                    t.created_at
                ],
            )?;
            Ok(())
        })
        .await
        .map_err(|e| conflict(e, "tenant already exists"))
    }

    async fn get_tenant(&self, id: TenantId) -> StoreResult<Option<Tenant>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, name, max_events, created_at FROM tenants WHERE id = ?1",
                )?
                .query_row([id.0.as_bytes()], tenant_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, max_events, created_at FROM tenants ORDER BY created_at, id",
            )?;
            let rows = stmt
                .query_map([], tenant_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn create_account(&self, a: Account) -> StoreResult<()> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO accounts (id, tenant_id, email, password_hash, role, created_at, disabled_at, session_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![a.id.0.as_bytes(), a.tenant_id.0.as_bytes(), a.email, a.password_hash, a.role.as_str(), a.created_at, a.disabled_at, a.session_version],
            )?;
            Ok(())
        })
        .await
        .map_err(|e| conflict(e, "an account with this email already exists"))
    }

    async fn find_account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        let email = email.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = ?1"
                ))?
                .query_row([email], account_from_row)
                .optional()?)
        })
        .await
    }

    async fn get_account(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
                ))?
                .query_row([id.0.as_bytes()], account_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_accounts(&self, tenant: TenantId) -> StoreResult<Vec<Account>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = ?1 ORDER BY created_at, id"
            ))?;
            let rows = stmt
                .query_map([tenant.0.as_bytes()], account_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn set_account_disabled(
        &self,
        tenant: TenantId,
        id: AccountId,
        disabled_at: Option<i64>,
    ) -> StoreResult<bool> {
        self.write_essential(move |conn| {
            let n = conn.execute(
                "UPDATE accounts SET disabled_at = ?3 WHERE id = ?1 AND tenant_id = ?2",
                params![id.0.as_bytes(), tenant.0.as_bytes(), disabled_at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn end_all_sessions(&self, tenant: TenantId, id: AccountId) -> StoreResult<bool> {
        self.write_essential(move |conn| {
            let n = conn.execute(
                "UPDATE accounts SET session_version = session_version + 1
                 WHERE id = ?1 AND tenant_id = ?2",
                params![id.0.as_bytes(), tenant.0.as_bytes()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_account(&self, tenant: TenantId, id: AccountId) -> StoreResult<bool> {
        self.write_essential(move |conn| {
            let n = conn.execute(
                "DELETE FROM accounts WHERE id = ?1 AND tenant_id = ?2",
                params![id.0.as_bytes(), tenant.0.as_bytes()],
            )?;
            conn.execute(
                "DELETE FROM revoked_sessions WHERE account_id = ?1",
                [id.0.as_bytes()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn revoke_session(
        &self,
        session: uuid::Uuid,
        account: AccountId,
        expires_at: i64,
        now_secs: i64,
    ) -> StoreResult<()> {
        self.write_essential(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO revoked_sessions (session_id, account_id, expires_at)
                 VALUES (?1, ?2, ?3)",
                params![session.as_bytes(), account.0.as_bytes(), expires_at],
            )?;
            // Tokens past their expiry are refused anyway: forget their revocations.
            conn.execute(
                "DELETE FROM revoked_sessions WHERE expires_at < ?1",
                [now_secs],
            )?;
            Ok(())
        })
        .await
    }

    async fn session_revoked(&self, session: uuid::Uuid) -> StoreResult<bool> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM revoked_sessions WHERE session_id = ?1")?
                .query_row([session.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn count_accounts(&self) -> StoreResult<u64> {
        self.read(|conn| {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn create_api_key(&self, k: ApiKey) -> StoreResult<()> {
        self.write(move |conn| {
            let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
            conn.execute(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, scopes, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    k.id.0.as_bytes(),
                    k.tenant_id.0.as_bytes(),
                    k.name,
                    k.prefix,
                    k.key_hash,
                    scopes.join(","),
                    k.created_at,
                    k.revoked_at
                ],
            )?;
            Ok(())
        })
        .await
        .map_err(|e| conflict(e, "api key prefix collision"))
    }

    async fn find_api_key(&self, prefix: &str) -> StoreResult<Option<ApiKey>> {
        let prefix = prefix.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = ?1"
                ))?
                .query_row([prefix], key_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_api_keys(&self, tenant: TenantId) -> StoreResult<Vec<ApiKey>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at DESC, id"
            ))?;
            let rows = stmt
                .query_map([tenant.0.as_bytes()], key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_api_key(&self, tenant: TenantId, id: ApiKeyId, at: i64) -> StoreResult<bool> {
        self.write_essential(move |conn| {
            let n = conn.execute(
                "UPDATE api_keys SET revoked_at = ?3 WHERE id = ?1 AND tenant_id = ?2 AND revoked_at IS NULL",
                params![id.0.as_bytes(), tenant.0.as_bytes(), at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn put_settings(&self, settings: Vec<(String, Option<String>)>) -> StoreResult<()> {
        self.write(move |conn| {
            for (key, value) in settings {
                match value {
                    Some(v) => conn.execute(
                        "INSERT INTO settings (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![key, v],
                    )?,
                    None => conn.execute("DELETE FROM settings WHERE key = ?1", [key])?,
                };
            }
            Ok(())
        })
        .await
    }

    async fn set_password(&self, tenant: TenantId, id: AccountId, hash: &str) -> StoreResult<bool> {
        let hash = hash.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE accounts SET password_hash = ?3, session_version = session_version + 1
                 WHERE id = ?1 AND tenant_id = ?2",
                params![id.0.as_bytes(), tenant.0.as_bytes(), hash],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )?;
            Ok(
                conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }
}
