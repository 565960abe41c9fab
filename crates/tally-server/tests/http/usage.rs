//! POST /ai/usage and /ai/prices.

use axum::http::StatusCode;
use serde_json::json;
use tally_core::auth::{Role, Scope};

use crate::support::{app, app_with};

fn call(id: &str) -> serde_json::Value {
    json!({"id": id, "provider": "openai", "model": "gpt-4o-2024-08-06", "user_id": 42,
           "conversation_id": "conv-1", "input_tokens": 1000, "output_tokens": 500,
           "latency_ms": 820, "timestamp": "2025-07-01T10:00:00Z"})
}

#[tokio::test]
async fn a_call_is_stored_priced_and_deduplicated() {
    let t = app().await;
    let r = t.post("/api/v1/ai/usage", call("c-1")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let item = &r.body["results"][0];
    assert_eq!(item["cost_usd"], 0.0075); // 1,000 × $2.50/M + 500 × $10/M
    assert_eq!(item["cost_source"], "catalog");
    assert_eq!(r.body["total_cost_usd"], 0.0075);
    let retry = t.post("/api/v1/ai/usage", call("c-1")).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body["results"][0]["duplicate"], true);
    assert_eq!(retry.body["results"][0]["id"], item["id"]);
    assert_eq!(retry.body["total_cost_usd"], 0.0, "a retry adds no cost");
    assert_eq!(t.stores.usage.usage_count(t.tenant).await.unwrap(), 1);
}

#[tokio::test]
async fn batches_report_each_record() {
    let t = app().await;
    let body = json!({"records": [
        call("b-1"),
        {"provider": "openai"},
        {"provider": "acme", "model": "in-house-7b", "input_tokens": 10},
        {"provider": "openai", "model": "gpt-4o", "cost_usd": "0.125"},
        {"provider": "openai", "model": "gpt-4o", "tokens": 5}
    ]});
    let r = t.post("/api/v1/ai/usage", body).await;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{}", r.body);
    assert_eq!(
        (
            r.body["processed_count"].as_u64(),
            r.body["failed_count"].as_u64()
        ),
        (Some(3), Some(2))
    );
    let res = r.body["results"].as_array().unwrap();
    assert_eq!(
        res[1]["error"],
        json!({"code": "INSIGHTS_002", "message": "model is required", "field": "model"})
    );
    assert_eq!(
        (res[2]["cost_usd"].as_f64(), res[2]["cost_source"].as_str()),
        (Some(0.0), Some("unpriced"))
    );
    assert_eq!(
        (res[3]["cost_usd"].as_f64(), res[3]["cost_source"].as_str()),
        (Some(0.125), Some("reported"))
    );
    assert_eq!(res[4]["error"]["field"], "tokens");
    assert_eq!(r.body["total_cost_usd"], 0.1325);
    assert_eq!(t.stores.usage.usage_count(t.tenant).await.unwrap(), 3);

    let r = t
        .post("/api/v1/ai/usage", json!({"records": [{"model": "x"}]}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "BATCH_REJECTED")
    );
    let r = t
        .post(
            "/api/v1/ai/usage",
            json!({"provider": "openai", "model": "gpt-4o", "input_tokens": -1}),
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "input_tokens")
    );
    let r = t.post("/api/v1/ai/usage", json!({"records": []})).await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "records"));
}

#[tokio::test]
async fn batch_size_is_limited() {
    let t = app_with(|c| c.limits.max_batch_events = 2).await;
    let r = t
        .post(
            "/api/v1/ai/usage",
            json!({"records": [call("1"), call("2"), call("3")]}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "BATCH_TOO_LARGE")
    );
}

#[tokio::test]
async fn tenant_prices_apply_from_their_date_and_only_to_their_tenant() {
    let t = app().await;
    let owner = t.login_as(t.tenant, Role::Owner).await;
    let price = json!({"provider": "openai", "model": "gpt-4o", "effective_from": "2025-06-01",
                       "input_per_mtok_usd": "1.00", "output_per_mtok_usd": "4.00"});
    let r = t
        .call("POST", "/api/v1/ai/prices", Some(&owner), Some(&price))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["source"], "override");

    let after = t.post("/api/v1/ai/usage", call("p-1")).await; // 2025-07-01
    assert_eq!(after.body["results"][0]["cost_usd"], 0.003); // 1,000 × $1 + 500 × $4 per M
    let mut early = call("p-2");
    early["timestamp"] = json!("2025-05-01T10:00:00Z");
    let before = t.post("/api/v1/ai/usage", early).await;
    assert_eq!(
        before.body["results"][0]["cost_usd"], 0.0075,
        "list price before the deal"
    );

    let list = t.get("/api/v1/ai/prices").await;
    let first = &list.body[0];
    assert_eq!(
        (
            first["model"].as_str(),
            first["source"].as_str(),
            first["input_per_mtok_usd"].as_str()
        ),
        (Some("gpt-4o"), Some("override"), Some("1"))
    );
    assert!(list
        .body
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["model"] == "o3" && p["source"] == "default"));

    let (_, other_key) = t.other_tenant().await;
    let r = t
        .call(
            "POST",
            "/api/v1/ai/usage",
            Some(&other_key),
            Some(&call("p-1")),
        )
        .await;
    assert_eq!(
        r.body["results"][0]["cost_usd"], 0.0075,
        "another tenant keeps list prices"
    );

    let reader = t.key_with(&[Scope::Read, Scope::Ingest]).await;
    let r = t
        .call("POST", "/api/v1/ai/prices", Some(&reader), Some(&price))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let bad = json!({"provider": "openai", "model": "gpt-4o", "effective_from": "June", "input_per_mtok_usd": "1", "output_per_mtok_usd": "4"});
    let r = t
        .call("POST", "/api/v1/ai/prices", Some(&owner), Some(&bad))
        .await;
    assert_eq!(r.field(), "effective_from");
    let bad = json!({"provider": "openai", "model": "gpt-4o", "effective_from": "2025-01-01", "input_per_mtok_usd": "-1", "output_per_mtok_usd": "4"});
    let r = t
        .call("POST", "/api/v1/ai/prices", Some(&owner), Some(&bad))
        .await;
    assert_eq!(r.field(), "input_per_mtok_usd");
}

#[tokio::test]
async fn ingest_needs_the_ingest_scope() {
    let t = app().await;
    let reader = t.key_with(&[Scope::Read]).await;
    let r = t
        .call("POST", "/api/v1/ai/usage", Some(&reader), Some(&call("x")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call("POST", "/api/v1/ai/usage", None, Some(&call("x")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tenant_stats_from_known_calls() {
    let t = app().await;
    let at =
        |hours_ago: i64| (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc3339();
    let mut records = Vec::new();
    // This period: 10 short gpt-4o calls (1,000 in / 100 out → $0.0035 each at $2.50/$10).
    for i in 0..10 {
        records.push(json!({"id": format!("a{i}"), "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100, "latency_ms": 500, "timestamp": at(1)}));
    }
    // One claude-sonnet-4 success (2,000 in / 1,000 out → $0.021) and one failure.
    records.push(json!({"id": "c1", "provider": "anthropic", "model": "claude-sonnet-4", "input_tokens": 2000, "output_tokens": 1000, "timestamp": at(2)}));
    records.push(json!({"id": "c2", "provider": "anthropic", "model": "claude-sonnet-4", "status": "error", "error_type": "overloaded", "timestamp": at(2)}));
    // Previous period: 5 of the gpt-4o calls ($0.0175).
    for i in 0..5 {
        records.push(json!({"id": format!("p{i}"), "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100, "timestamp": at(30)}));
    }
    let r = t
        .post("/api/v1/ai/usage", json!({"records": records}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let r = t
        .get(&format!("/api/v1/ai/stats/{}?period=last_24h", t.tenant))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let s = &r.body;
    assert_eq!(s["period"], "last_24h");
    assert_eq!(s["total_messages"], 12);
    assert_eq!(s["total_cost_usd"], 0.056); // 6 decimals, exact here
    assert_eq!(s["error_rate"], 0.0833);
    assert_eq!(
        s["provider_breakdown"],
        json!([
            {"provider": "openai", "total_cost": 0.035, "calls": 10, "market_share": 62.5, "reliability": 1.0},
            {"provider": "anthropic", "total_cost": 0.021, "calls": 2, "market_share": 37.5, "reliability": 0.5}
        ])
    );
    // Repricing the gpt-4o calls at gpt-4o-mini: $0.035 − $0.0021 = $0.0329.
    let opt = s["insights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "cost_optimization")
        .unwrap();
    assert_eq!(opt["estimated_saving_usd"], 0.0329);
    assert!(opt["recommendation"]
        .as_str()
        .unwrap()
        .contains("gpt-4o-mini"));
    // $0.056 over the period's length (the current hour is partial: it ends now) × 30.
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(s[k].as_str().unwrap()).unwrap();
    let days = (at("to") - at("from")).num_microseconds().unwrap() as f64 / 86_400e6;
    assert!(days > 23.0 / 24.0 && days <= 1.0, "{days}");
    // The server projects exact nano-dollars over the exact period; recomputed here in
    // floating point from the shown bounds, the 6th decimal may differ by one.
    let want = 0.056 / days * 30.0;
    let got = s["projections"]["monthly_cost_estimate"].as_f64().unwrap();
    assert!((got - want).abs() <= 1.5e-6, "{got} vs {want}");
    assert_eq!((got * 1e6).round() / 1e6, got, "6 decimals");
    assert_eq!(s["projections"]["growth_rate"], 220.0); // 0.056 vs 0.0175

    let r = t
        .get(&format!("/api/v1/ai/stats/{}?period=last_year", t.tenant))
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "INSIGHTS_003", "period")
    );
    let r = t
        .get(&format!("/api/v1/ai/stats/{}?days=7", t.tenant))
        .await;
    assert_eq!(
        (r.body["period"].as_str(), r.body["total_messages"].as_u64()),
        (Some("last_7d"), Some(17))
    );
}

#[tokio::test]
async fn stats_of_another_tenant_need_the_admin_role() {
    let t = app().await;
    let (other, other_key) = t.other_tenant().await;
    t.call(
        "POST",
        "/api/v1/ai/usage",
        Some(&other_key),
        Some(&json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 10})),
    )
    .await;
    let member = t.login_as(t.tenant, Role::Member).await;
    let r = t
        .call(
            "GET",
            &format!("/api/v1/ai/stats/{other}"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    let admin = t.login_as(t.tenant, Role::Admin).await;
    let r = t
        .call(
            "GET",
            &format!("/api/v1/ai/stats/{other}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["total_messages"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let r = t
        .call(
            "GET",
            &format!("/api/v1/ai/stats/{}", t.tenant),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["total_messages"].as_u64()),
        (StatusCode::OK, Some(0))
    );
}

#[tokio::test]
async fn performance_percentiles_and_comparison_from_known_latencies() {
    let t = app().await;
    let at =
        |hours_ago: i64| (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc3339();
    let mut records = Vec::new();
    // This period: 100 gpt-4o calls at 100..199 ms (5 errors), TTFT a fifth of latency.
    for i in 0..100 {
        let status = if i < 5 { "error" } else { "success" };
        records.push(json!({"id": format!("c{i}"), "provider": "openai", "model": "gpt-4o", "input_tokens": 10,
            "latency_ms": 100 + i, "time_to_first_token_ms": (100 + i) as f64 / 5.0, "status": status, "timestamp": at(1)}));
    }
    records.push(json!({"id": "h", "provider": "anthropic", "model": "claude-3-5-haiku", "latency_ms": 300, "timestamp": at(1)}));
    // Previous period: 50 calls at 200..249 ms.
    for i in 0..50 {
        records.push(json!({"id": format!("p{i}"), "provider": "openai", "model": "gpt-4o", "latency_ms": 200 + i, "timestamp": at(30)}));
    }
    assert_eq!(
        t.post("/api/v1/ai/usage", json!({"records": records}))
            .await
            .status,
        StatusCode::CREATED
    );

    let r = t.get("/api/v1/ai/performance?period=last_24h").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let near =
        |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() <= want * 0.011;
    let m = &r.body["by_model"][0];
    assert_eq!(
        (
            m["provider"].as_str(),
            m["model"].as_str(),
            m["calls"].as_u64()
        ),
        (Some("openai"), Some("gpt-4o"), Some(100))
    );
    assert_eq!(
        (m["error_rate"].as_f64(), m["reliability"].as_f64()),
        (Some(0.05), Some(0.95))
    );
    assert!(near(&m["latency_ms"]["p50"], 149.0), "{}", m["latency_ms"]);
    assert!(near(&m["latency_ms"]["p95"], 194.0), "{}", m["latency_ms"]);
    assert!(near(&m["latency_ms"]["p99"], 198.0), "{}", m["latency_ms"]);
    assert_eq!(m["latency_ms"]["avg"], 149.5);
    assert!(
        near(&m["time_to_first_token_ms"]["p95"], 38.8),
        "{}",
        m["time_to_first_token_ms"]
    );
    assert_eq!(m["previous"]["calls"], 50);
    assert!(near(&m["previous"]["latency_p95_ms"], 247.0));
    let change = m["previous"]["latency_p95_change_pct"].as_f64().unwrap();
    assert!((change - (-21.5)).abs() < 2.5, "{change}"); // 194 vs 247 ms
    let providers: Vec<_> = r.body["by_provider"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(providers, ["openai", "anthropic"]);
    assert!(r.body["by_provider"][1]["previous"]["latency_p95_change_pct"].is_null());

    let r = t.get("/api/v1/ai/performance?days=0").await;
    assert_eq!((r.code(), r.field()), ("INSIGHTS_003", "days"));
}
