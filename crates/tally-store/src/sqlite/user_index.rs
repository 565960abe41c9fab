//! Structures keyed by tracked user (`user_events` and the `user_activity_hourly` rollup)
//! are not written on every commit: with thousands of active users that would dirty about
//! one B-tree page per event and per structure. Instead the writer stages each committed
//! event here, in memory, and folds the staged entries into both tables in one sorted bulk
//! transaction about once a second, recording a watermark (the highest event id folded).
//!
//! Exactness: readers merge the staged entries with what the tables hold, dropping staged
//! entries at or below the watermark they read in the same snapshot. After a crash, `open`
//! re-stages every event above the watermark from the durable `events` table.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tally_core::event::EventType;
use tally_core::time;
use tally_core::TenantId;

use super::uuid_from;
use crate::{StoreError, StoreResult};

const WATERMARK_KEY: &str = "user_index.watermark";
/// Fold staged entries at least this often…
const FLUSH_AGE: Duration = Duration::from_secs(1);
/// …or as soon as this many are staged.
const FLUSH_ROWS: usize = 100_000;

/// One committed event of a tracked user, not yet folded into the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StagedEvent {
    pub id: i64,
    pub ts: i64,
    /// `""` when the event has no project.
    pub project: String,
    pub event_type: i64,
    pub event_name: String,
}

pub(crate) type UserKey = (TenantId, String);

#[derive(Default)]
struct Staged {
    by_user: HashMap<UserKey, Vec<StagedEvent>>,
    rows: usize,
    since: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct UserIndex {
    staged: RwLock<Staged>,
}

impl UserIndex {
    /// Called by the writer after a commit succeeded, before its callers are answered, so
    /// that a client sees its own acknowledged events.
    pub(crate) fn publish(&self, entries: Vec<(UserKey, StagedEvent)>) {
        if entries.is_empty() {
            return;
        }
        let Ok(mut s) = self.staged.write() else {
            return;
        };
        s.rows += entries.len();
        s.since.get_or_insert_with(Instant::now);
        for (key, e) in entries {
            s.by_user.entry(key).or_default().push(e);
        }
    }

    pub(crate) fn flush_due(&self) -> bool {
        self.staged
            .read()
            .map(|s| s.rows >= FLUSH_ROWS || s.since.is_some_and(|t| t.elapsed() >= FLUSH_AGE))
            .unwrap_or(false)
    }

    /// The staged entries of one user (a snapshot; take it before reading the tables).
    pub(crate) fn staged_for(&self, tenant: TenantId, user: &str) -> Vec<StagedEvent> {
        self.staged
            .read()
            .ok()
            .and_then(|s| s.by_user.get(&(tenant, user.to_owned())).cloned())
            .unwrap_or_default()
    }

    /// Folds everything staged into the tables in one transaction. Runs on the writer
    /// thread, between group commits.
    pub(crate) fn flush(&self, conn: &Connection) -> StoreResult<()> {
        let max_id = {
            let s = self
                .staged
                .read()
                .map_err(|_| StoreError::Internal("user index lock poisoned".into()))?;
            if s.rows == 0 {
                return Ok(());
            }
            let keys: Vec<&UserKey> = s.by_user.keys().collect();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = write_sorted(conn, &s.by_user, &keys);
            match result {
                Ok(max_id) => {
                    if let Err(e) = conn.execute_batch("COMMIT") {
                        let _ = conn.execute_batch("ROLLBACK");
                        return Err(e.into());
                    }
                    max_id
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        };
        // Only the writer thread adds entries, and it is here: nothing was staged meanwhile.
        if let Ok(mut s) = self.staged.write() {
            *s = Staged::default();
        }
        tracing::trace!(max_id, "user index flushed");
        Ok(())
    }

    /// Re-stages events committed after the last flush (after a crash) and folds them.
    pub(crate) fn recover(&self, conn: &Connection) -> StoreResult<()> {
        let watermark = watermark(conn)?;
        let mut stmt = conn.prepare(
            "SELECT id, tenant_id, user_id, ts, project_id, event_type, event_name FROM events
             WHERE id > ?1 AND user_id IS NOT NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([watermark], |r| {
            Ok((
                (TenantId(uuid_from(r.get(1)?)?), r.get::<_, String>(2)?),
                StagedEvent {
                    id: r.get(0)?,
                    ts: r.get(3)?,
                    project: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    event_type: r.get(5)?,
                    event_name: r.get(6)?,
                },
            ))
        })?;
        let entries = rows.collect::<Result<Vec<_>, _>>()?;
        if !entries.is_empty() {
            tracing::info!(
                events = entries.len(),
                "re-indexing events committed after the last user-index flush"
            );
            self.publish(entries);
            self.flush(conn)?;
        }
        Ok(())
    }
}

fn write_sorted(
    conn: &Connection,
    by_user: &HashMap<UserKey, Vec<StagedEvent>>,
    keys: &[&UserKey],
) -> StoreResult<i64> {
    let mut index = conn.prepare_cached(
        "INSERT OR IGNORE INTO user_events (tenant_id, day, user_id, ts, event_id, project_id, event_type)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut rollup = conn.prepare_cached(
        "INSERT INTO user_activity_hourly (tenant_id, day, user_id, hour, project_id, event_type, event_name, n)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (tenant_id, day, user_id, hour, project_id, event_type, event_name) DO UPDATE SET n = n + excluded.n",
    )?;
    // Everything in the tables' key order, so each leaf page is visited once.
    let mut entries: Vec<(&TenantId, i64, &str, &StagedEvent)> = Vec::new();
    for key in keys {
        let (tenant, user) = key;
        for e in &by_user[*key] {
            entries.push((tenant, time::day_of(e.ts), user.as_str(), e));
        }
    }
    entries.sort_by(|a, b| (a.0, a.1, a.2, a.3.ts, a.3.id).cmp(&(b.0, b.1, b.2, b.3.ts, b.3.id)));
    let mut max_id = 0;
    type HourKey<'a> = (&'a TenantId, i64, &'a str, i64, &'a str, i64, &'a str);
    let mut hours: BTreeMap<HourKey<'_>, i64> = BTreeMap::new();
    for (tenant, day, user, e) in &entries {
        index.execute(params![
            tenant.0.as_bytes(),
            day,
            user,
            e.ts,
            e.id,
            e.project,
            e.event_type
        ])?;
        let key = (
            *tenant,
            *day,
            *user,
            time::hour_of(e.ts),
            e.project.as_str(),
            e.event_type,
            e.event_name.as_str(),
        );
        *hours.entry(key).or_default() += 1;
        max_id = max_id.max(e.id);
    }
    for ((tenant, day, user, hour, project, ty, name), n) in hours {
        rollup.execute(params![
            tenant.0.as_bytes(),
            day,
            user,
            hour,
            project,
            ty,
            name,
            n
        ])?;
    }
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![WATERMARK_KEY, max_id.to_string()],
    )?;
    Ok(max_id)
}

/// The highest event id folded into the user tables, as seen by `conn`'s snapshot.
pub(crate) fn watermark(conn: &Connection) -> StoreResult<i64> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([WATERMARK_KEY], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Staged entries not yet visible in the snapshot whose watermark is `watermark`.
pub(crate) fn unfolded(
    staged: Vec<StagedEvent>,
    watermark: i64,
) -> impl Iterator<Item = StagedEvent> {
    staged.into_iter().filter(move |e| e.id > watermark)
}

pub(crate) fn event_type_of(code: i64) -> rusqlite::Result<EventType> {
    EventType::from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(0, code))
}
