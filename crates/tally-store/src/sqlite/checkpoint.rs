//! WAL checkpoints on a background thread with a connection of its own, so a commit never
//! waits for the log to be copied back into the database file. Only passive checkpoints:
//! they never take the write lock and never wait for readers.
//!
//! SQLite starts the log over from its beginning only when a write transaction begins
//! after a checkpoint copied *every* frame, which never happens while commits keep
//! arriving. So the background thread copies the bulk and reports the log's length; once
//! the log passes `RESTART_AT_FRAMES` the writer runs one passive checkpoint itself between
//! two commits (`catch_up`), which has only the last few frames left to copy, and its next
//! commit restarts the log, overwriting the file from its start.
//!
//! The thread runs at normal priority: niced, it fell behind under full load and left the
//! writer's catch-up most of the log to copy. Its connection has its own page cache (see
//! `.cargo/config.toml`: no process-wide page cache lock), so it does not slow the writer.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

/// How often the log is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);
/// Pause between background passes while the log waits for the writer's catch-up.
const CATCH_UP_GAP: Duration = Duration::from_millis(5);
/// Log length (4 KiB frames) past which the writer catches up and restarts it: 64 MiB,
/// which is also about the log file's size on disk while writes keep coming.
const RESTART_AT_FRAMES: i64 = 16_384;

/// The log's length in frames at the background thread's last checkpoint.
#[derive(Default)]
pub(crate) struct LogLength(AtomicI64);

impl LogLength {
    /// Called by the writer between commits: when the log is long, copies what the
    /// background thread has not copied yet, so that the next commit starts it over.
    pub(crate) fn catch_up(&self, conn: &Connection) {
        if self.0.load(Ordering::Relaxed) < RESTART_AT_FRAMES {
            return;
        }
        match passive(conn) {
            // Busy: the background thread is copying right now; try after the next commit.
            Ok((true, _)) => {}
            Ok((false, _)) => self.0.store(0, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }
}

pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path, log: Arc<LogLength>) -> StoreResult<Self> {
        let conn = super::open_connection(path, 2, false)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tally-checkpoint".into())
            .spawn(move || run(&conn, &signal, &log))
            .map_err(|e| StoreError::Internal(format!("failed to start checkpointer: {e}")))?;
        Ok(Self {
            stop,
            handle: Mutex::new(Some(handle)),
        })
    }

    fn signal_stop(&self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }

    /// Stops the thread (the writer runs the final, truncating checkpoint). Blocks.
    pub(crate) fn shutdown(&self) {
        self.signal_stop();
        super::join(&self.handle, "checkpoint");
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The background loop: a pass every `INTERVAL`, back to back (`CATCH_UP_GAP`) while a
/// long log waits for the writer's catch-up, so the tail it leaves the writer is short.
fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar), log: &LogLength) {
    super::lower_priority(super::BACKGROUND_NICE);
    let (stopped, wake) = stop;
    let mut pause = INTERVAL;
    loop {
        if *super::wait(
            wake,
            stopped.lock().unwrap_or_else(|e| e.into_inner()),
            pause,
        ) {
            return;
        }
        pause = match passive(conn) {
            Ok((_, frames)) => {
                log.0.store(frames, Ordering::Relaxed);
                if frames >= RESTART_AT_FRAMES {
                    CATCH_UP_GAP
                } else {
                    INTERVAL
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed");
                INTERVAL
            }
        };
    }
}

/// One passive checkpoint: (whether another checkpoint was running, frames in the log).
fn passive(conn: &Connection) -> rusqlite::Result<(bool, i64)> {
    let t0 = std::time::Instant::now();
    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    tracing::trace!(
        busy = r.0,
        log = r.1,
        copied = r.2,
        ms = t0.elapsed().as_millis() as u64,
        "checkpoint pass"
    );
    Ok((r.0 != 0, r.1))
}
