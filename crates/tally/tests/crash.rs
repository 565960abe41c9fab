//! Durability: drive ingestion from this process, `kill -9` the server mid-load, restart it
//! and check that every event that received a 2xx is stored exactly once, and that retries
//! of everything sent are deduplicated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin, Server};
use serde_json::json;

const WRITERS: usize = 6;
const BATCH: usize = 50;

fn batch(writer: usize, seq: usize) -> (Vec<String>, serde_json::Value) {
    let ts = chrono::Utc::now().to_rfc3339();
    let ids: Vec<String> = (0..BATCH)
        .map(|i| format!("w{writer}-s{seq}-e{i}"))
        .collect();
    let events: Vec<_> = ids
        .iter()
        .map(|id| {
            json!({"id": id, "event_type": "user_action", "event_name": "crash_test",
                   "timestamp": ts, "properties": {"user_id": writer, "project_id": "p", "seq": seq}})
        })
        .collect();
    (ids, json!({ "events": events }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = admin(dir.path(), &["tenant", "create", "--name", "crash"]);
    let key = admin(
        dir.path(),
        &[
            "key",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "load",
            "--scopes",
            "ingest,read",
        ],
    );
    assert!(key.starts_with("tly_"), "the key alone on stdout: {key}");

    let mut server = Server::start(dir.path());
    let url = format!("{}/api/v1/insights/track/batch/", server.base);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, url, key, acked, sent) = (
            client.clone(),
            url.clone(),
            key.clone(),
            acked.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while Instant::now() < deadline {
                let (ids, body) = batch(w, seq);
                seq += 1;
                sent.lock().unwrap().push(body.clone());
                match client.post(&url).bearer_auth(&key).json(&body).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        // Acknowledged: all of them must survive.
                        acked.lock().unwrap().extend(ids);
                    }
                    Ok(resp) => panic!("unexpected status {}", resp.status()),
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    // Let load build up, then pull the plug.
    while acked.lock().unwrap().len() < 20_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 1_000,
        "too little load before the kill: {}",
        acked.len()
    );

    // Restart on the same data dir: no repair step, every acknowledged event is there once.
    let server = Server::start(dir.path());
    let conn = rusqlite::Connection::open(dir.path().join("tally.db")).unwrap();
    let mut stored: HashMap<String, i64> = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT client_id, COUNT(*) FROM events GROUP BY client_id")
        .unwrap();
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
    {
        let (id, n) = row.unwrap();
        stored.insert(id, n);
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged events lost: {missing:?} (acked {}, stored {})",
        acked.len(),
        stored.len()
    );
    assert!(
        stored.values().all(|n| *n == 1),
        "an event was stored twice"
    );
    let rollup: i64 = conn
        .query_row("SELECT SUM(n) FROM activity_daily", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rollup as usize,
        stored.len(),
        "rollups commit with the rows they count"
    );

    // Clients retry whatever they are unsure of: nothing is counted twice.
    let sent = sent.lock().unwrap().clone();
    for body in &sent {
        let retry_url = format!("{}/api/v1/insights/track/batch/", server.base);
        let r = client
            .post(&retry_url)
            .bearer_auth(&key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let total: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total as usize, sent.len() * BATCH);
    let distinct: i64 = conn
        .query_row("SELECT COUNT(DISTINCT client_id) FROM events", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(distinct, total);
    let resp: serde_json::Value = client
        .get(format!(
            "{}/api/v1/insights/activities/?page_size=1",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["count"].as_i64(), Some(total));
}
