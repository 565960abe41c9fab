//! Sessions end when they should: logout, ending all sessions, disabled and deleted
//! accounts, tokens for accounts that never existed; logins are throttled; and every
//! administrative action lands in the audit trail with its actor.

use axum::http::StatusCode;
use serde_json::json;
use tally_core::auth::Role;

use super::support::{app, ghost, TestApp};

async fn me(t: &TestApp, token: &str) -> (StatusCode, String) {
    let r = t.call("GET", "/api/v1/auth/me", Some(token), None).await;
    (r.status, r.code().to_owned())
}

#[tokio::test]
async fn a_token_signed_with_the_real_secret_for_a_missing_account_is_refused() {
    let t = app().await;
    let signer = t.signer().await;
    let ghost = ghost(t.tenant);
    let (token, _) = signer
        .issue(&ghost, chrono::Utc::now().timestamp())
        .unwrap();
    let r = t.call("GET", "/api/v1/tenants", Some(&token), None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "SESSION_ENDED")
    );
    // Same for a real account's id under another tenant's claim.
    let (id, _, _) = t.account(t.tenant, Role::Member).await;
    let (other, _) = t.other_tenant().await;
    let moved = tally_core::tenancy::Account {
        id,
        tenant_id: other,
        ..ghost
    };
    let (token, _) = signer
        .issue(&moved, chrono::Utc::now().timestamp())
        .unwrap();
    assert_eq!(
        me(&t, &token).await,
        (StatusCode::UNAUTHORIZED, "SESSION_ENDED".into())
    );
}

#[tokio::test]
async fn logout_ends_one_session_and_logout_all_ends_every_one() {
    let t = app().await;
    let (_, email, first) = t.account(t.tenant, Role::Member).await;
    let second = t.login(&email).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = t
        .call("POST", "/api/v1/auth/logout", Some(&first), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(
        me(&t, &first).await,
        (StatusCode::UNAUTHORIZED, "SESSION_ENDED".into())
    );
    assert_eq!(
        me(&t, &second).await.0,
        StatusCode::OK,
        "the other session goes on"
    );
    // Logging out twice, or with a key, is refused.
    let r = t
        .call("POST", "/api/v1/auth/logout", Some(&first), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .call("POST", "/api/v1/auth/logout", Some(&t.key), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let third = t.login(&email).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = t
        .call("POST", "/api/v1/auth/logout_all", Some(&second), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for token in [&second, &third] {
        assert_eq!(
            me(&t, token).await,
            (StatusCode::UNAUTHORIZED, "SESSION_ENDED".into())
        );
    }
    let fresh = t.login(&email).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&t, &fresh).await.0, StatusCode::OK, "a new login works");
}

#[tokio::test]
async fn owners_disable_enable_end_sessions_and_delete_accounts_of_their_tenant() {
    let t = app().await;
    let (_, _, owner) = t.account(t.tenant, Role::Owner).await;
    let (member_id, member_email, member) = t.account(t.tenant, Role::Member).await;
    let path = format!("/api/v1/accounts/{member_id}");

    let r = t
        .call(
            "PATCH",
            &path,
            Some(&owner),
            Some(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["disabled_at"].is_string());
    assert_eq!(
        me(&t, &member).await,
        (StatusCode::UNAUTHORIZED, "SESSION_ENDED".into())
    );
    assert_eq!(t.login(&member_email).await.code(), "INVALID_CREDENTIALS");
    let r = t
        .call(
            "PATCH",
            &path,
            Some(&owner),
            Some(&json!({"disabled": false})),
        )
        .await;
    assert!(r.body["disabled_at"].is_null());
    let member = t.login(&member_email).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&t, &member).await.0, StatusCode::OK);

    let r = t
        .call("POST", &format!("{path}/end_sessions"), Some(&owner), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(me(&t, &member).await.0, StatusCode::UNAUTHORIZED);

    let listed = t.call("GET", "/api/v1/accounts", Some(&owner), None).await;
    assert_eq!(
        listed.body.as_array().unwrap().len(),
        2,
        "{:?}",
        listed.body
    );

    // The attacks: a member managing others, an owner managing an admin or itself, another
    // tenant's owner naming this tenant's account.
    let member = t.login(&member_email).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = t.call("DELETE", &path, Some(&member), None).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "members manage no accounts"
    );
    let owner_id = t
        .stores
        .identity
        .list_accounts(t.tenant)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.role == Role::Owner)
        .unwrap()
        .id;
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/accounts/{owner_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "its own account: {:?}",
        r.body
    );
    let (admin_id, _, _) = t.account(t.tenant, Role::Admin).await;
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/accounts/{admin_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (other, _) = t.other_tenant().await;
    let (_, _, stranger) = t.account(other, Role::Owner).await;
    let r = t.call("DELETE", &path, Some(&stranger), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t
        .call(
            "PATCH",
            &path,
            Some(&stranger),
            Some(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = t.call("DELETE", &path, Some(&owner), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        me(&t, &member).await,
        (StatusCode::UNAUTHORIZED, "SESSION_ENDED".into())
    );
    assert_eq!(
        t.login(&member_email).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(t
        .stores
        .identity
        .get_account(member_id)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_login_flood_on_one_account_gets_429_with_retry_after() {
    let t = app().await;
    let (_, email, _) = t.account(t.tenant, Role::Member).await;
    let mut limited = None;
    for i in 0..20 {
        let r = t
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(&json!({"email": email, "password": "wrong password"})),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.code(), "INVALID_CREDENTIALS");
    }
    let (attempt, r) = limited.expect("throttled");
    // One login by `account` above, then nine wrong passwords: the tenth attempt is refused.
    assert_eq!(attempt, 9);
    assert_eq!(r.code(), "RATE_LIMITED");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(r.body["error"]["details"]["retry_after_secs"], wait);
    // Even the right password waits: throttling comes before checking.
    assert_eq!(t.login(&email).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Another account is not affected.
    let (_, other, _) = t.account(t.tenant, Role::Member).await;
    assert_eq!(t.login(&other).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_login_flood_from_one_address_gets_429_whatever_the_accounts() {
    // Three a minute: the fourth attempt within 20 s is refused, however slow the machine.
    let t = super::support::app_with(|c| {
        c.limits.trust_forwarded_for = true;
        c.auth.login_attempts_per_ip = 3;
    })
    .await;
    let attempt = |email: String, ip: &'static str| {
        let body =
            serde_json::to_vec(&json!({"email": email, "password": "wrong password"})).unwrap();
        axum::http::Request::builder()
            .method("POST")
            .uri("/api/v1/auth/login")
            .header("content-type", "application/json")
            .header("x-forwarded-for", ip)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    // A new e-mail every time: only the per-address limit can stop it.
    for i in 0..3 {
        let r = t
            .send(attempt(format!("guess{i}@example.com"), "198.51.100.7"))
            .await;
        assert_eq!(r.code(), "INVALID_CREDENTIALS", "attempt {i}");
    }
    let r = t
        .send(attempt("guess-more@example.com".into(), "198.51.100.7"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    );
    assert!(r.headers.contains_key("retry-after"));
    // Another address is not affected; oversized input is refused before anything keeps it.
    let r = t
        .send(attempt("guess-more@example.com".into(), "198.51.100.8"))
        .await;
    assert_eq!(r.code(), "INVALID_CREDENTIALS");
    let r = t
        .send(attempt(
            format!("{}@example.com", "a".repeat(300)),
            "198.51.100.9",
        ))
        .await;
    assert_eq!((r.status, r.field()), (StatusCode::BAD_REQUEST, "email"));
}

#[tokio::test]
async fn api_keys_cannot_manage_accounts() {
    let t = app().await;
    let (owner_id, _, _) = t.account(t.tenant, Role::Owner).await;
    for (method, path) in [
        ("DELETE", format!("/api/v1/accounts/{owner_id}")),
        ("POST", format!("/api/v1/accounts/{owner_id}/end_sessions")),
    ] {
        let r = t.call(method, &path, Some(&t.key), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    let r = t
        .call(
            "PATCH",
            &format!("/api/v1/accounts/{owner_id}"),
            Some(&t.key),
            Some(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(t
        .stores
        .identity
        .get_account(owner_id)
        .await
        .unwrap()
        .unwrap()
        .disabled_at
        .is_none());
}

#[tokio::test]
async fn every_administrative_action_is_in_the_audit_trail_with_its_actor() {
    let t = app().await;
    let (owner_id, owner_email, owner) = t.account(t.tenant, Role::Owner).await;
    let actor = format!("account:{owner_id}");
    let bad = t
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&json!({"email": owner_email, "password": "not the password"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let r = t
        .call("POST", "/api/v1/accounts", Some(&owner), Some(&json!({"email": "new@acme.io", "password": "long enough password", "role": "member"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let new_id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/accounts/{new_id}");
    t.call(
        "PATCH",
        &path,
        Some(&owner),
        Some(&json!({"disabled": true})),
    )
    .await;
    t.call("DELETE", &path, Some(&owner), None).await;
    let key = t
        .call(
            "POST",
            "/api/v1/api-keys",
            Some(&owner),
            Some(&json!({"name": "ci", "scopes": ["ingest"]})),
        )
        .await;
    let key_id = key.body["id"].as_str().unwrap().to_owned();
    let secret = key.body["key"].as_str().unwrap().to_owned();
    t.call(
        "DELETE",
        &format!("/api/v1/api-keys/{key_id}"),
        Some(&owner),
        None,
    )
    .await;
    let q = t
        .call("POST", "/api/v1/ai/quotas/config", Some(&owner), Some(&json!({"quotas": [{"name": "daily budget", "metric": "cost_usd", "window": "day", "limit": "5"}]})))
        .await;
    assert_eq!(q.status, StatusCode::OK, "{:?}", q.body);
    let p = t
        .call("POST", "/api/v1/ai/prices", Some(&owner), Some(&json!({"provider": "openai", "model": "gpt-4o", "effective_from": "2025-06-01", "input_per_mtok_usd": "2.00", "output_per_mtok_usd": "8.00"})))
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
    t.call("POST", "/api/v1/auth/logout", Some(&owner), None)
        .await;
    let owner = t.login(&owner_email).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let trail = t
        .call("GET", "/api/v1/audit?limit=500", Some(&owner), None)
        .await;
    assert_eq!(trail.status, StatusCode::OK, "{:?}", trail.body);
    let rows = trail.body["results"].as_array().unwrap();
    let find = |action: &str| {
        rows.iter()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("{action} missing: {rows:#?}"))
    };
    for action in [
        "account.created",
        "account.disabled",
        "account.deleted",
        "api_key.created",
        "api_key.revoked",
        "quotas.replaced",
        "price.set",
        "auth.logout",
    ] {
        let row = find(action);
        assert_eq!(row["actor"], actor, "{row}");
        assert_eq!(row["outcome"], "success");
        assert_eq!(row["tenant_id"], t.tenant.to_string());
    }
    assert_eq!(
        find("account.deleted")["target"],
        format!("account:{new_id}")
    );
    assert_eq!(find("account.deleted")["details"]["email"], "new@acme.io");
    assert_eq!(find("auth.login")["actor_label"], owner_email);
    assert_eq!(find("auth.login")["actor"], actor);
    assert_eq!(
        find("api_key.created")["details"]["scopes"],
        json!(["ingest"])
    );
    // A failed login on an account is in its tenant's trail, with no actor but the e-mail.
    let mine = t
        .call(
            "GET",
            "/api/v1/audit?action=auth.login_failed",
            Some(&owner),
            None,
        )
        .await;
    let mine = mine.body["results"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["target"], format!("account:{owner_id}"));
    assert_eq!(mine[0]["actor"], "anonymous");
    // The platform admin sees every failed login.
    let (_, _, admin) = t.account(t.tenant, Role::Admin).await;
    let failed = t
        .call(
            "GET",
            "/api/v1/audit?action=auth.login_failed",
            Some(&admin),
            None,
        )
        .await;
    let failed = failed.body["results"].as_array().unwrap();
    assert_eq!(failed[0]["actor_label"], owner_email);
    assert_eq!(failed[0]["outcome"], "failure");
    // Secrets never: no password, no key.
    let text = trail.body.to_string();
    assert!(!text.contains("long enough password") && !text.contains("not the password"));
    assert!(!text.contains(&secret));

    // Pages, newest first.
    let first = t
        .call("GET", "/api/v1/audit?limit=2", Some(&owner), None)
        .await;
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let next = t
        .call(
            "GET",
            &format!("/api/v1/audit?limit=2&cursor={cursor}"),
            Some(&owner),
            None,
        )
        .await;
    let ids = |r: &super::support::Resp| -> Vec<i64> {
        r.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_i64().unwrap())
            .collect()
    };
    let (a, b) = (ids(&first), ids(&next));
    assert!(a[0] > a[1] && a[1] > b[0] && b[0] > b[1], "{a:?} {b:?}");

    // Members cannot read it; another tenant's owner sees none of it.
    let member = t.login_as(t.tenant, Role::Member).await;
    assert_eq!(
        t.call("GET", "/api/v1/audit", Some(&member), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let (other, _) = t.other_tenant().await;
    let stranger = t.login_as(other, Role::Owner).await;
    let theirs = t.call("GET", "/api/v1/audit", Some(&stranger), None).await;
    assert!(theirs.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["tenant_id"] == other.to_string()));
    let denied = t
        .call(
            "GET",
            &format!("/api/v1/audit?tenant_id={}", t.tenant),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
}
