//! LLM usage records and price overrides.

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use tally_core::pricing::{ModelPrice, Nanos};

use tally_core::sketch::LatencySketch;
use tally_core::usage::{CostSource, Granularity, UsageRecord, UsageRollup};
use tally_core::TenantId;

use super::SqliteStore;
use crate::{StoreError, StoreResult, UsageOutcome, UsageStore};

fn cost_source(s: CostSource) -> &'static str {
    match s {
        CostSource::Reported => "reported",
        CostSource::Catalog => "catalog",
        CostSource::Unpriced => "unpriced",
    }
}

fn insert_tx(
    conn: &Connection,
    tenant: TenantId,
    records: Vec<UsageRecord>,
) -> StoreResult<Vec<UsageOutcome>> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO llm_usage (tenant_id, client_id, dedup_ts, user_id, conversation_id, job_id,
             provider, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, latency_ms, ttft_ms,
             status, error_type, quality_score, cost_nanos, cost_source, ts, received_at, metadata)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
    )?;
    let mut find = conn.prepare_cached(
        "SELECT id FROM llm_usage WHERE tenant_id = ?1 AND dedup_ts = ?2 AND client_id = ?3",
    )?;
    let tenant_bytes = tenant.0.as_bytes();
    let mut out = Vec::with_capacity(records.len());
    let mut rollups: HashMap<(Granularity, i64, String, String), UsageRollup> = HashMap::new();
    for r in records {
        let dedup_ts = if r.client_id.is_some() && r.timestamp_provided {
            r.timestamp
        } else {
            0
        };
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let inserted = insert.execute(params![
            tenant_bytes,
            r.client_id,
            dedup_ts,
            r.user_id,
            r.conversation_id,
            r.job_id,
            r.provider,
            r.model,
            as_i64(r.tokens.input),
            as_i64(r.tokens.output),
            as_i64(r.tokens.cached_input),
            as_i64(r.tokens.reasoning),
            r.latency_ms,
            r.time_to_first_token_ms,
            r.status.as_str(),
            r.error_type,
            r.quality_score,
            r.cost.0,
            cost_source(r.cost_source),
            r.timestamp,
            r.received_at,
            r.metadata,
        ])?;
        if inserted == 1 {
            out.push(UsageOutcome::Inserted {
                id: conn.last_insert_rowid(),
            });
            for g in Granularity::ALL {
                let bucket = g.bucket(r.timestamp);
                rollups
                    .entry((g, bucket, r.provider.clone(), r.model.clone()))
                    .or_insert_with(|| UsageRollup {
                        bucket,
                        provider: r.provider.clone(),
                        model: r.model.clone(),
                        ..Default::default()
                    })
                    .add(&r);
            }
            continue;
        }
        let client_id = r.client_id.unwrap_or_default();
        let id: i64 = find
            .query_row(params![tenant_bytes, dedup_ts, client_id], |row| row.get(0))
            .optional()?
            .ok_or_else(|| {
                StoreError::Internal("usage insert ignored without an idempotency conflict".into())
            })?;
        out.push(UsageOutcome::Duplicate { id });
    }
    for ((g, _, _, _), delta) in rollups {
        fold_rollup(conn, tenant, g, delta)?;
    }
    Ok(out)
}

const ROLLUP_COLUMNS: &str = "bucket, provider, model, calls, errors, input_tokens, output_tokens, cached_tokens,
    reasoning_tokens, cost_nanos, latency_sketch, latency_sum_ms, ttft_sketch, ttft_sum_ms, quality_count,
    quality_sum, unpriced_calls";

fn sketch_from(col: usize, bytes: Vec<u8>) -> rusqlite::Result<LatencySketch> {
    LatencySketch::from_bytes(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn rollup_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRollup> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(UsageRollup {
        bucket: r.get(0)?,
        provider: r.get(1)?,
        model: r.get(2)?,
        calls: u(3)?,
        errors: u(4)?,
        tokens: tally_core::pricing::TokenUsage {
            input: u(5)?,
            output: u(6)?,
            cached_input: u(7)?,
            reasoning: u(8)?,
        },
        cost: Nanos(r.get(9)?),
        latency: sketch_from(10, r.get(10)?)?,
        latency_sum_ms: r.get(11)?,
        ttft: sketch_from(12, r.get(12)?)?,
        ttft_sum_ms: r.get(13)?,
        quality_count: u(14)?,
        quality_sum: r.get(15)?,
        unpriced_calls: u(16)?,
    })
}

/// Merges a delta into its stored bucket (sketches merge in Rust, then the row is written).
fn fold_rollup(
    conn: &Connection,
    tenant: TenantId,
    g: Granularity,
    delta: UsageRollup,
) -> StoreResult<()> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {ROLLUP_COLUMNS} FROM llm_usage_rollup
             WHERE tenant_id = ?1 AND granularity = ?2 AND bucket = ?3 AND provider = ?4 AND model = ?5"
        ))?
        .query_row(
            params![tenant.0.as_bytes(), g.as_str(), delta.bucket, delta.provider, delta.model],
            rollup_from_row,
        )
        .optional()?;
    let merged = match existing {
        Some(mut row) => {
            row.merge(&delta)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            row
        }
        None => delta,
    };
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO llm_usage_rollup (tenant_id, granularity, {ROLLUP_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
    ))?
    .execute(params![
        tenant.0.as_bytes(),
        g.as_str(),
        merged.bucket,
        merged.provider,
        merged.model,
        as_i64(merged.calls),
        as_i64(merged.errors),
        as_i64(merged.tokens.input),
        as_i64(merged.tokens.output),
        as_i64(merged.tokens.cached_input),
        as_i64(merged.tokens.reasoning),
        merged.cost.0,
        merged.latency.to_bytes(),
        merged.latency_sum_ms,
        merged.ttft.to_bytes(),
        merged.ttft_sum_ms,
        as_i64(merged.quality_count),
        merged.quality_sum,
        as_i64(merged.unpriced_calls),
    ])?;
    Ok(())
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn insert_usage(
        &self,
        tenant: TenantId,
        records: Vec<UsageRecord>,
    ) -> StoreResult<Vec<UsageOutcome>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let weight = records.len();
        self.writer
            .job_with_state(weight, move |conn, _| insert_tx(conn, tenant, records))
            .await
    }

    async fn usage_count(&self, tenant: TenantId) -> StoreResult<u64> {
        self.read(move |conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM llm_usage WHERE tenant_id = ?1",
                [tenant.0.as_bytes()],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn usage_rollups(
        &self,
        tenant: TenantId,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<UsageRollup>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROLLUP_COLUMNS} FROM llm_usage_rollup
                 WHERE tenant_id = ?1 AND granularity = ?2 AND bucket >= ?3 AND bucket < ?4
                 ORDER BY bucket, provider, model"
            ))?;
            let rows = stmt
                .query_map(
                    params![tenant.0.as_bytes(), granularity.as_str(), from, to],
                    rollup_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn price_overrides(&self, tenant: TenantId) -> StoreResult<Vec<ModelPrice>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT provider, model, effective_from, input_per_mtok_nanos, output_per_mtok_nanos,
                        cached_input_per_mtok_nanos
                 FROM price_overrides WHERE tenant_id = ?1 ORDER BY provider, model, effective_from",
            )?;
            let rows = stmt
                .query_map([tenant.0.as_bytes()], |r| {
                    let day: String = r.get(2)?;
                    Ok(ModelPrice {
                        provider: r.get(0)?,
                        model: r.get(1)?,
                        effective_from: NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
                        })?,
                        input_per_mtok: Nanos(r.get(3)?),
                        output_per_mtok: Nanos(r.get(4)?),
                        cached_input_per_mtok: r.get::<_, Option<i64>>(5)?.map(Nanos),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn put_price_override(&self, tenant: TenantId, p: ModelPrice) -> StoreResult<()> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO price_overrides (tenant_id, provider, model, effective_from, input_per_mtok_nanos,
                     output_per_mtok_nanos, cached_input_per_mtok_nanos)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tenant_id, provider, model, effective_from) DO UPDATE SET
                     input_per_mtok_nanos = excluded.input_per_mtok_nanos,
                     output_per_mtok_nanos = excluded.output_per_mtok_nanos,
                     cached_input_per_mtok_nanos = excluded.cached_input_per_mtok_nanos",
                params![
                    tenant.0.as_bytes(),
                    p.provider.to_ascii_lowercase(),
                    p.model.to_ascii_lowercase(),
                    p.effective_from.to_string(),
                    p.input_per_mtok.0,
                    p.output_per_mtok.0,
                    p.cached_input_per_mtok.map(|c| c.0)
                ],
            )?;
            Ok(())
        })
        .await
    }
}
