//! Durability: drive event and LLM-usage ingestion from this process, `kill -9` the server
//! mid-load, restart it on the same data dir, and do that 20 times. After every restart each
//! acknowledged event and usage record is stored exactly once, with the rollups that count
//! them; at the end, clients retry everything they sent and nothing is counted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{tenant_and_key, Server};
use serde_json::json;

const CYCLES: usize = 20;
const EVENT_WRITERS: usize = 4;
const USAGE_WRITERS: usize = 2;
const BATCH: usize = 50;
/// Acknowledged items per cycle before the kill (events and records together).
const LOAD_PER_CYCLE: usize = 3_000;

/// What the clients sent and what the server acknowledged, by client id.
#[derive(Default)]
struct Ledger {
    events_acked: HashSet<String>,
    usage_acked: HashSet<String>,
    /// (path, body) of every request sent, for the retries at the end.
    sent: Vec<(&'static str, serde_json::Value)>,
}

fn event_batch(cycle: usize, writer: usize, seq: usize) -> (Vec<String>, serde_json::Value) {
    let ts = chrono::Utc::now().to_rfc3339();
    let ids: Vec<String> = (0..BATCH)
        .map(|i| format!("c{cycle}-w{writer}-s{seq}-e{i}"))
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

fn usage_batch(cycle: usize, writer: usize, seq: usize) -> (Vec<String>, serde_json::Value) {
    let ts = chrono::Utc::now().to_rfc3339();
    let ids: Vec<String> = (0..BATCH)
        .map(|i| format!("c{cycle}-u{writer}-s{seq}-r{i}"))
        .collect();
    let records: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": id, "provider": "openai", "model": "gpt-4o-mini",
                   "user_id": format!("user-{}", i % 7), "conversation_id": format!("conv-{writer}-{seq}"),
                   "input_tokens": 100 + i, "output_tokens": 50, "latency_ms": 300, "timestamp": ts})
        })
        .collect();
    (ids, json!({ "records": records }))
}

/// Loads the server until `LOAD_PER_CYCLE` more items are acknowledged, then kills it.
async fn load_and_kill(server: &mut Server, key: &str, cycle: usize, ledger: &Arc<Mutex<Ledger>>) {
    let client = reqwest::Client::new();
    let start = {
        let l = ledger.lock().unwrap();
        l.events_acked.len() + l.usage_acked.len()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for w in 0..EVENT_WRITERS + USAGE_WRITERS {
        let usage = w >= EVENT_WRITERS;
        let path: &'static str = if usage {
            "/api/v1/ai/usage"
        } else {
            "/api/v1/insights/track/batch/"
        };
        let url = format!("{}{path}", server.base);
        let (client, key, ledger) = (client.clone(), key.to_owned(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while Instant::now() < deadline {
                let (ids, body) = if usage {
                    usage_batch(cycle, w, seq)
                } else {
                    event_batch(cycle, w, seq)
                };
                seq += 1;
                ledger.lock().unwrap().sent.push((path, body.clone()));
                match client.post(&url).bearer_auth(&key).json(&body).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        // Acknowledged: all of them must survive.
                        let mut l = ledger.lock().unwrap();
                        let set = if usage {
                            &mut l.usage_acked
                        } else {
                            &mut l.events_acked
                        };
                        set.extend(ids);
                    }
                    Ok(resp) => panic!("unexpected status {}", resp.status()),
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    loop {
        let done = {
            let l = ledger.lock().unwrap();
            l.events_acked.len() + l.usage_acked.len() - start
        };
        if done >= LOAD_PER_CYCLE || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every acknowledged item is stored once, and the rollups count exactly the stored rows.
fn verify(dir: &std::path::Path, ledger: &Ledger, cycle: usize) {
    // Read-only: closing it must not checkpoint the log, so that the next start recovers
    // from exactly what the kill left.
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("tally.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ids = |sql: &str| -> HashMap<String, i64> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let events = ids("SELECT client_id, COUNT(*) FROM events GROUP BY client_id");
    let usage = ids("SELECT client_id, COUNT(*) FROM llm_usage GROUP BY client_id");
    for (what, acked, stored) in [
        ("event", &ledger.events_acked, &events),
        ("usage record", &ledger.usage_acked, &usage),
    ] {
        let missing: Vec<_> = acked
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged {what}s lost: {missing:?} (acked {}, stored {})",
            acked.len(),
            stored.len()
        );
        assert!(
            stored.values().all(|n| *n == 1),
            "cycle {cycle}: a {what} was stored twice"
        );
    }
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        one("SELECT coalesce(SUM(n), 0) FROM activity_daily") as usize,
        events.len(),
        "cycle {cycle}: event rollups commit with the rows they count"
    );
    let records = usage.len() as i64;
    assert_eq!(
        one("SELECT coalesce(SUM(calls), 0) FROM llm_usage_rollup WHERE granularity = 'day'"),
        records,
        "cycle {cycle}: usage rollups commit with the records"
    );
    assert_eq!(
        one("SELECT coalesce(SUM(calls), 0) FROM llm_user_daily"),
        records,
        "cycle {cycle}"
    );
    assert_eq!(
        one("SELECT coalesce(SUM(input_tokens), 0) FROM llm_usage"),
        one(
            "SELECT coalesce(SUM(input_tokens), 0) FROM llm_usage_rollup WHERE granularity = 'day'"
        ),
        "cycle {cycle}: token sums match"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_twenty_times_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, key) = tenant_and_key(dir.path(), "crash", "ingest,read");
    assert!(key.starts_with("tly_"), "the key alone on stdout: {key}");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for cycle in 0..CYCLES {
        // Each start follows a kill -9: no repair step, the previous cycle's data intact.
        let mut server = Server::start(dir.path());
        load_and_kill(&mut server, &key, cycle, &ledger).await;
        verify(dir.path(), &ledger.lock().unwrap(), cycle);
    }
    let (events_acked, usage_acked) = {
        let l = ledger.lock().unwrap();
        (l.events_acked.len(), l.usage_acked.len())
    };
    assert!(
        events_acked >= CYCLES * 1_000 && usage_acked >= CYCLES * 200,
        "too little load: {events_acked} events, {usage_acked} usage records"
    );

    // Clients retry whatever they are unsure of: nothing is counted twice.
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    let sent = std::mem::take(&mut ledger.lock().unwrap().sent);
    let mut sent_events = 0;
    let mut sent_records = 0;
    for (path, body) in &sent {
        let r = client
            .post(format!("{}{path}", server.base))
            .bearer_auth(&key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        match body.get("events") {
            Some(e) => sent_events += e.as_array().unwrap().len(),
            None => sent_records += body["records"].as_array().unwrap().len(),
        }
    }
    let conn = rusqlite::Connection::open(dir.path().join("tally.db")).unwrap();
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(one("SELECT COUNT(*) FROM events") as usize, sent_events);
    assert_eq!(
        one("SELECT COUNT(DISTINCT client_id) FROM events") as usize,
        sent_events
    );
    assert_eq!(one("SELECT COUNT(*) FROM llm_usage") as usize, sent_records);
    let get = |path: String| {
        let (client, key) = (client.clone(), key.clone());
        async move {
            client
                .get(path)
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let list = get(format!(
        "{}/api/v1/insights/activities/?page_size=1",
        server.base
    ))
    .await;
    assert_eq!(list["count"].as_u64(), Some(sent_events as u64));
    // Each kill lost the user index's staged entries (and its fold in progress): every
    // restart folded the commits it had not, by commit sequence, so each user's listing
    // counts exactly the user's stored events.
    for writer in 0..EVENT_WRITERS {
        let stored = one(&format!(
            "SELECT COUNT(*) FROM events WHERE user_id = '{writer}'"
        ));
        assert!(stored > 0);
        let listed = get(format!(
            "{}/api/v1/insights/activities/?user_id={writer}&page_size=1",
            server.base
        ))
        .await;
        assert_eq!(
            listed["count"].as_i64(),
            Some(stored),
            "user {writer}: listed {listed}"
        );
    }
    let stats = get(format!(
        "{}/api/v1/ai/stats/{tenant}?period=last_7d",
        server.base
    ))
    .await;
    assert_eq!(
        stats["total_messages"].as_u64(),
        Some(sent_records as u64),
        "{stats}"
    );
}
