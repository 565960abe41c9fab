//! WAL checkpoints. They run on the writer thread, on its periodic tick and never inside a
//! commit: a checkpointer on another connection races the writer for the WAL-index, and
//! SQLite resolves that race with back-off sleeps that showed up as 100–300 ms stalls in
//! the write p99. Passive checkpoints keep the log short; when it has grown large anyway
//! (readers pinning old frames), a truncating one bounds its size.

use rusqlite::Connection;

/// WAL pages (4 KiB) beyond which a truncating checkpoint is attempted: 256 MiB.
const TRUNCATE_AT_PAGES: i64 = 65_536;

pub(crate) fn checkpoint(conn: &Connection) {
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
