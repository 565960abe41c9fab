//! Quota rules and the events raised when usage crosses their thresholds.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tally_core::quota::{QuotaEvent, QuotaMetric, QuotaRule, QuotaScope, QuotaWindow, WindowUsage};
use tally_core::time::day_of;
use tally_core::TenantId;

use super::{conversion_error, SqliteStore};
use crate::{CommitSeq, QuotaStore, StoreResult};

const RULE_COLUMNS: &str =
    "id, name, metric, window_kind, limit_value, provider, model, user_id, warn_percent, enforce, api_key_id";

fn metric_from(col: usize, s: &str) -> rusqlite::Result<QuotaMetric> {
    QuotaMetric::parse(s).ok_or_else(|| conversion_error(col, format!("unknown quota metric {s}")))
}

/// `''` in the table means "any".
fn any(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn rule_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QuotaRule> {
    let window: String = r.get(3)?;
    Ok(QuotaRule {
        id: r.get(0)?,
        name: r.get(1)?,
        metric: metric_from(2, &r.get::<_, String>(2)?)?,
        window: QuotaWindow::parse(&window)
            .ok_or_else(|| conversion_error(3, format!("unknown quota window {window}")))?,
        limit: r.get(4)?,
        scope: QuotaScope {
            provider: any(r.get(5)?),
            model: any(r.get(6)?),
            user_id: any(r.get(7)?),
            api_key_id: match any(r.get(10)?) {
                None => None,
                Some(k) => {
                    Some(k.parse().map_err(|_| {
                        conversion_error(10, format!("api key id {k} is not a UUID"))
                    })?)
                }
            },
        },
        warn_percent: r.get::<_, i64>(8)?.clamp(1, 100) as u8,
        enforce: r.get(9)?,
    })
}

fn rules_of(conn: &Connection, tenant: TenantId) -> StoreResult<Vec<QuotaRule>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RULE_COLUMNS} FROM quota_rules WHERE tenant_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([tenant.0.as_bytes()], rule_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn replace_tx(
    conn: &Connection,
    tenant: TenantId,
    rules: Vec<QuotaRule>,
    at: i64,
) -> StoreResult<Vec<QuotaRule>> {
    let t = tenant.0.as_bytes();
    let scope_key = |r: &QuotaRule| {
        (
            r.metric.as_str(),
            r.window.as_str(),
            r.scope.provider.clone().unwrap_or_default(),
            r.scope.model.clone().unwrap_or_default(),
            r.scope.user_id.clone().unwrap_or_default(),
            r.scope
                .api_key_id
                .map(|k| k.to_string())
                .unwrap_or_default(),
        )
    };
    let mut find = conn.prepare_cached(
        "SELECT id FROM quota_rules WHERE tenant_id = ?1 AND metric = ?2 AND window_kind = ?3
             AND provider = ?4 AND model = ?5 AND user_id = ?6 AND api_key_id = ?7",
    )?;
    let mut kept = Vec::with_capacity(rules.len());
    for r in &rules {
        let (metric, window, provider, model, user, key) = scope_key(r);
        let id: Option<i64> = find
            .query_row(
                params![t, metric, window, provider, model, user, key],
                |row| row.get(0),
            )
            .optional()?;
        kept.push(id);
    }
    // Drop the rules that are no longer configured, then upsert the rest.
    let kept_ids: Vec<i64> = kept.iter().flatten().copied().collect();
    let mut existing = conn.prepare_cached("SELECT id FROM quota_rules WHERE tenant_id = ?1")?;
    let stored: Vec<i64> = existing
        .query_map([t], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delete =
        conn.prepare_cached("DELETE FROM quota_rules WHERE tenant_id = ?1 AND id = ?2")?;
    for id in stored.into_iter().filter(|id| !kept_ids.contains(id)) {
        delete.execute(params![t, id])?;
    }
    let mut update = conn.prepare_cached(
        "UPDATE quota_rules SET name = ?3, limit_value = ?4, warn_percent = ?5, enforce = ?6, updated_at = ?7
         WHERE tenant_id = ?1 AND id = ?2",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO quota_rules (tenant_id, name, metric, window_kind, limit_value, provider, model, user_id,
             warn_percent, enforce, updated_at, api_key_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for (r, id) in rules.iter().zip(kept) {
        match id {
            Some(id) => {
                update.execute(params![
                    t,
                    id,
                    r.name,
                    r.limit,
                    r.warn_percent,
                    r.enforce,
                    at
                ])?;
            }
            None => {
                let (metric, window, provider, model, user, key) = scope_key(r);
                insert.execute(params![
                    t,
                    r.name,
                    metric,
                    window,
                    r.limit,
                    provider,
                    model,
                    user,
                    r.warn_percent,
                    r.enforce,
                    at,
                    key
                ])?;
            }
        }
    }
    rules_of(conn, tenant)
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QuotaEvent> {
    Ok(QuotaEvent {
        id: r.get(0)?,
        rule_id: r.get(1)?,
        rule_name: r.get(2)?,
        metric: metric_from(3, &r.get::<_, String>(3)?)?,
        window_start: r.get(4)?,
        threshold: r.get::<_, i64>(5)?.clamp(0, 100) as u8,
        used: r.get(6)?,
        limit: r.get(7)?,
        ts: r.get(8)?,
    })
}

#[async_trait]
impl QuotaStore for SqliteStore {
    async fn quota_rules(&self, tenant: TenantId) -> StoreResult<Vec<QuotaRule>> {
        self.read(move |conn| rules_of(conn, tenant)).await
    }

    async fn replace_quota_rules(
        &self,
        tenant: TenantId,
        rules: Vec<QuotaRule>,
        at: i64,
    ) -> StoreResult<Vec<QuotaRule>> {
        self.write_for(tenant, move |conn| replace_tx(conn, tenant, rules, at))
            .await
    }

    async fn record_quota_events(
        &self,
        tenant: TenantId,
        events: Vec<QuotaEvent>,
    ) -> StoreResult<Vec<QuotaEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write_for(tenant, move |conn| {
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO quota_events (tenant_id, rule_id, rule_name, metric, window_start,
                     threshold, used, limit_value, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut out = Vec::new();
            for mut e in events {
                let n = insert.execute(params![
                    tenant.0.as_bytes(),
                    e.rule_id,
                    e.rule_name,
                    e.metric.as_str(),
                    e.window_start,
                    e.threshold,
                    e.used,
                    e.limit,
                    e.ts
                ])?;
                if n == 1 {
                    e.id = conn.last_insert_rowid();
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn quota_usage(
        &self,
        tenant: TenantId,
        scopes: Vec<(QuotaScope, i64, i64)>,
    ) -> StoreResult<(CommitSeq, Vec<WindowUsage>)> {
        self.read(move |conn| {
            // One read transaction: the sums and the commit come from the same snapshot.
            let tx = conn.unchecked_transaction()?;
            let commit = CommitSeq(tx.query_row("SELECT seq FROM commit_log", [], |r| r.get(0))?);
            let money = super::money_sum_sql("cost_nanos");
            let mut by_model = tx.prepare_cached(&format!(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(input_tokens + output_tokens), 0), {money}
                 FROM llm_usage_rollup
                 WHERE tenant_id = ?1 AND granularity = 'day' AND bucket >= ?2 AND bucket < ?3
                   AND (?4 IS NULL OR provider = ?4) AND (?5 IS NULL OR model = ?5)"
            ))?;
            let mut by_user = tx.prepare_cached(&format!(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(input_tokens + output_tokens), 0), {money}
                 FROM llm_user_daily
                 WHERE tenant_id = ?1 AND day >= ?2 AND day < ?3 AND user_id = ?4"
            ))?;
            let mut by_key = tx.prepare_cached(&format!(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(input_tokens + output_tokens), 0), {money}
                 FROM llm_key_daily
                 WHERE tenant_id = ?1 AND api_key_id = ?2 AND day >= ?3 AND day < ?4"
            ))?;
            let usage = |r: &rusqlite::Row<'_>| -> rusqlite::Result<WindowUsage> {
                Ok(WindowUsage {
                    calls: r.get::<_, i64>(0)?.max(0) as u64,
                    tokens: r.get::<_, i64>(1)?.max(0) as u64,
                    cost: super::money_sum_at(r, 2)?,
                })
            };
            let t = tenant.0.as_bytes();
            let mut out = Vec::with_capacity(scopes.len());
            for (scope, from, to) in scopes {
                out.push(match (&scope.user_id, scope.api_key_id) {
                    (Some(user), _) => {
                        by_user.query_row(params![t, day_of(from), day_of(to), user], usage)?
                    }
                    (None, Some(key)) => by_key.query_row(
                        params![t, key.to_string(), day_of(from), day_of(to)],
                        usage,
                    )?,
                    (None, None) => by_model
                        .query_row(params![t, from, to, scope.provider, scope.model], usage)?,
                });
            }
            drop((by_model, by_user, by_key));
            tx.finish()?;
            Ok((commit, out))
        })
        .await
    }

    async fn quota_events(&self, tenant: TenantId, limit: u32) -> StoreResult<Vec<QuotaEvent>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, rule_id, rule_name, metric, window_start, threshold, used, limit_value, ts
                 FROM quota_events WHERE tenant_id = ?1 ORDER BY ts DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![tenant.0.as_bytes(), limit], event_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}
