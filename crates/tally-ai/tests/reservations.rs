//! Admitted calls hold their estimate until settled: concurrent calls cannot together
//! overspend a budget, and a settled (dropped) reservation frees its share.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use std::sync::Arc;

use tally_ai::quota::{CallEstimate, Quotas};
use tally_core::pricing::Nanos;
use tally_core::quota::{Decision, QuotaInput};
use tally_core::tenancy::Tenant;
use tally_core::time::{Clock, ManualClock};
use tally_core::TenantId;
use tally_store::{SqliteConfig, StoreConfig, Stores};

async fn setup(limit_usd: &str) -> (tempfile::TempDir, Arc<Quotas>, TenantId) {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::open(StoreConfig::Sqlite(SqliteConfig::new(
        dir.path().join("tally.db"),
    )))
    .unwrap();
    let clock = ManualClock::at(1_781_524_800_000_000);
    let tenant = TenantId::generate();
    stores
        .identity
        .create_tenant(Tenant {
            id: tenant,
            name: "acme".into(),
            max_events: None,
            created_at: clock.now_micros(),
        })
        .await
        .unwrap();
    let quotas = Arc::new(Quotas::new(stores, clock.shared()));
    let rule: QuotaInput = serde_json::from_value(serde_json::json!({
        "metric": "cost_usd", "window": "day", "limit": limit_usd, "enforce": true
    }))
    .unwrap();
    quotas.configure(tenant, vec![Ok(rule)]).await.unwrap();
    (dir, quotas, tenant)
}

fn call(usd: &str) -> CallEstimate {
    CallEstimate {
        provider: "openai".into(),
        model: "gpt-4o".into(),
        user_id: None,
        api_key_id: None,
        cost: Nanos::parse_usd(usd).unwrap(),
        tokens: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_at_a_budget_for_ten_admit_ten() {
    let (_dir, quotas, tenant) = setup("1.00").await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let q = quotas.clone();
            tokio::spawn(async move { q.reserve(tenant, &call("0.10")).await.unwrap() })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (_, Some(r)) => held.push(r),
            (v, None) => {
                assert_eq!(v.decision, Decision::Block);
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (10, 40));
    assert_eq!(quotas.reserved_calls(tenant), 10);
    // A check sees what is held.
    let v = quotas.check(tenant, &call("0.10")).await.unwrap();
    assert_eq!(v.decision, Decision::Block);
    assert_eq!(
        v.rules[0].tracked.reserved,
        Nanos::parse_usd("1.00").unwrap().0
    );
    // Settling one frees its share.
    held.pop();
    assert_eq!(quotas.reserved_calls(tenant), 9);
    let (_, again) = quotas.reserve(tenant, &call("0.10")).await.unwrap();
    assert!(again.is_some());
}

#[tokio::test]
async fn reservations_survive_a_reload_of_the_tenants_state() {
    let (_dir, quotas, tenant) = setup("0.25").await;
    let (_, a) = quotas.reserve(tenant, &call("0.20")).await.unwrap();
    assert!(a.is_some());
    // A reload (after a deletion, or a window roll-over) keeps the calls in flight.
    quotas.forget(tenant);
    let (v, b) = quotas.reserve(tenant, &call("0.10")).await.unwrap();
    assert!(b.is_none(), "0.20 held + 0.10 is over 0.25");
    assert_eq!(v.decision, Decision::Block);
    drop(a);
    assert_eq!(quotas.reserved_calls(tenant), 0);
}
