//! Free-space headroom: below the floor, writes are refused with 507 and `/readyz` says
//! why, reads go on; when space returns, writes resume on their own and nothing that was
//! acknowledged is missing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;

use tally_core::auth::Scope;
use tally_server::{AppState, Config};

const GIB: u64 = 1024 * 1024 * 1024;

#[tokio::test]
async fn writes_stop_below_the_floor_and_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    // The filesystem, as the store sees it: the test decides how full it is.
    let free = Arc::new(AtomicU64::new(10 * GIB));
    let seen = free.clone();
    let probe: tally_store::sqlite::FreeSpaceProbe =
        Arc::new(move |_: &std::path::Path| Ok(seen.load(Ordering::Relaxed)));
    let stores = tally_server::open_store_with(&config, false, Some(probe)).unwrap();
    let state = AppState::new(&config, stores.clone()).await.unwrap();
    let tenant = state.access.create_tenant("acme", None).await.unwrap().id;
    let (_, key) = state
        .access
        .create_api_key(tenant, "k", Scope::ALL.into_iter().collect())
        .await
        .unwrap();
    let t = super::support::TestApp::from_parts(state, stores, dir, tenant, key);
    let track = |i: usize| json!({"event_type": "user_action", "event_name": format!("e{i}"), "properties": {"user_id": "u"}});

    let mut acked = 0;
    for i in 0..5 {
        let r = t.post("/api/v1/insights/track/", track(i)).await;
        assert_eq!(r.status, StatusCode::CREATED);
        acked += 1;
    }
    free.store(64 * 1024 * 1024, Ordering::Relaxed);
    let r = t.post("/api/v1/insights/track/", track(99)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INSUFFICIENT_STORAGE, "INSUFFICIENT_STORAGE")
    );
    assert_eq!(r.body["error"]["details"]["free_bytes"], 64 * 1024 * 1024);
    assert_eq!(
        r.body["error"]["details"]["min_free_bytes"],
        128 * 1024 * 1024
    );
    let r = t.post("/api/v1/ai/usage", json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1, "latency_ms": 5})).await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{:?}", r.body);
    let ready = t.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("free space"),
        "{:?}",
        ready.body
    );
    // Reads go on.
    let list = t.get("/api/v1/insights/activities/").await;
    assert_eq!(
        (list.status, list.body["count"].as_u64()),
        (StatusCode::OK, Some(acked))
    );

    free.store(10 * GIB, Ordering::Relaxed);
    assert_eq!(
        t.call("GET", "/readyz", None, None).await.status,
        StatusCode::OK
    );
    let r = t.post("/api/v1/insights/track/", track(5)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    acked += 1;
    let list = t.get("/api/v1/insights/activities/").await;
    assert_eq!(
        list.body["count"].as_u64(),
        Some(acked),
        "every acknowledged event, nothing else"
    );
}
