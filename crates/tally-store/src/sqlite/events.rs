//! Events, their rollups and the activity queries.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use tally_core::activity::{ActivityFilter, StoredEvent, UserHourCount};
use tally_core::event::{EventType, NewEvent};
use tally_core::time;
use tally_core::TenantId;

use super::writer::WriterState;
use super::{uuid_from, SqliteStore};
use crate::{ActivityRef, EventStore, InsertOutcome, StoreResult};

type DailyKey = (TenantId, i64, String, i64);
type UserHourKey = (TenantId, String, i64, String, i64, String);

/// Rollup changes accumulated in memory during one transaction.
#[derive(Default)]
pub(crate) struct RollupDelta {
    daily: HashMap<DailyKey, u64>,
    user_hourly: HashMap<UserHourKey, u64>,
    per_tenant: HashMap<TenantId, u64>,
}

impl RollupDelta {
    fn add(&mut self, tenant: TenantId, e: &NewEvent) {
        let project = e.project_id.clone().unwrap_or_default();
        *self
            .daily
            .entry((
                tenant,
                time::day_of(e.timestamp),
                project.clone(),
                e.event_type.code(),
            ))
            .or_default() += 1;
        if let Some(user) = &e.user_id {
            *self
                .user_hourly
                .entry((
                    tenant,
                    user.clone(),
                    time::hour_of(e.timestamp),
                    project,
                    e.event_type.code(),
                    e.event_name.clone(),
                ))
                .or_default() += 1;
        }
        *self.per_tenant.entry(tenant).or_default() += 1;
    }

    fn merge(&mut self, other: RollupDelta) {
        for (k, n) in other.daily {
            *self.daily.entry(k).or_default() += n;
        }
        for (k, n) in other.user_hourly {
            *self.user_hourly.entry(k).or_default() += n;
        }
        for (k, n) in other.per_tenant {
            *self.per_tenant.entry(k).or_default() += n;
        }
    }

    pub(crate) fn pending_for(&self, tenant: TenantId) -> u64 {
        self.per_tenant.get(&tenant).copied().unwrap_or(0)
    }

    pub(crate) fn clear(&mut self) {
        self.daily.clear();
        self.user_hourly.clear();
        self.per_tenant.clear();
    }

    /// Writes the accumulated changes; called inside the transaction, before commit.
    pub(crate) fn flush(&mut self, conn: &Connection) -> StoreResult<()> {
        if !self.daily.is_empty() {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO activity_daily (tenant_id, day, project_id, event_type, n) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, day, project_id, event_type) DO UPDATE SET n = n + excluded.n",
            )?;
            for ((tenant, day, project, ty), n) in self.daily.drain() {
                stmt.execute(params![tenant.0.as_bytes(), day, project, ty, n as i64])?;
            }
        }
        if !self.user_hourly.is_empty() {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO user_activity_hourly (tenant_id, user_id, hour, project_id, event_type, event_name, n)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tenant_id, user_id, hour, project_id, event_type, event_name) DO UPDATE SET n = n + excluded.n",
            )?;
            for ((tenant, user, hour, project, ty, name), n) in self.user_hourly.drain() {
                stmt.execute(params![
                    tenant.0.as_bytes(),
                    user,
                    hour,
                    project,
                    ty,
                    name,
                    n as i64
                ])?;
            }
        }
        Ok(())
    }

    /// After a successful commit: folds this transaction's counts into the cached totals.
    pub(crate) fn apply_counts(&mut self, totals: &mut HashMap<TenantId, u64>) {
        for (tenant, n) in self.per_tenant.drain() {
            if let Some(total) = totals.get_mut(&tenant) {
                *total += n;
            }
        }
    }
}

fn tenant_event_count(conn: &Connection, tenant: TenantId) -> StoreResult<u64> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(n), 0) FROM activity_daily WHERE tenant_id = ?1",
        [tenant.0.as_bytes()],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Inserts inside the writer's transaction. Returns one outcome per event, in order.
fn insert_events_tx(
    conn: &Connection,
    state: &mut WriterState,
    tenant: TenantId,
    max_events: Option<u64>,
    events: Vec<NewEvent>,
) -> StoreResult<Vec<InsertOutcome>> {
    let mut room = match max_events {
        None => u64::MAX,
        Some(limit) => {
            let committed = match state.tenant_events.get(&tenant) {
                Some(n) => *n,
                None => {
                    let n = tenant_event_count(conn, tenant)?;
                    state.tenant_events.insert(tenant, n);
                    n
                }
            };
            limit.saturating_sub(committed + state.rollups.pending_for(tenant))
        }
    };
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO events (tenant_id, tracking_id, client_id, dedup_ts, event_type, event_name,
             user_id, project_id, ts, received_at, properties, context, enriched)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let mut delta = RollupDelta::default();
    let mut out = Vec::with_capacity(events.len());
    let tenant_bytes = tenant.0.as_bytes();
    for e in events {
        if let Some(client_id) = &e.client_id {
            if let Some(existing) = find_duplicate(conn, tenant, e.dedup_ts, client_id)? {
                out.push(existing);
                continue;
            }
        }
        if room == 0 {
            out.push(InsertOutcome::OverLimit {
                limit: max_events.unwrap_or_default(),
            });
            continue;
        }
        insert.execute(params![
            tenant_bytes,
            e.tracking_id.as_bytes(),
            e.client_id,
            e.dedup_ts,
            e.event_type.code(),
            e.event_name,
            e.user_id,
            e.project_id,
            e.timestamp,
            e.received_at,
            e.properties,
            e.context,
            e.enriched,
        ])?;
        room -= 1;
        delta.add(tenant, &e);
        out.push(InsertOutcome::Inserted {
            id: conn.last_insert_rowid(),
            tracking_id: e.tracking_id,
        });
    }
    state.rollups.merge(delta);
    Ok(out)
}

fn find_duplicate(
    conn: &Connection,
    tenant: TenantId,
    dedup_ts: i64,
    client_id: &str,
) -> StoreResult<Option<InsertOutcome>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, tracking_id FROM events WHERE tenant_id = ?1 AND dedup_ts = ?2 AND client_id = ?3",
    )?;
    Ok(stmt
        .query_row(params![tenant.0.as_bytes(), dedup_ts, client_id], |r| {
            Ok(InsertOutcome::Duplicate {
                id: r.get(0)?,
                tracking_id: uuid_from(r.get(1)?)?,
            })
        })
        .optional()?)
}

const EVENT_COLUMNS: &str =
    "id, tracking_id, event_type, event_name, user_id, project_id, ts, received_at, properties, context, enriched";

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let code: i64 = r.get(2)?;
    Ok(StoredEvent {
        id: r.get(0)?,
        tracking_id: uuid_from(r.get(1)?)?,
        event_type: EventType::from_code(code)
            .ok_or_else(|| rusqlite::Error::IntegralValueOutOfRange(2, code))?,
        event_name: r.get(3)?,
        user_id: r.get(4)?,
        project_id: r.get(5)?,
        timestamp: r.get(6)?,
        received_at: r.get(7)?,
        properties: r.get(8)?,
        context: r.get(9)?,
        enriched: r.get(10)?,
    })
}

/// Builds the listing query. The index is chosen by the most selective filter present so
/// that the plan never depends on statistics: each index ends with `ts`, which also gives
/// the newest-first order without sorting.
fn listing_query(
    tenant: TenantId,
    f: &ActivityFilter,
    offset: u64,
    limit: u32,
) -> (String, Vec<SqlValue>) {
    let index = if f.user_id.is_some() {
        "events_by_user"
    } else if f.project_id.is_some() {
        "events_by_project"
    } else if f.event_type.is_some() {
        "events_by_type"
    } else {
        "events_by_time"
    };
    let mut sql =
        format!("SELECT {EVENT_COLUMNS} FROM events INDEXED BY {index} WHERE tenant_id = ?");
    let mut args: Vec<SqlValue> = vec![SqlValue::Blob(tenant.0.as_bytes().to_vec())];
    if let Some(u) = &f.user_id {
        sql.push_str(" AND user_id = ?");
        args.push(SqlValue::Text(u.clone()));
    }
    if let Some(p) = &f.project_id {
        sql.push_str(" AND project_id = ?");
        args.push(SqlValue::Text(p.clone()));
    }
    if let Some(t) = f.event_type {
        sql.push_str(" AND event_type = ?");
        args.push(SqlValue::Integer(t.code()));
    }
    let (from, to) = f.time_range();
    if let Some(from) = from {
        sql.push_str(" AND ts >= ?");
        args.push(SqlValue::Integer(from));
    }
    if let Some(to) = to {
        sql.push_str(" AND ts < ?");
        args.push(SqlValue::Integer(to));
    }
    sql.push_str(" ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?");
    args.push(SqlValue::Integer(i64::from(limit)));
    args.push(SqlValue::Integer(offset.min(i64::MAX as u64) as i64));
    (sql, args)
}

/// Counts matching events from the rollups: the user rollup when a user is named, the
/// daily rollup otherwise. Exact, because rollups commit with the raw rows.
fn count_query(tenant: TenantId, f: &ActivityFilter) -> (String, Vec<SqlValue>) {
    let mut args: Vec<SqlValue> = vec![SqlValue::Blob(tenant.0.as_bytes().to_vec())];
    let (from, to) = f.time_range();
    let mut sql;
    if let Some(u) = &f.user_id {
        sql = String::from("SELECT COALESCE(SUM(n), 0) FROM user_activity_hourly WHERE tenant_id = ? AND user_id = ?");
        args.push(SqlValue::Text(u.clone()));
        if let Some(from) = from {
            sql.push_str(" AND hour >= ?");
            args.push(SqlValue::Integer(time::hour_of(from)));
        }
        if let Some(to) = to {
            sql.push_str(" AND hour < ?");
            args.push(SqlValue::Integer(time::hour_of(to)));
        }
    } else {
        sql = String::from("SELECT COALESCE(SUM(n), 0) FROM activity_daily WHERE tenant_id = ?");
        if let Some(from) = from {
            sql.push_str(" AND day >= ?");
            args.push(SqlValue::Integer(time::day_of(from)));
        }
        if let Some(to) = to {
            sql.push_str(" AND day < ?");
            args.push(SqlValue::Integer(time::day_of(to)));
        }
    }
    if let Some(p) = &f.project_id {
        sql.push_str(" AND project_id = ?");
        args.push(SqlValue::Text(p.clone()));
    }
    if let Some(t) = f.event_type {
        sql.push_str(" AND event_type = ?");
        args.push(SqlValue::Integer(t.code()));
    }
    (sql, args)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn insert_events(
        &self,
        tenant: TenantId,
        max_events: Option<u64>,
        events: Vec<NewEvent>,
    ) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.writer
            .job_with_state(events.len(), move |conn, state| {
                insert_events_tx(conn, state, tenant, max_events, events)
            })
            .await
    }

    async fn list_activities(
        &self,
        tenant: TenantId,
        filter: &ActivityFilter,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(u64, Vec<StoredEvent>)> {
        let (list_sql, list_args) = listing_query(tenant, filter, offset, limit);
        let (count_sql, count_args) = count_query(tenant, filter);
        self.read(move |conn| {
            let count: i64 = conn
                .prepare_cached(&count_sql)?
                .query_row(params_from_iter(count_args), |r| r.get(0))?;
            let mut stmt = conn.prepare_cached(&list_sql)?;
            let rows = stmt
                .query_map(params_from_iter(list_args), event_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((count.max(0) as u64, rows))
        })
        .await
    }

    async fn get_activity(
        &self,
        tenant: TenantId,
        at: ActivityRef,
    ) -> StoreResult<Option<StoredEvent>> {
        self.read(move |conn| {
            let tenant_bytes = tenant.0.as_bytes().to_vec();
            let row = match at {
                ActivityRef::Id(id) => conn
                    .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1 AND tenant_id = ?2"))?
                    .query_row(params![id, tenant_bytes], event_from_row)
                    .optional()?,
                ActivityRef::Tracking(uuid) => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE tracking_id = ?1 AND tenant_id = ?2"
                    ))?
                    .query_row(params![uuid.as_bytes().to_vec(), tenant_bytes], event_from_row)
                    .optional()?,
            };
            Ok(row)
        })
        .await
    }

    async fn user_activity(
        &self,
        tenant: TenantId,
        user_id: &str,
        from_hour: Option<i64>,
        to_hour: Option<i64>,
    ) -> StoreResult<Vec<UserHourCount>> {
        let user = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT hour, project_id, event_type, event_name, n FROM user_activity_hourly
                 WHERE tenant_id = ?1 AND user_id = ?2 AND hour >= ?3 AND hour < ?4",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        tenant.0.as_bytes(),
                        user,
                        from_hour.unwrap_or(i64::MIN),
                        to_hour.unwrap_or(i64::MAX)
                    ],
                    |r| {
                        let project: String = r.get(1)?;
                        let code: i64 = r.get(2)?;
                        let n: i64 = r.get(4)?;
                        Ok(UserHourCount {
                            hour: r.get(0)?,
                            project_id: (!project.is_empty()).then_some(project),
                            event_type: EventType::from_code(code)
                                .ok_or(rusqlite::Error::IntegralValueOutOfRange(2, code))?,
                            event_name: r.get(3)?,
                            count: n.max(0) as u64,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn event_count(&self, tenant: TenantId) -> StoreResult<u64> {
        self.read(move |conn| tenant_event_count(conn, tenant))
            .await
    }
}
