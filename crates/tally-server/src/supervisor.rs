//! The supervisor of background work: named tasks started at `serve`, restarted with
//! backoff when they fail (an error or a panic), stopped in reverse start order on
//! shutdown, and visible in `/readyz` and the logs. The store's own threads (writer, fold,
//! checkpoints) stay the store's; capabilities that need background work (retention,
//! health checks, alert evaluation, job workers) register here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// The first pause before a restart; doubled after each failure in a row, up to the most.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MOST_BACKOFF: Duration = Duration::from_secs(60);

/// What a task sees of the shutdown: resolve `stopped()` and return.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once shutdown has begun.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    /// Failed and waiting to run again.
    Restarting,
    /// Returned by itself (its work was done).
    Finished,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Failures since start.
    pub failures: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

/// The tasks' states, shared with whoever reports them (`/readyz`).
#[derive(Default, Clone)]
pub struct TaskBoard(Arc<Mutex<BTreeMap<&'static str, TaskStatus>>>);

impl TaskBoard {
    pub fn snapshot(&self) -> BTreeMap<&'static str, TaskStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut TaskStatus)) {
        let mut board = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let status = board.entry(name).or_insert(TaskStatus {
            state: TaskState::Running,
            failures: 0,
            last_error: None,
        });
        f(status);
    }
}

/// A started task: its own stop signal, so that tasks stop one after another.
struct Started {
    name: &'static str,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

pub struct Supervisor {
    board: TaskBoard,
    tasks: Vec<Started>,
}

impl Supervisor {
    pub fn new(board: TaskBoard) -> Self {
        Self {
            board,
            tasks: Vec::new(),
        }
    }

    /// Starts `task` under `name`; it is called again (after a pause) whenever it fails.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: Fn(Stop) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let board = self.board.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = Stop(stop_rx);
        board.update(name, |s| s.state = TaskState::Running);
        let handle = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                // Its own task, so that a panic is caught as a failure.
                let outcome = tokio::spawn(task(stop.clone())).await;
                let failure = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(e) if e.is_panic() => Some("panicked".to_owned()),
                    Err(e) => Some(e.to_string()),
                };
                if stop.is_stopped() {
                    board.update(name, |s| s.state = TaskState::Stopped);
                    return;
                }
                let Some(error) = failure else {
                    tracing::info!(task = name, "background task finished");
                    board.update(name, |s| s.state = TaskState::Finished);
                    return;
                };
                tracing::error!(task = name, %error, retry_in_secs = backoff.as_secs(), "background task failed; restarting");
                board.update(name, |s| {
                    s.state = TaskState::Restarting;
                    s.failures += 1;
                    s.last_error = Some(error);
                });
                let mut waiting = stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = waiting.stopped() => {
                        board.update(name, |s| s.state = TaskState::Stopped);
                        return;
                    }
                }
                backoff = (backoff * 2).min(MOST_BACKOFF);
                board.update(name, |s| s.state = TaskState::Running);
            }
        });
        tracing::info!(task = name, "background task started");
        self.tasks.push(Started {
            name,
            stop: stop_tx,
            handle,
        });
    }

    /// Stops the tasks in reverse start order, one after another, all within `deadline`;
    /// a task still running when its turn's time is up is aborted.
    pub async fn shutdown(mut self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while let Some(mut task) = self.tasks.pop() {
            let _ = task.stop.send(true);
            if tokio::time::timeout_at(until, &mut task.handle)
                .await
                .is_err()
            {
                tracing::warn!(
                    task = task.name,
                    "background task did not stop in time; aborting it"
                );
                task.handle.abort();
                self.board
                    .update(task.name, |s| s.state = TaskState::Stopped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_backoff_and_stopped_on_shutdown() {
        let board = TaskBoard::default();
        let mut supervisor = Supervisor::new(board.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervisor.spawn("flaky", move |mut stop| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => anyhow::bail!("first run fails"),
                    1 => panic!("second run panics"),
                    _ => {
                        stop.stopped().await;
                        Ok(())
                    }
                }
            }
        });
        // Run 0 fails at once; run 1 after 1 s; run 2 after 2 s more.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(board.snapshot()["flaky"].state, TaskState::Restarting);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let status = board.snapshot()["flaky"].clone();
        assert_eq!((status.state, status.failures), (TaskState::Running, 2));
        assert_eq!(status.last_error.as_deref(), Some("panicked"));
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(board.snapshot()["flaky"].state, TaskState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_goes_in_reverse_order_and_aborts_a_task_that_ignores_it() {
        let board = TaskBoard::default();
        let mut supervisor = Supervisor::new(board.clone());
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second"] {
            let order = order.clone();
            supervisor.spawn(name, move |mut stop| {
                let order = order.clone();
                async move {
                    stop.stopped().await;
                    order.lock().unwrap().push(name);
                    // Give the other task time to record itself out of order, if it could.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(())
                }
            });
        }
        // Started first, stopped last: it ignores the signal and is aborted at the deadline.
        let mut stubborn = Supervisor::new(board.clone());
        stubborn.spawn("stubborn", |_stop| async {
            std::future::pending::<()>().await;
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        supervisor.shutdown(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        stubborn.shutdown(Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let snapshot = board.snapshot();
        assert!(
            snapshot.values().all(|s| s.state == TaskState::Stopped),
            "{snapshot:?}"
        );
        let order = order.lock().unwrap().clone();
        assert_eq!(order, ["second", "first"]);
    }
}
