//! The one deletion path: a tenant with everything it owns, or one tracked user. The
//! completeness test fills every table of the schema for two tenants, deletes one, and
//! reads the database files directly: no row of the deleted tenant is left in any table
//! (the audit trail excepted, by design), the other tenant's rows are intact, and a table
//! the deletion path does not know fails the test.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use rusqlite::Connection;
use serde_json::json;
use tally_core::auth::Role;
use tally_core::TenantId;
use tally_store::sqlite::deletion::{
    INDIRECT_TABLES, KEPT_TABLES, TENANT_TABLES, USER_INDEX_TABLES, USER_TABLES,
};

use super::support::{app, TestApp};

/// Puts rows for `tenant` (through `key`, an all-scope key, and an owner account) in every
/// table: events, profiles, usage with its rollups, prices, quotas and their events, an
/// account with a revoked session.
async fn fill(t: &TestApp, tenant: TenantId, key: &str, user: &str) {
    let call = |m: &'static str, path: String, body: serde_json::Value| {
        let key = key.to_owned();
        async move {
            let r = t.call(m, &path, Some(&key), Some(&body)).await;
            assert!(r.status.is_success(), "{m} {path}: {:?}", r.body);
            r
        }
    };
    call(
        "PUT",
        "/api/v1/insights/projects/p1/".to_string(),
        json!({"name": "P"}),
    )
    .await;
    call(
        "PUT",
        format!("/api/v1/insights/users/{user}/"),
        json!({"email": "u@x.io"}),
    )
    .await;
    call("POST", "/api/v1/insights/track/batch/".into(), json!({"events": [
        {"event_type": "user_action", "event_name": "a", "properties": {"user_id": user, "project_id": "p1"}},
        {"event_type": "page_view", "event_name": "b", "properties": {"user_id": user, "page": "/"}},
        {"event_type": "user_action", "event_name": "c", "properties": {"user_id": "someone-else"}}
    ]})).await;
    call("POST", "/api/v1/ai/quotas/config".into(), json!({"quotas": [
        {"name": "tiny", "metric": "cost_usd", "window": "day", "limit": "0.000001", "enforce": false},
        {"name": "theirs", "metric": "requests", "window": "day", "limit": 100, "user_id": user}
    ]})).await;
    let now = chrono::Utc::now().to_rfc3339();
    call(
        "POST",
        "/api/v1/ai/usage".into(),
        json!({"provider": "openai", "model": "gpt-4o",
        "user_id": user, "conversation_id": "conv-1", "input_tokens": 1000, "output_tokens": 500,
        "latency_ms": 800, "timestamp": now}),
    )
    .await;
    call("POST", "/api/v1/ai/prices".into(), json!({"provider": "openai", "model": "gpt-4o",
        "effective_from": "2025-06-01", "input_per_mtok_usd": "2.00", "output_per_mtok_usd": "8.00"})).await;
    call(
        "POST",
        "/api/v1/ai/credentials".into(),
        json!({"name": "openai", "api_key": "sk-test-0123456789abcd",
        "base_url": "http://127.0.0.1:9/v1"}),
    )
    .await;
    call(
        "PUT",
        "/api/v1/ai/gateway/settings".into(),
        json!({"cache": {"enabled": true, "ttl_secs": 60}}),
    )
    .await;
    let (_, _, token) = t.account(tenant, Role::Owner).await;
    let r = t
        .call("POST", "/api/v1/auth/logout", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

/// The ids other tables reach a tenant by: its integer key (`events`) and its accounts
/// (`revoked_sessions`). Taken before a deletion, which removes them too.
struct Reach {
    key: i64,
    accounts: Vec<Vec<u8>>,
}

fn reach_of(t: &TestApp, tenant: TenantId) -> Reach {
    let main = Connection::open(t.dir.path().join("tally.db")).unwrap();
    let id = tenant.0.as_bytes().to_vec();
    let key = main
        .query_row(
            "SELECT key FROM tenant_keys WHERE tenant_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let mut stmt = main
        .prepare("SELECT id FROM accounts WHERE tenant_id = ?1")
        .unwrap();
    let accounts = stmt
        .query_map([&id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    Reach { key, accounts }
}

/// Rows per table that belong to `tenant`, in both database files.
fn rows_of(t: &TestApp, tenant: TenantId, reach: &Reach) -> BTreeMap<String, i64> {
    let main = Connection::open(t.dir.path().join("tally.db")).unwrap();
    let users = Connection::open(t.dir.path().join("tally.db.users")).unwrap();
    let id = tenant.0.as_bytes().to_vec();
    let mut out = BTreeMap::new();
    let count =
        |conn: &Connection, sql: &str| -> i64 { conn.query_row(sql, [&id], |r| r.get(0)).unwrap() };
    for table in TENANT_TABLES.iter().chain(["audit_log"].iter()) {
        out.insert(
            table.to_string(),
            count(
                &main,
                &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1"),
            ),
        );
    }
    for (table, column) in INDIRECT_TABLES {
        let n: i64 = match *column {
            "tenant_key" => main
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE tenant_key = ?1"),
                    [reach.key],
                    |r| r.get(0),
                )
                .unwrap(),
            "account_id" => reach
                .accounts
                .iter()
                .map(|a| -> i64 {
                    main.query_row(
                        &format!("SELECT count(*) FROM {table} WHERE account_id = ?1"),
                        [a],
                        |r| r.get(0),
                    )
                    .unwrap()
                })
                .sum(),
            _ => count(
                &main,
                &format!("SELECT count(*) FROM {table} WHERE {column} = ?1"),
            ),
        };
        out.insert(table.to_string(), n);
    }
    for table in USER_INDEX_TABLES {
        out.insert(
            format!("users.{table}"),
            count(
                &users,
                &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1"),
            ),
        );
    }
    out
}

fn schema_tables(path: &std::path::Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until the user index has folded the tenant's events (about a second).
async fn folded(t: &TestApp, tenant: TenantId) {
    let users = Connection::open(t.dir.path().join("tally.db.users")).unwrap();
    for _ in 0..100 {
        let n: i64 = users
            .query_row(
                "SELECT count(*) FROM user_events WHERE tenant_id = ?1",
                [tenant.0.as_bytes().to_vec()],
                |r| r.get(0),
            )
            .unwrap();
        if n > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the user index never folded");
}

#[tokio::test]
async fn deleting_a_tenant_leaves_no_row_of_it_in_any_table() {
    let t = app().await;
    let (other, other_key) = t.other_tenant().await;
    fill(&t, t.tenant, &t.key.clone(), "u1").await;
    fill(&t, other, &other_key, "u1").await;
    folded(&t, t.tenant).await;

    // Every table of both files is known to the deletion path.
    for table in schema_tables(&t.dir.path().join("tally.db")) {
        let known = TENANT_TABLES.contains(&table.as_str())
            || KEPT_TABLES.contains(&table.as_str())
            || INDIRECT_TABLES.iter().any(|(name, _)| *name == table);
        assert!(
            known,
            "table {table} is not covered by the deletion path (tally_store::sqlite::deletion)"
        );
    }
    for table in schema_tables(&t.dir.path().join("tally.db.users")) {
        assert!(
            USER_INDEX_TABLES.contains(&table.as_str()) || table == "fold_watermark",
            "user-index table {table} is not covered by the deletion path"
        );
    }
    let (mine, theirs_reach) = (reach_of(&t, t.tenant), reach_of(&t, other));
    let before = rows_of(&t, t.tenant, &mine);
    for (table, n) in &before {
        assert!(
            *n > 0,
            "the test leaves {table} empty; fill it so its deletion is proven"
        );
    }
    let theirs = rows_of(&t, other, &theirs_reach);

    let admin = t.login_as(other, Role::Admin).await;
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{}", t.tenant),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["deleted_rows"]["events"], before["events"]);

    let after = rows_of(&t, t.tenant, &mine);
    for (table, n) in &after {
        if table == "audit_log" {
            assert!(*n >= before["audit_log"], "the trail outlives the tenant");
        } else {
            assert_eq!(*n, 0, "{table} still holds rows of the deleted tenant");
        }
    }
    let mut theirs_after = rows_of(&t, other, &reach_of(&t, other));
    // The admin's login and the deletion are the only new rows of the other tenant.
    theirs_after.insert("accounts".into(), theirs_after["accounts"] - 1);
    theirs_after.insert("audit_log".into(), theirs["audit_log"]);
    assert_eq!(theirs_after, theirs);

    // Its keys stop working at once, and the tenant is gone.
    let r = t.get("/api/v1/insights/activities/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{}", t.tenant),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Only the platform admin deletes tenants, never its own.
    let owner = t.login_as(other, Role::Owner).await;
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{other}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{other}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let trail = t
        .call(
            "GET",
            "/api/v1/audit?action=tenant.deleted",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        trail.body["results"][0]["target"],
        format!("tenant:{}", t.tenant)
    );
}

#[tokio::test]
async fn erasing_a_tracked_user_removes_their_rows_and_keeps_everyone_elses() {
    let t = app().await;
    let (other, other_key) = t.other_tenant().await;
    fill(&t, t.tenant, &t.key.clone(), "u1").await;
    fill(&t, other, &other_key, "u1").await;
    folded(&t, t.tenant).await;
    let count = |sql: &str| -> i64 {
        let conn = Connection::open(t.dir.path().join("tally.db")).unwrap();
        conn.query_row(sql, [t.tenant.0.as_bytes().to_vec()], |r| r.get(0))
            .unwrap()
    };
    let owner = t.login_as(t.tenant, Role::Owner).await;
    let member = t.login_as(t.tenant, Role::Member).await;
    let r = t
        .call("DELETE", "/api/v1/insights/users/u1/", Some(&member), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call("DELETE", "/api/v1/insights/users/u1/", Some(&owner), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["deleted_rows"]["events"], 2);
    assert_eq!(r.body["deleted_rows"]["llm_usage"], 1);

    for table in USER_TABLES {
        let n = count(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = ?1 AND user_id = 'u1'"
        ));
        assert_eq!(n, 0, "{table}");
    }
    let conn = Connection::open(t.dir.path().join("tally.db.users")).unwrap();
    for table in USER_INDEX_TABLES {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1 AND user_id = 'u1'"),
                [t.tenant.0.as_bytes().to_vec()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "users.{table}");
    }
    // What is left is exact: one event of someone else, counted once.
    let list = t.get("/api/v1/insights/activities/").await;
    assert_eq!(list.body["count"], 1, "{:?}", list.body);
    assert_eq!(
        t.get("/api/v1/insights/users/u1/").await.status,
        StatusCode::NOT_FOUND
    );
    // The other tenant's user of the same id is untouched; erasing again finds nothing.
    let theirs = t
        .call(
            "GET",
            "/api/v1/insights/activities/",
            Some(&other_key),
            None,
        )
        .await;
    assert_eq!(theirs.body["count"], 3);
    let again = t
        .call("DELETE", "/api/v1/insights/users/u1/", Some(&owner), None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let trail = t
        .call(
            "GET",
            "/api/v1/audit?action=tracked_user.erased",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(trail.body["results"][0]["target"], "tracked_user:u1");
}
