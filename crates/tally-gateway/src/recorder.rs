//! Usage records of gateway calls, committed off the response path (DESIGN principle 2):
//! calls hand their record to a queue and answer; a task ingests the queue in groups at
//! most `record_interval` apart, through the same path as `POST /api/v1/ai/usage`
//! (idempotent on the gateway's request id), and then drops the calls' budget
//! reservations, so a call's estimate stays held until its actual cost is counted.
//! A `kill -9` loses the queued records (at most one interval plus the commit in
//! flight); on restart the quotas load what was committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tally_ai::quota::Reservation;
use tally_ai::usage::Usage;
use tally_core::usage::UsageInput;
use tally_core::{ApiKeyId, TenantId};
use tokio::sync::mpsc;

/// One call's record and what it held.
pub struct Record {
    pub tenant: TenantId,
    /// The key the call was made with.
    pub api_key: Option<ApiKeyId>,
    pub input: UsageInput,
    pub reservation: Option<Reservation>,
}

/// Records queued beyond this wait for room (back-pressure on the calls).
const QUEUE: usize = 50_000;
const MAX_GROUP: usize = 2_000;

enum Msg {
    Record(Box<Record>),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
}

impl Recorder {
    /// Starts the task; it ends, after writing what is queued, once every `Recorder`
    /// clone is dropped. Await the handle to know the last records are written.
    pub fn start(usage: Arc<Usage>, interval: Duration) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(usage, interval, rx));
        (Self { tx }, task)
    }

    /// Queues a record. Never blocks the caller: when the queue is full the record waits
    /// on a task of its own.
    pub fn submit(&self, record: Record) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("gateway usage record dropped: the recorder has stopped");
            }
        }
    }

    /// Queues a record that may be lost under load (a refused call: nothing held, nothing
    /// spent). When the queue is full it is dropped instead of waiting, so a client
    /// hammering past its limits cannot grow the queue without bound.
    pub fn offer(&self, record: Record) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("record of a refused call dropped: the recorder's queue is full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("gateway usage record dropped: the recorder has stopped");
            }
        }
    }

    /// Waits until every record submitted before the call is written (shutdown, tests).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(usage: Arc<Usage>, interval: Duration, mut rx: mpsc::Receiver<Msg>) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut group = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Msg::Record(r) => group.push(*r),
            Msg::Flush(done) => flushes.push(done),
        }
        let deadline = tokio::time::Instant::now() + interval;
        while group.len() < MAX_GROUP && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Record(r))) => group.push(*r),
                Ok(Some(Msg::Flush(done))) => flushes.push(done),
                Ok(None) | Err(_) => break,
            }
        }
        write(&usage, group).await;
        for f in flushes {
            let _ = f.send(());
        }
    }
}

async fn write(usage: &Usage, group: Vec<Record>) {
    type Batch = (Vec<UsageInput>, Vec<Reservation>);
    let mut by_caller: HashMap<(TenantId, Option<ApiKeyId>), Batch> = HashMap::new();
    for r in group {
        let slot = by_caller.entry((r.tenant, r.api_key)).or_default();
        slot.0.push(r.input);
        slot.1.extend(r.reservation);
    }
    for ((tenant, api_key), (inputs, reservations)) in by_caller {
        let n = inputs.len();
        match usage
            .ingest(tenant, api_key, inputs.into_iter().map(Ok).collect())
            .await
        {
            Ok(results) => {
                for r in results {
                    if let tally_ai::usage::UsageResult::Rejected(e) = r {
                        tracing::error!(tenant = %tenant.0, field = %e.field, error = %e.message,
                            "gateway usage record refused");
                    }
                }
            }
            Err(e) => {
                tracing::error!(tenant = %tenant.0, records = n, error = %e,
                    "gateway usage records could not be stored");
            }
        }
        // Committed (and so counted by the quotas), or lost: either way the estimates
        // stop being held.
        drop(reservations);
    }
}
