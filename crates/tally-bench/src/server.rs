//! Starting and observing the real `tally` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

pub struct Server {
    child: Child,
    pub base: String,
}

/// The `tally` binary built next to this one (`cargo build --release -p tally`).
fn tally_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("tally");
    if !bin.exists() {
        bail!(
            "{} not found; run `cargo build --release -p tally` first",
            bin.display()
        );
    }
    Ok(bin)
}

pub fn admin(data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tally_bin()?)
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "tally admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

impl Server {
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, &[])
    }

    /// Like `start`, with more `serve` arguments (e.g. `--config`).
    pub fn start_with(data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(tally_bin()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            // TALLY_BENCH_SERVER_LOG sets the server's log filter (e.g. `tally_store=debug`).
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("TALLY_ADMIN_PASSWORD", "bench admin password")
            .stdout(Stdio::piped())
            .spawn()
            .context("start tally")?;
        let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("tally exited before listening");
            }
            if let Some(addr) = line.trim().strip_prefix("tally listening on ") {
                let base = addr.to_owned();
                std::thread::spawn(move || for _ in reader.lines() {});
                return Ok(Self { child, base });
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time (user + system, seconds) the server has used so far, all its threads.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // utime and stime are fields 14 and 15, after the parenthesised command name.
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Field 14 is index 11 after the state field (field 3 is index 0); 100 ticks a second.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// (current RSS, peak RSS) in MiB, from /proc.
    pub fn memory_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
