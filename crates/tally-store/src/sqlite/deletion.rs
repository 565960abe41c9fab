//! The one deletion path: a tenant with everything it owns, or one tracked user's data
//! (erasure requests). The main database's rows go in one writer transaction; the user
//! index's rows (its own file) are purged by the fold thread, which owns that file, right
//! after. Deletions go through even while free space is below the floor (they are how an
//! operator honours an erasure request on a full disk). Every table is accounted for in the lists below, and a test compares them with
//! the schema, so a new table cannot be forgotten.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tally_core::TenantId;

use super::user_index::Purge;
use super::SqliteStore;
use crate::{DeletionReport, DeletionStore, StoreResult};

/// Main-database tables keyed by `tenant_id` (or `id` for `tenants`), deleted with their
/// tenant. `revoked_sessions` goes through the tenant's accounts and `events` through the
/// tenant's key, so both come first.
pub const TENANT_TABLES: &[&str] = &[
    "activity_daily",
    "api_keys",
    "llm_conversations",
    "llm_usage",
    "llm_usage_rollup",
    "llm_user_daily",
    "llm_user_model_daily",
    "llm_user_model_monthly",
    "llm_user_monthly",
    "price_overrides",
    "projects",
    "quota_events",
    "quota_rules",
    "tracked_users",
    "accounts",
    "tenant_keys",
];

/// Main-database tables reached another way: `(table, column)` holding the tenant's id,
/// its integer key (`events`) or its accounts' ids (`revoked_sessions`).
pub const INDIRECT_TABLES: &[(&str, &str)] = &[
    ("events", "tenant_key"),
    ("revoked_sessions", "account_id"),
    ("tenants", "id"),
];

/// User-index tables holding tenant data (`tally.db.users`), purged by the fold thread.
pub use super::user_index::USER_INDEX_TABLES;

/// Main-database tables that outlive a tenant: the audit trail (by design: it records the
/// deletion itself) and instance settings.
pub const KEPT_TABLES: &[&str] = &["audit_log", "settings"];

/// Main-database tables whose rows name a tracked user, erased with the user. Aggregates
/// without the user's id (daily activity counts, LLM usage rollups) keep the spend and
/// volume totals that finance and quotas rely on; the activity counts are lowered by the
/// erased events so listings stay exact.
pub const USER_TABLES: &[&str] = &[
    "llm_conversations",
    "llm_usage",
    "llm_user_daily",
    "llm_user_model_daily",
    "llm_user_model_monthly",
    "llm_user_monthly",
    "quota_rules",
    "tracked_users",
];

fn tenant_key(conn: &Connection, tenant: TenantId) -> StoreResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT key FROM tenant_keys WHERE tenant_id = ?1")?
        .query_row([tenant.0.as_bytes()], |r| r.get(0))
        .optional()?)
}

fn delete_tenant_rows(conn: &Connection, tenant: TenantId) -> StoreResult<DeletionReport> {
    let id = tenant.0.as_bytes();
    let mut rows = BTreeMap::new();
    let sessions = conn.execute(
        "DELETE FROM revoked_sessions WHERE account_id IN (SELECT id FROM accounts WHERE tenant_id = ?1)",
        [id],
    )?;
    rows.insert("revoked_sessions".to_owned(), sessions as u64);
    if let Some(key) = tenant_key(conn, tenant)? {
        let n = conn.execute("DELETE FROM events WHERE tenant_key = ?1", [key])?;
        rows.insert("events".to_owned(), n as u64);
    }
    for table in TENANT_TABLES {
        let n = conn.execute(&format!("DELETE FROM {table} WHERE tenant_id = ?1"), [id])?;
        rows.insert((*table).to_owned(), n as u64);
    }
    let n = conn.execute("DELETE FROM tenants WHERE id = ?1", [id])?;
    rows.insert("tenants".to_owned(), n as u64);
    Ok(DeletionReport {
        found: n == 1,
        rows,
    })
}

fn erase_user_rows(conn: &Connection, tenant: TenantId, user: &str) -> StoreResult<DeletionReport> {
    let id = tenant.0.as_bytes();
    let mut rows = BTreeMap::new();
    if let Some(key) = tenant_key(conn, tenant)? {
        // The erased events' share of the daily counts, to take out of them.
        let mut counts: HashMap<(i64, String, i64), i64> = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT ts, coalesce(project_id, ''), event_type FROM events
             WHERE tenant_key = ?1 AND user_id = ?2",
        )?;
        let found = stmt.query_map(params![key, user], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in found {
            let (ts, project, ty) = row?;
            *counts
                .entry((tally_core::time::day_of(ts), project, ty))
                .or_default() += 1;
        }
        let mut lower = conn.prepare_cached(
            "UPDATE activity_daily SET n = n - ?5
             WHERE tenant_id = ?1 AND day = ?2 AND project_id = ?3 AND event_type = ?4",
        )?;
        for ((day, project, ty), n) in &counts {
            lower.execute(params![id, day, project, ty, n])?;
        }
        conn.execute(
            "DELETE FROM activity_daily WHERE tenant_id = ?1 AND n <= 0",
            [id],
        )?;
        let n = conn.execute(
            "DELETE FROM events WHERE tenant_key = ?1 AND user_id = ?2",
            params![key, user],
        )?;
        rows.insert("events".to_owned(), n as u64);
    }
    for table in USER_TABLES {
        let n = conn.execute(
            &format!("DELETE FROM {table} WHERE tenant_id = ?1 AND user_id = ?2"),
            params![id, user],
        )?;
        rows.insert((*table).to_owned(), n as u64);
    }
    let found = rows.values().any(|n| *n > 0);
    Ok(DeletionReport { found, rows })
}

#[async_trait]
impl DeletionStore for SqliteStore {
    async fn delete_tenant(&self, tenant: TenantId) -> StoreResult<DeletionReport> {
        let mut report = self
            .writer
            .job_with_state(1, move |conn, state| {
                state.tenant_events.remove(&tenant);
                delete_tenant_rows(conn, tenant)
            })
            .await?;
        let purged = self.user_index.purge(Purge::Tenant(tenant)).await?;
        report.rows.extend(purged);
        Ok(report)
    }

    async fn erase_tracked_user(
        &self,
        tenant: TenantId,
        user: &str,
    ) -> StoreResult<DeletionReport> {
        let owned = user.to_owned();
        let mut report = self
            .writer
            .job_with_state(1, move |conn, state| {
                state.tenant_events.remove(&tenant);
                erase_user_rows(conn, tenant, &owned)
            })
            .await?;
        let purged = self
            .user_index
            .purge(Purge::User(tenant, user.to_owned()))
            .await?;
        report.found |= purged.values().any(|n| *n > 0);
        report.rows.extend(purged);
        Ok(report)
    }
}
