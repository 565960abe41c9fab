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

/// Lines of the product's source (`crates/*/src`) that mention `needle`, outside the
/// crates allowed to.
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    let crates = workspace().join("crates");
    let mut found = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap() {
        let krate = krate.unwrap().path();
        let name = krate.file_name().unwrap().to_string_lossy().into_owned();
        if allowed.contains(&name.as_str()) || !krate.join("src").is_dir() {
            continue;
        }
        for file in rust_files(&krate.join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.contains(needle) {
                    found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn only_the_server_knows_axum() {
    let found = offenders("axum", &["tally-server"]);
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
fn the_checks_find_what_they_look_for() {
    // A check that cannot fail proves nothing: the server's own use of axum is found.
    assert!(!offenders("axum", &[]).is_empty());
    assert!(!offenders("rusqlite", &[]).is_empty());
}
