//! The embedded backend: SQLite in WAL mode. One writer thread owns the only write
//! connection and group-commits: every operation queued while a commit is in flight joins
//! the next transaction, and each caller is answered only after that transaction has
//! committed (`synchronous=FULL`). Reads run on a small pool of connections on blocking
//! threads. Two background threads keep work off the writer: the user-index fold
//! (`user_index.rs`, its own file `<db>.users`) and WAL checkpoints (`checkpoint.rs`).

mod audit;
mod checkpoint;
pub mod deletion;
mod events;
mod gateway;
mod headroom;
mod identity;
mod profiles;
mod quotas;
mod schema;
mod usage;
mod user_index;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tally_core::pricing::{Nanos, NANOS_PER_USD};
use tally_core::TenantId;
use tokio::sync::Semaphore;

use crate::{StoreError, StoreResult};
use writer::Writer;

pub use headroom::{statvfs_probe, FreeSpaceProbe, DEFAULT_MIN_FREE_BYTES};

#[derive(Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub readers: usize,
    /// Page cache per connection, MiB.
    pub cache_mb: i64,
    /// Most queued write operations before callers wait (back-pressure).
    pub write_queue: usize,
    /// Open beside the process that owns the data dir (`datadir::lock`): no migrations (the
    /// schema must already be current), no user-index fold, no checkpoints. For operator
    /// commands that change a few rows (accounts, keys) while the server runs; SQLite
    /// serialises their writes with the owner's. Never insert events as a guest.
    pub guest: bool,
    /// Writes are refused while the filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// Where free space is read from (the OS by default; tests inject their own).
    pub free_space: FreeSpaceProbe,
    /// How long an answer of `free_space` is reused (zero: asked on every write).
    pub free_space_every: Duration,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readers: 4,
            cache_mb: 16,
            write_queue: 8192,
            guest: false,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            free_space: statvfs_probe(),
            free_space_every: headroom::PROBE_EVERY,
        }
    }
}

pub(crate) struct SqliteStore {
    writer: Writer,
    headroom: headroom::Headroom,
    /// Opened beside the data dir's owner (`SqliteConfig::guest`): it folds no user
    /// index, so it stores no events.
    guest: bool,
    /// `None` for a guest.
    checkpointer: Option<checkpoint::Checkpointer>,
    user_index: Arc<user_index::UserIndex>,
    readers: Arc<ReaderPool>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub(crate) fn open_connection(
    path: &Path,
    cache_mb: i64,
    read_only: bool,
) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    };
    let conn = Connection::open_with_flags(path, flags)?;
    // Lock conflicts (e.g. with `tally admin` in another process) last microseconds; SQLite's
    // default busy handler sleeps up to 100 ms per retry.
    conn.busy_handler(Some(retry_briefly))?;
    conn.pragma_update(None, "cache_size", -(cache_mb * 1024))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit has reached the disk before anyone is told it succeeded.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints run on their own thread (`checkpoint.rs`), not inside commits. The
        // log file is reused from its start, never truncated while running: cutting a
        // large file back (journal_size_limit) stalled the next commit for ~170 ms.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    Ok(conn)
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Without `shutdown`, still let the fold thread finish and exit.
        self.user_index.stop();
    }
}

/// Joins the thread in `handle` once (later calls do nothing), logging a panic.
pub(crate) fn join(handle: &Mutex<Option<JoinHandle<()>>>, what: &str) {
    let taken = handle.lock().ok().and_then(|mut h| h.take());
    if let Some(thread) = taken {
        if thread.join().is_err() {
            tracing::error!("{what} thread panicked");
        }
    }
}

/// `Condvar::wait_timeout` that shrugs off poisoning: the guarded state stays valid.
pub(crate) fn wait<'a, T>(
    signal: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    signal
        .wait_timeout(guard, timeout)
        .map(|(g, _)| g)
        .unwrap_or_else(|e| e.into_inner().0)
}

/// The writer's niceness. Request handling (nice 0) comes first on a busy core: a commit of
/// a hundred gateway records is milliseconds of CPU, and a request that arrives during it
/// on the same core would otherwise wait for it (the gateway's p99). The writer still gets
/// every cycle nobody else wants, and durable ingestion measured the same at 0 and 10.
pub(crate) const WRITER_NICE: i32 = 10;
/// Folds and checkpoints come after the writer.
pub(crate) const BACKGROUND_NICE: i32 = 15;

/// Lowers the calling thread's scheduling priority to `nice` (Linux: per thread), for work
/// that must not take the CPU from request handling on a small machine.
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::debug!(error = %e, "could not lower a background thread's priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Busy handler: retry every 50 µs for the first 10 ms, then every millisecond, and give
/// up (SQLITE_BUSY) after about 10 s.
pub(crate) fn retry_briefly(attempt: i32) -> bool {
    let pause = if attempt < 200 {
        std::time::Duration::from_micros(50)
    } else {
        std::time::Duration::from_millis(1)
    };
    std::thread::sleep(pause);
    attempt < 10_200
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and starts the writer.
    pub fn open(config: SqliteConfig) -> StoreResult<Self> {
        if let Some(dir) = config.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Internal(format!("failed to create {}: {e}", dir.display()))
                })?;
            }
        }
        let dir = match config.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let headroom = headroom::Headroom::new(
            dir,
            config.min_free_bytes,
            config.free_space.clone(),
            config.free_space_every,
        );
        if let Err(e) = headroom.check() {
            tracing::warn!(error = %e, "starting with reads only: writes are refused until free space returns");
        }
        let mut conn = open_connection(&config.path, config.cache_mb.max(8) * 2, false)?;
        let user_index = if config.guest {
            schema::require_current(&conn)?;
            user_index::UserIndex::inert(&config.path)
        } else {
            schema::migrate(&mut conn)?;
            user_index::UserIndex::open(&config.path, &conn)?
        };
        let log = Arc::new(checkpoint::LogLength::default());
        let mut readers = Vec::with_capacity(config.readers.max(1));
        for _ in 0..config.readers.max(1) {
            let reader = open_connection(&config.path, config.cache_mb, true)?;
            // Opened with the reader's flags (read-only); its tables resolve unqualified.
            reader.execute(
                "ATTACH DATABASE ?1 AS ux",
                [user_index.path().to_string_lossy()],
            )?;
            readers.push(reader);
        }
        Ok(Self {
            headroom,
            writer: Writer::start(
                conn,
                config.write_queue,
                writer::WriterState::new(
                    events::EventsTopic::new(user_index.clone()),
                    usage::UsageTopic::default(),
                ),
                log.clone(),
                !config.guest,
            )?,
            guest: config.guest,
            checkpointer: if config.guest {
                None
            } else {
                Some(checkpoint::Checkpointer::start(&config.path, log)?)
            },
            user_index,
            readers: Arc::new(ReaderPool {
                permits: Arc::new(Semaphore::new(readers.len())),
                conns: Mutex::new(readers),
            }),
            path: config.path,
        })
    }

    /// Stops accepting writes, commits everything queued, folds the user index, and waits
    /// for both threads.
    pub fn shutdown(&self) {
        if let Some(c) = &self.checkpointer {
            c.shutdown();
        }
        self.writer.shutdown();
        self.user_index.shutdown();
    }

    /// Runs `f` on a reader connection on a blocking thread.
    async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let pool = self.readers.clone();
        let permit = pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("reader pool closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.put(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("reader task failed: {e}")))?
    }

    /// Runs `f` inside the writer's next transaction; resolves after it commits. Refused
    /// while free space is below the floor.
    async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.headroom.check()?;
        self.writer.job(f).await
    }

    /// [`write`](Self::write) of data owned by `tenant`: refused when the tenant no longer
    /// exists, checked inside the transaction, so that a request authenticated just before
    /// its tenant was deleted cannot leave rows behind.
    async fn write_for<R, F>(&self, tenant: TenantId, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.write_for_weighted(tenant, 1, move |conn, _| f(conn))
            .await
    }

    /// [`write_for`](Self::write_for) of `weight` rows, with the writer's state.
    async fn write_for_weighted<R, F>(
        &self,
        tenant: TenantId,
        weight: usize,
        f: F,
    ) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut writer::WriterState) -> StoreResult<R> + Send + 'static,
    {
        self.write_with_state(weight, move |conn, state| {
            require_tenant(conn, tenant)?;
            f(conn, state)
        })
        .await
    }

    /// A write that goes through below the free-space floor: security changes (ending
    /// sessions, disabling or deleting accounts, revoking keys) must never wait for disk
    /// space. Each is one small row.
    async fn write_essential<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.writer.job(f).await
    }

    /// Like [`write`](Self::write), with the writer's state.
    async fn write_with_state<R, F>(&self, weight: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut writer::WriterState) -> StoreResult<R> + Send + 'static,
    {
        self.headroom.check()?;
        self.writer.job_with_state(weight, f).await
    }
}

struct ReaderPool {
    permits: Arc<Semaphore>,
    conns: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> StoreResult<Connection> {
        self.conns
            .lock()
            .map_err(|_| StoreError::Internal("reader pool poisoned".into()))?
            .pop()
            .ok_or_else(|| StoreError::Internal("reader pool empty despite permit".into()))
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut v) = self.conns.lock() {
            v.push(conn);
        }
    }
}

/// `NotFound` unless the tenant exists (in the caller's transaction).
pub(crate) fn require_tenant(conn: &Connection, tenant: TenantId) -> StoreResult<()> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")?
        .exists([tenant.0.as_bytes()])?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::NotFound("tenant".into()))
    }
}

/// A stored text column that does not hold what the code expects (an unknown enum value).
pub(crate) fn conversion_error(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        Box::new(StoreError::Internal(msg)),
    )
}

/// An exact SQL sum of a nano-dollar column over any number of rows, as two sums that
/// cannot overflow `i64` (whole dollars, then the remaining nano-dollars); read it back
/// with [`money_sum_at`].
pub(crate) fn money_sum_sql(column: &str) -> String {
    format!("coalesce(sum({column} / 1000000000), 0), coalesce(sum({column} % 1000000000), 0)")
}

/// Reads the two columns of [`money_sum_sql`] starting at `at`.
pub(crate) fn money_sum_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Nanos> {
    let whole: i64 = r.get(at)?;
    let rest: i64 = r.get(at + 1)?;
    Ok(Nanos(i128::from(whole) * NANOS_PER_USD + i128::from(rest)))
}

/// Reads a stored nano-dollar amount.
pub(crate) fn nanos_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Nanos> {
    r.get::<_, i64>(at).map(Nanos::from)
}

/// The stored form of one row's amount; an amount beyond a 64-bit column is refused
/// instead of wrapping or turning into a float.
pub(crate) fn money_column(n: Nanos) -> StoreResult<i64> {
    n.to_i64().ok_or_else(|| {
        StoreError::Conflict(format!(
            "a stored cost total would exceed {} USD",
            Nanos::from(i64::MAX)
        ))
    })
}

/// Converts a stored 16-byte blob to a UUID.
pub(crate) fn uuid_from(bytes: Vec<u8>) -> rusqlite::Result<uuid::Uuid> {
    uuid::Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(16, rusqlite::types::Type::Blob, Box::new(e))
    })
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full,
            Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}
