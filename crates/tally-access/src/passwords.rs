//! Password hashing and verification on threads of their own. argon2 is deliberately slow
//! (tens of milliseconds of CPU per call): run on the async workers or the blocking pool,
//! a login flood would take the CPU from ingestion. Here a fixed number of threads (half
//! the cores, at least one) at lowered priority take jobs from a bounded queue; when the
//! queue is full the caller is told to retry instead of waiting.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tally_core::auth;
use tokio::sync::oneshot;

/// Jobs waiting for a thread; more are refused.
const QUEUE: usize = 64;

enum Job {
    Verify {
        password: String,
        hash: String,
        reply: oneshot::Sender<bool>,
    },
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("too many password checks in progress")]
    Busy,
    #[error("password worker stopped")]
    Stopped,
    #[error("{0}")]
    Hash(String),
}

pub struct Passwords {
    jobs: SyncSender<Job>,
}

impl Passwords {
    /// Starts the worker threads; they exit when this is dropped.
    pub fn start() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .max(1);
        let (jobs, queue) = sync_channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("tally-passwords-{i}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Self { jobs })
    }

    fn submit(&self, job: Job) -> Result<(), PasswordError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PasswordError::Busy,
            TrySendError::Disconnected(_) => PasswordError::Stopped,
        })
    }

    /// Whether `password` matches the PHC `hash`.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, PasswordError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            hash: hash.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| PasswordError::Stopped)
    }

    /// A new argon2id hash of `password`.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash {
            password: password.to_owned(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| PasswordError::Stopped)?
            .map_err(PasswordError::Hash)
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::debug!(error = %e, "could not lower the password thread's priority");
    }
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.recv()
        };
        match job {
            Ok(Job::Verify {
                password,
                hash,
                reply,
            }) => {
                let _ = reply.send(auth::verify_password(&password, &hash));
            }
            Ok(Job::Hash { password, reply }) => {
                let _ = reply.send(auth::hash_password(&password).map_err(|e| e.to_string()));
            }
            Err(_) => return,
        }
    }
}
