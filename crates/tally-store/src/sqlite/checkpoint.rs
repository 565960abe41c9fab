//! WAL checkpoints on a thread of their own, so that a commit never pays for copying the
//! log back into the database file. Passive checkpoints run every second; when the log has
//! grown large, a truncating one bounds its size (it waits for readers, not for commits).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

const INTERVAL: Duration = Duration::from_secs(1);
/// WAL pages (4 KiB) beyond which a truncating checkpoint is attempted: 256 MiB.
const TRUNCATE_AT_PAGES: i64 = 65_536;

pub(crate) struct Checkpointer {
    stop: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection) -> StoreResult<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("tally-checkpoint".into())
            .spawn(move || loop {
                match rx.recv_timeout(INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => checkpoint(&conn),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            })
            .map_err(|e| StoreError::Internal(format!("failed to start checkpoint thread: {e}")))?;
        Ok(Self {
            stop: Mutex::new(Some((tx, handle))),
        })
    }

    pub(crate) fn stop(&self) {
        let taken = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some((tx, handle)) = taken {
            let _ = tx.send(());
            let _ = handle.join();
        }
    }
}

fn checkpoint(conn: &Connection) {
    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match passive {
        Ok((_, log, _)) if log > TRUNCATE_AT_PAGES => {
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::debug!(error = %e, "truncating checkpoint deferred");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
    }
}
