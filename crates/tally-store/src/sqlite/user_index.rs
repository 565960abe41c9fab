//! Structures keyed by tracked user (`user_events` and the `user_activity_hourly` rollup)
//! are not written on every commit: with thousands of active users that would dirty about
//! one B-tree page per event and per structure. Instead the writer stages each committed
//! event here, in memory, and a fold thread of its own writes the staged entries into both
//! tables in one sorted bulk transaction about once a second, recording a watermark (the
//! highest event id folded) in the same transaction.
//!
//! The tables live in a database file of their own (`<db>.users`), so a fold never holds up
//! the event writer: the two commit side by side. The file is derived data: its commits
//! skip fsync (`synchronous=NORMAL`; WAL keeps them atomic) and, when it is missing, behind,
//! or from another history, `open` rebuilds it from the durable `events` table.
//!
//! Exactness: readers take the staged entries first (those being folded and those staged
//! since), then read the tables and the watermark in one snapshot, dropping staged entries
//! at or below the watermark. Event ids grow in commit order and entries are staged in that
//! order, so everything at or below a watermark is folded and nothing above it is. A fold
//! writes only entries above the watermark it reads inside its own transaction, so folding
//! the same entry twice (another process recovering, a retried fold) counts it once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tally_core::event::EventType;
use tally_core::time;
use tally_core::TenantId;

use super::{schema, uuid_from};
use crate::{StoreError, StoreResult};

/// Fold staged entries at least this often…
const FLUSH_AGE: Duration = Duration::from_secs(1);
/// …or as soon as this many are staged.
const FLUSH_ROWS: usize = 100_000;
/// Past this many entries in memory the writer waits for the fold (back-pressure), for at
/// most `STALL_LIMIT` per commit.
const MAX_STAGED: usize = 1_000_000;
const STALL_LIMIT: Duration = Duration::from_secs(1);
/// How often the fold thread looks at the staged entries' age.
const TICK: Duration = Duration::from_millis(100);
/// Events re-staged per fold when rebuilding from `events`.
const RECOVERY_CHUNK: i64 = 100_000;

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

impl Staged {
    /// Drops the entries `purge` names; returns how many.
    fn remove(&mut self, purge: &Purge) -> usize {
        let mut removed = 0;
        self.by_user.retain(|key, events| {
            let keep = !purge.matches(key);
            if !keep {
                removed += events.len();
            }
            keep
        });
        self.rows -= removed;
        removed
    }

    fn add(&mut self, entries: Vec<(UserKey, StagedEvent)>) {
        self.rows += entries.len();
        self.since.get_or_insert_with(Instant::now);
        for (key, e) in entries {
            self.by_user.entry(key).or_default().push(e);
        }
    }
}

/// Rows of the index to delete: a tenant's, or one tracked user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purge {
    Tenant(TenantId),
    User(TenantId, String),
}

impl Purge {
    fn matches(&self, (tenant, user): &UserKey) -> bool {
        match self {
            Purge::Tenant(t) => t == tenant,
            Purge::User(t, u) => t == tenant && u == user,
        }
    }
}

type PurgeReply = tokio::sync::oneshot::Sender<StoreResult<BTreeMap<String, u64>>>;

/// What is in memory: the generation a fold is writing, and what was staged since.
#[derive(Default)]
struct Generations {
    folding: Option<Arc<Staged>>,
    current: Staged,
    stopping: bool,
    /// Deletions for the fold thread, which owns the index's file.
    purges: Vec<(Purge, PurgeReply)>,
}

impl Generations {
    fn rows(&self) -> usize {
        self.current.rows + self.folding.as_ref().map_or(0, |f| f.rows)
    }

    fn fold_due(&self) -> bool {
        self.stopping
            || !self.purges.is_empty()
            || self.folding.is_some()
            || self.current.rows >= FLUSH_ROWS
            || self.current.since.is_some_and(|t| t.elapsed() >= FLUSH_AGE)
    }
}

pub(crate) struct UserIndex {
    path: PathBuf,
    state: Mutex<Generations>,
    /// Signalled when a fold is due early (many rows, shutdown) and when a fold finished.
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// `<db>.users` next to the main database file.
fn path_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".users");
    db.with_file_name(name)
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(super::retry_briefly))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Derived data: a commit lost to a power cut is re-folded from `events` at open.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -16 * 1024)?;
    conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
    schema::apply(&mut conn, schema::USER_INDEX_MIGRATIONS)?;
    Ok(conn)
}

impl UserIndex {
    /// Opens (creating if needed) the index next to the main database, folds every event
    /// of `main` above its watermark, and starts the fold thread.
    pub(crate) fn open(db_path: &Path, main: &Connection) -> StoreResult<Arc<Self>> {
        let path = path_for(db_path);
        let conn = open_connection(&path)?;
        let index = Arc::new(Self {
            path,
            state: Mutex::new(Generations::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        replay_purges(main, &conn)?;
        index.recover(main, &conn)?;
        let me = index.clone();
        let handle = std::thread::Builder::new()
            .name("tally-user-index".into())
            .spawn(move || me.run(conn))
            .map_err(|e| StoreError::Internal(format!("failed to start user index: {e}")))?;
        *index
            .thread
            .lock()
            .map_err(|_| StoreError::Internal("user index lock poisoned".into()))? = Some(handle);
        Ok(index)
    }

    /// The index of a guest process (`SqliteConfig::guest`): its file is the owner's, and
    /// nothing is folded here.
    pub(crate) fn inert(db_path: &Path) -> Arc<Self> {
        Arc::new(Self {
            path: path_for(db_path),
            state: Mutex::new(Generations::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        })
    }

    /// The index's database file, attached to reader connections as `ux`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the writer after a commit succeeded, before its callers are answered, so
    /// that a client sees its own acknowledged events. Waits (bounded) when the fold has
    /// fallen far behind.
    pub(crate) fn publish(&self, entries: Vec<(UserKey, StagedEvent)>) {
        if entries.is_empty() {
            return;
        }
        let mut g = self.generations();
        if g.rows() >= MAX_STAGED {
            let deadline = Instant::now() + STALL_LIMIT;
            self.changed.notify_all();
            while g.rows() >= MAX_STAGED {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(staged = g.rows(), "user index fold is behind");
                    break;
                }
                g = super::wait(&self.changed, g, left);
            }
        }
        g.current.add(entries);
        if g.current.rows >= FLUSH_ROWS {
            self.changed.notify_all();
        }
    }

    /// The staged entries of one user (a snapshot; take it before reading the tables).
    pub(crate) fn staged_for(&self, tenant: TenantId, user: &str) -> Vec<StagedEvent> {
        let g = self.generations();
        let key = (tenant, user.to_owned());
        let mut out = Vec::new();
        if let Some(f) = &g.folding {
            out.extend(f.by_user.get(&key).into_iter().flatten().cloned());
        }
        out.extend(g.current.by_user.get(&key).into_iter().flatten().cloned());
        out
    }

    /// Deletes the rows (staged and folded) that `what` names, on the fold thread, after
    /// any fold in progress; returns the rows deleted per table.
    pub(crate) async fn purge(&self, what: Purge) -> StoreResult<BTreeMap<String, u64>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut g = self.generations();
            let running = self.thread.lock().map(|t| t.is_some()).unwrap_or(false);
            if g.stopping || !running {
                return Err(StoreError::Unavailable(
                    "the user index is not running in this process".into(),
                ));
            }
            g.purges.push((what, reply));
        }
        self.changed.notify_all();
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the user index stopped".into()))?
    }

    /// Runs the queued purges: staged entries first (under the lock), then the tables.
    fn run_purges(&self, conn: &Connection) {
        let purges = {
            let mut g = self.generations();
            let purges = std::mem::take(&mut g.purges);
            for (what, _) in &purges {
                g.current.remove(what);
                if let Some(folding) = &g.folding {
                    if folding.by_user.keys().any(|k| what.matches(k)) {
                        let mut kept = Staged {
                            by_user: folding.by_user.clone(),
                            rows: folding.rows,
                            since: folding.since,
                        };
                        kept.remove(what);
                        g.folding = Some(Arc::new(kept));
                    }
                }
            }
            purges
        };
        for (what, reply) in purges {
            let _ = reply.send(purge_rows(conn, &what));
        }
    }

    /// Asks the fold thread to fold what is staged and exit, without waiting.
    pub(crate) fn stop(&self) {
        self.generations().stopping = true;
        self.changed.notify_all();
    }

    /// Folds what is staged, then stops the fold thread. Blocks.
    pub(crate) fn shutdown(&self) {
        self.stop();
        super::join(&self.thread, "user index");
    }

    fn run(&self, conn: Connection) {
        super::background_priority();
        loop {
            let (batch, stop) = {
                let mut g = self.generations();
                while !g.fold_due() {
                    g = super::wait(&self.changed, g, TICK);
                }
                if g.folding.is_none() && g.current.rows > 0 {
                    g.folding = Some(Arc::new(std::mem::take(&mut g.current)));
                }
                (g.folding.clone(), g.stopping && g.current.rows == 0)
            };
            if let Some(batch) = batch {
                let t0 = Instant::now();
                match fold(&conn, &batch) {
                    Ok(()) => {
                        self.generations().folding = None;
                        self.changed.notify_all();
                        tracing::trace!(
                            rows = batch.rows,
                            ms = t0.elapsed().as_millis() as u64,
                            "user index folded"
                        );
                    }
                    Err(e) if stop => {
                        // Derived data: the next open folds these from `events`.
                        tracing::error!(error = %e, "failed to fold the user index at shutdown");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "failed to fold the user index; will retry");
                        std::thread::sleep(TICK);
                    }
                }
            }
            self.run_purges(&conn);
            if stop && self.generations().folding.is_none() {
                break;
            }
        }
        self.run_purges(&conn);
    }

    /// Folds every event of `main` above the index's watermark, in chunks of event ids.
    /// An index whose watermark is past the last event belongs to another history (a
    /// restored backup): it is emptied and rebuilt.
    fn recover(&self, main: &Connection, index: &Connection) -> StoreResult<()> {
        let mut watermark = watermark(index)?;
        let last: i64 =
            main.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        if watermark > last {
            tracing::warn!(
                watermark,
                last,
                "user index is ahead of the events table; rebuilding it"
            );
            index.execute_batch(
                "BEGIN IMMEDIATE;
                 DELETE FROM user_events;
                 DELETE FROM user_activity_hourly;
                 UPDATE fold_watermark SET event_id = 0;
                 COMMIT;",
            )?;
            watermark = 0;
        }
        if watermark < last {
            tracing::info!(
                from = watermark,
                to = last,
                "folding events not yet in the user index"
            );
        }
        let mut stmt = main.prepare(
            "SELECT e.id, k.tenant_id, e.user_id, e.ts, e.project_id, e.event_type, e.event_name
             FROM events e JOIN tenant_keys k ON k.key = e.tenant_key
             WHERE e.id > ?1 AND e.id <= ?2 AND e.user_id IS NOT NULL ORDER BY e.id",
        )?;
        while watermark < last {
            let upto = watermark.saturating_add(RECOVERY_CHUNK).min(last);
            let rows = stmt.query_map([watermark, upto], |r| {
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
            let mut chunk = Staged::default();
            chunk.add(rows.collect::<Result<Vec<_>, _>>()?);
            fold_upto(index, &chunk, upto)?;
            watermark = upto;
        }
        Ok(())
    }
}

/// Runs the purges a deletion committed in the main database but the index never did (a
/// crash in between), then forgets them.
fn replay_purges(main: &Connection, index: &Connection) -> StoreResult<()> {
    let pending: Vec<(i64, Vec<u8>, Option<String>)> = main
        .prepare("SELECT id, tenant_id, user_id FROM pending_purges ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (id, tenant, user) in pending {
        let tenant = TenantId(uuid_from(tenant)?);
        let what = match user {
            Some(u) => Purge::User(tenant, u),
            None => Purge::Tenant(tenant),
        };
        let rows = purge_rows(index, &what)?;
        tracing::info!(?what, ?rows, "finished a purge of the user index cut short");
        main.execute("DELETE FROM pending_purges WHERE id = ?1", [id])?;
    }
    Ok(())
}

/// Deletes the index rows `what` names, in one transaction, durably (unlike folds, a
/// purge cannot be redone from `events` once its pending record is gone).
fn purge_rows(conn: &Connection, what: &Purge) -> StoreResult<BTreeMap<String, u64>> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let result = purge_rows_once(conn, what);
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    result
}

fn purge_rows_once(conn: &Connection, what: &Purge) -> StoreResult<BTreeMap<String, u64>> {
    let (clause, tenant, user) = match what {
        Purge::Tenant(t) => ("tenant_id = ?1", *t, None),
        Purge::User(t, u) => ("tenant_id = ?1 AND user_id = ?2", *t, Some(u.as_str())),
    };
    immediate(conn, || {
        let mut rows = BTreeMap::new();
        for table in USER_INDEX_TABLES {
            let sql = format!("DELETE FROM {table} WHERE {clause}");
            let n = match user {
                None => conn.execute(&sql, [tenant.0.as_bytes().to_vec()])?,
                Some(u) => conn.execute(&sql, params![tenant.0.as_bytes(), u])?,
            };
            rows.insert((*table).to_owned(), n as u64);
        }
        Ok(rows)
    })
}

/// Runs `f` in one write transaction on the index's connection, rolled back if it fails.
fn immediate<T>(conn: &Connection, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f().and_then(|v| {
        conn.execute_batch("COMMIT")
            .map(|()| v)
            .map_err(StoreError::from)
    }) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The index's tables that hold tenant data (`fold_watermark` is the index's own state).
pub const USER_INDEX_TABLES: &[&str] = &["user_activity_hourly", "user_events"];

/// Writes one generation in one transaction.
fn fold(conn: &Connection, staged: &Staged) -> StoreResult<()> {
    let max_id = staged
        .by_user
        .values()
        .flatten()
        .map(|e| e.id)
        .max()
        .unwrap_or(0);
    fold_upto(conn, staged, max_id)
}

/// Writes the entries of `staged` above the stored watermark and moves the watermark to
/// `upto` (at least the highest entry), in one transaction.
fn fold_upto(conn: &Connection, staged: &Staged, upto: i64) -> StoreResult<()> {
    immediate(conn, || {
        let from = watermark(conn)?;
        if upto > from {
            write_sorted(conn, &staged.by_user, from, upto)?;
        }
        Ok(())
    })
}

fn write_sorted(
    conn: &Connection,
    by_user: &HashMap<UserKey, Vec<StagedEvent>>,
    from: i64,
    upto: i64,
) -> StoreResult<()> {
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
    for ((tenant, user), events) in by_user {
        for e in events.iter().filter(|e| e.id > from && e.id <= upto) {
            entries.push((tenant, time::day_of(e.ts), user.as_str(), e));
        }
    }
    entries.sort_unstable_by(|a, b| {
        (a.0, a.1, a.2, a.3.ts, a.3.id).cmp(&(b.0, b.1, b.2, b.3.ts, b.3.id))
    });
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
    conn.execute("UPDATE fold_watermark SET event_id = ?1", [upto])?;
    Ok(())
}

/// The highest event id folded into the user tables, as seen by `conn`'s snapshot (the
/// index's own connection, or a reader with the index attached).
pub(crate) fn watermark(conn: &Connection) -> StoreResult<i64> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT event_id FROM fold_watermark")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.unwrap_or(0))
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
