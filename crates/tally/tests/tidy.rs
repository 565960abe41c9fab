//! The architecture's invariants, checked over the source tree (rust-analyzer's `tidy` is
//! the model): a failure names the file and line that broke one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Lines of the files under `dir` for which `hit(file, line)` holds: `file:line: text`.
fn lines_where(dir: &Path, hit: impl Fn(&Path, &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if hit(&file, line) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

/// Lines of the product's source (`crates/*/src`) that mention `needle`, outside the
/// crates allowed to.
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    offenders_where(|line| line.contains(needle), allowed, false)
}

/// Lines of the product's source for which `hit` holds. `allowed` names crates
/// (`tally-store`) or files under `crates/` (`tally-core/src/time.rs`) that may; with
/// `skip_tests`, a file's inline test module (from `#[cfg(test)]` on) is not read.
fn offenders_where(hit: impl Fn(&str) -> bool, allowed: &[&str], skip_tests: bool) -> Vec<String> {
    let crates = workspace().join("crates");
    let mut found = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap() {
        let krate = krate.unwrap().path();
        let name = krate.file_name().unwrap().to_string_lossy().into_owned();
        if allowed.contains(&name.as_str()) || !krate.join("src").is_dir() {
            continue;
        }
        for file in rust_files(&krate.join("src")) {
            let relative = file
                .strip_prefix(&crates)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if allowed.contains(&relative.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                if skip_tests && line.trim() == "#[cfg(test)]" {
                    break;
                }
                if hit(line) {
                    found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
    }
    found
}

/// Reads of the wall clock that bypass the `Clock`.
fn reads_wall_time(line: &str) -> bool {
    ["Utc::now(", "SystemTime::now(", "Local::now("]
        .iter()
        .any(|n| line.contains(n))
}

/// Where the system clock may be chosen: the clock itself, and the places that wire
/// services together (the server's start, the CLI), plus the data dir's lock file (it
/// names when its holder started, before any service exists) and the benchmark driver
/// (a client measuring its own time).
const CLOCK_WIRING: &[&str] = &[
    "tally-core/src/time.rs",
    "tally-server/src/lib.rs",
    "tally/src/cli.rs",
    "tally-store/src/datadir.rs",
    "tally-bench",
];

/// Methods of `pub trait` blocks in `text` with no `///` line above them (attributes
/// between are fine): `file:line: fn …`.
fn undocumented_trait_methods(file: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_trait = false;
    let mut documented = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if line.starts_with("pub trait ") {
            in_trait = true;
            continue;
        }
        if in_trait && line.starts_with('}') {
            in_trait = false;
        }
        if !in_trait {
            continue;
        }
        if t.starts_with("///") {
            documented = true;
        } else if t.starts_with("#[") {
        } else if line.starts_with("    async fn ") || line.starts_with("    fn ") {
            if !documented {
                found.push(format!("{file}:{}: {t}", i + 1));
            }
            documented = false;
        } else if line.starts_with("    ") && !line.starts_with("     ") {
            documented = false;
        }
    }
    found
}

#[test]
fn only_the_server_knows_axum() {
    // The fake provider is a test double of servers outside tally (OpenAI, Anthropic,
    // Gemini), not part of the product.
    let found = offenders("axum", &["tally-server", "tally-fake-provider"]);
    assert!(
        found.is_empty(),
        "axum outside tally-server:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_store_holds_sql() {
    let found = offenders("rusqlite", &["tally-store"]);
    assert!(
        found.is_empty(),
        "rusqlite outside tally-store:\n{}",
        found.join("\n")
    );
}

#[test]
fn backends_stay_behind_the_store_traits() {
    // Callers open `Stores`; a backend's own type and its driver's types stay inside it.
    let found = offenders("SqliteStore", &["tally-store"]);
    assert!(
        found.is_empty(),
        "SqliteStore named outside tally-store (use Stores::open):\n{}",
        found.join("\n")
    );
    let store = workspace().join("crates/tally-store/src");
    let found = lines_where(&store, |file, line| {
        !file.starts_with(store.join("sqlite")) && line.contains("rusqlite")
    });
    assert!(
        found.is_empty(),
        "rusqlite outside tally-store's sqlite/ (keep the traits backend-neutral):\n{}",
        found.join("\n")
    );
}

#[test]
fn handlers_call_services_not_stores() {
    // A handler parses, calls one service operation and shapes the answer; the one store
    // call it may make is the readiness probe.
    let api = workspace().join("crates/tally-server/src/api");
    let found = lines_where(&api, |_, line| {
        line.contains(".stores") && !line.contains(".stores.ready()")
    });
    assert!(
        found.is_empty(),
        "a handler reaches the stores (add a service operation):\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_clock_reads_wall_time() {
    // The benchmark driver is a client timing itself, not part of the product.
    let found = offenders_where(
        reads_wall_time,
        &["tally-core/src/time.rs", "tally-bench"],
        true,
    );
    assert!(
        found.is_empty(),
        "wall time read outside tally_core::time (pass a Clock):\n{}",
        found.join("\n")
    );
    let found = offenders_where(|l| l.contains("SystemClock"), CLOCK_WIRING, true);
    assert!(
        found.is_empty(),
        "the system clock chosen outside the wiring (take a SharedClock instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_store_trait_method_is_documented() {
    let mut found = Vec::new();
    for file in rust_files(&workspace().join("crates/tally-store/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        found.extend(undocumented_trait_methods(
            &file.display().to_string(),
            &text,
        ));
    }
    assert!(
        found.is_empty(),
        "store trait methods without a /// comment (say what the contract promises):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_find_what_they_look_for() {
    // A check that cannot fail proves nothing: the server's own use of axum is found.
    assert!(!offenders("axum", &[]).is_empty());
    assert!(!offenders("rusqlite", &[]).is_empty());
    assert!(!offenders_where(reads_wall_time, &[], true).is_empty());
    assert!(!offenders_where(|l| l.contains("SystemClock"), &[], true).is_empty());
    let sample = "pub trait T: Send {\n    /// Said.\n    async fn said(&self);\n    #[allow(x)]\n    async fn unsaid(&self);\n}\n";
    assert_eq!(
        undocumented_trait_methods("sample.rs", sample),
        vec!["sample.rs:5: async fn unsaid(&self);".to_owned()]
    );
}

#[test]
fn only_the_gateway_calls_out() {
    // Every outbound request goes through the gateway's client and its outbound policy.
    let found = offenders("reqwest", &["tally-gateway", "tally-bench"]);
    assert!(
        found.is_empty(),
        "reqwest outside tally-gateway:\n{}",
        found.join("\n")
    );
}
