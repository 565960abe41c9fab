//! /ai/quotas: configuration, status from known usage, events, and the pre-call check.

use axum::http::StatusCode;
use serde_json::{json, Value};
use tally_core::auth::Role;

use crate::support::{app, TestApp};

/// A gpt-4o call now: 1,000 in / 500 out → $0.0075.
fn gpt4o(id: &str, user: &str) -> Value {
    json!({"id": id, "provider": "openai", "model": "gpt-4o", "user_id": user,
           "input_tokens": 1000, "output_tokens": 500, "timestamp": chrono::Utc::now().to_rfc3339()})
}

async fn configure(t: &TestApp, quotas: Value) -> crate::support::Resp {
    t.post("/api/v1/ai/quotas/config", json!({ "quotas": quotas }))
        .await
}

fn quota<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no quota {name} in {body}"))
}

#[tokio::test]
async fn usage_against_configured_quotas_gives_statuses_and_events() {
    let t = app().await;
    let r = configure(
        &t,
        json!([
            {"name": "daily budget", "metric": "cost_usd", "window": "day", "limit": "0.02"},
            {"name": "monthly calls", "metric": "requests", "window": "month", "limit": 100},
            {"name": "alice tokens", "metric": "tokens", "window": "day", "limit": 4000, "user_id": "alice", "warn_percent": 50},
            {"name": "claude", "metric": "cost_usd", "window": "month", "limit": 1, "provider": "anthropic", "enforce": false}
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["quotas"].as_array().unwrap().len(), 4);
    assert_eq!(r.body["tenant_quotas"]["daily_limit"]["status"], "safe");
    assert_eq!(r.body["tenant_quotas"]["monthly_limit"], Value::Null);

    // Two calls: $0.015 of $0.02 (75 %); alice used 3,000 of 4,000 tokens (75 % ≥ 50 %).
    let q2 = gpt4o("q2", "alice");
    let r = t
        .post(
            "/api/v1/ai/usage",
            json!({"records": [gpt4o("q1", "alice"), q2.clone()]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let s = t.get("/api/v1/ai/quotas").await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.body);
    assert_eq!(
        s.body["tenant_quotas"]["daily_limit"],
        json!({"limit_usd": 0.02, "used_usd": 0.015, "usage_percent": 75.0, "status": "safe"})
    );
    let daily = quota(&s.body, "daily budget");
    assert_eq!(
        (daily["used"].as_f64(), daily["remaining"].as_f64()),
        (Some(0.015), Some(0.005))
    );
    let calls = quota(&s.body, "monthly calls");
    assert_eq!(
        (calls["used"].as_f64(), calls["usage_percent"].as_f64()),
        (Some(2.0), Some(2.0))
    );
    let alice = quota(&s.body, "alice tokens");
    assert_eq!(
        (alice["used"].as_f64(), alice["status"].as_str()),
        (Some(3000.0), Some("warning"))
    );
    assert_eq!(quota(&s.body, "claude")["used"], 0.0);
    assert!(
        s.body["predictions"]["daily_usage_projection"]
            .as_f64()
            .unwrap()
            >= 0.01
    );
    // The warning threshold of alice's rule was crossed: one event.
    let events = s.body["recent_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0]["rule_name"].as_str(),
            events[0]["threshold"].as_u64()
        ),
        (Some("alice tokens"), Some(50))
    );

    // A retried call changes nothing; a new one crosses 80 % and 100 % of the daily budget.
    t.post("/api/v1/ai/usage", q2).await;
    t.post("/api/v1/ai/usage", gpt4o("q3", "bob")).await;
    let s = t.get("/api/v1/ai/quotas").await;
    let daily = quota(&s.body, "daily budget");
    assert_eq!(
        (daily["used"].as_f64(), daily["status"].as_str()),
        (Some(0.0225), Some("exceeded"))
    );
    assert_eq!(daily["usage_percent"], 112.5);
    assert_eq!(
        quota(&s.body, "alice tokens")["used"],
        3000.0,
        "bob's call is not alice's"
    );
    let thresholds: Vec<(String, u64)> = s.body["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rule_name"].as_str().unwrap().to_owned(),
                e["threshold"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(thresholds.len(), 3, "{thresholds:?}");
    assert!(thresholds.contains(&("daily budget".into(), 80)));
    assert!(thresholds.contains(&("daily budget".into(), 100)));

    // State rebuilt from the store (a fresh app on the same data) agrees, without new events.
    let fresh = tally_server::AppState::new(
        &tally_server::Config {
            data_dir: t.dir.path().to_path_buf(),
            ..Default::default()
        },
        t.stores.clone(),
    )
    .await
    .unwrap();
    let snap = fresh.quotas.snapshot(t.tenant).await.unwrap();
    let used: Vec<i128> = snap.rules.iter().map(|r| r.used).collect();
    assert_eq!(used, vec![22_500_000, 3, 3000, 0]);
    assert_eq!(
        t.stores
            .quotas
            .quota_events(t.tenant, 50)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn the_pre_call_check_allows_warns_or_blocks_with_reasons() {
    let t = app().await;
    configure(
        &t,
        json!([
            {"name": "daily budget", "metric": "cost_usd", "window": "day", "limit": "0.02"},
            {"name": "claude soft", "metric": "cost_usd", "window": "day", "limit": "0.01", "provider": "anthropic", "enforce": false}
        ]),
    )
    .await;
    t.post("/api/v1/ai/usage", gpt4o("c1", "u")).await; // $0.0075 used

    let t = &t;
    let test = |body: Value| async move { t.post("/api/v1/ai/quotas/test", body).await };
    let r =
        test(json!({"provider": "openai", "model": "gpt-4o", "estimated_cost_usd": "0.001"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["decision"].as_str(), r.body["allowed"].as_bool()),
        (Some("allow"), Some(true))
    );
    assert_eq!(r.body["quotas"][0]["remaining_after"], 0.0115);

    // $0.0075 + $0.01 = 87.5 %: warn.
    let r =
        test(json!({"provider": "openai", "model": "gpt-4o", "estimated_cost_usd": 0.01})).await;
    assert_eq!(r.body["decision"], "warn");
    assert!(r.body["reasons"][0].as_str().unwrap().contains("87.5 %"));

    // Priced from tokens: 2,000 in / 1,000 out on gpt-4o = $0.015 → 112.5 %: blocked, and
    // gpt-4o-mini ($0.0009) would pass.
    let r = test(json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 2000, "output_tokens": 1000})).await;
    assert_eq!(
        (r.body["decision"].as_str(), r.body["allowed"].as_bool()),
        (Some("block"), Some(false))
    );
    assert_eq!(r.body["estimated_cost_usd"], 0.015);
    assert_eq!(
        r.body["alternatives"],
        json!([{"provider": "openai", "model": "gpt-4o-mini", "estimated_cost_usd": 0.0009, "decision": "allow"}])
    );

    // A rule that is not enforced warns instead of blocking.
    let r = test(
        json!({"provider": "anthropic", "model": "claude-sonnet-4", "estimated_cost_usd": "0.012"}),
    )
    .await;
    assert_eq!(r.body["decision"], "warn");
    let names: Vec<&str> = r.body["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["daily budget", "claude soft"]);

    // Without a cost or tokens the call tests the request quotas at $0; an unpriced model
    // with tokens says its cost quotas were tested at $0.
    let r = test(json!({"provider": "openai", "model": "gpt-4o"})).await;
    assert_eq!(
        (r.status, r.body["estimated_cost_usd"].as_f64()),
        (StatusCode::OK, Some(0.0)),
        "{}",
        r.body
    );
    let r = test(json!({"provider": "acme", "model": "x", "input_tokens": 5})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no price for acme/x"),
        "{}",
        r.body
    );
    let r =
        test(json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 1_000_000_001u64}))
            .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "input_tokens")
    );
    let r = test(json!({"model": "x", "estimated_cost_usd": "1"})).await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "provider"));
    let r =
        test(json!({"provider": "openai", "model": "gpt-4o", "estimated_cost_usd": "-1"})).await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "estimated_cost_usd")
    );
}

#[tokio::test]
async fn quota_configuration_is_validated_field_by_field() {
    let t = app().await;
    let bad = |quotas: Value, field: &'static str| {
        let t = &t;
        async move {
            let r = configure(t, quotas).await;
            assert_eq!(
                (r.status, r.code(), r.field()),
                (StatusCode::BAD_REQUEST, "VALIDATION_ERROR", field),
                "{}",
                r.body
            );
        }
    };
    let ok = json!({"metric": "cost_usd", "window": "day", "limit": "5"});
    bad(
        json!([ok, {"metric": "cost_usd", "window": "day", "limit": "abc", "provider": "openai"}]),
        "quotas[1].limit",
    )
    .await;
    bad(
        json!([{"metric": "dollars", "window": "day", "limit": 5}]),
        "quotas[0].metric",
    )
    .await;
    bad(
        json!([{"metric": "tokens", "window": "week", "limit": 5}]),
        "quotas[0].window",
    )
    .await;
    bad(
        json!([{"metric": "tokens", "window": "day", "limit": 1.5}]),
        "quotas[0].limit",
    )
    .await;
    bad(
        json!([{"metric": "tokens", "window": "day", "limit": 5, "colour": "red"}]),
        "quotas[0].colour",
    )
    .await;
    bad(json!([ok, ok]), "quotas[1]").await;
    bad(json!([{"metric": "tokens", "window": "day", "limit": 5, "user_id": "a", "model": "gpt-4o"}]), "quotas[0].user_id").await;
    bad(
        json!([{"metric": "tokens", "window": "day", "limit": 5, "warn_percent": 100}]),
        "quotas[0].warn_percent",
    )
    .await;
    let r = t
        .post("/api/v1/ai/quotas/config", json!({"rules": []}))
        .await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "rules"));
    let many: Vec<Value> = (0..201)
        .map(|i| json!({"metric": "requests", "window": "day", "limit": 5, "user_id": format!("u{i}")}))
        .collect();
    let r = configure(&t, Value::Array(many)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "BATCH_TOO_LARGE")
    );
    // Nothing was stored by the rejected configurations; an empty list clears.
    assert!(t
        .stores
        .quotas
        .quota_rules(t.tenant)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(configure(&t, json!([ok])).await.status, StatusCode::OK);
    assert_eq!(configure(&t, json!([])).await.body["quotas"], json!([]));
}

#[tokio::test]
async fn quotas_are_per_tenant_and_configuring_needs_admin_rights() {
    let t = app().await;
    let (other, other_key) = t.other_tenant().await;
    configure(
        &t,
        json!([{"metric": "requests", "window": "day", "limit": 1}]),
    )
    .await;
    t.call(
        "POST",
        "/api/v1/ai/usage",
        Some(&other_key),
        Some(&gpt4o("o1", "u")),
    )
    .await;
    // The other tenant's call does not count against this tenant's quota.
    let s = t.get("/api/v1/ai/quotas").await;
    assert_eq!(s.body["quotas"][0]["used"], 0.0);
    let o = t
        .call("GET", "/api/v1/ai/quotas", Some(&other_key), None)
        .await;
    assert_eq!(o.body["quotas"], json!([]));

    let member = t.login_as(t.tenant, Role::Member).await;
    let r = t
        .call(
            "POST",
            "/api/v1/ai/quotas/config",
            Some(&member),
            Some(&json!({"quotas": []})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(
            "GET",
            &format!("/api/v1/ai/quotas?tenant_id={other}"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let admin = t.login_as(t.tenant, Role::Admin).await;
    let r = t
        .call(
            "GET",
            &format!("/api/v1/ai/quotas?tenant_id={other}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["tenant_id"].as_str()),
        (StatusCode::OK, Some(other.0.to_string().as_str()))
    );
}
