//! The API contract on the wire: strict query strings and bodies, control characters in
//! ids, seed 003's record filters, and an OpenAPI document that says where each
//! parameter goes and every status an operation answers.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::support::app;

#[tokio::test]
async fn unknown_repeated_and_empty_query_parameters_are_refused_by_name() {
    let t = app().await;
    // `userid` for `user_id`: silently unfiltered data before.
    let r = t.get("/api/v1/insights/activities/?userid=100").await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "UNKNOWN_PARAMETER", "userid")
    );
    assert!(r.body["error"]["details"]["allowed"]
        .as_array()
        .unwrap()
        .contains(&json!("user_id")));
    for uri in [
        "/api/v1/ai/costs?periode=last_7d",
        "/api/v1/ai/quotas?x=1",
        "/api/v1/insights/activities/users/100/summary/?from=2024-01-01",
    ] {
        let r = t.get(uri).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "UNKNOWN_PARAMETER"),
            "{uri}: {}",
            r.body
        );
    }
    let r = t
        .get("/api/v1/ai/costs?period=last_7d&period=last_24h")
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "period")
    );
    let r = t.get("/api/v1/insights/activities/?page=").await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "page"));
    // Declared parameters still pass, on the seeds' trailing-slash forms too.
    let r = t
        .get("/api/v1/insights/activities/?user_id=100&page_size=5")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn anything_after_the_json_body_is_refused() {
    let t = app().await;
    let req = Request::post("/api/v1/insights/track/")
        .header("authorization", format!("Bearer {}", t.key))
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"event_type":"user_action","event_name":"x"} garbage"#,
        ))
        .unwrap();
    let r = t.send(req).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "INVALID_JSON"),
        "{}",
        r.body
    );
    let r = t.get("/api/v1/insights/activities/").await;
    assert_eq!(r.body["count"], 0, "nothing was stored");
}

#[tokio::test]
async fn control_characters_are_refused_in_every_id() {
    let t = app().await;
    let r = t
        .post(
            "/api/v1/insights/users/",
            json!({"user_id": "ab\u{0}c", "email": "a@b.co"}),
        )
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "user_id"),
        "{}",
        r.body
    );
    let r = t
        .post(
            "/api/v1/ai/quotas/test",
            json!({"provider": "openai", "model": "gpt-4o\u{0}", "input_tokens": 10}),
        )
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "model"),
        "{}",
        r.body
    );
    for uri in [
        "/api/v1/insights/users/a%00b/",
        "/api/v1/insights/projects/a%0Ab/",
        "/api/v1/ai/costs/c%00",
        "/api/v1/insights/activities/users/a%1Bb/summary/",
    ] {
        let r = t.get(uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
    }
}

#[tokio::test]
async fn records_filter_by_generation_and_cost_efficiency() {
    let t = app().await;
    let r = t
        .post(
            "/api/v1/ai/usage",
            json!({"records": [
                // quality per dollar: 8 / 0.01 = 800; 9 / 0.5 = 18; 6 / 0 = unbounded.
                {"id": "a", "provider": "openai", "model": "gpt-4o-mini", "cost_usd": "0.01", "quality_score": 8},
                {"id": "b", "provider": "openai", "model": "o3", "cost_usd": "0.5", "quality_score": 9},
                {"id": "c", "provider": "anthropic", "model": "claude-sonnet-4-20250514", "cost_usd": "0", "quality_score": 6},
                {"id": "d", "provider": "openai", "model": "gpt-4o", "cost_usd": "0.2"},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ids = |body: &Value| -> Vec<String> {
        let mut v: Vec<String> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["client_id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let r = t.get("/api/v1/ai/usage/records?generation=new").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(ids(&r.body), ["b", "c"]);
    let r = t.get("/api/v1/ai/usage/records?generation=legacy").await;
    assert_eq!(ids(&r.body), ["a", "d"]);
    let r = t
        .get("/api/v1/ai/usage/records?cost_efficiency__gte=100")
        .await;
    assert_eq!(ids(&r.body), ["a", "c"]);
    assert_eq!(r.body["filters_applied"]["cost_efficiency__gte"], "100");
    let r = t.get("/api/v1/ai/usage/records?generation=next").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "generation")
    );
}

#[tokio::test]
async fn the_document_places_parameters_and_lists_every_status() {
    let t = app().await;
    let r = t.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = &r.body;
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let params = |o: &Value| -> Vec<(String, String, bool)> {
        o["parameters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_owned(),
                            p["in"].as_str().unwrap().to_owned(),
                            p["required"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut secured = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, o) in item.as_object().unwrap() {
            for (name, place, required) in params(o) {
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    place == "path",
                    in_path,
                    "{method} {path}: {name} is in {place}"
                );
                assert_eq!(
                    required, in_path,
                    "{method} {path}: {name} required={required}"
                );
            }
            let statuses: Vec<&String> = o["responses"].as_object().unwrap().keys().collect();
            if o["security"].as_array().is_some_and(|s| !s.is_empty()) {
                secured += 1;
                for s in ["401", "403"] {
                    assert!(
                        statuses.iter().any(|x| *x == s),
                        "{method} {path} lacks {s}"
                    );
                }
            }
            // Stored writes can meet a full disk; reads and dry runs cannot.
            let stores = [
                "track",
                "track_batch",
                "ingest",
                "identify",
                "put_user",
                "create_tenant",
            ]
            .contains(&o["operationId"].as_str().unwrap_or(""));
            let says_507 = statuses.iter().any(|x| *x == "507");
            if stores || *method == "get" || o["operationId"] == "track_test" {
                assert_eq!(says_507, stores, "{method} {path}: 507");
            }
            if o.get("requestBody").is_some() {
                for s in ["400", "408", "413", "415"] {
                    assert!(
                        statuses.iter().any(|x| *x == s),
                        "{method} {path} lacks {s}"
                    );
                }
            }
        }
    }
    assert!(secured >= 44, "{secured} secured operations");
    let page = op("/api/v1/insights/activities/", "get")["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "page_size")
        .unwrap()
        .clone();
    assert_eq!(page["schema"]["maximum"], 100, "{page}");
    // Identify needs a user id: the profile body narrowed with allOf.
    let identify = &op("/api/v1/insights/users/", "post")["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(
        identify["allOf"][1]["required"],
        json!(["user_id"]),
        "{identify}"
    );
    assert!(doc["components"]["schemas"]["UserProfileBody"].is_object());
    assert!(
        page["schema"]["type"].to_string().contains("integer"),
        "{page}"
    );
}
