//! The data directory: private by default, and owned by one process at a time.
//!
//! Ownership is an exclusive `flock` on `tally.lock`, held for the owner's lifetime. The
//! kernel releases it when the process dies, however it dies, so a `kill -9`'d server never
//! leaves a stale lock behind. The file also names its holder (pid, host, command, start
//! time) so that a refused process can say who is in the way.
//!
//! Only the owner migrates the schema, folds the user index and checkpoints the log. A
//! process that finds the lock held may still open the database as a guest (`tally admin`
//! changing accounts or keys while the server runs): SQLite serialises those writes between
//! processes, and a guest does nothing else (see `SqliteConfig::guest`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "tally.lock";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {} is in use by {holder}; one process owns a data dir at a time (stop it first, or use the HTTP API)", .dir.display())]
    Held { dir: PathBuf, holder: String },
    #[error("failed to {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_owned();
    move |source| DataDirError::Io {
        action,
        path,
        source,
    }
}

/// Makes every file this process creates from now on private (umask 077), creates `dir`
/// (0700) when missing, and tightens what is already there: a directory or file readable
/// by group or others is made private, with a warning naming it.
pub fn prepare(dir: &Path) -> Result<(), DataDirError> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create the data dir", dir))?;
    }
    tighten(dir, 0o700)?;
    let entries = std::fs::read_dir(dir).map_err(io("read the data dir", dir))?;
    for entry in entries {
        let entry = entry.map_err(io("read the data dir", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io("inspect", &path))?;
        if kind.is_file() {
            tighten(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Removes group and other access from `path`, logging what it changed.
fn tighten(path: &Path, private: u32) -> Result<(), DataDirError> {
    let mode = std::fs::metadata(path)
        .map_err(io("inspect", path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let tightened = mode & private;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))
        .map_err(io("make private", path))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{mode:04o}"),
        now = format!("{tightened:04o}"),
        "data dir entry was readable by other users; made it private"
    );
    Ok(())
}

/// The lock of an owning process; released when dropped or when the process exits.
#[derive(Debug)]
pub struct Ownership {
    _file: File,
}

/// Takes the data dir's lock without waiting, recording `command` as the holder. Fails
/// with [`DataDirError::Held`] naming the holder when another process owns the dir.
pub fn lock(dir: &Path, command: &str) -> Result<Ownership, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io("open the lock file", &path))?;
    if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = describe(&holder);
            return Err(DataDirError::Held {
                dir: dir.to_owned(),
                holder,
            });
        }
        return Err(io("lock", &path)(e.into()));
    }
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let record = format!(
        "pid={}\nhost={host}\ncommand={command}\nstarted_at={}\n",
        std::process::id(),
        tally_core::time::to_datetime(tally_core::time::Clock::now_micros(
            &tally_core::time::SystemClock
        ))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let write = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(record.as_bytes())?;
        file.sync_all()
    };
    write(&mut file).map_err(io("write the lock file", &path))?;
    Ok(Ownership { _file: file })
}

/// "pid 42 on host a (`tally serve`, since …)" from the lock file's lines.
fn describe(record: &str) -> String {
    let field = |name: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("?")
    };
    if record.trim().is_empty() {
        return "another process (it has not recorded its pid yet)".into();
    }
    format!(
        "pid {} on host {} (`tally {}`, since {})",
        field("pid"),
        field("host"),
        field("command"),
        field("started_at")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path(), "serve").unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts just as another process would.
        let err = lock(dir.path(), "serve").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("`tally serve`"), "{text}");
        assert_eq!(
            text,
            format!(
                "data dir {} is in use by {}; one process owns a data dir at a time (stop it first, or use the HTTP API)",
                dir.path().display(),
                describe(&std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap())
            )
        );
        drop(first);
        lock(dir.path(), "admin").unwrap();
    }

    #[test]
    fn prepare_makes_the_dir_and_its_files_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        prepare(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("tally.db");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        // The umask now keeps new files private.
        let fresh = dir.join("new");
        std::fs::write(&fresh, b"x").unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
