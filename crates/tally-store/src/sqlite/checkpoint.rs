//! WAL checkpoints on a background thread with a connection of its own, so a commit never
//! waits for the log to be copied back into the database file. Only passive checkpoints:
//! they never take the write lock and never wait for readers, and the writer restarts the
//! log from its beginning once a checkpoint has caught up. `journal_size_limit` (set on
//! the writer's connection) truncates a log that grew large under a burst.
//!
//! The thread runs at background priority; the connection has its own page cache (see
//! `.cargo/config.toml`: no process-wide page cache lock), so it does not slow the writer.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

/// How often the log is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);

pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> StoreResult<Self> {
        let conn = super::open_connection(path, 2, false)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tally-checkpoint".into())
            .spawn(move || {
                super::background_priority();
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, INTERVAL)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                    if !*stopped {
                        drop(stopped);
                        checkpoint(&conn);
                        stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    }
                }
            })
            .map_err(|e| StoreError::Internal(format!("failed to start checkpointer: {e}")))?;
        Ok(Self {
            stop,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Stops the thread (the writer runs the final, truncating checkpoint). Blocks.
    pub(crate) fn shutdown(&self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        let handle = self.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("checkpoint thread panicked");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "checkpoint failed");
    }
}
