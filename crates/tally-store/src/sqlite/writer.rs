//! The single writer thread and its group commit: a generic engine that knows no topic.
//!
//! Callers queue closures; the thread takes everything queued (up to a bound), takes the
//! transaction's commit sequence, runs each closure in its own savepoint inside one
//! transaction, lets every topic flush what its closures accumulated (the [`Topic`]
//! hooks: events' daily counts, usage's rollups), commits, and only then answers every
//! caller. A closure that fails is rolled back alone; a failed commit fails every caller
//! of that transaction and every topic drops what it accumulated.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tally_core::TenantId;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::LogLength;
use super::events::EventsTopic;
use super::usage::UsageTopic;
use crate::{CommitSeq, StoreError, StoreResult};

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

/// What a topic keeps on the writer thread: what the operations of one transaction
/// accumulate (rollup deltas, counts, index entries) is written once, just before the
/// transaction commits, and kept or dropped with it. One mechanism for every topic.
pub(crate) trait Topic: Send {
    /// Writes what this transaction (`commit`) accumulated, inside it, before COMMIT.
    fn flush(&mut self, conn: &Connection, commit: CommitSeq) -> StoreResult<()>;
    /// The transaction committed as `commit`: publish what waited for it.
    fn committed(&mut self, commit: CommitSeq);
    /// The transaction failed: drop what it accumulated, and anything cached from it.
    fn aborted(&mut self);
    /// A deletion of the tenant (or, with `user`, of one of its tracked users) is about to
    /// run in this transaction: write or drop what is pending for it, so that the flush
    /// does not bring its rows back.
    fn forget(
        &mut self,
        conn: &Connection,
        tenant: TenantId,
        user: Option<&str>,
    ) -> StoreResult<()>;
}

/// The state of the writer thread: the current transaction's commit sequence and every
/// topic's state.
#[derive(Clone)]
pub(crate) struct WriterState {
    /// The current transaction's commit sequence (`commit_log`), taken at its start.
    pub commit: CommitSeq,
    pub events: EventsTopic,
    pub usage: UsageTopic,
}

impl WriterState {
    pub(crate) fn new(events: EventsTopic, usage: UsageTopic) -> Self {
        Self {
            commit: CommitSeq::default(),
            events,
            usage,
        }
    }

    /// Every topic, in flush order.
    pub(crate) fn topics(&mut self) -> [&mut dyn Topic; 2] {
        [&mut self.events, &mut self.usage]
    }

    /// A deletion in this transaction: every topic forgets what is pending for the tenant
    /// (or user). Returns the state before, for [`WriterState::restore`] if the deletion
    /// fails (its savepoint is rolled back, so what it forgot must come back).
    pub(crate) fn forget(
        &mut self,
        conn: &Connection,
        tenant: TenantId,
        user: Option<&str>,
    ) -> StoreResult<WriterState> {
        let before = self.clone();
        let done = self
            .topics()
            .into_iter()
            .try_for_each(|t| t.forget(conn, tenant, user));
        match done {
            Ok(()) => Ok(before),
            Err(e) => {
                *self = before;
                Err(e)
            }
        }
    }

    /// Puts back the state a failed deletion started from.
    pub(crate) fn restore(&mut self, before: WriterState) {
        *self = before;
    }

    fn aborted(&mut self) {
        for t in self.topics() {
            t.aborted();
        }
    }
}

pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        state: WriterState,
        log: Arc<LogLength>,
        final_checkpoint: bool,
    ) -> StoreResult<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let handle = std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || run(conn, rx, state, log, final_checkpoint))
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
    mut state: WriterState,
    log: Arc<LogLength>,
    final_checkpoint: bool,
) {
    super::lower_priority(super::WRITER_NICE);
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
            commit_batch(&mut conn, &mut state, &mut batch);
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

fn commit_batch(conn: &mut Connection, state: &mut WriterState, batch: &mut Vec<(usize, JobFn)>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        tracing::error!(error = %err, "failed to begin write transaction");
        for (_, job) in batch.drain(..) {
            let (_, done) = job(None);
            done(Some(&err));
        }
        state.aborted();
        return;
    }
    // Moved on inside the transaction, under the database's write lock: sequences are
    // unique and increase in commit order, across processes too.
    match conn
        .prepare_cached("UPDATE commit_log SET seq = seq + 1 RETURNING seq")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
    {
        Ok(seq) => state.commit = CommitSeq(seq),
        Err(e) => {
            let err = StoreError::from(e);
            tracing::error!(error = %err, "failed to take a commit sequence");
            let _ = conn.execute_batch("ROLLBACK");
            for (_, job) in batch.drain(..) {
                let (_, done) = job(None);
                done(Some(&err));
            }
            state.aborted();
            return;
        }
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
    let commit = state.commit;
    let outcome = state
        .topics()
        .into_iter()
        .try_for_each(|t| t.flush(conn, commit))
        .and_then(|()| conn.execute_batch("COMMIT").map_err(StoreError::from));
    match outcome {
        Ok(()) => {
            for t in state.topics() {
                t.committed(commit);
            }
            for done in completions {
                done(None);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "write transaction failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
            state.aborted();
            for done in completions {
                done(Some(&err));
            }
        }
    }
}
