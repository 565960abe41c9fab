//! The binary as operators and scripts use it: admin commands print what they create alone
//! on stdout, `serve` bootstraps an admin without a fixed password, drains on SIGTERM, and
//! `--demo` loads data once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod common;

use common::{admin, Server, BIN};
use serde_json::json;

#[test]
fn admin_commands_print_ids_and_keys_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = admin(
        dir.path(),
        &["tenant", "create", "--name", "Acme", "--max-events", "100"],
    );
    assert!(uuid::Uuid::parse_str(&tenant).is_ok(), "{tenant}");
    let account = admin(
        dir.path(),
        &[
            "account",
            "create",
            "--tenant",
            &tenant,
            "--email",
            "ops@acme.io",
            "--role",
            "owner",
            "--password",
            "long enough password",
        ],
    );
    assert!(uuid::Uuid::parse_str(&account).is_ok(), "{account}");
    let key = admin(
        dir.path(),
        &[
            "key",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "ci",
            "--scopes",
            "ingest,read",
        ],
    );
    assert!(
        key.starts_with("tly_") && !key.contains(char::is_whitespace),
        "{key}"
    );
    let list = admin(dir.path(), &["key", "list", "--tenant", &tenant]);
    let row: Vec<&str> = list.lines().next().unwrap().split('\t').collect();
    assert_eq!(row[2], "ingest,read");
    assert_eq!(row[3], "active");
    assert!(key.starts_with(row[1]));
    assert!(!list.contains(&key), "listing never shows the key");
    admin(dir.path(), &["key", "revoke", "--tenant", &tenant, row[0]]);
    assert!(admin(dir.path(), &["key", "list", "--tenant", &tenant]).contains("revoked"));
    assert!(admin(dir.path(), &["tenant", "list"]).contains("Acme"));

    let bad = std::process::Command::new(BIN)
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args([
            "key", "create", "--tenant", &tenant, "--name", "x", "--scopes", "root",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
}

#[test]
fn first_start_generates_the_admin_password_and_prints_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let cmd_env = [("TALLY_ADMIN_EMAIL", "root@example.com")];
    let mut server = Server::start_with_generated_password(dir.path(), &cmd_env);
    let line = server
        .stdout_lines
        .iter()
        .find(|l| l.contains("with password:"))
        .expect("password line")
        .clone();
    let password = line.rsplit(": ").next().unwrap().to_owned();
    assert!(password.len() >= 20);
    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&json!({"email": "root@example.com", "password": password}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // Second start: no new password.
    let server = Server::start_with_generated_password(dir.path(), &cmd_env);
    assert!(!server.stdout_lines.iter().any(|l| l.contains("password")));
}

#[test]
fn demo_loads_once_and_is_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(dir.path(), &["--demo"], &[]);
    let loaded = server
        .stdout_lines
        .iter()
        .find(|l| l.starts_with("loaded demo tenant"))
        .expect("demo line");
    assert!(loaded.contains("12000 events"), "{loaded}");
    assert!(
        loaded.contains("AI calls over 90 days (3 tenants) and 4 quotas"),
        "{loaded}"
    );
    let tenant = loaded.split_whitespace().nth(3).unwrap().to_owned();
    let key_line = server
        .stdout_lines
        .iter()
        .find(|l| l.trim_start().starts_with("API key:"))
        .unwrap();
    let key = key_line.rsplit(' ').next().unwrap().to_owned();
    let client = reqwest::blocking::Client::new();
    let r: serde_json::Value = client
        .get(format!(
            "{}/api/v1/insights/activities/?event_type=page_view&page_size=5",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(r["count"].as_u64().unwrap() > 1000);
    assert_eq!(r["results"][0]["event_type"], "page_view");
    assert!(r["results"][0]["user"]["email"]
        .as_str()
        .unwrap()
        .ends_with("@demo.example"));
    let stats: serde_json::Value = client
        .get(format!(
            "{}/api/v1/ai/stats/{tenant}?period=last_30d",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(stats["total_messages"].as_u64().unwrap() > 500, "{stats}");
    assert!(stats["total_cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(stats["provider_breakdown"].as_array().unwrap().len(), 3);
    let quotas: serde_json::Value = client
        .get(format!("{}/api/v1/ai/quotas", server.base))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(quotas["quotas"].as_array().unwrap().len(), 4, "{quotas}");
    assert!(
        quotas["tenant_quotas"]["daily_limit"]["used_usd"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    demo_looks_like_real_traffic(&client, &server.base, &key);
    server.terminate();
    let again = Server::start_with(dir.path(), &["--demo"], &[]);
    assert!(again
        .stdout_lines
        .iter()
        .any(|l| l.starts_with("demo data already loaded")));
}

#[test]
fn bad_configuration_fails_fast_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tally.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config file"));
    let out = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--geoip-database",
            "/nonexistent.mmdb",
        ])
        .env("TALLY_ADMIN_PASSWORD", "x long password")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GeoIP"));
}

/// The demo is a newcomer's first impression: its numbers must not look generated.
fn demo_looks_like_real_traffic(client: &reqwest::blocking::Client, base: &str, key: &str) {
    let get = |path: &str| -> serde_json::Value {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    // Events carry a place (the demo's GeoIP database) and arrive just after they happen.
    let list = get("/api/v1/insights/activities/?page_size=20&page=3");
    let mut cities = std::collections::BTreeSet::new();
    for a in list["results"].as_array().unwrap() {
        let id = a["id"].as_i64().unwrap();
        let detail = get(&format!("/api/v1/insights/activities/{id}/"));
        let city = detail["enriched_data"]["geo_location"]["city"].as_str();
        cities.insert(
            city.unwrap_or_else(|| panic!("no city: {detail}"))
                .to_owned(),
        );
        let at =
            |k: &str| chrono::DateTime::parse_from_rfc3339(detail[k].as_str().unwrap()).unwrap();
        let delay = (at("created_at") - at("timestamp")).num_milliseconds();
        assert!(
            (0..=1_000).contains(&delay),
            "received {delay} ms after it happened: {detail}"
        );
    }
    assert!(cities.len() >= 3, "{cities:?}");
    // Reasoning models spend output tokens reasoning; time to first token is not a fixed
    // share of latency; cached tokens are not a fixed share of input.
    let o3 = get("/api/v1/ai/usage/records?model_name=o3&status=success&page_size=50");
    let rows = o3["results"].as_array().unwrap();
    assert!(rows.len() >= 20, "{o3}");
    assert!(
        rows.iter()
            .all(|r| r["reasoning_tokens"].as_u64().unwrap() > 0),
        "{o3}"
    );
    let all = get("/api/v1/ai/usage/records?status=success&page_size=100");
    let rows = all["results"].as_array().unwrap();
    let ratios: std::collections::BTreeSet<u64> = rows
        .iter()
        .map(|r| {
            (r["time_to_first_token_ms"].as_f64().unwrap() / r["latency_ms"].as_f64().unwrap()
                * 100.0) as u64
        })
        .collect();
    assert!(ratios.len() > 10, "{ratios:?}");
    let cached: std::collections::BTreeSet<u64> = rows
        .iter()
        .map(|r| {
            r["cached_tokens"].as_u64().unwrap() * 100 / r["input_tokens"].as_u64().unwrap().max(1)
        })
        .collect();
    assert!(cached.contains(&0) && cached.len() > 10, "{cached:?}");
    assert!(
        rows.iter().any(|r| r["quality_score"].is_null()),
        "not every call is scored"
    );
    // Several kinds of failure.
    let failed =
        get("/api/v1/ai/usage/records?status=error&page_size=100&created_at__gte=2000-01-01");
    let kinds: std::collections::BTreeSet<&str> = failed["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["error_type"].as_str())
        .collect();
    assert!(kinds.len() >= 3, "{kinds:?}");
    // Latency has a tail: p99 well above the median; o3 scores above gpt-4o-mini.
    let perf = get("/api/v1/ai/performance?period=last_90d");
    let model = |m: &str| {
        perf["by_model"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == m)
            .unwrap()
            .clone()
    };
    let mini = model("gpt-4o-mini");
    assert!(
        mini["latency_ms"]["p99"].as_f64()
            > Some(2.0 * mini["latency_ms"]["p50"].as_f64().unwrap()),
        "{mini}"
    );
    let cmp = get("/api/v1/ai/usage/model_comparison?models=o3,gpt-4o-mini&days=90");
    let quality = |m: &str| {
        cmp["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == m)
            .unwrap()["avg_quality"]
            .as_f64()
            .unwrap()
    };
    assert!(quality("o3") > quality("gpt-4o-mini") + 1.0, "{cmp}");
}
