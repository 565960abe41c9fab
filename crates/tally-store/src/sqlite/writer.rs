//! The single writer thread and its group commit.
//!
//! Callers queue closures; the thread takes everything queued (up to a bound), runs each
//! closure in its own savepoint inside one transaction, flushes the rollup deltas the
//! closures accumulated, commits, and only then answers every caller. A closure that fails
//! is rolled back alone; a failed commit fails every caller of that transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tally_core::TenantId;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::LogLength;
use super::events::RollupDelta;
use super::user_index::{StagedEvent, UserIndex, UserKey};
use crate::{StoreError, StoreResult};

/// Stop adding operations to a transaction past this many rows…
const MAX_ROWS_PER_COMMIT: usize = 50_000;
/// …or this many operations.
const MAX_OPS_PER_COMMIT: usize = 4_096;

type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// Runs the operation, or with `None` only prepares to report a failure that kept it
/// from running. Returns whether it succeeded and how to answer its caller.
type JobFn = Box<dyn FnOnce(Option<(&Connection, &mut WriterState)>) -> (bool, Completion) + Send>;

enum Msg {
    Op { weight: usize, run: JobFn },
    Shutdown,
}

/// Writer steps at least this long are logged at debug level.
const SLOW_STEP: Duration = Duration::from_millis(2);

/// State that lives across transactions on the writer thread.
#[derive(Default)]
pub(crate) struct WriterState {
    /// Rollup changes of the current transaction, flushed just before commit.
    pub rollups: RollupDelta,
    /// Stored event count per tenant, for storage limits; loaded lazily.
    pub tenant_events: HashMap<TenantId, u64>,
    /// User-index entries of the current transaction, published after commit.
    pub staged: Vec<(UserKey, StagedEvent)>,
}

pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        user_index: Arc<UserIndex>,
        log: Arc<LogLength>,
        final_checkpoint: bool,
    ) -> StoreResult<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let handle = std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || run(conn, rx, user_index, log, final_checkpoint))
            .map_err(|e| StoreError::Internal(format!("failed to start writer thread: {e}")))?;
        Ok(Self {
            tx,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Queues `f` and resolves with its result once its transaction has committed.
    pub(crate) async fn job<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.job_with_state(1, move |conn, _| f(conn)).await
    }

    pub(crate) async fn job_with_state<R, F>(&self, weight: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> StoreResult<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run: JobFn = Box::new(move |ctx| {
            let result = match ctx {
                Some((conn, state)) => f(conn, state),
                None => Err(StoreError::Unavailable("operation did not run".into())),
            };
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    Some(e) => Err(e.clone()),
                    None => result,
                });
            });
            (ok, done)
        });
        self.tx
            .send(Msg::Op { weight, run })
            .await
            .map_err(|_| StoreError::Unavailable("writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped before committing".into()))?
    }

    /// Commits everything queued so far, then stops the thread. Blocks; call it from a
    /// blocking context. Later writes fail with `Unavailable`.
    pub(crate) fn shutdown(&self) {
        if self.handle.lock().map_or(true, |h| h.is_none()) {
            return;
        }
        let mut msg = Msg::Shutdown;
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        super::join(&self.handle, "writer");
    }
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    user_index: Arc<UserIndex>,
    log: Arc<LogLength>,
    final_checkpoint: bool,
) {
    let mut state = WriterState::default();
    let mut batch: Vec<(usize, JobFn)> = Vec::new();
    loop {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut stop = false;
        let mut rows = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Op { weight, run } => {
                    rows += weight;
                    batch.push((weight, run));
                }
                Msg::Shutdown => {
                    stop = true;
                    break;
                }
            }
            if rows < MAX_ROWS_PER_COMMIT && batch.len() < MAX_OPS_PER_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let (ops, t0) = (batch.len(), Instant::now());
            commit_batch(&mut conn, &mut state, &mut batch, &user_index);
            slow_step("commit", t0, ops, rows);
            let t0 = Instant::now();
            log.catch_up(&conn);
            slow_step("checkpoint catch-up", t0, 0, 0);
        }
        if stop {
            break;
        }
    }
    rx.close();
    if !final_checkpoint {
        tracing::debug!("writer stopped");
        return;
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final checkpoint failed");
    }
    tracing::info!("writer stopped");
}

/// Logs (at debug) a writer step that held up the queue noticeably.
fn slow_step(step: &str, start: Instant, ops: usize, rows: usize) {
    let took = start.elapsed();
    if took >= SLOW_STEP {
        tracing::debug!(
            step,
            ops,
            rows,
            ms = took.as_secs_f64() * 1e3,
            "slow writer step"
        );
    }
}

fn commit_batch(
    conn: &mut Connection,
    state: &mut WriterState,
    batch: &mut Vec<(usize, JobFn)>,
    user_index: &UserIndex,
) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        tracing::error!(error = %err, "failed to begin write transaction");
        for (_, job) in batch.drain(..) {
            let (_, done) = job(None);
            done(Some(&err));
        }
        state.rollups.clear();
        state.staged.clear();
        return;
    }
    let mut completions = Vec::with_capacity(batch.len());
    for (_, job) in batch.drain(..) {
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            let err = StoreError::from(e);
            let (_, done) = job(None);
            done(Some(&err));
            continue;
        }
        let (ok, done) = job(Some((conn, state)));
        let end = if ok {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!(error = %e, "failed to close savepoint");
        }
        completions.push(done);
    }
    let outcome = state
        .rollups
        .flush(conn)
        .and_then(|()| conn.execute_batch("COMMIT").map_err(StoreError::from));
    match outcome {
        Ok(()) => {
            state.rollups.apply_counts(&mut state.tenant_events);
            user_index.publish(std::mem::take(&mut state.staged));
            for done in completions {
                done(None);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "write transaction failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
            state.tenant_events.clear();
            state.rollups.clear();
            state.staged.clear();
            for done in completions {
                done(Some(&err));
            }
        }
    }
}
