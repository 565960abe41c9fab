//! Authentication and authorization, including the attacks.

use axum::http::StatusCode;
use base64::Engine;
use serde_json::json;
use tally_core::auth::{Role, Scope, TokenSigner};
use tally_core::AccountId;

use crate::support::{app, ghost};

const EVENT: &str = r#"{"event_type": "system_event", "event_name": "deploy"}"#;

fn event() -> serde_json::Value {
    serde_json::from_str(EVENT).unwrap()
}

#[tokio::test]
async fn login_issues_a_working_expiring_token() {
    let t = app().await;
    let token = t.login_as(t.tenant, Role::Member).await;
    let me = t.call("GET", "/api/v1/auth/me", Some(&token), None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["kind"], "account");
    assert_eq!(me.body["role"], "member");
    assert_eq!(me.body["tenant_id"], t.tenant.to_string());
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/",
            Some(&token),
            Some(&event()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn wrong_credentials_are_one_generic_401() {
    let t = app().await;
    t.login_as(t.tenant, Role::Viewer).await;
    for body in [
        json!({"email": "nobody@example.com", "password": "whatever123"}),
        json!({"email": "viewer@example.com", "password": "wrong password"}),
    ] {
        let r = t
            .call("POST", "/api/v1/auth/login", None, Some(&body))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
        );
        assert_eq!(r.body["error"]["message"], "email or password is incorrect");
    }
    let r = t
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&json!({"email": "x"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "body")
    );
}

#[tokio::test]
async fn expired_forged_and_malformed_tokens_are_401() {
    let t = app().await;
    let signer = t.signer().await;
    let now = chrono::Utc::now().timestamp();
    let (expired, _) = signer.issue(&ghost(t.tenant), now - 3600).unwrap();
    let r = t
        .call("GET", "/api/v1/insights/activities/", Some(&expired), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED")
    );
    assert_eq!(r.headers["www-authenticate"], "Bearer");

    let forger = TokenSigner::new(b"not-the-server-secret-not-the-server-secret", 60);
    let (forged, _) = forger.issue(&ghost(t.tenant), now).unwrap();
    let r = t
        .call("GET", "/api/v1/insights/activities/", Some(&forged), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );

    // alg=none with admin claims
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub": AccountId::generate(), "tid": t.tenant, "role": "admin", "iat": now, "exp": now + 600, "iss": "tally"});
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let r = t
        .call("GET", "/api/v1/insights/activities/", Some(&none), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    for bad in ["garbage", "tly_abcdefgh_wrongsecretwrongsecret", "tly_"] {
        let r = t
            .call("GET", "/api/v1/insights/activities/", Some(bad), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let r = t
        .call("GET", "/api/v1/insights/activities/", None, None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
    let req = axum::http::Request::get("/api/v1/insights/activities/")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_key_with_the_right_prefix_but_wrong_secret_fails() {
    let t = app().await;
    let mut tampered = t.key.clone();
    tampered.pop();
    tampered.push(if t.key.ends_with('x') { 'y' } else { 'x' });
    let r = t
        .call("GET", "/api/v1/insights/activities/", Some(&tampered), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn scopes_and_roles_are_enforced() {
    let t = app().await;
    let read_only = t.key_with(&[Scope::Read]).await;
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/",
            Some(&read_only),
            Some(&event()),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/batch/",
            Some(&read_only),
            Some(&json!({"events": [event()]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let ingest_only = t.key_with(&[Scope::Ingest]).await;
    let r = t
        .call(
            "GET",
            "/api/v1/insights/activities/",
            Some(&ingest_only),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&ingest_only),
            Some(&json!({"name": "x", "scopes": ["admin"]})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a key cannot mint a stronger key"
    );

    let viewer = t.login_as(t.tenant, Role::Viewer).await;
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/",
            Some(&viewer),
            Some(&event()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        t.call("GET", "/api/v1/insights/activities/", Some(&viewer), None)
            .await
            .status,
        StatusCode::OK
    );
    let member = t.login_as(t.tenant, Role::Member).await;
    let r = t
        .call(
            "POST",
            "/api/v1/tenants",
            Some(&member),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(t.stores.events.event_count(t.tenant).await.unwrap(), 0);
}

#[tokio::test]
async fn only_the_admin_role_reads_another_tenant() {
    let t = app().await;
    let (other, other_key) = t.other_tenant().await;
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/",
            Some(&other_key),
            Some(&event()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let uri = format!("/api/v1/insights/activities/?tenant_id={other}");
    let owner = t.login_as(t.tenant, Role::Owner).await;
    let r = t.call("GET", &uri, Some(&owner), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    let r = t.call("GET", &uri, Some(&t.key), None).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "an admin-scoped key is not a platform admin"
    );
    let admin = t.login_as(t.tenant, Role::Admin).await;
    let r = t.call("GET", &uri, Some(&admin), None).await;
    assert_eq!(
        (r.status, r.body["count"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let r = t
        .call(
            "GET",
            "/api/v1/insights/activities/?tenant_id=nope",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "tenant_id"));
}

#[tokio::test]
async fn api_keys_are_shown_once_hashed_at_rest_and_revocable() {
    let t = app().await;
    let owner = t.login_as(t.tenant, Role::Owner).await;
    let r = t
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&owner),
            Some(&json!({"name": "ci", "scopes": ["ingest", "read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(r.body["prefix"].as_str().unwrap()));

    let list = t.call("GET", "/api/v1/api-keys", Some(&owner), None).await;
    let listed = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(listed.get("key").is_none());
    assert_eq!(listed["scopes"], json!(["ingest", "read"]));
    // At rest: only the digest.
    let db = std::fs::read(t.dir.path().join("tally.db")).unwrap();
    let wal = std::fs::read(t.dir.path().join("tally.db-wal")).unwrap_or_default();
    let needle = key.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&db) && !contains(&wal),
        "the key must not be stored in clear"
    );

    assert_eq!(
        t.call(
            "POST",
            "/api/v1/insights/track/",
            Some(&key),
            Some(&event())
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let (_, other_key) = t.other_tenant().await;
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/api-keys/{id}"),
            Some(&other_key),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another tenant cannot revoke it"
    );
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/api-keys/{id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = t
        .call(
            "POST",
            "/api/v1/insights/track/",
            Some(&key),
            Some(&event()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/api-keys/{id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = t
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&owner),
            Some(&json!({"name": "x", "scopes": ["root"]})),
        )
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "scopes[0]"));
    let r = t
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&owner),
            Some(&json!({"name": "x", "scopes": []})),
        )
        .await;
    assert_eq!(r.field(), "scopes");
}

#[tokio::test]
async fn accounts_and_tenants_administration() {
    let t = app().await;
    let admin = t.login_as(t.tenant, Role::Admin).await;
    let r = t
        .call(
            "POST",
            "/api/v1/tenants",
            Some(&admin),
            Some(&json!({"name": "Beta", "max_events": 10})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let beta = r.body["id"].as_str().unwrap().to_owned();
    let r = t
        .call("POST", "/api/v1/accounts", Some(&admin), Some(&json!({"email": "o@beta.io", "password": "long enough password", "role": "owner", "tenant_id": beta})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = t
        .call("POST", "/api/v1/accounts", Some(&admin), Some(&json!({"email": "O@beta.io", "password": "long enough password", "role": "owner", "tenant_id": beta})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "CONFLICT"));
    let owner = t.login_as(t.tenant, Role::Owner).await;
    let r = t
        .call(
            "POST",
            "/api/v1/accounts",
            Some(&owner),
            Some(&json!({"email": "a@x.io", "password": "long enough password", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "owners cannot mint admins");
    let r = t
        .call(
            "POST",
            "/api/v1/accounts",
            Some(&owner),
            Some(&json!({"email": "a@x.io", "password": "short", "role": "viewer"})),
        )
        .await;
    assert_eq!((r.code(), r.field()), ("VALIDATION_ERROR", "password"));
    let r = t
        .call("POST", "/api/v1/accounts", Some(&owner), Some(&json!({"email": "v@x.io", "password": "long enough password", "role": "viewer", "tenant_id": beta})))
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "owners stay in their tenant"
    );
    let list = t.call("GET", "/api/v1/tenants", Some(&admin), None).await;
    assert!(list
        .body
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "Beta"));
}
