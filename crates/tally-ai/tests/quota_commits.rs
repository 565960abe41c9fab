//! The quota tracker counts every committed record exactly once, whatever the order of a
//! state load and the commit it is told about: it compares commit sequences, not ids.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use std::sync::Arc;

use tally_ai::quota::Quotas;
use tally_core::quota::QuotaInput;
use tally_core::tenancy::Tenant;
use tally_core::time::{Clock, ManualClock};
use tally_core::usage::{validate_usage, UsageInput, UsageRecord};
use tally_core::TenantId;
use tally_store::{SqliteConfig, StoreConfig, Stores};

fn record(clock: &ManualClock) -> UsageRecord {
    let input: UsageInput = serde_json::from_value(serde_json::json!({
        "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500
    }))
    .unwrap();
    validate_usage(
        input,
        &tally_core::pricing::default_catalog(),
        clock.now_micros(),
        300,
    )
    .unwrap()
}

#[tokio::test]
async fn a_record_counts_once_whether_the_load_or_the_observe_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::open(StoreConfig::Sqlite(SqliteConfig::new(
        dir.path().join("tally.db"),
    )))
    .unwrap();
    // Noon UTC on 2026-06-15: the day's window holds everything below.
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
    let quotas = Quotas::new(stores.clone(), clock.shared());
    let rule: QuotaInput = serde_json::from_value(serde_json::json!({
        "metric": "requests", "window": "day", "limit": 100
    }))
    .unwrap();
    quotas.configure(tenant, vec![Ok(rule)]).await.unwrap();
    // Loaded before the commit: the observe adds it.
    assert_eq!(requests(&quotas, tenant).await, 0);
    let r = record(&clock);
    let first = stores
        .usage
        .insert_usage(tenant, Arc::from(vec![r.clone()]))
        .await
        .unwrap();
    quotas.observe(tenant, &[&r], first.commit).await.unwrap();
    assert_eq!(requests(&quotas, tenant).await, 1);

    // Loaded after the commit (the state was dropped in between): the load counted it,
    // so the late observe of the same commit adds nothing.
    let second = stores
        .usage
        .insert_usage(tenant, Arc::from(vec![r.clone()]))
        .await
        .unwrap();
    quotas.forget(tenant);
    assert_eq!(requests(&quotas, tenant).await, 2);
    quotas.observe(tenant, &[&r], second.commit).await.unwrap();
    assert_eq!(requests(&quotas, tenant).await, 2, "counted twice");

    let closing = stores.clone();
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .unwrap();
}

/// Requests used in the tenant's one daily rule, as the tracker holds them.
async fn requests(quotas: &Quotas, tenant: TenantId) -> i128 {
    quotas.snapshot(tenant).await.unwrap().rules[0].used
}
