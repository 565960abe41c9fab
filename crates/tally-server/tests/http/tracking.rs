//! POST /insights/track/, /track/batch/, /track/test/.

use axum::http::StatusCode;
use serde_json::json;
use tally_core::activity::ActivityFilter;

use crate::support::{app, app_with};

fn seed_event() -> serde_json::Value {
    json!({
        "event_type": "user_action",
        "event_name": "client_created",
        "properties": {"user_id": 123, "project_id": "project-uuid-here", "client_id": 456,
                        "client_email": "newclient@example.com", "source": "web_app", "session_id": "session-uuid-here"},
        "timestamp": "2024-01-20T14:30:00Z",
        "context": {"ip_address": "192.168.1.100",
                    "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
                    "page": "/clients/new", "referrer": "/clients"}
    })
}

#[tokio::test]
async fn track_returns_the_seed_fields_and_stores_the_event() {
    let t = app().await;
    let r = t.post("/api/v1/insights/track/", seed_event()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["event_type"], "user_action");
    assert_eq!(r.body["event_name"], "client_created");
    assert_eq!(r.body["tracked_at"], "2024-01-20T14:30:00Z");
    assert_eq!(r.body["processed"], true);
    assert_eq!(r.body["user_id"], 123);
    assert_eq!(r.body["project_id"], "project-uuid-here");
    assert_eq!(r.body["duplicate"], false);
    assert!(uuid::Uuid::parse_str(r.body["id"].as_str().unwrap()).is_ok());

    let (count, rows) = t
        .stores
        .events
        .list_activities(t.tenant, &ActivityFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(rows[0].user_id.as_deref(), Some("123"));
    assert_eq!(
        rows[0].tracking_id.to_string(),
        r.body["id"].as_str().unwrap()
    );
    let props: serde_json::Value = serde_json::from_str(&rows[0].properties).unwrap();
    assert_eq!(props["client_id"], 456);
    assert!(
        props.get("user_id").is_none(),
        "user_id is lifted into its column"
    );
    assert!(
        rows[0].received_at > rows[0].timestamp,
        "receive time is kept beside the client time"
    );
}

#[tokio::test]
async fn trailing_slash_is_optional() {
    let t = app().await;
    let r = t.post("/api/v1/insights/track", seed_event()).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn seed_error_codes() {
    let t = app().await;
    let r = t
        .post(
            "/api/v1/insights/track/",
            json!({"event_type": "click", "event_name": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "INSIGHTS_001", "event_type")
    );
    let r = t
        .post(
            "/api/v1/insights/track/",
            json!({"event_type": "page_view", "event_name": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "INSIGHTS_002", "properties.page")
    );
    let r = t
        .post(
            "/api/v1/insights/track/",
            json!({"event_type": "user_action"}),
        )
        .await;
    assert_eq!((r.code(), r.field()), ("INSIGHTS_002", "event_name"));
    let r = t
        .post("/api/v1/insights/track/", json!({"event_type": "user_action", "event_name": "x", "timestamp": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "INVALID_TIMESTAMP", "timestamp")
    );
    let r = t
        .post(
            "/api/v1/insights/track/",
            json!({"event_type": "user_action", "event_name": "x", "properties": {"user_id": [1]}}),
        )
        .await;
    assert_eq!(
        (r.code(), r.field()),
        ("VALIDATION_ERROR", "properties.user_id")
    );
    let r = t
        .post(
            "/api/v1/insights/track/",
            json!({"event_type": "user_action", "event_nme": "x"}),
        )
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "event_nme"));
    let r = t.post("/api/v1/insights/track/", json!([1, 2])).await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "event"));
    // nothing of the above was stored
    assert_eq!(t.stores.events.event_count(t.tenant).await.unwrap(), 0);
}

#[tokio::test]
async fn storage_limit_is_insights_006() {
    let t = app().await;
    let tenant = t
        .state
        .access
        .create_tenant("small", Some(2))
        .await
        .unwrap();
    let (_, key) = t
        .state
        .access
        .create_api_key(tenant.id, "k", [tally_core::auth::Scope::Ingest].into())
        .await
        .unwrap();
    let ev = json!({"event_type": "system_event", "event_name": "deploy"});
    for _ in 0..2 {
        let r = t
            .call("POST", "/api/v1/insights/track/", Some(&key), Some(&ev))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = t
        .call("POST", "/api/v1/insights/track/", Some(&key), Some(&ev))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "INSIGHTS_006")
    );
    assert_eq!(r.body["error"]["details"]["max_events"], 2);
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/batch/",
            Some(&key),
            Some(&json!({"events": [ev]})),
        )
        .await;
    assert_eq!(r.code(), "BATCH_REJECTED");
    assert_eq!(
        r.body["error"]["details"]["results"][0]["error"]["code"],
        "INSIGHTS_006"
    );
    assert_eq!(t.stores.events.event_count(tenant.id).await.unwrap(), 2);
}

#[tokio::test]
async fn client_ids_make_retries_idempotent() {
    let t = app().await;
    let mut ev = seed_event();
    ev["id"] = json!("evt-42");
    let first = t.post("/api/v1/insights/track/", ev.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = t.post("/api/v1/insights/track/", ev.clone()).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body["duplicate"], true);
    assert_eq!(retry.body["id"], first.body["id"]);
    let batch = t
        .post(
            "/api/v1/insights/track/batch/",
            json!({"events": [ev.clone(), ev]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED);
    assert_eq!(batch.body["duplicate_count"], 2);
    assert_eq!(batch.body["results"][1]["id"], first.body["id"]);
    assert_eq!(t.stores.events.event_count(t.tenant).await.unwrap(), 1);
}

#[tokio::test]
async fn batch_reports_each_event_and_stores_the_valid_ones() {
    let t = app().await;
    let body = json!({"events": [
        {"event_type": "user_action", "event_name": "login", "properties": {"user_id": 123, "method": "jwt"}, "timestamp": "2024-01-20T09:00:00Z"},
        {"event_type": "nope", "event_name": "x"},
        {"event_type": "page_view", "event_name": "dashboard_viewed", "properties": {"user_id": 123, "page": "/dashboard", "duration_seconds": 45}, "timestamp": "2024-01-20T09:01:00Z"},
        "not an object",
        {"event_type": "api_call", "event_name": "x"}
    ]});
    let r = t.post("/api/v1/insights/track/batch/", body).await;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{}", r.body);
    assert_eq!(r.body["events_count"], 5);
    assert_eq!(r.body["processed_count"], 2);
    assert_eq!(r.body["failed_count"], 3);
    let results = r.body["results"].as_array().unwrap();
    let codes: Vec<_> = results
        .iter()
        .map(|x| x["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "ok",
            "INSIGHTS_001",
            "ok",
            "VALIDATION_ERROR",
            "INSIGHTS_002"
        ]
    );
    assert_eq!(results[4]["error"]["field"], "properties.endpoint");
    assert_eq!(results[0]["index"], 0);
    assert!(r.body["batch_id"].is_string() && r.body["processed_at"].is_string());
    assert_eq!(t.stores.events.event_count(t.tenant).await.unwrap(), 2);

    let ok = t
        .post(
            "/api/v1/insights/track/batch/",
            json!({"events": [{"event_type": "system_event", "event_name": "deploy"}]}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(ok.body["failed_count"], 0);
}

#[tokio::test]
async fn batch_limits() {
    let t = app_with(|c| c.limits.max_batch_events = 3).await;
    let ev = json!({"event_type": "system_event", "event_name": "x"});
    let r = t
        .post(
            "/api/v1/insights/track/batch/",
            json!({"events": [ev, ev, ev, ev]}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "BATCH_TOO_LARGE")
    );
    let r = t
        .post("/api/v1/insights/track/batch/", json!({"events": []}))
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "events")
    );
    let r = t
        .post("/api/v1/insights/track/batch/", json!({"evnts": []}))
        .await;
    assert_eq!(r.code(), "VALIDATION_ERROR");
    let r = t
        .post("/api/v1/insights/track/batch/", json!({"events": "x"}))
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "events"));
    assert_eq!(t.stores.events.event_count(t.tenant).await.unwrap(), 0);
}

#[tokio::test]
async fn dry_run_validates_detects_sensitive_data_and_stores_nothing() {
    let t = app().await;
    let r = t
        .post(
            "/api/v1/insights/track/test/",
            json!({"test_events": [{"event_type": "user_action", "event_name": "test_action", "properties": {"test": true, "user_id": 999}}],
                   "dry_run": true, "validate_schema": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let tr = &r.body["test_results"];
    assert_eq!(tr["events_processed"], 1);
    assert_eq!(tr["validation_passed"], true);
    assert!(tr["estimated_storage_impact_bytes"].as_u64().unwrap() > 100);
    assert!(tr["processing_time_ms"].is_number());
    assert_eq!(
        r.body["validation_details"],
        json!({"schema_valid": true, "required_fields_present": true, "data_types_correct": true, "no_sensitive_data": true})
    );

    let r = t
        .post(
            "/api/v1/insights/track/test/",
            json!({"test_events": [
                {"event_type": "user_action", "event_name": "signup", "properties": {"email": "jane@corp.com", "card": "4111 1111 1111 1111"}},
                {"event_type": "page_view", "event_name": "v"},
                {"event_type": "user_action", "event_name": "x", "user_id": 1.5},
                {"event_type": "teleport", "event_name": "x"}
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["test_results"]["validation_passed"], false);
    assert_eq!(
        r.body["validation_details"],
        json!({"schema_valid": false, "required_fields_present": false, "data_types_correct": false, "no_sensitive_data": false})
    );
    let found = &r.body["events"][0]["sensitive_data"];
    assert_eq!(
        found,
        &json!([{"field": "properties.card", "kind": "payment_card"}, {"field": "properties.email", "kind": "email"}])
    );
    assert_eq!(r.body["events"][1]["error"]["code"], "INSIGHTS_002");
    assert_eq!(t.stores.events.event_count(t.tenant).await.unwrap(), 0);

    let r = t
        .post(
            "/api/v1/insights/track/test/",
            json!({"test_events": [], "dry_run": true}),
        )
        .await;
    assert_eq!(r.code(), "VALIDATION_ERROR");
    let r = t
        .post("/api/v1/insights/track/test/", json!({"test_events": [{"event_type": "user_action", "event_name": "x"}], "dry_run": false}))
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "dry_run"));
}

#[tokio::test]
async fn enrichment_fills_context_and_geo() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    tally_core::test_support::write_geoip_database(&db);
    let t = app_with(|c| c.geoip.database = Some(db.clone())).await;
    let mut ev = seed_event();
    ev["context"]["ip_address"] = json!("81.2.69.160");
    ev["context"]["user_agent"] =
        json!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36");
    let r = t.post("/api/v1/insights/track/", ev).await;
    let id = r.body["activity_id"].as_i64().unwrap();
    let d = t.get(&format!("/api/v1/insights/activities/{id}/")).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.body["context"]["browser"], "Chrome");
    assert_eq!(d.body["context"]["os"], "Windows");
    assert_eq!(d.body["context"]["device_type"], "desktop");
    assert_eq!(d.body["context"]["session_id"], "session-uuid-here");
    let geo = &d.body["enriched_data"]["geo_location"];
    assert_eq!(
        (geo["country"].as_str(), geo["city"].as_str()),
        (Some("France"), Some("Paris"))
    );
    assert_eq!(
        (geo["latitude"].as_f64(), geo["longitude"].as_f64()),
        (Some(48.8566), Some(2.3522))
    );
    assert!(d.body["enriched_data"]["device_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("fp-"));
}
