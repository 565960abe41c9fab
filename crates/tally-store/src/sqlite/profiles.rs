//! Tracked-user profiles and projects.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, Row};
use tally_core::activity::{Project, UserProfile};
use tally_core::TenantId;

use super::SqliteStore;
use crate::{ProfileStore, StoreResult};

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<UserProfile> {
    Ok(UserProfile {
        user_id: r.get(0)?,
        email: r.get(1)?,
        full_name: r.get(2)?,
        role: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

fn project_from_row(r: &Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        project_id: r.get(0)?,
        name: r.get(1)?,
        organization_name: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

const USER_COLUMNS: &str = "user_id, email, full_name, role, created_at, updated_at";
const PROJECT_COLUMNS: &str = "project_id, name, organization_name, created_at, updated_at";

/// `SELECT … WHERE tenant_id = ? AND <key> IN (?, ?, …)` for a bounded id list.
fn select_in<T>(
    conn: &Connection,
    table: &str,
    columns: &str,
    key: &str,
    tenant: TenantId,
    ids: &[String],
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql =
            format!("SELECT {columns} FROM {table} WHERE tenant_id = ? AND {key} IN ({marks})");
        let mut args = vec![SqlValue::Blob(tenant.0.as_bytes().to_vec())];
        args.extend(chunk.iter().map(|s| SqlValue::Text(s.clone())));
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), map)?;
        for r in rows {
            out.push(r?);
        }
    }
    Ok(out)
}

fn count(conn: &Connection, table: &str, tenant: TenantId) -> StoreResult<u64> {
    let n: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = ?1"),
        [tenant.0.as_bytes()],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

#[async_trait]
impl ProfileStore for SqliteStore {
    async fn upsert_user(
        &self,
        tenant: TenantId,
        p: UserProfile,
    ) -> StoreResult<(UserProfile, bool)> {
        self.write_for(tenant, move |conn| {
            let existed: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM tracked_users WHERE tenant_id = ?1 AND user_id = ?2)",
                params![tenant.0.as_bytes(), p.user_id],
                |r| r.get(0),
            )?;
            conn.execute(
                "INSERT INTO tracked_users (tenant_id, user_id, email, full_name, role, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET
                    email = COALESCE(excluded.email, email),
                    full_name = COALESCE(excluded.full_name, full_name),
                    role = COALESCE(excluded.role, role),
                    updated_at = excluded.updated_at",
                params![tenant.0.as_bytes(), p.user_id, p.email, p.full_name, p.role, p.created_at, p.updated_at],
            )?;
            let stored = conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM tracked_users WHERE tenant_id = ?1 AND user_id = ?2"),
                params![tenant.0.as_bytes(), p.user_id],
                user_from_row,
            )?;
            Ok((stored, !existed))
        })
        .await
    }

    async fn get_users(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> StoreResult<HashMap<String, UserProfile>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = ids.to_vec();
        self.read(move |conn| {
            let rows = select_in(
                conn,
                "tracked_users",
                USER_COLUMNS,
                "user_id",
                tenant,
                &ids,
                user_from_row,
            )?;
            Ok(rows.into_iter().map(|u| (u.user_id.clone(), u)).collect())
        })
        .await
    }

    async fn list_users(
        &self,
        tenant: TenantId,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(u64, Vec<UserProfile>)> {
        self.read(move |conn| {
            let total = count(conn, "tracked_users", tenant)?;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM tracked_users WHERE tenant_id = ?1 ORDER BY user_id LIMIT ?2 OFFSET ?3"
            ))?;
            let rows = stmt
                .query_map(params![tenant.0.as_bytes(), limit, offset as i64], user_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((total, rows))
        })
        .await
    }

    async fn upsert_project(&self, tenant: TenantId, p: Project) -> StoreResult<(Project, bool)> {
        self.write_for(tenant, move |conn| {
            let existed: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM projects WHERE tenant_id = ?1 AND project_id = ?2)",
                params![tenant.0.as_bytes(), p.project_id],
                |r| r.get(0),
            )?;
            conn.execute(
                "INSERT INTO projects (tenant_id, project_id, name, organization_name, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant_id, project_id) DO UPDATE SET
                    name = excluded.name,
                    organization_name = COALESCE(excluded.organization_name, organization_name),
                    updated_at = excluded.updated_at",
                params![tenant.0.as_bytes(), p.project_id, p.name, p.organization_name, p.created_at, p.updated_at],
            )?;
            let stored = conn.query_row(
                &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE tenant_id = ?1 AND project_id = ?2"),
                params![tenant.0.as_bytes(), p.project_id],
                project_from_row,
            )?;
            Ok((stored, !existed))
        })
        .await
    }

    async fn get_projects(
        &self,
        tenant: TenantId,
        ids: &[String],
    ) -> StoreResult<HashMap<String, Project>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = ids.to_vec();
        self.read(move |conn| {
            let rows = select_in(
                conn,
                "projects",
                PROJECT_COLUMNS,
                "project_id",
                tenant,
                &ids,
                project_from_row,
            )?;
            Ok(rows
                .into_iter()
                .map(|p| (p.project_id.clone(), p))
                .collect())
        })
        .await
    }

    async fn list_projects(
        &self,
        tenant: TenantId,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(u64, Vec<Project>)> {
        self.read(move |conn| {
            let total = count(conn, "projects", tenant)?;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects WHERE tenant_id = ?1 ORDER BY project_id LIMIT ?2 OFFSET ?3"
            ))?;
            let rows = stmt
                .query_map(params![tenant.0.as_bytes(), limit, offset as i64], project_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((total, rows))
        })
        .await
    }
}
