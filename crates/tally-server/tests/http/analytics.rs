//! AI analytics reports from known calls: costs, conversations, real time, dashboard,
//! cross-tenant usage, seed 003's views, raw records and exports.

use axum::http::StatusCode;
use serde_json::{json, Value};
use tally_core::auth::Role;

use crate::support::{app, TestApp};

fn ago(minutes: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes)).to_rfc3339()
}

#[allow(clippy::too_many_arguments)]
fn call(
    id: &str,
    provider: &str,
    model: &str,
    user: &str,
    conv: &str,
    input: u64,
    output: u64,
    minutes_ago: i64,
) -> Value {
    json!({"id": id, "provider": provider, "model": model, "user_id": user, "conversation_id": conv,
           "input_tokens": input, "output_tokens": output, "latency_ms": 1000, "quality_score": 8,
           "timestamp": ago(minutes_ago)})
}

/// conv-a (alice): 3 × gpt-4o 1,000/100 = 3 × $0.0035; conv-b (bob): claude-sonnet-4
/// 2,000/1,000 = $0.021; conv-c (alice): gpt-4o-mini 1,000/500 = $0.00045.
async fn seed(t: &TestApp) {
    let records = vec![
        call("a1", "openai", "gpt-4o", "alice", "conv-a", 1000, 100, 90),
        call("a2", "openai", "gpt-4o", "alice", "conv-a", 1000, 100, 80),
        call("a3", "openai", "gpt-4o", "alice", "conv-a", 1000, 100, 70),
        call(
            "b1",
            "anthropic",
            "claude-sonnet-4",
            "bob",
            "conv-b",
            2000,
            1000,
            60,
        ),
        call(
            "c1",
            "openai",
            "gpt-4o-mini",
            "alice",
            "conv-c",
            1000,
            500,
            50,
        ),
    ];
    let r = t
        .post("/api/v1/ai/usage", json!({ "records": records }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn costs_by_provider_model_conversation_and_user_with_a_computed_saving() {
    let t = app().await;
    seed(&t).await;
    let r = t.get("/api/v1/ai/costs?period=last_24h").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let c = &r.body;
    assert_eq!(
        (c["total_cost_usd"].as_f64(), c["total_calls"].as_u64()),
        (Some(0.03195), Some(5))
    );
    assert_eq!(c["by_provider"][0]["provider"], "anthropic");
    assert_eq!(c["by_provider"][0]["share_percent"], 65.7); // 0.021 / 0.03195
    assert_eq!(c["by_model"][1]["model"], "gpt-4o");
    assert_eq!(c["by_model"][1]["avg_cost_per_call"], 0.0035);
    let convs: Vec<(&str, f64)> = c["by_conversation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["conversation_id"].as_str().unwrap(),
                x["cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        convs,
        vec![("conv-b", 0.021), ("conv-a", 0.0105), ("conv-c", 0.00045)]
    );
    let users: Vec<(&str, u64)> = c["by_user"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["user_id"].as_str().unwrap(), x["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(users, vec![("bob", 1), ("alice", 4)]);
    // gpt-4o's short calls repriced at gpt-4o-mini: 3,000 × $0.15/M + 300 × $0.60/M = $0.00063,
    // a saving of $0.00987 (94 %).
    let rec = &c["recommendations"][0];
    assert_eq!(
        (rec["model"].as_str(), rec["alternative_model"].as_str()),
        (Some("gpt-4o"), Some("gpt-4o-mini"))
    );
    assert_eq!(rec["saving_percent"], 94.0);
    assert_eq!(rec["estimated_saving_usd"], 0.00987);

    let r = t.get("/api/v1/ai/costs/conv-a").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (
            r.body["recent_calls"].as_array().unwrap().len(),
            r.body["cost_usd"].as_f64()
        ),
        (3, Some(0.0105))
    );
    assert_eq!(r.body["user_id"], "alice");
    assert_eq!(r.body["avg_cost_per_message"], 0.0035);
    assert_eq!(r.body["recent_calls"][0]["cost_usd"], 0.0035);
    assert_eq!(r.body["by_model"][0]["share_percent"], 100.0);
    assert_eq!(
        t.get("/api/v1/ai/costs/nope").await.status,
        StatusCode::NOT_FOUND
    );
    // Another tenant cannot see this conversation.
    let (_, other_key) = t.other_tenant().await;
    let r = t
        .call("GET", "/api/v1/ai/costs/conv-a", Some(&other_key), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t
        .call("GET", "/api/v1/ai/costs", Some(&other_key), None)
        .await;
    assert_eq!(r.body["total_calls"], 0);
}

#[tokio::test]
async fn realtime_status_compares_the_last_minutes_with_the_day() {
    let t = app().await;
    let mut records = Vec::new();
    // openai: 20 calls at 100 ms earlier today, then 4 at 900 ms in the last minutes.
    for i in 0..20 {
        records.push(json!({"id": format!("o{i}"), "provider": "openai", "model": "gpt-4o", "latency_ms": 100, "timestamp": ago(120)}));
    }
    for i in 0..4 {
        records.push(json!({"id": format!("n{i}"), "provider": "openai", "model": "gpt-4o", "latency_ms": 900, "conversation_id": format!("live-{i}"), "timestamp": ago(1)}));
    }
    // anthropic: 3 recent calls, 2 failed → down. google: only earlier → idle.
    for (i, s) in ["error", "error", "success"].iter().enumerate() {
        records.push(json!({"id": format!("a{i}"), "provider": "anthropic", "model": "claude-sonnet-4", "status": s, "latency_ms": 500, "conversation_id": "live-0", "timestamp": ago(2)}));
    }
    records.push(json!({"id": "g", "provider": "google", "model": "gemini-2.5-flash", "latency_ms": 300, "timestamp": ago(300)}));
    let r = t
        .post("/api/v1/ai/usage", json!({ "records": records }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let r = t.get("/api/v1/ai/performance/realtime").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let cur = &r.body["current"];
    assert_eq!(cur["active_conversations"], 4);
    assert_eq!(cur["messages_per_minute"], 1.4); // 7 calls over 5 minutes
    assert_eq!(cur["active_providers"], json!(["anthropic", "openai"]));
    let status = |p: &str| {
        r.body["provider_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["provider"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(status("anthropic")["status"], "down");
    // 900 ms now vs (20 × 100 + 4 × 900) / 24 = 233 ms over the day: degraded.
    let openai = status("openai");
    assert_eq!(
        (openai["status"].as_str(), openai["response_time"].as_f64()),
        (Some("degraded"), Some(900.0))
    );
    assert_eq!(openai["baseline_response_time"], 233.3);
    assert_eq!(status("google")["status"], "idle");
    assert_eq!(r.body["per_minute"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn dashboard_series_and_seed_003_views_from_known_calls() {
    let t = app().await;
    seed(&t).await;
    let r = t
        .get(&format!("/api/v1/ai/dashboard/{}?days=7", t.tenant))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = &r.body;
    assert_eq!(d["summary"]["total_messages"], 5);
    let daily = d["daily"].as_array().unwrap();
    assert!((7..=8).contains(&daily.len()), "{}", daily.len());
    assert_eq!(
        daily
            .iter()
            .map(|p| p["calls"].as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    let hourly = d["hourly"].as_array().unwrap();
    assert_eq!(hourly.len(), 24);
    assert_eq!(
        hourly
            .iter()
            .map(|p| p["calls"].as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    assert_eq!(d["top_models"][0]["model"], "claude-sonnet-4");
    // Seed 003's usage dashboard: 5 jobs, $0.03195; the new generation (claude-sonnet-4,
    // $0.021) is 65.7 % of it, the legacy one (gpt-4o and gpt-4o-mini, $0.01095) 34.3 %.
    let r = t.get("/api/v1/ai/usage/dashboard?days=7").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["totals"],
        json!({"jobs": 5, "cost": 0.03195, "avg_cost_per_job": 0.00639})
    );
    assert_eq!(r.body["period"]["label"], "last_7d");
    let gens = r.body["by_generation"].as_array().unwrap();
    assert_eq!(
        (
            gens[0]["generation"].as_str(),
            gens[0]["jobs"].as_u64(),
            gens[0]["cost"].as_f64(),
            gens[0]["percentage"].as_f64()
        ),
        (Some("new"), Some(1), Some(0.021), Some(65.7))
    );
    assert_eq!(gens[0]["models"], json!(["claude-sonnet-4"]));
    assert_eq!(
        (
            gens[1]["generation"].as_str(),
            gens[1]["jobs"].as_u64(),
            gens[1]["cost"].as_f64(),
            gens[1]["percentage"].as_f64()
        ),
        (Some("legacy"), Some(4), Some(0.01095), Some(34.3))
    );
    assert_eq!(gens[1]["avg_quality"], 8.0);
    assert_eq!(
        r.body["efficiency_insights"]["most_cost_effective"],
        "gpt-4o-mini"
    );

    // A requested model without calls is named, not dropped silently.
    let r = t
        .get("/api/v1/ai/usage/model_comparison?models=gpt-4o,claude-sonnet-4,o3&days=30")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["models_without_data"], json!(["o3"]));
    let models = r.body["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let gpt = models.iter().find(|m| m["model"] == "gpt-4o").unwrap();
    assert_eq!(gpt["generation"], "legacy");
    // 3 calls, $0.0105 over 3,300 tokens → $0.003182 per 1k; 300 output tokens in 3 s.
    assert_eq!(gpt["cost_per_1k_tokens"], 0.003182);
    assert_eq!(gpt["tokens_per_second"], 100.0);
    assert_eq!(gpt["avg_quality"], 8.0);
    assert_eq!(
        r.body["generation_comparison"]["new_models"]["models"],
        json!(["claude-sonnet-4"])
    );
    assert_eq!(
        r.body["efficiency_insights"]["most_cost_effective"],
        "gpt-4o"
    );

    let r = t.get("/api/v1/ai/usage/efficiency?days=30").await;
    assert_eq!(r.body["models"][0]["model"], "gpt-4o-mini"); // cheapest per 1k tokens first
    assert_eq!(r.body["efficiency_insights"]["highest_roi"], "gpt-4o-mini");

    let r = t
        .get("/api/v1/ai/usage/cost_breakdown?model=gpt-4o&days=7")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (
            r.body["total_calls"].as_u64(),
            r.body["total_cost_usd"].as_f64()
        ),
        (Some(3), Some(0.0105))
    );
    assert_eq!(r.body["by_model"][0]["output_tokens"], 300);
    let r = t.get("/api/v1/ai/usage/trends?days=7").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["cost_trend"]["direction"], "up");
    assert_eq!(r.body["by_model"].as_array().unwrap().len(), 3);

    let r = t
        .get("/api/v1/ai/usage/trends?from=2025-01-02&to=2025-01-01")
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "INSIGHTS_003", "to")
    );
    let r = t
        .get("/api/v1/ai/usage/trends?from=2024-01-01&to=2025-06-01")
        .await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "to"));
}

#[tokio::test]
async fn records_take_seed_003_filters_and_page() {
    let t = app().await;
    seed(&t).await;
    let get = |q: &str| {
        let t = &t;
        let uri = format!("/api/v1/ai/usage/records?{q}");
        async move { t.get(&uri).await }
    };
    let r = get("").await;
    assert_eq!(
        (r.status, r.body["count"].as_u64()),
        (StatusCode::OK, Some(5))
    );
    assert_eq!(r.body["results"][0]["client_id"], "c1"); // newest first
    let r = get("total_cost__gte=0.01").await;
    assert_eq!(r.body["count"], 1);
    assert_eq!(r.body["results"][0]["model_name"], "claude-sonnet-4");
    assert_eq!(
        r.body["filters_applied"],
        json!({"total_cost__gte": "0.01"})
    );
    let r = get("model_name__in=gpt-4o,gpt-4o-mini&user_id=alice&page_size=2&page=2").await;
    assert_eq!(
        (
            r.body["count"].as_u64(),
            r.body["results"].as_array().unwrap().len()
        ),
        (Some(4), 2)
    );
    let r = get("search=CONV-B").await;
    assert_eq!(r.body["count"], 1);
    let r = get(&format!(
        "created_at__gte={}",
        chrono::Utc::now().date_naive()
    ))
    .await;
    assert!(r.body["count"].as_u64().unwrap() <= 5);
    for (q, field) in [
        ("total_cost__gte=cheap", "total_cost__gte"),
        ("created_at__gte=yesterday", "created_at__gte"),
        ("status=meh", "status"),
        ("page_size=1000", "page_size"),
        ("colour=red", "colour"),
    ] {
        let r = get(q).await;
        assert_eq!(
            (r.status, r.field()),
            (StatusCode::BAD_REQUEST, field),
            "{q}: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn exports_render_the_reports_as_json_or_csv() {
    let t = app().await;
    seed(&t).await;
    let r = t
        .post(
            &format!("/api/v1/ai/stats/{}/export", t.tenant),
            json!({"format": "csv", "period": "last_24h"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    assert!(r.headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains(".csv"));
    let csv = r.body.as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "tenant_id,period,provider,total_cost,total_messages,avg_response_time,error_rate"
    );
    assert_eq!(
        lines[1],
        format!("{},last_24h,all,0.03195,5,1000,0", t.tenant.0)
    );
    assert_eq!(lines.len(), 4); // all, anthropic, openai

    let r = t
        .post(
            "/api/v1/ai/costs/export",
            json!({"format": "json", "days": 7}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["format"], "json");
    assert_eq!(r.body["summary"]["top_provider"], "anthropic");
    assert_eq!(r.body["data"]["total_calls"], 5);
    assert_eq!(r.body["metadata"]["record_count"], 10); // 2 providers, 3 models, 3 conversations, 2 users

    let r = t
        .post("/api/v1/ai/performance/export", json!({"format": "csv"}))
        .await;
    assert_eq!(r.body.as_str().unwrap().lines().count(), 4); // header + 3 models
    let r = t
        .post("/api/v1/ai/performance/export", json!({"format": "xml"}))
        .await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "format"));
    // The cross-tenant export needs the admin role.
    let r = t.post("/api/v1/ai/usage/export", json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cross_tenant_usage_is_ranked_with_growth_for_admins_only() {
    let t = app().await;
    seed(&t).await;
    let (other, other_key) = t.other_tenant().await;
    let r = t
        .call(
            "POST",
            "/api/v1/ai/usage",
            Some(&other_key),
            Some(&json!({"records": [
                call("x1", "openai", "gpt-4o", "u", "k", 1000, 100, 30),
                call("x2", "openai", "gpt-4o", "u", "k", 1000, 100, 36 * 60),
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let member = t.login_as(t.tenant, Role::Owner).await;
    assert_eq!(
        t.call("GET", "/api/v1/ai/usage", Some(&member), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
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
    assert_eq!(
        (
            r.body["total_messages"].as_u64(),
            r.body["active_tenants"].as_u64()
        ),
        (Some(6), Some(2))
    );
    let tenants = r.body["tenants"].as_array().unwrap();
    assert_eq!(tenants[0]["tenant_id"], t.tenant.0.to_string());
    assert_eq!(tenants[0]["rank"], 1);
    assert_eq!(tenants[1]["tenant_id"], other.0.to_string());
    // The other tenant: $0.0035 now vs $0.0035 the day before: 0 % growth.
    assert_eq!(tenants[1]["growth_rate"], 0.0);
    assert_eq!(tenants[0]["growth_rate"], Value::Null);
    let r = t
        .call(
            "POST",
            "/api/v1/ai/usage/export",
            Some(&admin),
            Some(&json!({"format": "csv", "period": "last_24h"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .body
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .starts_with(&format!("1,{},acme", t.tenant.0)));
}
