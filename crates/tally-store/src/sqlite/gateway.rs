//! The gateway's provider credentials (sealed before they arrive) and tenant settings.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tally_core::credential::{ProviderKind, StoredCredential};
use tally_core::TenantId;

use super::{conversion_error, SqliteStore};
use crate::{GatewayStore, StoreResult};

const COLUMNS: &str =
    "id, name, kind, base_url, sealed, key_version, masked, models, weight, created_at, updated_at";

fn credential_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCredential> {
    let kind: String = r.get(2)?;
    let models: String = r.get(7)?;
    Ok(StoredCredential {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: ProviderKind::parse(&kind)
            .ok_or_else(|| conversion_error(2, format!("unknown provider kind {kind}")))?,
        base_url: r.get(3)?,
        sealed: r.get(4)?,
        key_version: r.get(5)?,
        masked: r.get(6)?,
        models: serde_json::from_str(&models)
            .map_err(|e| conversion_error(7, format!("bad model list: {e}")))?,
        weight: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn credential_named(
    conn: &Connection,
    tenant: TenantId,
    name: &str,
) -> StoreResult<Option<StoredCredential>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM ai_credentials WHERE tenant_id = ?1 AND name = ?2"
        ))?
        .query_row(params![tenant.0.as_bytes(), name], credential_from_row)
        .optional()?)
}

#[async_trait]
impl GatewayStore for SqliteStore {
    async fn credentials(&self, tenant: TenantId) -> StoreResult<Vec<StoredCredential>> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM ai_credentials WHERE tenant_id = ?1 ORDER BY name"
                ))?
                .query_map([tenant.0.as_bytes()], credential_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn put_credential(
        &self,
        tenant: TenantId,
        c: StoredCredential,
    ) -> StoreResult<StoredCredential> {
        self.write_for(tenant, move |conn| {
            let models = serde_json::to_string(&c.models)
                .map_err(|e| crate::StoreError::Internal(e.to_string()))?;
            conn.execute(
                "INSERT INTO ai_credentials (tenant_id, name, kind, base_url, sealed, key_version,
                     masked, models, weight, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
                 ON CONFLICT (tenant_id, name) DO UPDATE SET
                     kind = excluded.kind, base_url = excluded.base_url, sealed = excluded.sealed,
                     key_version = excluded.key_version, masked = excluded.masked,
                     models = excluded.models, weight = excluded.weight,
                     updated_at = excluded.updated_at",
                params![
                    tenant.0.as_bytes(),
                    c.name,
                    c.kind.as_str(),
                    c.base_url,
                    c.sealed,
                    c.key_version,
                    c.masked,
                    models,
                    c.weight,
                    c.updated_at
                ],
            )?;
            credential_named(conn, tenant, &c.name)?
                .ok_or_else(|| crate::StoreError::Internal("credential vanished".into()))
        })
        .await
    }

    async fn delete_credential(&self, tenant: TenantId, name: String) -> StoreResult<bool> {
        // A leaked key must be removable even on a full disk.
        self.write_essential(move |conn| {
            let n = conn.execute(
                "DELETE FROM ai_credentials WHERE tenant_id = ?1 AND name = ?2",
                params![tenant.0.as_bytes(), name],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn all_credentials(&self) -> StoreResult<Vec<(TenantId, StoredCredential)>> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}, tenant_id FROM ai_credentials ORDER BY tenant_id, name"
                ))?
                .query_map([], |r| {
                    let t: Vec<u8> = r.get(11)?;
                    let tenant = uuid::Uuid::from_slice(&t)
                        .map_err(|e| conversion_error(11, e.to_string()))?;
                    Ok((TenantId(tenant), credential_from_row(r)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn reseal_credentials(
        &self,
        sealed: Vec<(TenantId, i64, Vec<u8>, u32)>,
    ) -> StoreResult<()> {
        self.write(move |conn| {
            let mut update = conn.prepare_cached(
                "UPDATE ai_credentials SET sealed = ?3, key_version = ?4
                 WHERE tenant_id = ?1 AND id = ?2",
            )?;
            for (tenant, id, bytes, version) in sealed {
                update.execute(params![tenant.0.as_bytes(), id, bytes, version])?;
            }
            Ok(())
        })
        .await
    }

    async fn gateway_settings(&self, tenant: TenantId) -> StoreResult<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM gateway_settings WHERE tenant_id = ?1")?
                .query_row([tenant.0.as_bytes()], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn put_gateway_settings(
        &self,
        tenant: TenantId,
        body: String,
        at: i64,
    ) -> StoreResult<()> {
        self.write_for(tenant, move |conn| {
            conn.execute(
                "INSERT INTO gateway_settings (tenant_id, body, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id) DO UPDATE SET body = excluded.body,
                     updated_at = excluded.updated_at",
                params![tenant.0.as_bytes(), body, at],
            )?;
            Ok(())
        })
        .await
    }
}
