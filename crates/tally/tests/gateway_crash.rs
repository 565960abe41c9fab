//! Gateway usage records are side effects, committed off the response path (DESIGN
//! principle 2): a `kill -9` loses at most the calls answered in the last commit interval
//! (`gateway.record_interval_ms`, 100 ms by default, plus the commit in flight), never one
//! answered before; after the restart the budgets count what was committed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{admin, tenant_and_key, Server};
use serde_json::{json, Value};

/// How far before the kill an answered call's record must be stored: the record interval,
/// the commit, and slack for a loaded machine.
const BOUND: Duration = Duration::from_millis(600);

fn stored_ids(base: &str, key: &str) -> HashSet<String> {
    let client = reqwest::blocking::Client::new();
    let mut ids = HashSet::new();
    for page in 1.. {
        let v: Value = client
            .get(format!(
                "{base}/api/v1/ai/usage/records?page_size=100&page={page}"
            ))
            .bearer_auth(key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let results = v["results"].as_array().cloned().unwrap_or_default();
        if results.is_empty() {
            break;
        }
        ids.extend(
            results
                .iter()
                .filter_map(|r| r["client_id"].as_str().map(str::to_owned)),
        );
    }
    ids
}

/// A tenant with a gateway key, a data dir whose server may call loopback, and the fake
/// provider (on its own runtime) for it to call.
struct Gateway {
    _rt: tokio::runtime::Runtime,
    fake: tally_fake_provider::FakeProvider,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    key: String,
}

impl Gateway {
    fn new() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let fake = rt
            .block_on(tally_fake_provider::FakeProvider::start(Default::default()))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("loopback.toml");
        std::fs::write(
            &config,
            "[outbound]\nallow = [\"127.0.0.0/8\"]\nallow_public = false\n",
        )
        .unwrap();
        let (_, key) = tenant_and_key(dir.path(), "gw", "gateway,admin");
        Self {
            _rt: rt,
            fake,
            dir,
            config,
            key,
        }
    }

    fn args(&self) -> [&str; 2] {
        ["--config", self.config.to_str().unwrap()]
    }

    /// Stores the OpenAI credential pointing at the fake.
    fn connect(&self, base: &str) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{base}/api/v1/ai/credentials"))
            .bearer_auth(&self.key)
            .json(&json!({"name": "openai", "api_key": tally_fake_provider::KEY, "base_url": self.fake.openai_url()}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
}

#[test]
fn a_kill_9_loses_at_most_the_last_interval_of_gateway_records() {
    let g = Gateway::new();
    let (dir, key, args) = (&g.dir, g.key.clone(), g.args());
    let mut server = Server::start_with(dir.path(), &args, &[]);
    let client = reqwest::blocking::Client::new();
    g.connect(&server.base);
    let body = json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let mut answered: Vec<(String, Instant)> = Vec::new();
    for cycle in 0..3 {
        // Calls for a while, then a kill right after the last answer.
        let until = Instant::now() + Duration::from_millis(800);
        while Instant::now() < until {
            let r = client
                .post(format!("{}/v1/chat/completions", server.base))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "cycle {cycle}");
            let id = r.headers()["x-tally-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            r.bytes().unwrap();
            answered.push((id, Instant::now()));
        }
        let killed = Instant::now();
        server.kill9();
        server = Server::start_with(dir.path(), &args, &[]);
        let stored = stored_ids(&server.base, &key);
        let lost: Vec<_> = answered
            .iter()
            .filter(|(id, _)| !stored.contains(id))
            .collect();
        for (id, at) in &lost {
            assert!(
                killed.duration_since(*at) < BOUND,
                "cycle {cycle}: {id}, answered {:?} before the kill, was lost",
                killed.duration_since(*at)
            );
        }
        eprintln!(
            "cycle {cycle}: {} answered, {} lost in the last interval",
            answered.len(),
            lost.len()
        );
        // Calls lost with the kill are gone for good: forget them.
        answered.retain(|(id, _)| stored.contains(id));
    }
    // The budgets count what was committed: today's spend is the records' sum.
    let quotas: Value = client
        .get(format!(
            "{}/api/v1/ai/credentials/quota_status?provider=openai",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        quotas["today"]["calls"].as_u64().unwrap() as usize,
        answered.len()
    );
}

/// `tally admin master-key rotate` re-seals every credential under a new key and replaces
/// the data dir's key file: the gateway calls with the credential after a restart, and the
/// old key opens nothing any more.
#[test]
fn rotating_the_master_key_reseals_credentials_the_gateway_still_uses() {
    let g = Gateway::new();
    let (dir, key, args) = (&g.dir, g.key.clone(), g.args());
    let client = reqwest::blocking::Client::new();
    let body = json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let chat = |base: &str| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .unwrap()
    };
    let versions = |base: &str| -> Vec<u64> {
        let v: Value = client
            .get(format!("{base}/api/v1/ai/credentials"))
            .bearer_auth(&key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["key_version"].as_u64().unwrap())
            .collect()
    };

    let mut server = Server::start_with(dir.path(), &args, &[]);
    g.connect(&server.base);
    assert_eq!(chat(&server.base).status(), 200);
    let before = versions(&server.base);
    server.terminate();

    let old_key = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    let new_key = admin(dir.path(), &["master-key", "generate"]);
    assert_ne!(new_key.trim(), old_key.trim());
    let new_file = dir.path().join("new.key");
    std::fs::write(&new_file, &new_key).unwrap();
    let out = admin(
        dir.path(),
        &[
            "master-key",
            "rotate",
            "--new-key-file",
            new_file.to_str().unwrap(),
        ],
    );
    assert!(!out.contains(tally_fake_provider::KEY), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("master.key"))
            .unwrap()
            .trim(),
        new_key.trim(),
        "the data dir's key file is the new key"
    );

    let mut server = Server::start_with(dir.path(), &args, &[]);
    let after = versions(&server.base);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "sealed under the new key's version");
    let r = chat(&server.base);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    server.terminate();

    // The old key opens nothing: with it, the credential is skipped and OpenAI unknown.
    let mut server = Server::start_with(dir.path(), &args, &[("TALLY_MASTER_KEY", old_key.trim())]);
    let r = chat(&server.base);
    assert_ne!(r.status(), 200);
    server.terminate();
}
