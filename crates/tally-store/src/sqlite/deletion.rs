//! The one deletion path: a tenant with everything it owns, or one tracked user's data
//! (erasure requests). The main database's rows go in one writer transaction; the user
//! index's rows (its own file) are purged by the fold thread, which owns that file, right
//! after. Deletions go through even while free space is below the floor (they are how an
//! operator honours an erasure request on a full disk). Every table is accounted for in the lists below, and a test compares them with
//! the schema, so a new table cannot be forgotten.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use rusqlite::{params, Connection};
use tally_core::TenantId;

use super::events::{find_tenant_key, RollupDelta};
use super::user_index::Purge;
use super::SqliteStore;
use crate::{DeletionReport, DeletionStore, StoreResult};

/// Main-database tables keyed by `tenant_id` (or `id` for `tenants`), deleted with their
/// tenant. `revoked_sessions` goes through the tenant's accounts and `events` through the
/// tenant's key, so both come first.
pub const TENANT_TABLES: &[&str] = &[
    "activity_daily",
    "ai_credentials",
    "api_keys",
    "gateway_settings",
    "llm_conversations",
    "llm_key_daily",
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
/// deletion itself), instance settings, and the purges of the user index still to run
/// (each row lives from a deletion's commit until the index has purged).
pub const KEPT_TABLES: &[&str] = &[
    "audit_log",
    "commit_log",
    // Event id ranges per commit, for the user index's recovery: no tenant's data.
    "event_commits",
    "pending_purges",
    "settings",
];

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

fn delete_tenant_rows(conn: &Connection, tenant: TenantId) -> StoreResult<DeletionReport> {
    let id = tenant.0.as_bytes();
    let mut rows = BTreeMap::new();
    let sessions = conn.execute(
        "DELETE FROM revoked_sessions WHERE account_id IN (SELECT id FROM accounts WHERE tenant_id = ?1)",
        [id],
    )?;
    rows.insert("revoked_sessions".to_owned(), sessions as u64);
    if let Some(key) = find_tenant_key(conn, tenant)? {
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

/// Records a purge of the user index in the deletion's own transaction, so that a purge
/// cut short (a crash before the index committed it) is run again at the next open.
fn record_pending_purge(
    conn: &Connection,
    tenant: TenantId,
    user: Option<&str>,
) -> StoreResult<i64> {
    conn.prepare_cached("INSERT INTO pending_purges (tenant_id, user_id) VALUES (?1, ?2)")?
        .execute(params![tenant.0.as_bytes(), user])?;
    Ok(conn.last_insert_rowid())
}

fn erase_user_rows(
    conn: &Connection,
    rollups: &mut RollupDelta,
    tenant: TenantId,
    user: &str,
) -> StoreResult<DeletionReport> {
    let id = tenant.0.as_bytes();
    let mut rows = BTreeMap::new();
    if let Some(key) = find_tenant_key(conn, tenant)? {
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
        for ((day, project, ty), n) in counts {
            // Events of this transaction are counted in memory until commit: take those
            // out there, the rest from the table.
            let pending = rollups.lower_pending(&(tenant, day, project.clone(), ty), n as u64);
            let stored = n - pending as i64;
            if stored > 0 {
                lower.execute(params![id, day, project, ty, stored])?;
            }
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

impl SqliteStore {
    /// Purges the user index as a deletion recorded (`pending`), then forgets the record.
    async fn finish_purge(&self, what: Purge, pending: i64) -> StoreResult<BTreeMap<String, u64>> {
        let purged = self.user_index.purge(what).await?;
        self.writer
            .job(move |conn| {
                conn.execute("DELETE FROM pending_purges WHERE id = ?1", [pending])?;
                Ok(())
            })
            .await?;
        Ok(purged)
    }
}

#[async_trait]
impl DeletionStore for SqliteStore {
    async fn delete_tenant(&self, tenant: TenantId) -> StoreResult<DeletionReport> {
        let (mut report, pending) = self
            .writer
            .job_with_state(1, move |conn, state| {
                // What this transaction has not written yet would bring rows back.
                let before = state.forget(conn, tenant, None)?;
                let done = delete_tenant_rows(conn, tenant)
                    .and_then(|report| Ok((report, record_pending_purge(conn, tenant, None)?)));
                if done.is_err() {
                    state.restore(before);
                }
                done
            })
            .await?;
        let purged = self.finish_purge(Purge::Tenant(tenant), pending).await?;
        report.rows.extend(purged);
        Ok(report)
    }

    async fn erase_tracked_user(
        &self,
        tenant: TenantId,
        user: &str,
    ) -> StoreResult<DeletionReport> {
        let owned = user.to_owned();
        let (mut report, pending) = self
            .writer
            .job_with_state(1, move |conn, state| {
                let before = state.forget(conn, tenant, Some(&owned))?;
                let done = erase_user_rows(conn, &mut state.events.rollups, tenant, &owned)
                    .and_then(|r| Ok((r, record_pending_purge(conn, tenant, Some(&owned))?)));
                if done.is_err() {
                    state.restore(before);
                }
                done
            })
            .await?;
        let purged = self
            .finish_purge(Purge::User(tenant, user.to_owned()), pending)
            .await?;
        report.found |= purged.values().any(|n| *n > 0);
        report.rows.extend(purged);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_core::event::{EventType, NewEvent};
    use tally_core::tenancy::Tenant;

    use super::*;
    use crate::{EventStore, IdentityStore, SqliteConfig};

    fn event(user: &str) -> NewEvent {
        NewEvent {
            tracking_id: uuid::Uuid::now_v7(),
            client_id: None,
            dedup_ts: 0,
            event_type: EventType::UserAction,
            event_name: "x".into(),
            user_id: Some(user.into()),
            project_id: None,
            timestamp: 1_705_761_000_000_000,
            received_at: 1_705_761_000_000_000,
            properties: "{}".into(),
            context: "{}".into(),
            enriched: "{}".into(),
        }
    }

    fn index_rows(path: &std::path::Path, user: &str) -> i64 {
        let users = Connection::open(path.with_file_name("tally.db.users")).unwrap();
        users
            .query_row(
                "SELECT count(*) FROM user_events WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A crash after an erasure committed in the main database but before the user index
    /// (another file) purged: the next open finishes the purge.
    #[tokio::test]
    async fn a_purge_cut_short_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
        let tenant = TenantId::generate();
        store
            .create_tenant(Tenant {
                id: tenant,
                name: "t".into(),
                max_events: None,
                created_at: 0,
            })
            .await
            .unwrap();
        store
            .insert_events(tenant, None, vec![event("u1"), event("u1"), event("u2")])
            .await
            .unwrap();
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.shutdown())
            .await
            .unwrap();
        drop(store);
        assert_eq!(index_rows(&path, "u1"), 2);
        // What the erasure's transaction commits, without the purge that follows it.
        let main = Connection::open(&path).unwrap();
        main.execute("DELETE FROM events WHERE user_id = 'u1'", [])
            .unwrap();
        record_pending_purge(&main, tenant, Some("u1")).unwrap();
        drop(main);

        let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
        assert_eq!(index_rows(&path, "u1"), 0, "the purge was finished");
        assert_eq!(index_rows(&path, "u2"), 1, "nothing else was purged");
        let main = Connection::open(&path).unwrap();
        let left: i64 = main
            .query_row("SELECT count(*) FROM pending_purges", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.shutdown())
            .await
            .unwrap();
    }
}
