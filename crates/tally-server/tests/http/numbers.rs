//! Numbers users act on, checked against values worked out by hand: nearest-rank
//! percentiles, period-bounded conversation costs, per-model user costs, exact money past
//! 64 bits, and exhaustion ETAs.

use axum::http::StatusCode;
use serde_json::{json, Value};
use tally_core::auth::Role;

use crate::support::{app, TestApp};

fn ago(minutes: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes)).to_rfc3339()
}

async fn ingest(t: &TestApp, records: Vec<Value>) {
    for chunk in records.chunks(1000) {
        let r = t
            .post("/api/v1/ai/usage", json!({ "records": chunk }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
}

fn model_row<'a>(body: &'a Value, model: &str) -> &'a Value {
    body["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("{model} missing from {body}"))
}

#[tokio::test]
async fn latency_percentiles_use_the_nearest_rank_and_stay_within_the_observed_range() {
    let t = app().await;
    // gpt-4o: five calls at 400 ms and one at 5 s. 1 call in 6 is slow, so p95 and p99
    // are 5,000 ms (the sketch's own rank gave 399.5 for both, below the mean).
    let mut records: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("f{i}"), "provider": "openai", "model": "gpt-4o", "latency_ms": 400, "timestamp": ago(30)}))
        .collect();
    records.push(json!({"id": "slow", "provider": "openai", "model": "gpt-4o", "latency_ms": 5000, "timestamp": ago(30)}));
    // o3: one call of 3 s: every percentile is 3,000 (was p50 3,011.6, above the max).
    records.push(json!({"id": "one", "provider": "openai", "model": "o3", "latency_ms": 3000, "time_to_first_token_ms": 700, "timestamp": ago(30)}));
    // gpt-4o-mini: 100, 200, …, 1,000 ms: p99 is 1,000 (was 907), p50 is 500 within 1 %.
    for i in 1..=10 {
        records.push(json!({"id": format!("m{i}"), "provider": "openai", "model": "gpt-4o-mini", "latency_ms": 100 * i, "timestamp": ago(30)}));
    }
    ingest(&t, records).await;
    let r = t.get("/api/v1/ai/performance?period=last_24h").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let gpt4o = &model_row(&r.body, "gpt-4o")["latency_ms"];
    assert_eq!(
        (gpt4o["p95"].as_f64(), gpt4o["p99"].as_f64()),
        (Some(5000.0), Some(5000.0))
    );
    assert!(
        (gpt4o["p50"].as_f64().unwrap() - 400.0).abs() <= 4.0,
        "{gpt4o}"
    );
    assert!(gpt4o["p99"].as_f64() >= gpt4o["avg"].as_f64(), "{gpt4o}");
    let o3 = model_row(&r.body, "o3");
    for q in ["p50", "p95", "p99"] {
        assert_eq!(o3["latency_ms"][q], 3000.0, "{q}: {o3}");
        assert_eq!(o3["time_to_first_token_ms"][q], 700.0, "{q}: {o3}");
    }
    let mini = &model_row(&r.body, "gpt-4o-mini")["latency_ms"];
    assert_eq!(mini["p99"], 1000.0, "{mini}");
    assert!(
        (mini["p50"].as_f64().unwrap() - 500.0).abs() <= 5.0,
        "{mini}"
    );
}

#[tokio::test]
async fn conversation_costs_count_only_the_period() {
    let t = app().await;
    // conv-old: $10 forty days ago and $0.50 an hour ago; conv-new: $1 an hour ago.
    ingest(
        &t,
        vec![
            json!({"id": "o1", "provider": "openai", "model": "gpt-4o", "conversation_id": "conv-old", "cost_usd": "10", "timestamp": ago(40 * 24 * 60)}),
            json!({"id": "o2", "provider": "openai", "model": "gpt-4o", "conversation_id": "conv-old", "cost_usd": "0.5", "timestamp": ago(60)}),
            json!({"id": "n1", "provider": "openai", "model": "gpt-4o", "conversation_id": "conv-new", "cost_usd": "1", "timestamp": ago(60)}),
        ],
    )
    .await;
    let r = t.get("/api/v1/ai/costs?period=last_7d").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["total_cost_usd"], 1.5);
    let convs: Vec<(&str, f64, u64)> = r.body["by_conversation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["conversation_id"].as_str().unwrap(),
                c["cost_usd"].as_f64().unwrap(),
                c["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(convs, vec![("conv-new", 1.0, 1), ("conv-old", 0.5, 1)]);
    // The conversation's own page is lifetime, and names its call list apart from its
    // call count (the key `calls` was written twice).
    let r = t.get("/api/v1/ai/costs/conv-old").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["cost_usd"].as_f64(), r.body["calls"].as_u64()),
        (Some(10.5), Some(2))
    );
    assert_eq!(r.body["recent_calls"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_model_cost_breakdown_ranks_that_model_s_users() {
    let t = app().await;
    ingest(
        &t,
        vec![
            json!({"id": "a", "provider": "openai", "model": "o3", "user_id": "alice", "cost_usd": "2", "timestamp": ago(60)}),
            json!({"id": "b", "provider": "openai", "model": "o3", "user_id": "bob", "cost_usd": "0.25", "timestamp": ago(60)}),
            json!({"id": "c", "provider": "openai", "model": "gpt-4o", "user_id": "bob", "cost_usd": "5", "timestamp": ago(60)}),
        ],
    )
    .await;
    let r = t
        .get("/api/v1/ai/usage/cost_breakdown?model=o3&days=7")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let users: Vec<(&str, f64)> = r.body["by_user"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap(),
                u["cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(users, vec![("alice", 2.0), ("bob", 0.25)]);
}

#[tokio::test]
async fn money_adds_up_exactly_past_sixty_four_bits_and_absurd_costs_are_refused() {
    let t = app().await;
    // One call may cost at most $1,000,000; $9e9 is refused naming the field.
    let r = t
        .post(
            "/api/v1/ai/usage",
            json!({"provider": "openai", "model": "gpt-4o", "cost_usd": "9000000000"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.field(), "cost_usd");
    // 10,000 calls of $1,000,000 = $10,000,000,000, past i64 nano-dollars ($9.22e9),
    // spread over ten models, users and reporting keys so that no stored row passes 64 bits.
    let records: Vec<Value> = (0..10_000)
        .map(|i| json!({"id": format!("r{i}"), "provider": "openai", "model": format!("m{}", i % 10),
                        "user_id": format!("u{}", i % 10), "cost_usd": "1000000", "timestamp": ago(60)}))
        .collect();
    for chunk in records.chunks(1000) {
        let key = t.key_with(&[tally_core::auth::Scope::Ingest]).await;
        let r = t
            .call(
                "POST",
                "/api/v1/ai/usage",
                Some(&key),
                Some(&json!({ "records": chunk })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = t
        .get(&format!("/api/v1/ai/stats/{}?period=last_24h", t.tenant))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["total_cost_usd"], 10_000_000_000.0);
    // Another tenant spends $1: the cross-tenant totals stay exact ($10,000,000,001).
    let (_, other_key) = t.other_tenant().await;
    let r = t
        .call(
            "POST",
            "/api/v1/ai/usage",
            Some(&other_key),
            Some(&json!({"provider": "openai", "model": "gpt-4o", "cost_usd": "1", "timestamp": ago(60)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let admin = t.login_as(t.tenant, Role::Admin).await;
    let r = t
        .call(
            "GET",
            "/api/v1/ai/usage?period=last_24h",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["total_cost_usd"], 10_000_000_001.0);
    assert_eq!(r.body["tenants"][0]["total_cost_usd"], 10_000_000_000.0);
    assert_eq!(r.body["tenants"][1]["total_cost_usd"], 1.0);
}

#[tokio::test]
async fn an_exhausted_quota_is_the_earliest_exhaustion() {
    let t = app().await;
    let r = t
        .post(
            "/api/v1/ai/quotas/config",
            json!({"quotas": [
                {"name": "small", "metric": "requests", "window": "day", "limit": 1},
                {"name": "big", "metric": "requests", "window": "month", "limit": 1000000},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    ingest(
        &t,
        vec![
            json!({"id": "q1", "provider": "openai", "model": "gpt-4o", "cost_usd": "1"}),
            json!({"id": "q2", "provider": "openai", "model": "gpt-4o", "cost_usd": "1"}),
        ],
    )
    .await;
    let before = chrono::Utc::now();
    let r = t.get("/api/v1/ai/quotas").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let eta = r.body["predictions"]["quota_exhaustion_eta"]
        .as_str()
        .unwrap();
    let eta = chrono::DateTime::parse_from_rfc3339(eta).unwrap();
    assert!(
        (eta.timestamp() - before.timestamp()).abs() <= 5,
        "{eta} should be now: the daily quota is already exhausted"
    );
}

#[tokio::test]
async fn periods_never_end_in_the_future_and_ways_of_naming_them_do_not_mix() {
    let t = app().await;
    let before = chrono::Utc::now();
    let month_ago = (before - chrono::Duration::days(30)).format("%Y-%m-%d");
    for q in [
        "period=last_7d".to_owned(),
        "days=3".to_owned(),
        format!("from={month_ago}"),
        format!("from={month_ago}&to=2999-01-01"),
    ] {
        let r = t.get(&format!("/api/v1/ai/costs?{q}")).await;
        assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.body);
        let to = chrono::DateTime::parse_from_rfc3339(r.body["to"].as_str().unwrap()).unwrap();
        let after = chrono::Utc::now();
        assert!(
            to >= before - chrono::Duration::seconds(1) && to <= after,
            "{q}: to {to} is not now"
        );
    }
    for (q, field, names) in [
        ("period=last_24h&days=3", "days", "period"),
        ("days=3&from=2025-01-01", "from", "days"),
        ("period=last_7d&to=2025-01-01", "to", "period"),
    ] {
        let r = t.get(&format!("/api/v1/ai/costs?{q}")).await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (StatusCode::BAD_REQUEST, "INSIGHTS_003", field),
            "{q}"
        );
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(names),
            "{q}: {}",
            r.body
        );
    }
    // Ranges where no data can be: a start in the future, an end before 2000.
    let r = t.get("/api/v1/ai/costs?from=2999-01-01").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "from"),
        "{}",
        r.body
    );
    let r = t
        .get("/api/v1/ai/costs?from=1900-01-01&to=1900-02-01")
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "to"),
        "{}",
        r.body
    );
}

/// Every money field answers with 6 decimals, rounded half away from zero at the edge
/// only: one call of $0.123456789 reads $0.123457 everywhere, and a sum of two reads the
/// rounded exact sum ($0.246914), not a sum of rounded values.
#[tokio::test]
async fn money_fields_have_six_decimals_everywhere() {
    let t = app().await;
    ingest(
        &t,
        vec![
            json!({"id": "m1", "provider": "openai", "model": "gpt-4o", "user_id": "u", "conversation_id": "c", "cost_usd": "0.123456789", "timestamp": ago(30)}),
        ],
    )
    .await;
    let day = format!("/api/v1/ai/stats/{}?period=last_24h", t.tenant);
    let r = t.get(&day).await;
    assert_eq!(r.body["total_cost_usd"], 0.123457, "{}", r.body);
    assert_eq!(r.body["provider_breakdown"][0]["total_cost"], 0.123457);
    let r = t.get("/api/v1/ai/costs?period=last_24h").await;
    for v in [
        &r.body["total_cost_usd"],
        &r.body["by_model"][0]["cost_usd"],
        &r.body["by_conversation"][0]["cost_usd"],
        &r.body["by_user"][0]["cost_usd"],
    ] {
        assert_eq!(*v, 0.123457, "{}", r.body);
    }
    let r = t.get("/api/v1/ai/usage/records").await;
    assert_eq!(r.body["results"][0]["total_cost"], 0.123457);
    let r = t.get("/api/v1/ai/costs/c").await;
    assert_eq!(r.body["cost_usd"], 0.123457);
    ingest(
        &t,
        vec![
            json!({"id": "m2", "provider": "openai", "model": "gpt-4o", "user_id": "u", "conversation_id": "c", "cost_usd": "0.123456789", "timestamp": ago(30)}),
        ],
    )
    .await;
    let r = t.get(&day).await;
    assert_eq!(r.body["total_cost_usd"], 0.246914, "{}", r.body);
    let r = t.get("/api/v1/ai/usage/cost_breakdown?days=1").await;
    assert_eq!(r.body["total_cost_usd"], 0.246914, "{}", r.body);
    assert_eq!(r.body["by_model"][0]["cost_usd"], 0.246914);
}

/// One user's day (and one conversation) can hold $9,223,372,036 in its stored row: the
/// batch that would pass it is refused with 409 and nothing of it is stored, instead of
/// the row silently becoming a float that every later read fails on.
#[tokio::test]
async fn a_stored_total_that_would_pass_sixty_four_bits_is_refused_and_reads_keep_working() {
    let t = app().await;
    let batch = |b: usize| -> Vec<Value> {
        (0..1000)
            .map(|i| json!({"id": format!("b{b}-{i}"), "provider": "openai", "model": format!("m{}", i % 10),
                            "user_id": "whale", "conversation_id": "big", "cost_usd": "1000000", "timestamp": ago(30)}))
            .collect()
    };
    for b in 0..9 {
        ingest(&t, batch(b)).await; // $9,000,000,000 for the user's day
    }
    let r = t
        .post("/api/v1/ai/usage", json!({ "records": batch(9) }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "CONFLICT"),
        "{}",
        r.body
    );
    let r = t.get("/api/v1/ai/costs/big").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["cost_usd"].as_f64(), r.body["calls"].as_u64()),
        (Some(9e9), Some(9000))
    );
    let r = t.get("/api/v1/ai/costs?period=last_24h").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["by_user"][0]["cost_usd"], 9e9);
}
