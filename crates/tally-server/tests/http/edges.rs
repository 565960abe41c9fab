//! The error envelope on every path, limits, probes and the OpenAPI document.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::support::{app, app_with};

#[tokio::test]
async fn unknown_routes_and_wrong_methods_use_the_envelope() {
    let t = app().await;
    let r = t.get("/api/v1/nope").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    let r = t
        .call("DELETE", "/api/v1/insights/track/", Some(&t.key), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
}

#[tokio::test]
async fn malformed_bodies_are_4xx_with_the_envelope() {
    let t = app().await;
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut b = Request::post("/api/v1/insights/track/")
            .header("authorization", format!("Bearer {}", t.key));
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(Body::from(body)).unwrap()
    };
    let r = t
        .send(post(r#"{"event_type": "#, Some("application/json")))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "INVALID_JSON")
    );
    let r = t.send(post("", Some("application/json"))).await;
    assert_eq!(r.code(), "INVALID_JSON");
    let r = t
        .send(post(
            r#"{"event_type":"user_action","event_name":"x"}"#,
            Some("text/plain"),
        ))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
    );
    let r = t
        .send(post(
            r#"{"event_type":"user_action","event_name":"x"}"#,
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let ok = t
        .send(post(
            r#"{"event_type":"user_action","event_name":"x"}"#,
            Some("application/json; charset=utf-8"),
        ))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    // Deep nesting is refused with a 400, never a stack overflow.
    let deep: &'static str =
        Box::leak(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_boxed_str());
    let r = t.send(post(deep, Some("application/json"))).await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "event")
    );
    let deep_props: &'static str = Box::leak(
        format!(
            r#"{{"event_type":"user_action","event_name":"x","properties":{{"a":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
        .into_boxed_str(),
    );
    let r = t.send(post(deep_props, Some("application/json"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{}",
        r.body
    );
    let nested = json!({"event_type": "user_action", "event_name": "x", "properties": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}});
    let r = t.post("/api/v1/insights/track/", nested).await;
    assert_eq!(
        (r.code(), r.field()),
        ("VALIDATION_ERROR", "properties.a.b.c.d.e.f.g.h")
    );
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let t = app_with(|c| c.limits.max_body_bytes = 1024).await;
    let big = json!({"event_type": "user_action", "event_name": "x", "properties": {"blob": "y".repeat(4096)}});
    let r = t.post("/api/v1/insights/track/", big).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    assert_eq!(r.body["error"]["details"]["max_body_bytes"], 1024);
    let long_value = json!({"event_type": "user_action", "event_name": "x", "properties": {"s": "z".repeat(900)}});
    let t = app_with(|c| c.events.max_string_len = 100).await;
    let r = t.post("/api/v1/insights/track/", long_value).await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "properties.s"));
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let t = app().await;
    let r = t.get("/healthz").await;
    assert!(r.headers.get("x-request-id").is_some());
    let req = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn probes() {
    let t = app().await;
    assert_eq!(
        t.call("GET", "/healthz", None, None).await.body,
        json!({"status": "ok"})
    );
    let r = t.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let stores = t.stores.clone();
    tokio::task::spawn_blocking(move || stores.shutdown())
        .await
        .unwrap();
    let r = t.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Writes after the writer stopped: 503 with no internals leaked.
    let r = t
        .post(
            "/api/v1/insights/track/",
            json!({"event_type": "user_action", "event_name": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
    );
    assert_eq!(
        r.body["error"]["message"],
        "service temporarily unavailable"
    );
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let t = app().await;
    let r = t.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let documented: BTreeSet<(String, String)> = r.body["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            let path = path.trim_end_matches('/').to_owned();
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed = routes_in_the_router();
    assert!(
        routed.len() > 40,
        "the router's routes were not read: {routed:?}"
    );
    // The document itself is the one route it does not describe.
    let undocumented: Vec<_> = routed
        .iter()
        .filter(|r| !documented.contains(*r) && r.1 != "/api/v1/openapi.json")
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.iter().filter(|d| !routed.contains(*d)).collect();
    assert!(
        unrouted.is_empty(),
        "documented operations with no route: {unrouted:?}"
    );
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
}

/// Every (method, path) the router declares, read from `api/mod.rs`: each `.route("path",
/// get(…).post(…))`, under `/api/v1` when declared before the API is nested.
fn routes_in_the_router() -> BTreeSet<(String, String)> {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let nested_at = source
        .find(".nest(\"/api/v1\", api)")
        .expect("the API is nested at /api/v1");
    let mut routes = BTreeSet::new();
    for (at, _) in source.match_indices(".route(") {
        let rest = &source[at + ".route(".len()..];
        // The call's own text: up to the parenthesis that closes it.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let call = &rest[..end];
        let path = call.split('"').nth(1).unwrap();
        let prefix = if at < nested_at { "/api/v1" } else { "" };
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                routes.insert((method.to_uppercase(), format!("{prefix}{path}")));
            }
        }
    }
    routes
}
