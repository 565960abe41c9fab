//! Runs the real `tally` binary.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::zombie_processes
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_tally");

/// Runs `tally admin …` on a data dir and returns its stdout, trimmed.
pub fn admin(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .expect("run tally admin");
    assert!(
        out.status.success(),
        "tally admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `tally serve` on a free port with stdout and stderr piped, not waited for.
pub fn spawn_serve(data_dir: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("TALLY_LOG", "warn")
        .env("TALLY_ADMIN_PASSWORD", "test admin password")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start tally serve")
}

/// Creates a tenant named `name` and a key for it with `scopes`: (tenant id, key).
pub fn tenant_and_key(data_dir: &Path, name: &str, scopes: &str) -> (String, String) {
    let tenant = admin(data_dir, &["tenant", "create", "--name", name]);
    let key = admin(
        data_dir,
        &[
            "key", "create", "--tenant", &tenant, "--name", "k", "--scopes", scopes,
        ],
    );
    (tenant, key)
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub stdout_lines: Vec<String>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[], &[])
    }

    /// Starts `tally serve` on a free port and waits until it listens.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut env = env.to_vec();
        env.push(("TALLY_ADMIN_PASSWORD", "test admin password"));
        Self::spawn(data_dir, args, &env)
    }

    /// Like `start_with`, but lets the server generate the first admin password.
    pub fn start_with_generated_password(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn(data_dir, &[], env)
    }

    fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("TALLY_LOG", "warn")
            .env_remove("TALLY_ADMIN_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tally serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read stdout");
            assert!(n > 0, "tally exited before listening; output: {lines:?}");
            let line = line.trim_end().to_owned();
            if let Some(addr) = line.strip_prefix("tally listening on ") {
                let base = addr.to_owned();
                lines.push(line);
                // Keep draining stdout so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in reader.lines() {});
                return Self {
                    child,
                    base,
                    stdout_lines: lines,
                };
            }
            lines.push(line);
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
