//! GET /insights/activities/, /activities/{id}/, /activities/users/{id}/summary/, profiles.

use axum::http::StatusCode;
use chrono::{Datelike, Duration, Utc};
use serde_json::json;

use crate::support::app;

async fn seed(t: &crate::support::TestApp) {
    t.post(
        "/api/v1/insights/projects/",
        json!({"project_id": "p1", "name": "Gestion Client", "organization_name": "Tech Company"}),
    )
    .await;
    t.post("/api/v1/insights/users/", json!({"user_id": 123, "email": "user@company.com", "full_name": "John Doe", "role": "MEMBER"}))
        .await;
    let events = json!({"events": [
        {"event_type": "user_action", "event_name": "client_created", "properties": {"user_id": 123, "project_id": "p1"}, "timestamp": "2024-01-15T14:10:00Z"},
        {"event_type": "user_action", "event_name": "client_created", "properties": {"user_id": 123, "project_id": "p1"}, "timestamp": "2024-01-15T14:20:00Z"},
        {"event_type": "page_view", "event_name": "dashboard_viewed", "properties": {"user_id": 123, "page": "/dashboard"}, "timestamp": "2024-01-16T09:00:00Z"},
        {"event_type": "user_action", "event_name": "client_updated", "properties": {"user_id": 123, "project_id": "p2"}, "timestamp": "2024-01-20T14:30:00Z"},
        {"event_type": "api_call", "event_name": "export", "properties": {"user_id": 456, "project_id": "p1", "endpoint": "/x"}, "timestamp": "2024-01-20T15:00:00Z"}
    ]});
    let r = t.post("/api/v1/insights/track/batch/", events).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn listing_filters_paginates_and_joins_profiles() {
    let t = app().await;
    seed(&t).await;
    let r = t.get("/api/v1/insights/activities/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["count"], 5);
    assert_eq!(r.body["filters_applied"], json!({}));
    let first = &r.body["results"][0];
    assert_eq!(first["event_name"], "export");
    assert_eq!(
        first["user"],
        json!({"id": 456, "email": null, "full_name": null})
    );

    let r = t.get("/api/v1/insights/activities/?user_id=123&date_from=2024-01-15&date_to=2024-01-16&page_size=2").await;
    assert_eq!(r.body["count"], 3);
    assert_eq!(r.body["total_pages"], 2);
    assert_eq!(r.body["results"].as_array().unwrap().len(), 2);
    assert_eq!(
        r.body["filters_applied"],
        json!({"user_id": 123, "date_from": "2024-01-15", "date_to": "2024-01-16"})
    );
    let top = &r.body["results"][0];
    assert_eq!(top["event_type"], "page_view");
    assert_eq!(
        top["user"],
        json!({"id": 123, "email": "user@company.com", "full_name": "John Doe"})
    );
    assert!(top["project"].is_null());
    let second = &r.body["results"][1];
    assert_eq!(
        second["project"],
        json!({"tracking_id": "p1", "name": "Gestion Client"})
    );
    assert_eq!(second["timestamp"], "2024-01-15T14:20:00Z");
    assert!(second["created_at"].is_string());

    let r = t.get("/api/v1/insights/activities/?user_id=123&date_from=2024-01-15&date_to=2024-01-16&page_size=2&page=2").await;
    assert_eq!(r.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["results"][0]["timestamp"], "2024-01-15T14:10:00Z");

    let r = t
        .get("/api/v1/insights/activities/?project_id=p1&event_type=user_action")
        .await;
    assert_eq!(r.body["count"], 2);
    let r = t
        .get("/api/v1/insights/activities/?event_type=api_call")
        .await;
    assert_eq!(r.body["count"], 1);
}

#[tokio::test]
async fn listing_rejects_bad_parameters_with_the_field() {
    let t = app().await;
    let cases = [
        ("?event_type=click", "INSIGHTS_001", "event_type"),
        ("?date_from=20-01-2024", "VALIDATION_ERROR", "date_from"),
        (
            "?date_from=2024-01-20&date_to=2024-01-01",
            "INSIGHTS_003",
            "date_from",
        ),
        ("?page=0", "VALIDATION_ERROR", "page"),
        ("?page_size=1000", "VALIDATION_ERROR", "page_size"),
        ("?page_size=abc", "VALIDATION_ERROR", "page_size"),
        ("?page=100000&page_size=100", "VALIDATION_ERROR", "page"),
        ("?user_id=", "VALIDATION_ERROR", "user_id"),
    ];
    for (q, code, field) in cases {
        let r = t.get(&format!("/api/v1/insights/activities/{q}")).await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (StatusCode::BAD_REQUEST, code, field),
            "{q}"
        );
    }
}

#[tokio::test]
async fn detail_by_numeric_or_tracking_id_with_profiles() {
    let t = app().await;
    seed(&t).await;
    let list = t
        .get("/api/v1/insights/activities/?user_id=123&event_type=user_action&page_size=1")
        .await;
    let item = &list.body["results"][0];
    let id = item["id"].as_i64().unwrap();
    let by_num = t.get(&format!("/api/v1/insights/activities/{id}/")).await;
    assert_eq!(by_num.status, StatusCode::OK);
    assert_eq!(by_num.body["processed"], true);
    assert_eq!(by_num.body["user"]["role"], "MEMBER");
    let tracking = item["tracking_id"].as_str().unwrap();
    let by_uuid = t
        .get(&format!("/api/v1/insights/activities/{tracking}/"))
        .await;
    assert_eq!(by_uuid.body["id"], id);
    let detail = t
        .get("/api/v1/insights/activities/?project_id=p1&event_type=user_action&page_size=1")
        .await;
    let pid = detail.body["results"][0]["id"].as_i64().unwrap();
    let d = t.get(&format!("/api/v1/insights/activities/{pid}/")).await;
    assert_eq!(
        d.body["project"],
        json!({"tracking_id": "p1", "name": "Gestion Client", "organization_name": "Tech Company"})
    );

    for bad in [
        "999999",
        "not-an-id",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let r = t.get(&format!("/api/v1/insights/activities/{bad}/")).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "NOT_FOUND"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn another_tenants_activity_is_not_found() {
    let t = app().await;
    seed(&t).await;
    let list = t.get("/api/v1/insights/activities/?page_size=1").await;
    let id = list.body["results"][0]["id"].as_i64().unwrap();
    let tracking = list.body["results"][0]["tracking_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, other_key) = t.other_tenant().await;
    for path in [
        format!("/api/v1/insights/activities/{id}/"),
        format!("/api/v1/insights/activities/{tracking}/"),
    ] {
        let r = t.call("GET", &path, Some(&other_key), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = t
        .call(
            "GET",
            "/api/v1/insights/activities/",
            Some(&other_key),
            None,
        )
        .await;
    assert_eq!(r.body["count"], 0);
    let r = t
        .call(
            "GET",
            "/api/v1/insights/activities/users/123/summary/",
            Some(&other_key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t
        .call("GET", "/api/v1/insights/users/123/", Some(&other_key), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn user_summary_from_known_events() {
    let t = app().await;
    seed(&t).await;
    let r = t
        .get("/api/v1/insights/activities/users/123/summary/?date_to=2024-01-20")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["user_id"], 123);
    assert_eq!(
        r.body["period"],
        json!({"start_date": "2024-01-15", "end_date": "2024-01-20"})
    );
    let s = &r.body["summary"];
    assert_eq!(s["total_activities"], 4);
    assert_eq!(s["most_active_day"], "2024-01-15");
    assert_eq!(s["most_active_hour"], 14);
    assert_eq!(s["average_activities_per_day"], 0.67); // 4 events over 6 days
    assert_eq!(
        r.body["by_event_type"],
        json!({"user_action": 3, "page_view": 1})
    );
    assert_eq!(
        r.body["by_project"],
        json!([{"project_id": "p1", "project_name": "Gestion Client", "activities_count": 2},
               {"project_id": "p2", "project_name": null, "activities_count": 1}])
    );
    assert_eq!(
        r.body["top_actions"],
        json!([{"action": "client_created", "count": 2}, {"action": "client_updated", "count": 1}, {"action": "dashboard_viewed", "count": 1}])
    );
    let r = t
        .get("/api/v1/insights/activities/users/nobody/summary/")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn summary_counts_today_and_this_week() {
    let t = app().await;
    let now = Utc::now();
    let monday = now - Duration::days(i64::from(now.weekday().num_days_from_monday()));
    let earlier = monday - Duration::days(3);
    let ev = |ts: chrono::DateTime<Utc>| json!({"event_type": "user_action", "event_name": "a", "user_id": "u-1", "timestamp": ts.to_rfc3339()});
    let r = t
        .post(
            "/api/v1/insights/track/batch/",
            json!({"events": [ev(now), ev(now - Duration::seconds(5)), ev(monday), ev(earlier)]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = t
        .get("/api/v1/insights/activities/users/u-1/summary/")
        .await;
    let today_n = if now.weekday().num_days_from_monday() == 0 {
        3
    } else {
        2
    };
    assert_eq!(r.body["summary"]["activities_today"], today_n);
    assert_eq!(r.body["summary"]["activities_this_week"], 3);
    assert_eq!(r.body["summary"]["total_activities"], 4);
    assert_eq!(r.body["user_id"], "u-1");
}

#[tokio::test]
async fn profiles_and_projects_crud() {
    let t = app().await;
    let r = t
        .post(
            "/api/v1/insights/users/",
            json!({"user_id": "u-9", "email": "a@b.co"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = t
        .call(
            "PUT",
            "/api/v1/insights/users/u-9/",
            Some(&t.key),
            Some(&json!({"full_name": "Ann"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.body["email"].as_str(), r.body["full_name"].as_str()),
        (Some("a@b.co"), Some("Ann"))
    );
    let r = t.get("/api/v1/insights/users/u-9/").await;
    assert_eq!(r.body["full_name"], "Ann");
    let r = t.get("/api/v1/insights/users/?page_size=10").await;
    assert_eq!(r.body["count"], 1);
    let r = t
        .post("/api/v1/insights/users/", json!({"email": "a@b.co"}))
        .await;
    assert_eq!((r.code(), r.field()), ("INSIGHTS_002", "user_id"));
    let r = t
        .post(
            "/api/v1/insights/users/",
            json!({"user_id": "x", "email": "not-an-email"}),
        )
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "email"));
    let r = t
        .call(
            "PUT",
            "/api/v1/insights/users/u-9/",
            Some(&t.key),
            Some(&json!({"user_id": "u-8"})),
        )
        .await;
    assert_eq!(r.field(), "user_id");

    let r = t
        .post("/api/v1/insights/projects/", json!({"name": "E-commerce"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let pid = r.body["project_id"].as_str().unwrap().to_owned();
    let r = t
        .call(
            "PUT",
            &format!("/api/v1/insights/projects/{pid}/"),
            Some(&t.key),
            Some(&json!({"name": "Shop", "organization_name": "Org"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (StatusCode::OK, Some("Shop"))
    );
    let r = t.get(&format!("/api/v1/insights/projects/{pid}/")).await;
    assert_eq!(r.body["organization_name"], "Org");
    assert_eq!(t.get("/api/v1/insights/projects/").await.body["count"], 1);
    let r = t
        .post("/api/v1/insights/projects/", json!({"name": "  "}))
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "name"));
    assert_eq!(
        t.get("/api/v1/insights/projects/nope/").await.status,
        StatusCode::NOT_FOUND
    );
}

/// The detail view always carries `user.role` and `project.organization_name`: null when
/// the user or project has no profile, never a missing key.
#[tokio::test]
async fn detail_keys_are_null_without_a_profile_not_missing() {
    let t = crate::support::app().await;
    let r = t
        .post(
            "/api/v1/insights/track/",
            serde_json::json!({"event_type": "user_action", "event_name": "clicked",
                               "user_id": 7, "project_id": "no-profile", "properties": {"action": "x"}}),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::CREATED, "{}", r.body);
    let id = r.body["activity_id"].as_i64().unwrap();
    let r = t.get(&format!("/api/v1/insights/activities/{id}/")).await;
    assert_eq!(r.status, axum::http::StatusCode::OK, "{}", r.body);
    let user = r.body["user"].as_object().unwrap();
    let project = r.body["project"].as_object().unwrap();
    assert_eq!(
        user.get("role"),
        Some(&serde_json::Value::Null),
        "{}",
        r.body
    );
    assert_eq!(user.get("email"), Some(&serde_json::Value::Null));
    assert_eq!(
        project.get("organization_name"),
        Some(&serde_json::Value::Null),
        "{}",
        r.body
    );
}
