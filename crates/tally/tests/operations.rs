//! What operators do to a server, on purpose or by accident, through real processes: a
//! second server on the same data dir, a crashed owner, two first starts racing, admin
//! commands beside a running server, file permissions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{admin, spawn_serve, tenant_and_key, Server};
use serde_json::json;

fn stderr_of(child: std::process::Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_server_on_a_data_dir_fails_fast_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path());
    let started = Instant::now();
    let (status, stderr) = stderr_of(spawn_serve(dir.path(), &[]));
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    let pid = first.child.id();
    assert!(
        stderr.contains(&format!("is in use by pid {pid} on host"))
            && stderr.contains("`tally serve`"),
        "{stderr}"
    );
    // The first server is unharmed, and its background tasks run under the supervisor.
    let r = reqwest::blocking::get(format!("{}/healthz", first.base)).unwrap();
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = reqwest::blocking::get(format!("{}/readyz", first.base))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        ready["tasks"]["audit_retention"]["state"], "running",
        "{ready}"
    );

    // A crashed owner leaves no stale lock: the next server takes over at once.
    first.kill9();
    let next = Server::start(dir.path());
    let r = reqwest::blocking::get(format!("{}/healthz", next.base)).unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn two_first_starts_racing_on_a_fresh_dir_end_with_one_server_and_a_whole_schema() {
    for round in 0..4 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let children = [spawn_serve(&dir, &[]), spawn_serve(&dir, &[])];
        let mut listening = Vec::new();
        let mut refused = Vec::new();
        for mut child in children {
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut base = None;
            let mut line = String::new();
            while out.read_line(&mut line).unwrap() > 0 {
                if let Some(addr) = line.trim_end().strip_prefix("tally listening on ") {
                    base = Some(addr.to_owned());
                    break;
                }
                line.clear();
            }
            match base {
                Some(base) => {
                    std::thread::spawn(move || for _ in out.lines() {});
                    listening.push((child, base));
                }
                None => refused.push(stderr_of(child)),
            }
        }
        assert_eq!(listening.len(), 1, "round {round}: exactly one server runs");
        let (status, stderr) = &refused[0];
        assert!(!status.success());
        assert!(stderr.contains("is in use by"), "round {round}: {stderr}");
        let (mut child, base) = listening.pop().unwrap();
        let client = reqwest::blocking::Client::new();
        let login = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": "admin@tally.local", "password": "test admin password"}))
            .send()
            .unwrap();
        assert_eq!(login.status(), 200, "round {round}");
        child.kill().unwrap();
        child.wait().unwrap();
        // The schema is whole: a restart needs no repair and sees one admin account.
        let again = Server::start(&dir);
        let login = client
            .post(format!("{}/api/v1/auth/login", again.base))
            .json(&json!({"email": "admin@tally.local", "password": "test admin password"}))
            .send()
            .unwrap();
        assert_eq!(login.status(), 200, "round {round}");
    }
}

#[test]
fn admin_commands_work_beside_a_running_server_and_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (_, key) = tenant_and_key(dir.path(), "Beside", "ingest,read");
    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{}/api/v1/insights/track/", server.base))
        .bearer_auth(&key)
        .json(&json!({"event_type": "page_view", "event_name": "home", "properties": {"user_id": "u1", "page": "/"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    // The server still owns the dir.
    let (status, stderr) = stderr_of(spawn_serve(dir.path(), &[]));
    assert!(
        !status.success() && stderr.contains("is in use by"),
        "{stderr}"
    );
}

#[test]
fn the_data_dir_and_its_files_are_private() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = Server::start_with(&dir, &["--demo"], &[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in [
        "tally.db",
        "tally.db-wal",
        "tally.db.users",
        "tally.lock",
        "demo-geoip.mmdb",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    for name in &names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    server.terminate();
    // A file made readable by others is made private again at the next start.
    let db = dir.join("tally.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _again = Server::start(&dir);
    assert_eq!(mode(&db), 0o600);
}

#[test]
fn an_unwritable_data_dir_and_an_unused_admin_password_are_explained() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    drop(Server::start(&dir));
    // Given again once accounts exist, the password is not used, and the log says why.
    let mut child = spawn_serve(&dir, &[("TALLY_ADMIN_PASSWORD", "another password!")]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("tally listening") {
        line.clear();
    }
    child.kill().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    assert!(
        stderr.contains("TALLY_ADMIN_PASSWORD (auth.admin_password) was not used"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "a log that is not a terminal carries no colour codes: {stderr:?}"
    );

    // A data dir that cannot be made names the path and the OS error.
    let file = root.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let (status, stderr) = stderr_of(spawn_serve(&file.join("data"), &[]));
    assert!(!status.success());
    assert!(
        stderr.contains(&file.join("data").display().to_string()) && stderr.contains("os error"),
        "{stderr}"
    );
}

/// Starts a server with `[http]` settings from a config file.
fn server_with_http(dir: &std::path::Path, http: &str) -> Server {
    let config = dir.join("tally.toml");
    std::fs::write(&config, format!("[http]\n{http}\n")).unwrap();
    Server::start_with(
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    )
}

fn connect(base: &str) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
fn until_closed(mut s: std::net::TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_headers_idle_sockets_and_slow_bodies_are_cut_off() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let server = server_with_http(
        root.path(),
        "header_read_timeout_secs = 1.0\nidle_timeout_secs = 2.0\nbody_read_timeout_secs = 1.0",
    );
    // Half a request head, then nothing: closed after the header-read timeout.
    let mut slow = connect(&server.base);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (sent, took) = until_closed(slow);
    assert!(sent.is_empty(), "{sent}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // A silent socket, and a keep-alive socket after its response: closed when idle.
    let (_, took) = until_closed(connect(&server.base));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let mut kept = connect(&server.base);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (sent, took) = until_closed(kept);
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A body that stops arriving: 408 with the envelope.
    let mut body = connect(&server.base);
    body.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\":",
    )
    .unwrap();
    let (sent, _) = until_closed(body);
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains(r#""code":"REQUEST_TIMEOUT""#), "{sent}");
}

#[test]
fn a_head_with_too_many_headers_is_431_with_the_envelope() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let head = |n: usize| {
        let mut h = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..n {
            h.push_str(&format!("x-extra-{i}: {i}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    // Up to 100 headers pass.
    let mut s = connect(&server.base);
    s.write_all(head(90).as_bytes()).unwrap();
    let (sent, _) = until_closed(s);
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    // A few too many: the router's 431 with the envelope and the limits.
    let mut s = connect(&server.base);
    s.write_all(head(110).as_bytes()).unwrap();
    let (sent, _) = until_closed(s);
    assert!(sent.starts_with("HTTP/1.1 431"), "{sent}");
    assert!(sent.contains(r#""code":"HEADERS_TOO_LARGE""#), "{sent}");
    // Far too many: hyper refuses the head itself, still with a 431.
    let mut s = connect(&server.base);
    s.write_all(head(500).as_bytes()).unwrap();
    let (sent, _) = until_closed(s);
    assert!(sent.starts_with("HTTP/1.1 431"), "{sent}");
}

#[test]
fn sigterm_finishes_within_the_deadline_with_slow_clients_attached() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let mut server = server_with_http(
        root.path(),
        "header_read_timeout_secs = 60\nidle_timeout_secs = 60\nbody_read_timeout_secs = 60\nshutdown_deadline_secs = 1.5",
    );
    let mut stuck = Vec::new();
    for _ in 0..5 {
        let mut s = connect(&server.base);
        s.write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .unwrap();
        stuck.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn thousands_of_idle_connections_do_not_stop_the_server_and_the_cap_answers_503() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .unwrap();
    assert!(
        limit.maximum.is_none_or(|m| m >= 4_500),
        "this test needs a hard open-file limit of at least 4500: {limit:?}"
    );
    let root = tempfile::tempdir().unwrap();
    let server = server_with_http(
        root.path(),
        "idle_timeout_secs = 120\nmax_connections = 2001",
    );
    let idle: Vec<_> = (0..2_000).map(|_| connect(&server.base)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let client = reqwest::blocking::Client::new();
    let r = client
        .get(format!("{}/healthz", server.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Past the cap (2,000 idle sockets and the client's): 503 with the envelope, and the
    // socket is closed.
    let extra: Vec<_> = (0..20).map(|_| connect(&server.base)).collect();
    let refused = extra
        .into_iter()
        .map(until_closed)
        .filter(|(sent, _)| {
            sent.starts_with("HTTP/1.1 503") && sent.contains("SERVICE_UNAVAILABLE")
        })
        .count();
    assert_eq!(refused, 20);
    drop(idle);
}

#[test]
fn tenant_delete_needs_the_name_and_a_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, key) = tenant_and_key(dir.path(), "Doomed", "ingest");
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .arg("admin")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env("TALLY_LOG", "warn")
            .output()
            .unwrap()
    };
    let mut server = Server::start(dir.path());
    let busy = run(&["tenant", "delete", &tenant, "--confirm", "Doomed"]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop it first"));
    server.terminate();
    let wrong = run(&["tenant", "delete", &tenant, "--confirm", "doomed"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("nothing was deleted"));
    let done = run(&["tenant", "delete", &tenant, "--confirm", "Doomed"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(!admin(dir.path(), &["tenant", "list"]).contains("Doomed"));
    let server = Server::start(dir.path());
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/auth/me", server.base))
        .bearer_auth(&key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn a_demo_load_killed_at_any_point_is_finished_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // Loading takes a few seconds; each kill lands somewhere inside it (or, on a fast
    // machine, after it: then the next start reuses the demo, which must also work).
    let mut interrupted = 0;
    let mut last_interrupted = false;
    for delay_ms in [300, 800, 1_500, 2_200] {
        let mut child = spawn_serve(dir.path(), &[("TALLY_DEMO", "true")]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        last_interrupted = demo_loading(dir.path());
        interrupted += usize::from(last_interrupted);
    }
    assert!(
        interrupted >= 2,
        "the kills interrupted {interrupted} loads"
    );
    let mut server = Server::start_with(dir.path(), &["--demo"], &[]);
    if last_interrupted {
        assert!(
            server
                .stdout_lines
                .iter()
                .any(|l| l.starts_with("removed an unfinished demo load")),
            "{:?}",
            server.stdout_lines
        );
    }
    let (password, key) = demo_credentials(&server);
    let client = reqwest::blocking::Client::new();
    let login = client
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&json!({"email": "demo@tally.local", "password": password}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let list: serde_json::Value = client
        .get(format!(
            "{}/api/v1/insights/activities/?page_size=1",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        list["count"], 12_000,
        "one whole demo, nothing twice: {list}"
    );
    server.terminate();
    let tenants = admin(dir.path(), &["tenant", "list"]);
    for name in ["Demo Company", "Acme Robotics", "Globex Retail"] {
        assert_eq!(tenants.matches(name).count(), 1, "{tenants}");
    }

    // A loaded demo is reused, with credentials that work again.
    let server = Server::start_with(dir.path(), &["--demo"], &[]);
    assert!(server
        .stdout_lines
        .iter()
        .any(|l| l.starts_with("demo data already loaded")));
    let (again, key) = demo_credentials(&server);
    assert_ne!(again, password);
    let login = client
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&json!({"email": "demo@tally.local", "password": again}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let r = client
        .get(format!("{}/api/v1/auth/me", server.base))
        .bearer_auth(&key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Whether a demo load was under way when the server died (its marker is set).
fn demo_loading(data_dir: &std::path::Path) -> bool {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("tally.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT count(*) FROM settings WHERE key = 'demo.loading'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n == 1)
    .unwrap_or(false)
}

/// The demo password and API key a `--demo` start printed.
fn demo_credentials(server: &Server) -> (String, String) {
    let line = |prefix: &str| {
        server
            .stdout_lines
            .iter()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(prefix)
                    .map(str::trim)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no {prefix} line in {:?}", server.stdout_lines))
    };
    let login = line("log in:");
    let password = login.rsplit(" / ").next().unwrap().to_owned();
    (password, line("API key:"))
}

#[test]
fn a_disk_below_the_free_space_floor_serves_reads_and_refuses_writes_saying_why() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let (_, key) = tenant_and_key(&dir, "Full", "ingest,read");
    Server::start(&dir).terminate();
    // Restarted with a floor no disk meets: the real free-space probe (statvfs) is below it.
    let config = root.path().join("tally.toml");
    std::fs::write(&config, "[storage]\nmin_free_mb = 1000000000000\n").unwrap();
    let server = Server::start_with(&dir, &["--config", config.to_str().unwrap()], &[]);
    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{}/api/v1/insights/track/", server.base))
        .bearer_auth(&key)
        .json(&json!({"event_type": "user_action", "event_name": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "INSUFFICIENT_STORAGE", "{body}");
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().unwrap().contains("free space"));
    let list = client
        .get(format!("{}/api/v1/insights/activities/", server.base))
        .bearer_auth(&key)
        .send()
        .unwrap();
    assert_eq!(list.status(), 200, "reads go on");
}
