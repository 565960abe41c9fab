//! Free-space headroom: writes are refused while the data dir's filesystem has less free
//! space than a floor that covers a checkpoint, instead of running into a full disk in
//! the middle of one (recovering from that needs about as much free space as the log).
//! The free space is probed at most every `SqliteConfig::free_space_every` (250 ms by
//! default), so writes resume on their own once space returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{StoreError, StoreResult};

/// The log restarts once it passes 64 MiB (`checkpoint.rs`); a checkpoint may grow the
/// database by as much, and the log keeps its size: twice that is the default floor.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 * 1024 * 1024;
/// How often free space is probed by default.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

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
    /// Probe again once the last answer is this old (milliseconds; 0: on every write).
    every_ms: u64,
    /// When the free space was last probed (milliseconds since `epoch`, 0: never) and
    /// what it was: atomics, so that the check on every write takes no lock.
    probed_at: AtomicU64,
    free: AtomicU64,
    epoch: Instant,
}

impl Headroom {
    pub(crate) fn new(dir: PathBuf, floor: u64, probe: FreeSpaceProbe, every: Duration) -> Self {
        Self {
            dir,
            floor,
            probe,
            every_ms: every.as_millis() as u64,
            probed_at: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// Free bytes now (probed at most every `every_ms`; between probes, the last answer). A failed probe counts as enough space: the write itself will say what is
    /// wrong. Two writers may probe at once; both answers are current.
    pub(crate) fn free(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let at = self.probed_at.load(Ordering::Acquire);
        if at != 0 && now.saturating_sub(at) < self.every_ms {
            return self.free.load(Ordering::Acquire);
        }
        let free = match (self.probe)(&self.dir) {
            Ok(free) => free,
            Err(error) => {
                tracing::debug!(%error, dir = %self.dir.display(), "could not read free space");
                u64::MAX
            }
        };
        let was = self.free.swap(free, Ordering::AcqRel);
        self.probed_at.store(now, Ordering::Release);
        let was_low = was < self.floor;
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
        free
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
