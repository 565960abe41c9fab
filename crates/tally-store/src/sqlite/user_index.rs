//! Structures keyed by tracked user (`user_events` and the `user_activity_hourly` rollup)
//! are not written on every commit: with thousands of active users that would dirty about
//! one B-tree page per event and per structure. Instead the writer stages each committed
//! event here, in memory, and a fold thread of its own writes the staged entries into both
//! tables in one sorted bulk transaction about once a second, recording a watermark (the
//! highest commit sequence folded, `commit_log`) in the same transaction.
//!
//! The tables live in a database file of their own (`<db>.users`), so a fold never holds up
//! the event writer: the two commit side by side. The file is derived data: when it is
//! missing, behind, or from another history, `open` rebuilds or completes it from the
//! durable `events` table.
//!
//! Exactness: every staged entry carries the commit sequence of the transaction that
//! stored its event. Readers take the staged entries first (those being folded and those
//! staged since), then read the tables and the watermark in one snapshot, dropping staged
//! entries of commits at or below the watermark. Entries are published in commit order, so
//! every commit at or below a watermark is folded and none above it is; nothing depends on
//! the order event ids are handed out in. A fold writes only entries of commits above the
//! watermark it reads inside its own transaction, and counts an event in the hourly rollup
//! only when its `user_events` row is new, so folding the same event twice (another
//! process recovering, a retried fold, two commits naming one reused id) counts it once.
//!
//! Recovery: each commit records which event ids it inserted (`event_commits`, main
//! database, in the same transaction); at open the commits above the watermark are folded
//! from `events`. A missing index, one older than this scheme, or one ahead of the main
//! database (a restored backup) is rebuilt from every event.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tally_core::event::EventType;
use tally_core::time;
use tally_core::TenantId;

use super::{schema, uuid_from};
use crate::{CommitSeq, StoreError, StoreResult};

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
    /// The commit sequence of the transaction that stored the event.
    pub commit: i64,
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
    /// The highest commit folded durably (the index's watermark, as this process last
    /// wrote or read it).
    folded: AtomicI64,
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
    // Durable: the writer prunes `event_commits` below the watermark a fold wrote, so the
    // watermark must not go back after a power cut (one fsync a fold, about once a
    // second).
    conn.pragma_update(None, "synchronous", "FULL")?;
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
            folded: AtomicI64::new(0),
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
            folded: AtomicI64::new(0),
        })
    }

    /// The highest commit whose entries are folded durably: `event_commits` rows at or
    /// below it are no longer needed.
    pub(crate) fn folded(&self) -> CommitSeq {
        CommitSeq(self.folded.load(Ordering::Acquire))
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
        super::lower_priority(super::BACKGROUND_NICE);
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
                    Ok(upto) => {
                        self.folded.fetch_max(upto, Ordering::AcqRel);
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

    /// Brings the index up to the main database's last commit: folds, from `events`, the
    /// commits above its watermark (`event_commits` names their events), or rebuilds it
    /// from every event when it is new, older than commit sequences, or ahead of the main
    /// database (a restored backup: another history), or older than the commits
    /// `event_commits` still names (an index restored from an older copy).
    fn recover(&self, main: &Connection, index: &Connection) -> StoreResult<()> {
        let (head, pruned): (i64, i64) =
            main.query_row("SELECT seq, pruned_through FROM commit_log", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let watermark = watermark(index)?;
        if watermark >= 0 && watermark < pruned {
            tracing::warn!(
                watermark,
                pruned,
                "user index is older than the commits it could be completed from; rebuilding it"
            );
            rebuild(main, index, head)?;
        } else if watermark > head {
            tracing::warn!(
                watermark,
                head,
                "user index is ahead of the main database; rebuilding it"
            );
            rebuild(main, index, head)?;
        } else if watermark < 0 {
            tracing::info!("building the user index from the events");
            rebuild(main, index, head)?;
        } else if watermark < head {
            catch_up(main, index, watermark, head)?;
        }
        self.folded.store(head, Ordering::Release);
        Ok(())
    }
}

/// The events of tracked users among ids `[first, last]`, each tagged with `commit`.
fn events_between(
    stmt: &mut rusqlite::CachedStatement<'_>,
    first: i64,
    last: i64,
    commit: i64,
) -> StoreResult<Vec<(UserKey, StagedEvent)>> {
    let rows = stmt.query_map([first, last], |r| {
        Ok((
            (TenantId(uuid_from(r.get(1)?)?), r.get::<_, String>(2)?),
            StagedEvent {
                id: r.get(0)?,
                commit,
                ts: r.get(3)?,
                project: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                event_type: r.get(5)?,
                event_name: r.get(6)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const EVENTS_BETWEEN: &str =
    "SELECT e.id, k.tenant_id, e.user_id, e.ts, e.project_id, e.event_type, e.event_name
     FROM events e JOIN tenant_keys k ON k.key = e.tenant_key
     WHERE e.id >= ?1 AND e.id <= ?2 AND e.user_id IS NOT NULL";

/// Empties the index and folds every event into it, in chunks of ids, then sets the
/// watermark to `head`. The watermark stays below zero until the end, so a rebuild cut
/// short starts over at the next open.
fn rebuild(main: &Connection, index: &Connection, head: i64) -> StoreResult<()> {
    immediate(index, || {
        index.execute_batch(
            "DELETE FROM user_events;
             DELETE FROM user_activity_hourly;
             UPDATE fold_watermark SET commit_seq = -1;",
        )?;
        Ok(())
    })?;
    let (low, high): (i64, i64) = main.query_row(
        "SELECT coalesce(min(id), 0), coalesce(max(id), -1) FROM events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut stmt = main.prepare_cached(EVENTS_BETWEEN)?;
    let mut from = low;
    while from <= high {
        let to = from.saturating_add(RECOVERY_CHUNK - 1).min(high);
        let mut chunk = Staged::default();
        chunk.add(events_between(&mut stmt, from, to, head)?);
        immediate(index, || {
            write_sorted(index, &chunk.by_user, i64::MIN, head)
        })?;
        from = to.saturating_add(1);
    }
    immediate(index, || set_watermark(index, head))
}

/// Folds the commits in `(watermark, head]` from `events`, in chunks of commits, then
/// moves the watermark to `head`.
fn catch_up(main: &Connection, index: &Connection, watermark: i64, head: i64) -> StoreResult<()> {
    let commits: Vec<(i64, i64, i64)> = main
        .prepare_cached(
            "SELECT seq, first_id, last_id FROM event_commits WHERE seq > ?1 AND seq <= ?2
             ORDER BY seq",
        )?
        .query_map([watermark, head], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    if !commits.is_empty() {
        tracing::info!(
            commits = commits.len(),
            from = watermark,
            to = head,
            "folding commits not yet in the user index"
        );
    }
    let mut stmt = main.prepare_cached(EVENTS_BETWEEN)?;
    let mut chunk = Staged::default();
    for (seq, first, last) in commits {
        chunk.add(events_between(&mut stmt, first, last, seq)?);
        if chunk.rows >= RECOVERY_CHUNK as usize {
            fold_upto(index, &chunk, seq)?;
            chunk = Staged::default();
        }
    }
    fold_upto(index, &chunk, head)
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

/// Deletes the index rows `what` names, in one transaction, durably (a purge cannot be
/// redone from `events` once its pending record is gone).
fn purge_rows(conn: &Connection, what: &Purge) -> StoreResult<BTreeMap<String, u64>> {
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

/// Writes one generation in one transaction; returns the watermark it leaves (the
/// generation's last commit).
fn fold(conn: &Connection, staged: &Staged) -> StoreResult<i64> {
    let upto = staged
        .by_user
        .values()
        .flatten()
        .map(|e| e.commit)
        .max()
        .unwrap_or(0);
    fold_upto(conn, staged, upto)?;
    Ok(upto)
}

/// Writes the entries of `staged` whose commit is above the stored watermark and at most
/// `upto`, and moves the watermark to `upto`, in one transaction. A watermark at or past
/// `upto` (another process folded these commits) leaves everything as it is.
fn fold_upto(conn: &Connection, staged: &Staged, upto: i64) -> StoreResult<()> {
    immediate(conn, || {
        let from = watermark(conn)?;
        if upto > from {
            write_sorted(conn, &staged.by_user, from, upto)?;
            set_watermark(conn, upto)?;
        }
        Ok(())
    })
}

fn set_watermark(conn: &Connection, commit: i64) -> StoreResult<()> {
    conn.prepare_cached("UPDATE fold_watermark SET commit_seq = ?1")?
        .execute([commit])?;
    Ok(())
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
        for e in events
            .iter()
            .filter(|e| e.commit > from && e.commit <= upto)
        {
            entries.push((tenant, time::day_of(e.ts), user.as_str(), e));
        }
    }
    entries.sort_unstable_by(|a, b| {
        (a.0, a.1, a.2, a.3.ts, a.3.id).cmp(&(b.0, b.1, b.2, b.3.ts, b.3.id))
    });
    type HourKey<'a> = (&'a TenantId, i64, &'a str, i64, &'a str, i64, &'a str);
    let mut hours: BTreeMap<HourKey<'_>, i64> = BTreeMap::new();
    for (tenant, day, user, e) in &entries {
        let new = index.execute(params![
            tenant.0.as_bytes(),
            day,
            user,
            e.ts,
            e.id,
            e.project,
            e.event_type
        ])?;
        if new == 0 {
            // Folded before: counted before.
            continue;
        }
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
    Ok(())
}

/// The highest commit folded into the user tables, as seen by `conn`'s snapshot (the
/// index's own connection, or a reader with the index attached); below zero for an index
/// not yet built under commit sequences.
pub(crate) fn watermark(conn: &Connection) -> StoreResult<i64> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT commit_seq FROM fold_watermark")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.unwrap_or(0))
}

/// Staged entries not yet visible in the snapshot whose watermark is `watermark`.
pub(crate) fn unfolded(
    staged: Vec<StagedEvent>,
    watermark: i64,
) -> impl Iterator<Item = StagedEvent> {
    staged.into_iter().filter(move |e| e.commit > watermark)
}

pub(crate) fn event_type_of(code: i64) -> rusqlite::Result<EventType> {
    EventType::from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(0, code))
}
