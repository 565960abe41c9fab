//! Free-space headroom: writes are refused while the data dir's filesystem has less free
//! space than a floor that covers a checkpoint, instead of running into a full disk in
//! the middle of one (recovering from that needs about as much free space as the log).
//! The free space is probed at most every `PROBE_EVERY`, so writes resume on their own
//! once space returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{StoreError, StoreResult};

/// The log restarts once it passes 64 MiB (`checkpoint.rs`); a checkpoint may grow the
/// database by as much, and the log keeps its size: twice that is the default floor.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 * 1024 * 1024;
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Free bytes available to this process on the filesystem holding a path.
pub type FreeSpaceProbe = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// The operating system's answer (`statvfs`: blocks available to unprivileged users).
pub fn statvfs_probe() -> FreeSpaceProbe {
    Arc::new(|path: &Path| {
        #[cfg(unix)]
        {
            let s = rustix::fs::statvfs(path)?;
            Ok(s.f_bavail.saturating_mul(s.f_frsize))
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Ok(u64::MAX)
        }
    })
}

pub(crate) struct Headroom {
    dir: PathBuf,
    floor: u64,
    probe: FreeSpaceProbe,
    /// When last probed, and the free bytes seen then.
    last: Mutex<Option<(Instant, u64)>>,
}

impl Headroom {
    pub(crate) fn new(dir: PathBuf, floor: u64, probe: FreeSpaceProbe) -> Self {
        Self {
            dir,
            floor,
            probe,
            last: Mutex::new(None),
        }
    }

    /// Free bytes now (probed at most every `PROBE_EVERY`). A failed probe counts as
    /// enough space: the write itself will say what is wrong.
    pub(crate) fn free(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, free)) = *last {
            if at.elapsed() < PROBE_EVERY {
                return free;
            }
        }
        let free = match (self.probe)(&self.dir) {
            Ok(free) => free,
            Err(error) => {
                tracing::debug!(%error, dir = %self.dir.display(), "could not read free space");
                u64::MAX
            }
        };
        let was_low = last.is_some_and(|(_, f)| f < self.floor);
        if free < self.floor && !was_low {
            tracing::error!(
                free_bytes = free,
                min_free_bytes = self.floor,
                dir = %self.dir.display(),
                "free space is below the floor: refusing writes until space returns"
            );
        } else if free >= self.floor && was_low {
            tracing::warn!(
                free_bytes = free,
                "free space is back above the floor: accepting writes"
            );
        }
        *last = Some((Instant::now(), free));
        free
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// `Err(LowSpace)` while below the floor.
    pub(crate) fn check(&self) -> StoreResult<()> {
        let free = self.free();
        if free < self.floor {
            return Err(StoreError::LowSpace {
                free_bytes: free,
                min_free_bytes: self.floor,
            });
        }
        Ok(())
    }
}
