//! The demo data at an awkward hour: just after midnight UTC, today's budgets already show
//! usage, so a first look at the dashboard is never a row of zeros.

use axum::http::StatusCode;

use tally_core::time::ManualClock;
use tally_server::{AppState, Config};

/// 2026-06-15T00:20:00Z, a Monday twenty minutes old.
const JUST_AFTER_MIDNIGHT: i64 = 1_781_482_800_000_000;

#[tokio::test]
async fn just_after_midnight_the_demo_has_usage_today() {
    assert_eq!(
        tally_core::time::rfc3339(JUST_AFTER_MIDNIGHT),
        "2026-06-15T00:20:00Z"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let stores = tally_server::open_store(&config, false).unwrap();
    let clock = ManualClock::at(JUST_AFTER_MIDNIGHT);
    let state = AppState::with_clock(&config, stores.clone(), clock.shared())
        .await
        .unwrap();
    let notes = tally_server::demo::seed(&state).await.unwrap();
    let key = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("API key: "))
        .unwrap()
        .to_owned();
    let tenant = notes
        .split_whitespace()
        .skip_while(|w| *w != "tenant")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let t = super::support::TestApp::from_parts(state, stores, dir, tenant, key);

    let r = t.get("/api/v1/ai/quotas").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let daily = &r.body["tenant_quotas"]["daily_limit"];
    assert!(daily["used_usd"].as_f64().unwrap() > 0.0, "{daily}");
}
