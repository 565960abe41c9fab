//! The LLM gateway end to end: the real HTTP stack, the real store, and the fake provider
//! (the only fake: it stands for OpenAI, Anthropic and Gemini) on loopback.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};
use tally_core::auth::Scope;
use tally_fake_provider::{Failure, FakeProvider, Script, KEY};

use crate::support::{app, app_with, Resp, TestApp};

async fn fake() -> FakeProvider {
    FakeProvider::start(Script::default()).await.unwrap()
}

/// A tenant app with OpenAI, Anthropic and Gemini credentials pointing at the fake.
async fn gateway_app(f: &FakeProvider) -> TestApp {
    let a = app().await;
    connect(&a, f, &a.key.clone()).await;
    a
}

async fn connect(a: &TestApp, f: &FakeProvider, key: &str) {
    for (name, url) in [
        ("openai", f.openai_url()),
        ("anthropic", f.anthropic_url()),
        ("google", f.gemini_url()),
    ] {
        let r = a
            .call(
                "POST",
                "/api/v1/ai/credentials",
                Some(key),
                Some(&json!({"name": name, "api_key": KEY, "base_url": url})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

async fn v1(a: &TestApp, key: &str, body: Value) -> Resp {
    a.call("POST", "/v1/chat/completions", Some(key), Some(&body))
        .await
}

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// The stored usage records, once the gateway's recorder has written them.
async fn records(a: &TestApp) -> Vec<Value> {
    a.state.gateway.flush().await;
    let r = a
        .call(
            "GET",
            "/api/v1/ai/usage/records?page_size=100",
            Some(&a.key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["results"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_chat_completion_through_the_openai_path_is_answered_priced_and_recorded() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let key = a.key_with(&[Scope::Gateway]).await;
    let r = v1(&a, &key, chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "word0 word1 word2 word3 word4 "
    );
    assert_eq!(r.body["usage"]["completion_tokens"], 5);
    let h = |n: &str| r.headers[n].to_str().unwrap().to_owned();
    assert!(h("x-tally-request-id").starts_with("chatcmpl-"));
    assert_eq!(h("x-tally-provider"), "openai");
    assert_eq!(h("x-tally-cache"), "miss");
    // gpt-4o: $2.50 in and $10.00 out per million tokens.
    let prompt = r.body["usage"]["prompt_tokens"].as_f64().unwrap();
    let expected = (prompt * 2.5 + 5.0 * 10.0) / 1e6;
    assert!((h("x-tally-cost-usd").parse::<f64>().unwrap() - expected).abs() < 1e-6);
    // The provider got the key and the model; no stream fields on a plain call.
    let got = f.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(got[0].body["model"], "gpt-4o");
    assert!(got[0].body.get("stream").is_none());

    let recs = records(&a).await;
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec["provider"], "openai");
    assert_eq!(rec["model_name"], "gpt-4o");
    assert_eq!(rec["output_tokens"], 5);
    assert_eq!(rec["status"], "success");
    assert_eq!(
        rec["client_id"].as_str(),
        Some(h("x-tally-request-id").as_str())
    );
}

#[tokio::test]
async fn the_openai_path_answers_auth_errors_in_openais_shape() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = v1(&a, "tly_not_a_key", chat("gpt-4o")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "invalid_api_key");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    let read_only = a.key_with(&[Scope::Read]).await;
    let r = v1(&a, &read_only, chat("gpt-4o")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["type"], "permission_error");
    let r = a
        .send(
            Request::post("/v1/chat/completions")
                .header("authorization", format!("Bearer {}", a.key))
                .header("content-type", "application/json")
                .body(Body::from("{nope"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "invalid_json");
    assert!(f.received().is_empty());
}

#[tokio::test]
async fn incompatible_parameters_are_refused_before_any_provider_call() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let body = json!({"model": "o3", "temperature": 0.7,
        "messages": [{"role": "user", "content": "think"}]});
    let r = a
        .call("POST", "/api/v1/ai/openai/chat", Some(&a.key), Some(&body))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.code(), "INVALID_PARAMETER_FOR_MODEL");
    let d = &r.body["error"]["details"];
    assert_eq!(d["model"], "o3");
    assert_eq!(d["invalid_params"], json!(["temperature"]));
    assert_eq!(
        d["suggested_params"],
        json!(["reasoning_effort", "max_completion_tokens"])
    );
    assert_eq!(
        d["model_requirements"]["required"],
        json!(["reasoning_effort"])
    );
    assert!(d["model_requirements"]["forbidden"]
        .as_array()
        .unwrap()
        .contains(&json!("temperature")));
    let r = v1(
        &a,
        &a.key,
        json!({"model": "gpt-4o", "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "reasoning_effort");
    assert_eq!(r.body["error"]["code"], "invalid_parameter_for_model");
    assert_eq!(
        r.body["error"]["details"]["suggested_params"],
        json!(["temperature", "max_tokens"])
    );
    assert!(f.received().is_empty(), "nothing reached the provider");
}

#[tokio::test]
async fn same_meaning_parameters_are_converted_for_the_model() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = v1(
        &a,
        &a.key,
        json!({"model": "o3", "max_tokens": 100, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = &f.received()[0].body;
    assert_eq!(sent["max_completion_tokens"], 100);
    assert!(sent.get("max_tokens").is_none());
    assert_eq!(sent["reasoning_effort"], "medium");
    assert_eq!(sent["messages"][0]["role"], "developer");
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            400,
            "model",
        ),
        (json!({"model": "gpt-4o"}), 400, "messages"),
        (json!({"model": "gpt-4o", "messages": []}), 400, "messages"),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}),
            400,
            "messages[0].content",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
            400,
            "tools[0].function.name",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}),
            400,
            "n",
        ),
        (
            json!({"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "x"}], "n": 2}),
            400,
            "n",
        ),
        (
            json!({"model": "gpt-9-ultra", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model",
        ),
    ];
    for (body, status, param) in cases {
        let r = v1(&a, &a.key, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{body}: {}", r.body);
    }
    // The context window: a prompt longer than gpt-4o's 128k tokens.
    let long = "word ".repeat(130_000);
    let r = v1(
        &a,
        &a.key,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "context_length_exceeded");
    assert!(f.received().is_empty());
}

fn sse_events(body: &Value) -> Vec<String> {
    body.as_str()
        .unwrap_or_default()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn streams_end_with_done_carry_usage_when_asked_and_are_recorded() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let r = v1(&a, &a.key, body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = sse_events(&r.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "not asked for"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "word0 word1 word2 word3 word4 ");
    // The gateway always asks the provider for usage.
    assert_eq!(
        f.received()[0].body["stream_options"]["include_usage"],
        true
    );

    body["stream_options"] = json!({"include_usage": true});
    let r = v1(&a, &a.key, body).await;
    let events = sse_events(&r.body);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    let recs = records(&a).await;
    assert_eq!(recs.len(), 2);
    assert!(recs
        .iter()
        .all(|r| r["status"] == "success" && r["output_tokens"] == 5));
    assert!(recs.iter().all(|r| r["time_to_first_token_ms"].is_number()));
}

#[tokio::test]
async fn a_truncated_stream_ends_with_an_error_event_and_is_recorded_as_an_error() {
    let f = fake().await;
    f.script(|s| {
        s.truncate_streams = true;
        s.answer_words = 10;
    });
    let a = gateway_app(&f).await;
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let r = v1(&a, &a.key, body).await;
    let events = sse_events(&r.body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_truncated");
    assert!(!events.contains(&"[DONE]".to_owned()));
    let recs = records(&a).await;
    assert_eq!(recs[0]["status"], "error");
    assert_eq!(recs[0]["error_type"], "STREAM_TRUNCATED");
    // No usage came: the tokens streamed are counted.
    assert!(recs[0]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn anthropic_is_translated_both_ways_with_tools_and_streams() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let body = json!({"model": "claude-sonnet-4", "max_tokens": 64, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]});
    let r = v1(&a, &a.key, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let call = &r.body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"q\":\"x\"}");
    assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
    let sent = &f.received()[0];
    assert_eq!(sent.path, "/anthropic/v1/messages");
    assert_eq!(sent.headers["x-api-key"], KEY);
    assert_eq!(sent.body["system"], "be brief");
    assert_eq!(sent.body["tools"][0]["input_schema"]["type"], "object");

    let r = v1(
        &a,
        &a.key,
        json!({"model": "claude-sonnet-4", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let events = sse_events(&r.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "word0 word1 word2 word3 word4 ");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);
    let recs = records(&a).await;
    assert!(recs.iter().all(|r| r["provider"] == "anthropic"));
}

#[tokio::test]
async fn gemini_is_translated_both_ways_streams_included() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = v1(&a, &a.key, json!({"model": "gemini-2.5-flash", "max_tokens": 20,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "developer", "content": "terse"}, {"role": "user", "content": "hi"}]}))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "word0 word1 word2 word3 word4 "
    );
    let sent = &f.received()[0];
    assert_eq!(
        sent.path,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(sent.body["systemInstruction"]["parts"][0]["text"], "terse");
    assert_eq!(
        sent.body["generationConfig"]["responseMimeType"],
        "application/json"
    );
    let r = v1(
        &a,
        &a.key,
        json!({"model": "gemini-2.5-flash", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let events = sse_events(&r.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let recs = records(&a).await;
    assert_eq!(recs.len(), 2);
    assert!(recs
        .iter()
        .all(|r| r["provider"] == "google" && r["output_tokens"] == 5));
}

#[tokio::test]
async fn provider_failures_are_retried_and_the_fallback_answers_when_they_persist() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let fail = |status| Failure {
        status,
        retry_after: None,
        message: "overloaded".into(),
    };
    f.fail_next([fail(503), fail(500)]);
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.received().len(), 3, "two retries then the answer");

    let r = a
        .call(
            "PUT",
            "/api/v1/ai/gateway/settings",
            Some(&a.key),
            Some(&json!({"fallbacks": {"gpt-4o": ["claude-sonnet-4"]}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    f.clear_received();
    f.fail_next([fail(500), fail(500), fail(500)]);
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-tally-fallback-from"], "gpt-4o");
    assert_eq!(r.headers["x-tally-provider"], "anthropic");
    assert_eq!(r.body["model"], "claude-sonnet-4");
    let paths: Vec<String> = f.received().iter().map(|x| x.path.clone()).collect();
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.as_str() == "/v1/chat/completions")
            .count(),
        3
    );
    assert_eq!(paths.last().unwrap(), "/anthropic/v1/messages");
    // The failed attempt is recorded with its error, the answer with its provider.
    let recs = records(&a).await;
    assert!(recs
        .iter()
        .any(|r| r["status"] == "error" && r["provider"] == "openai"));
    assert!(recs
        .iter()
        .any(|r| r["status"] == "success" && r["provider"] == "anthropic"));
}

#[tokio::test]
async fn a_client_error_from_the_provider_is_passed_on_without_retry() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    f.fail_next([Failure {
        status: 400,
        retry_after: None,
        message: "bad thing".into(),
    }]);
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["message"], "bad thing");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(f.received().len(), 1);
}

#[tokio::test]
async fn a_429s_retry_after_is_honoured() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    f.fail_next([Failure {
        status: 429,
        retry_after: Some(1),
        message: "slow down".into(),
    }]);
    let started = std::time::Instant::now();
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(950));
}

#[tokio::test]
async fn an_open_circuit_stops_calls_and_health_shows_the_deployment_down() {
    let f = fake().await;
    let a = app_with(|c| {
        c.gateway.breaker_failures = 2;
        c.gateway.max_retries = 0;
        c.gateway.retry_base_ms = 1;
    })
    .await;
    connect(&a, &f, &a.key.clone()).await;
    let fail = Failure {
        status: 502,
        retry_after: None,
        message: "down".into(),
    };
    f.fail_next([fail.clone(), fail]);
    for _ in 0..2 {
        assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 502);
    }
    f.clear_received();
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(f.received().is_empty(), "the open circuit sent nothing");
    let h = a
        .call("GET", "/api/v1/ai/providers/health", Some(&a.key), None)
        .await;
    let openai = h.body["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "openai")
        .unwrap()
        .clone();
    assert_eq!(openai["status"], "down");
    assert_eq!(openai["circuit_open"], true);
    assert_eq!(h.body["overall"], "down");
    // The realtime report's provider status agrees with the gateway's.
    records(&a).await;
    let rt = a
        .call("GET", "/api/v1/ai/performance/realtime", Some(&a.key), None)
        .await;
    assert_eq!(rt.status, 200, "{}", rt.body);
    let s = rt.body["provider_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["provider"] == "openai")
        .unwrap_or_else(|| panic!("{}", rt.body))
        .clone();
    assert_eq!(s["status"], "down", "{s}");
    assert!(s["reason"].as_str().unwrap().contains("gateway"), "{s}");
}

#[tokio::test]
async fn fifty_concurrent_calls_at_a_budget_for_ten_spend_at_most_the_budget() {
    let f = fake().await;
    f.script(|s| s.latency_ms = 150);
    let a = gateway_app(&f).await;
    // Each call holds its prompt plus max_tokens = 1000 output tokens of gpt-4o: about
    // $0.01. A day budget of $0.1005 admits ten.
    let body = json!({"model": "gpt-4o", "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let r = a
        .call("POST", "/api/v1/ai/quotas/config", Some(&a.key), Some(&json!({"quotas": [
            {"name": "daily", "metric": "cost_usd", "window": "day", "limit": "0.1005", "enforce": true}]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = Arc::new(a);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let a = a.clone();
            let body = body.clone();
            tokio::spawn(async move {
                a.call("POST", "/api/v1/ai/openai/chat", Some(&a.key), Some(&body))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            403 => refused.push(r),
            s => panic!("{s}: {}", r.body),
        }
    }
    assert_eq!(ok, 10, "ten estimates fit the budget");
    assert_eq!(refused.len(), 40);
    let d = &refused[0].body["error"]["details"];
    assert_eq!(refused[0].code(), "O3_BUDGET_EXCEEDED");
    for field in [
        "estimated_cost",
        "daily_budget_remaining",
        "suggestions",
        "alternatives",
        "model",
    ] {
        assert!(!d[field].is_null(), "{field} in {d}");
    }
    assert_eq!(d["alternatives"], json!(["gpt-4o-mini"]));
    let recs = records(&a).await;
    let spent: f64 = recs.iter().map(|r| r["total_cost"].as_f64().unwrap()).sum();
    assert!(spent <= 0.1005, "spent {spent}");
    // The forty refusals are listed, at no cost, and counted nowhere: ten calls were made.
    let refusals: Vec<&Value> = recs.iter().filter(|r| r["status"] == "refused").collect();
    assert_eq!(refusals.len(), 40, "{recs:?}");
    assert!(refusals
        .iter()
        .all(|r| r["error_type"] == "O3_BUDGET_EXCEEDED"
            && r["total_cost"] == 0.0
            && r["model_name"] == "gpt-4o"
            && r["input_tokens"] == 0));
    let stats = a
        .get(&format!("/api/v1/ai/stats/{}?period=last_24h", a.tenant.0))
        .await;
    assert_eq!(stats.body["total_messages"], 10, "{}", stats.body);
    let filtered = a
        .get("/api/v1/ai/usage/records?status=refused&page_size=100")
        .await;
    assert_eq!(filtered.body["count"], 40, "{}", filtered.body);
    // On OpenAI's path the same refusal is a 429 insufficient_quota with the fields.
    let r = a
        .call("POST", "/v1/chat/completions", Some(&a.key), Some(&body))
        .await;
    // The ten calls settled at their actual (small) cost: the budget has room again.
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn a_refused_budget_on_the_openai_path_is_429_insufficient_quota() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = a
        .call(
            "POST",
            "/api/v1/ai/quotas/config",
            Some(&a.key),
            Some(&json!({"quotas": [
        {"name": "o3-jobs", "metric": "requests", "window": "day", "limit": 1, "enforce": true,
         "model": "o3"}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let o3 = json!({"model": "o3", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(v1(&a, &a.key, o3.clone()).await.status, 200);
    f.clear_received();
    let r = v1(&a, &a.key, o3).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "insufficient_quota");
    assert_eq!(r.body["error"]["tally_code"], "REASONING_QUOTA_EXCEEDED");
    assert_eq!(r.body["error"]["details"]["daily_limit"], 1);
    assert_eq!(r.body["error"]["details"]["daily_reasoning_jobs"], 1);
    assert!(r.body["error"]["details"]["reset_time"].is_string());
    let r = a
        .call(
            "POST",
            "/api/v1/ai/openai/chat",
            Some(&a.key),
            Some(&json!({"model": "o3", "messages": [{"role": "user", "content": "x"}]})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "REASONING_QUOTA_EXCEEDED");
    assert!(f.received().is_empty());
    // Both refusals are recorded; the quota still counts the one call made.
    let recs = records(&a).await;
    let refused = recs.iter().filter(|r| r["status"] == "refused").count();
    assert_eq!((recs.len(), refused), (3, 2), "{recs:?}");
    let q = a.get("/api/v1/ai/quotas").await;
    assert_eq!(q.body["quotas"][0]["used"], 1.0, "{}", q.body);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_ratelimit_headers() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = a
        .call(
            "PUT",
            "/api/v1/ai/gateway/settings",
            Some(&a.key),
            Some(&json!({"rate_limits": [{"scope": "key", "requests_per_minute": 2}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let key = a.key_with(&[Scope::Gateway]).await;
    let first = v1(&a, &key, chat("gpt-4o")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers["x-ratelimit-remaining-requests"], "1");
    assert_eq!(v1(&a, &key, chat("gpt-4o")).await.status, 200);
    let r = v1(&a, &key, chat("gpt-4o")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
    // Another key has its own allowance.
    assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 200);
    // The throttled call is recorded as refused, with the limit that refused it.
    let recs = records(&a).await;
    let refused: Vec<&Value> = recs.iter().filter(|r| r["status"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{recs:?}");
    assert_eq!(refused[0]["error_type"], "RATE_LIMITED", "{recs:?}");
    let why = refused[0]["metadata"]["error"].as_str().unwrap();
    assert!(why.contains("2 requests per minute for this key"), "{why}");
}

/// Checks take the prompt's byte bound and count only when the bound is close to a limit:
/// a prompt whose bound passes the context window is counted and served, a token limit
/// refusing the bound is asked again with the count, and what the bound took beyond the
/// use comes back to the limit and the budget once the answer is in.
#[tokio::test]
async fn prompts_are_counted_only_when_their_bound_is_close_to_a_limit() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = a
        .call(
            "PUT",
            "/api/v1/ai/gateway/settings",
            Some(&a.key),
            Some(&json!({"rate_limits": [{"scope": "key", "tokens_per_minute": 2000}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = a
        .post(
            "/api/v1/ai/quotas/config",
            json!({"quotas": [{"name": "daily", "metric": "cost_usd", "window": "day", "limit": "10"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let key = a.key_with(&[Scope::Gateway]).await;
    // 1,800 bytes of text: a bound of 1,806 tokens, about 300 counted, 450 by the fake.
    let prompt = "hello world ".repeat(150);
    let call = |p: String| json!({"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": p}]});
    let first = v1(&a, &key, call(prompt.clone())).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // The budget left is the limit less this call's cost, not less its held bound.
    let header = |r: &Resp, h: &str| r.headers[h].to_str().unwrap().parse::<f64>().unwrap();
    let (cost, left) = (
        header(&first, "x-tally-cost-usd"),
        header(&first, "x-tally-budget-remaining-usd"),
    );
    assert!(
        cost > 0.0 && (cost + left - 10.0).abs() < 1e-6,
        "{cost} + {left}"
    );
    // 1,806 of the 2,000 were taken on the bound, and all but the use (the fake's 450
    // prompt tokens + its 5 answer words) came back. The next bound (1,806) fails on what is
    // left; the count passes.
    let used = first.body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(used, 455);
    let body = call(prompt.clone());
    let counted = tally_gateway::tokens::count_chat("openai", "gpt-4o", body.as_object().unwrap());
    assert!(counted < 400, "{counted}");
    let second = v1(&a, &key, body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let left = header(&second, "x-ratelimit-remaining-tokens") as u64;
    let expected = 2000 - used - counted;
    assert!(
        (expected..=expected + 2).contains(&left),
        "{left} left, {expected} expected"
    );
    // A prompt whose bound is past gpt-4o's window of 128,000 tokens is counted before it
    // is refused, and served: " hello" is one token in six bytes.
    let r = a
        .call(
            "PUT",
            "/api/v1/ai/gateway/settings",
            Some(&a.key),
            Some(&json!({})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = v1(&a, &key, call(" hello".repeat(25_000))).await;
    assert_eq!(
        r.status, 200,
        "150,000 bytes but about 25,000 tokens: {}",
        r.body
    );
}

#[tokio::test]
async fn the_cache_answers_identical_requests_for_free_within_its_tenant() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    a.call(
        "PUT",
        "/api/v1/ai/gateway/settings",
        Some(&a.key),
        Some(&json!({"cache": {"enabled": true, "ttl_secs": 60}})),
    )
    .await;
    let first = v1(&a, &a.key, chat("gpt-4o")).await;
    let second = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.headers["x-tally-cache"], "hit");
    assert_eq!(second.headers["x-tally-cost-usd"], "0.000000");
    assert_eq!(second.body["choices"], first.body["choices"]);
    assert_eq!(f.received().len(), 1);
    let recs = records(&a).await;
    let cached: Vec<_> = recs.iter().filter(|r| r["total_cost"] == 0.0).collect();
    assert_eq!(cached.len(), 1);
    // Another tenant with the same request is not served this tenant's answer.
    let (_, other) = a.other_tenant().await;
    connect(&a, &f, &other).await;
    a.call(
        "PUT",
        "/api/v1/ai/gateway/settings",
        Some(&other),
        Some(&json!({"cache": {"enabled": true, "ttl_secs": 60}})),
    )
    .await;
    let r = v1(&a, &other, chat("gpt-4o")).await;
    assert_eq!(r.headers["x-tally-cache"], "miss");
}

#[tokio::test]
async fn credentials_are_sealed_masked_checked_and_kept_to_their_tenant() {
    let f = fake().await;
    let a = app().await;
    let secret = "sk-proj-SECRETvalue0123456789wxyz";
    let r = a
        .call(
            "POST",
            "/api/v1/ai/credentials",
            Some(&a.key),
            Some(&json!({"name": "openai", "api_key": secret, "base_url": f.openai_url()})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["api_key_masked"], "sk-…wxyz");
    assert!(!r.body.to_string().contains("SECRET"));
    let list = a
        .call("GET", "/api/v1/ai/credentials", Some(&a.key), None)
        .await;
    assert!(!list.body.to_string().contains("SECRET"));
    // The stored bytes do not contain the key.
    let conn = rusqlite::Connection::open(a.dir.path().join("tally.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row("SELECT sealed FROM ai_credentials", [], |r| r.get(0))
        .unwrap();
    assert!(!sealed.windows(6).any(|w| w == b"SECRET"));
    let dump: String = conn
        .query_row("SELECT group_concat(quote(sealed) || masked || ifnull(base_url,'')) FROM ai_credentials", [], |r| r.get(0))
        .unwrap();
    assert!(!dump.contains("SECRET"));
}

#[tokio::test]
async fn credential_input_and_the_outbound_policy_are_checked() {
    let a = app().await;
    let cases = [
        (json!({"name": "Bad Name", "api_key": "k"}), "name"),
        (json!({"name": "local", "api_key": "k"}), "kind"),
        (
            json!({"name": "local", "kind": "openai_compatible", "api_key": "k"}),
            "base_url",
        ),
        (json!({"name": "openai", "api_key": ""}), "api_key"),
        (
            json!({"name": "openai", "api_key": "k", "base_url": "ftp://x"}),
            "base_url",
        ),
        // Cloud metadata, private networks and (in tests) public addresses are refused.
        (
            json!({"name": "openai", "api_key": "k", "base_url": "http://169.254.169.254/v1"}),
            "base_url",
        ),
        (
            json!({"name": "openai", "api_key": "k", "base_url": "http://10.0.0.1/v1"}),
            "base_url",
        ),
        (
            json!({"name": "openai", "api_key": "k", "base_url": "http://8.8.8.8/v1"}),
            "base_url",
        ),
        (
            json!({"name": "openai", "api_key": "k", "weight": 0}),
            "weight",
        ),
    ];
    for (body, field) in cases {
        let r = a
            .call("POST", "/api/v1/ai/credentials", Some(&a.key), Some(&body))
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.field(), field, "{body}: {}", r.body);
    }
    let r = a
        .call("DELETE", "/api/v1/ai/credentials/nope", Some(&a.key), None)
        .await;
    assert_eq!(r.status, 404);
    // Managing credentials takes the admin scope.
    let gw = a.key_with(&[Scope::Gateway, Scope::Read]).await;
    let r = a
        .call("GET", "/api/v1/ai/credentials", Some(&gw), None)
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_tenant_cannot_use_or_see_another_tenants_credentials_or_budget() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let (_, other) = a.other_tenant().await;
    let r = v1(&a, &other, chat("gpt-4o")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "provider_not_configured");
    let list = a
        .call("GET", "/api/v1/ai/credentials", Some(&other), None)
        .await;
    assert_eq!(list.body["credentials"], json!([]));
    let r = a
        .call(
            "DELETE",
            "/api/v1/ai/credentials/openai",
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // The first tenant's exhausted budget does not touch the other's.
    let r = a
        .call(
            "POST",
            "/api/v1/ai/quotas/config",
            Some(&a.key),
            Some(&json!({"quotas": [
        {"name": "one", "metric": "requests", "window": "day", "limit": 1, "enforce": true}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 200);
    assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 429);
    connect(&a, &f, &other).await;
    assert_eq!(v1(&a, &other, chat("gpt-4o")).await.status, 200);
}

/// A team's key with its own budget: its calls are held against it (and the tenant's),
/// another key of the tenant is not, usage the key reports counts too, and a rule may
/// name only one of the tenant's own keys.
#[tokio::test]
async fn a_budget_scoped_to_one_api_key_holds_that_key_alone() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let key = |name: &'static str, tenant| {
        let a = &a;
        async move {
            a.state
                .access
                .create_api_key(tenant, name, [Scope::Gateway, Scope::Ingest].into())
                .await
                .unwrap()
        }
    };
    let (team, team_key) = key("team", a.tenant).await;
    let (app_key_row, app_key) = key("app", a.tenant).await;
    let (other_tenant, _) = a.other_tenant().await;
    let (foreign, _) = key("foreign", other_tenant).await;
    let configure = |id: String| {
        let a = &a;
        async move {
            a.post(
                "/api/v1/ai/quotas/config",
                json!({"quotas": [{"name": "team", "metric": "cost_usd", "window": "day",
                                   "limit": "0.005", "api_key_id": id}]}),
            )
            .await
        }
    };
    for bad in [
        foreign.id.to_string(),
        tally_core::ApiKeyId::generate().to_string(),
    ] {
        let r = configure(bad).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.field(), "quotas[0].api_key_id");
    }
    let r = configure("not-a-key".into()).await;
    assert_eq!(
        (r.status.as_u16(), r.field()),
        (400, "quotas[0].api_key_id")
    );
    let r = configure(team.id.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["quotas"][0]["scope"], json!({"api_key_id": team.id}));

    // 1,000 output tokens of gpt-4o hold about $0.01: past the team's $0.005, not the app's.
    let big = json!({"model": "gpt-4o", "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Say hello"}]});
    f.clear_received();
    let r = v1(&a, &team_key, big.clone()).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["tally_code"], "O3_BUDGET_EXCEEDED");
    let d = &r.body["error"]["details"];
    assert_eq!(d["rule"], "team");
    assert!(d["estimated_cost"].as_f64().unwrap() > 0.005, "{d}");
    assert!(
        d["daily_budget_remaining"].as_f64().unwrap() <= 0.005,
        "{d}"
    );
    assert!(f.received().is_empty(), "refused before any provider call");
    assert_eq!(v1(&a, &app_key, big).await.status, 200);
    // A small call of the team fits.
    assert_eq!(v1(&a, &team_key, chat("gpt-4o")).await.status, 200);

    // The team's key reports a call it made elsewhere: $0.0075 of gpt-4o.
    let r = a
        .call(
            "POST",
            "/api/v1/ai/usage",
            Some(&team_key),
            Some(
                &json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 1000,
                         "output_tokens": 500}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let recs = records(&a).await;
    let by_key = |id: tally_core::ApiKeyId, status: &str| {
        recs.iter()
            .filter(|r| r["api_key_id"] == json!(id) && r["status"] == status)
            .map(|r| r["total_cost"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let (team_costs, app_costs) = (
        by_key(team.id, "success"),
        by_key(app_key_row.id, "success"),
    );
    assert_eq!(team_costs.len(), 2, "{recs:?}");
    assert_eq!(app_costs.len(), 1, "{recs:?}");
    // The refusal is listed, at no cost, under the key.
    assert_eq!(by_key(team.id, "refused"), vec![0.0], "{recs:?}");
    let s = a.get("/api/v1/ai/quotas").await;
    let q = &s.body["quotas"][0];
    let team_spent: f64 = team_costs.iter().sum();
    assert!(
        (q["used"].as_f64().unwrap() - team_spent).abs() < 1e-6,
        "{q} {team_spent}"
    );
    assert_eq!(q["status"], "exceeded");
    // Now even the small call is over the team's budget; the app's key still goes through.
    let r = v1(&a, &team_key, chat("gpt-4o")).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(v1(&a, &app_key, chat("gpt-4o")).await.status, 200);
    // The pre-call check answers the same for the key.
    let r = a
        .post(
            "/api/v1/ai/quotas/test",
            json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 10,
                   "api_key_id": team.id}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["decision"], "block");
    let r = a
        .post(
            "/api/v1/ai/quotas/test",
            json!({"provider": "openai", "model": "gpt-4o", "input_tokens": 10}),
        )
        .await;
    assert_eq!(r.body["decision"], "allow", "{}", r.body);
}

#[tokio::test]
async fn models_providers_quota_status_and_connection_tests() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = a.call("GET", "/v1/models", Some(&a.key), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["object"], "list");
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-4o")
            && ids.contains(&"claude-sonnet-4")
            && ids.contains(&"gemini-2.5-pro")
    );

    let r = a
        .call("GET", "/api/v1/ai/openai/chat", Some(&a.key), None)
        .await;
    let o3 = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "o3")
        .unwrap()
        .clone();
    assert_eq!(o3["generation"], "new");
    assert_eq!(o3["context_window"], 200_000);
    assert_eq!(
        o3["model_requirements"]["required"],
        json!(["reasoning_effort"])
    );
    assert_eq!(o3["prices"]["input_per_mtok_usd"], 2.0);

    let r = a
        .call("GET", "/api/v1/ai/providers", Some(&a.key), None)
        .await;
    let names: Vec<&str> = r.body["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openai", "anthropic", "google"]);

    v1(&a, &a.key, chat("gpt-4o")).await;
    a.state.gateway.flush().await;
    let r = a
        .call(
            "GET",
            "/api/v1/ai/credentials/quota_status?provider=openai",
            Some(&a.key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["today"]["calls"], 1);
    assert_eq!(r.body["configured"], true);
    let r = a
        .call(
            "GET",
            "/api/v1/ai/credentials/quota_status?provider=nope",
            Some(&a.key),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.field(), "provider");

    let r = a
        .call(
            "POST",
            "/api/v1/ai/credentials/test_connection",
            Some(&a.key),
            Some(&json!({"provider": "anthropic"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["models"], 1);
    let r = a
        .call("POST", "/api/v1/ai/credentials/test_connection", Some(&a.key),
            Some(&json!({"credential": {"name": "openai", "api_key": "wrong", "base_url": f.openai_url()}})))
        .await;
    assert_eq!(r.body["ok"], false);
    assert_eq!(r.body["status"], 401);

    let r = a
        .call("POST", "/api/v1/ai/test", Some(&a.key), Some(&json!({})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|x| x["ok"] == true), "{}", r.body);
}

#[tokio::test]
async fn embeddings_go_through_openai_deployments_and_are_recorded() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let r = a
        .call(
            "POST",
            "/v1/embeddings",
            Some(&a.key),
            Some(&json!({"model": "text-embedding-3-small", "input": ["a", "b"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    let r = a
        .call(
            "POST",
            "/v1/embeddings",
            Some(&a.key),
            Some(&json!({"model": "gpt-4o", "input": "a"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = a
        .call(
            "POST",
            "/v1/embeddings",
            Some(&a.key),
            Some(&json!({"model": "text-embedding-3-small"})),
        )
        .await;
    assert_eq!(r.body["error"]["param"], "input");
    let recs = records(&a).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["model_name"], "text-embedding-3-small");
}

#[tokio::test]
async fn an_openai_compatible_server_serves_its_own_models_by_weight() {
    let f1 = fake().await;
    let f2 = fake().await;
    let a = app().await;
    for (name, f, weight) in [("vllm-a", &f1, 3), ("vllm-b", &f2, 1)] {
        let r = a
            .call(
                "POST",
                "/api/v1/ai/credentials",
                Some(&a.key),
                Some(&json!({
                "name": name, "kind": "openai_compatible", "api_key": KEY,
                "base_url": f.openai_url(), "models": ["llama3"], "weight": weight})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    for _ in 0..40 {
        let r = v1(
            &a,
            &a.key,
            json!({"model": "llama3", "max_completion_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (n1, n2) = (f1.received().len(), f2.received().len());
    assert_eq!(n1 + n2, 40);
    assert!(n1 > n2, "weight 3 against 1: {n1} vs {n2}");
    // Older servers get max_tokens.
    assert_eq!(f1.received()[0].body["max_tokens"], 10);
    let r = v1(
        &a,
        &a.key,
        json!({"model": "vllm-b/llama3", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-tally-deployment"], "vllm-b");
}

#[tokio::test]
async fn recommendations_follow_complexity_budget_and_quality() {
    let f = fake().await;
    let a = gateway_app(&f).await;
    let ask = |c: f64, b: f64, q: f64| {
        json!({"task_description": "Analyse 20 pages of technical content",
            "complexity_score": c, "budget_constraint": b, "quality_requirement": q})
    };
    let hard = a
        .call(
            "POST",
            "/api/v1/ai/openai/recommend_model",
            Some(&a.key),
            Some(&ask(0.9, 0.1, 0.95)),
        )
        .await;
    assert_eq!(hard.status, 200, "{}", hard.body);
    let model = hard.body["recommended_model"].as_str().unwrap();
    assert!(
        ["o3", "claude-opus-4", "o1"].contains(&model),
        "{}",
        hard.body
    );
    assert!(
        hard.body["suggested_params"]["reasoning_effort"].is_string() || model == "claude-opus-4"
    );
    assert_eq!(hard.body["alternatives"].as_array().unwrap().len(), 3);
    let cheap = a
        .call(
            "POST",
            "/api/v1/ai/openai/recommend_model",
            Some(&a.key),
            Some(&ask(0.1, 0.95, 0.3)),
        )
        .await;
    let cheap_model = cheap.body["recommended"]["estimated_cost_per_call"]
        .as_f64()
        .unwrap();
    let hard_cost = hard.body["recommended"]["estimated_cost_per_call"]
        .as_f64()
        .unwrap();
    assert!(
        cheap_model < hard_cost / 5.0,
        "{} vs {}",
        cheap.body,
        hard.body
    );
    let bad = a
        .call(
            "POST",
            "/api/v1/ai/openai/recommend_model",
            Some(&a.key),
            Some(&json!({"task_description": "x", "complexity_score": 2})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.field(), "complexity_score");
}

#[tokio::test]
async fn a_trial_call_that_the_provider_refuses_as_a_client_error_closes_the_circuit() {
    let f = fake().await;
    let a = app_with(|c| {
        c.gateway.breaker_failures = 1;
        c.gateway.breaker_cooldown_secs = 0.2;
        c.gateway.max_retries = 0;
    })
    .await;
    connect(&a, &f, &a.key.clone()).await;
    let fail = |status| Failure {
        status,
        retry_after: None,
        message: "no".into(),
    };
    f.fail_next([fail(500)]);
    assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 500);
    assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 503, "open");
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    // The trial reaches the provider, which refuses the request itself: it is up.
    f.fail_next([fail(400)]);
    assert_eq!(v1(&a, &a.key, chat("gpt-4o")).await.status, 400);
    assert_eq!(
        v1(&a, &a.key, chat("gpt-4o")).await.status,
        200,
        "closed again"
    );
}

#[tokio::test]
async fn each_provider_has_its_own_timeouts() {
    let f = fake().await;
    f.script(|s| s.latency_ms = 300);
    let a = app_with(|c| c.gateway.max_retries = 0).await;
    connect(&a, &f, &a.key.clone()).await;
    let put = |body: Value| {
        let a = &a;
        async move {
            a.call(
                "PUT",
                "/api/v1/ai/gateway/settings",
                Some(&a.key),
                Some(&body),
            )
            .await
        }
    };
    let r = put(json!({"timeouts": {"openai": {"first_byte_secs": 5, "total_secs": 1}}})).await;
    assert_eq!(
        (r.status.as_u16(), r.field()),
        (400, "timeouts.openai.first_byte_secs")
    );
    let r = put(json!({"timeouts": {"Open AI": {"total_secs": 1}}})).await;
    assert_eq!((r.status.as_u16(), r.field()), (400, "timeouts.Open AI"));
    let r = put(json!({"timeouts": {"openai": {"connect_secs": 0}}})).await;
    assert_eq!(
        (r.status.as_u16(), r.field()),
        (400, "timeouts.openai.connect_secs")
    );

    // OpenAI must answer within 50 ms here; Anthropic keeps the operator's two minutes.
    let r =
        put(json!({"timeouts": {"openai": {"first_byte_secs": 0.05, "connect_secs": 1}}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["timeouts"]["openai"]["first_byte_secs"], 0.05);
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "timeout");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("within 0.05s"),
        "{}",
        r.body
    );
    let r = v1(&a, &a.key, chat("claude-sonnet-4")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A timed-out provider falls back like a failing one, and the attempt is recorded.
    let r = put(json!({"timeouts": {"openai": {"first_byte_secs": 0.05}},
        "fallbacks": {"gpt-4o": ["claude-sonnet-4"]}}))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = v1(&a, &a.key, chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-tally-provider"], "anthropic");
    let recs = records(&a).await;
    assert!(recs
        .iter()
        .any(|r| r["status"] == "timeout" && r["provider"] == "openai"));

    // The whole call's limit holds for streams too: chunks keep coming, slowly.
    f.script(|s| {
        s.latency_ms = 0;
        s.chunk_delay_ms = 100;
    });
    let r = put(json!({"timeouts": {"openai": {"total_secs": 0.25}}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let r = v1(&a, &a.key, body).await;
    assert_eq!(r.status, 200);
    let events = sse_events(&r.body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "timeout", "{events:?}");
    assert!(!events.contains(&"[DONE]".to_owned()));
    let recs = records(&a).await;
    assert!(recs
        .iter()
        .any(|r| r["status"] == "timeout" && r["error_type"] == "PROVIDER_TIMEOUT"));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_recorded_as_cancelled_with_what_was_streamed() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let f = fake().await;
    f.script(|s| {
        s.chunk_delay_ms = 50;
        s.answer_words = 20;
    });
    let a = gateway_app(&f).await;
    let r = a
        .call("POST", "/api/v1/ai/quotas/config", Some(&a.key), Some(&json!({"quotas": [
            {"name": "daily", "metric": "cost_usd", "window": "day", "limit": "10", "enforce": true}]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", a.key))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = tally_server::api::service(a.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    // Read until some content arrived, then go away.
    let mut seen = String::new();
    while !seen.contains("word1") {
        let frame = stream.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert_eq!(
        a.state.quotas.reserved_calls(a.tenant),
        1,
        "held while streaming"
    );
    drop(stream);

    let recs = records(&a).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["status"], "cancelled");
    assert_eq!(recs[0]["error_type"], "client_disconnected");
    // No usage chunk came: the tokens streamed so far are counted, fewer than the answer's.
    let out = recs[0]["output_tokens"].as_u64().unwrap();
    assert!((1..20).contains(&out), "{out}");
    assert!(recs[0]["total_cost"].as_f64().unwrap() > 0.0);
    assert_eq!(
        a.state.quotas.reserved_calls(a.tenant),
        0,
        "the hold is released once the record is in"
    );
}
