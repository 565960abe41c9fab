//! The audit trail: append, list newest first with filters, purge by age.

use async_trait::async_trait;
use rusqlite::{params_from_iter, types::Value, Row};
use tally_core::audit::{AuditFilter, AuditRecord, Outcome};
use tally_core::TenantId;

use super::{conversion_error, uuid_from, SqliteStore};
use crate::{AuditStore, StoreResult};

fn record_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let tenant: Option<Vec<u8>> = r.get(2)?;
    let outcome: String = r.get(8)?;
    let details: String = r.get(9)?;
    Ok(AuditRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        tenant_id: tenant.map(uuid_from).transpose()?.map(TenantId),
        actor: r.get(3)?,
        actor_label: r.get(4)?,
        ip: r.get(5)?,
        action: r.get(6)?,
        target: r.get(7)?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| conversion_error(8, format!("unknown outcome {outcome}")))?,
        details: serde_json::from_str(&details).map_err(|e| conversion_error(9, e.to_string()))?,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, record: AuditRecord) -> StoreResult<i64> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO audit_log (at, tenant_id, actor, actor_label, ip, action, target, outcome, details)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(rusqlite::params![
                record.at,
                record.tenant_id.map(|t| t.0.as_bytes().to_vec()),
                record.actor,
                record.actor_label,
                record.ip,
                record.action,
                record.target,
                record.outcome.as_str(),
                record.details.to_string(),
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn list_audit(&self, filter: AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |conn| {
            let mut sql = String::from(
                "SELECT id, at, tenant_id, actor, actor_label, ip, action, target, outcome, details
                 FROM audit_log WHERE 1 = 1",
            );
            let mut args: Vec<Value> = Vec::new();
            let mut bind = |sql: &mut String, clause: &str, v: Value| {
                args.push(v);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(t) = filter.tenant_id {
                bind(
                    &mut sql,
                    "tenant_id =",
                    Value::Blob(t.0.as_bytes().to_vec()),
                );
            }
            if let Some(a) = filter.action {
                bind(&mut sql, "action =", Value::Text(a));
            }
            if let Some(a) = filter.actor {
                bind(&mut sql, "actor =", Value::Text(a));
            }
            if let Some(o) = filter.outcome {
                bind(&mut sql, "outcome =", Value::Text(o.as_str().into()));
            }
            if let Some(from) = filter.from {
                bind(&mut sql, "at >=", Value::Integer(from));
            }
            if let Some(to) = filter.to {
                bind(&mut sql, "at <", Value::Integer(to));
            }
            if let Some(before) = filter.before_id {
                bind(&mut sql, "id <", Value::Integer(before));
            }
            sql.push_str(&format!(
                " ORDER BY id DESC LIMIT {}",
                filter.limit.min(10_000)
            ));
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt
                .query_map(params_from_iter(args), record_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn purge_audit(&self, before: i64) -> StoreResult<u64> {
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM audit_log WHERE at < ?1", [before])?;
            Ok(n as u64)
        })
        .await
    }
}
