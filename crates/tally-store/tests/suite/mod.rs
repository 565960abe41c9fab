//! The store test suite: behaviour every backend must have, written against the `Stores`
//! traits only, and the fixtures it shares with the SQLite-only tests
//! (`tests/sqlite_only.rs`). `store_test_suite!` runs it against a backend.

#![allow(dead_code)] // each test binary uses part of the fixtures

use chrono::NaiveDate;
use std::path::{Path, PathBuf};
use tally_core::activity::{ActivityFilter, Project, UserProfile};
use tally_core::auth::{generate_api_key, Role, Scope};
use tally_core::event::{EventType, NewEvent};
use tally_core::tenancy::{Account, ApiKey, Tenant};
use tally_core::time::{self, MICROS_PER_HOUR};
use tally_core::{AccountId, ApiKeyId, TenantId};
use tally_store::{ActivityRef, InsertOutcome, SqliteConfig, StoreConfig, StoreError, Stores};
use uuid::Uuid;

/// Opens the backend under test at `dir` (the same `dir` again reopens it).
pub type Open = fn(&Path) -> Stores;

/// The SQLite backend in `dir/tally.db`.
pub fn open_sqlite(dir: &Path) -> Stores {
    Stores::open(StoreConfig::Sqlite(SqliteConfig::new(dir.join("tally.db")))).unwrap()
}

/// A backend opened in a temporary place of its own.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// The main database file, for tests of the SQLite backend's files.
    pub path: PathBuf,
    pub stores: Stores,
    backend: Open,
}

pub fn open(backend: Open) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        path: dir.path().join("tally.db"),
        stores: backend(dir.path()),
        dir,
        backend,
    }
}

impl Fixture {
    /// Shuts the stores down (commits, folds, truncates the log) from a blocking thread.
    pub async fn close(&self) {
        close(&self.stores).await;
    }

    /// The same data, opened again.
    pub fn reopen(&self) -> Stores {
        (self.backend)(self.dir.path())
    }
}

/// Shuts `stores` down from a blocking thread.
pub async fn close(stores: &Stores) {
    let stores = stores.clone();
    tokio::task::spawn_blocking(move || stores.shutdown())
        .await
        .unwrap();
}

pub const T0: i64 = 1_705_761_000_000_000; // 2024-01-20T14:30:00Z

pub fn event(
    ts: i64,
    user: Option<&str>,
    project: Option<&str>,
    ty: EventType,
    name: &str,
) -> NewEvent {
    NewEvent {
        tracking_id: Uuid::now_v7(),
        client_id: None,
        dedup_ts: 0,
        event_type: ty,
        event_name: name.into(),
        user_id: user.map(Into::into),
        project_id: project.map(Into::into),
        timestamp: ts,
        received_at: ts,
        properties: r#"{"a":1}"#.into(),
        context: "{}".into(),
        enriched: "{}".into(),
    }
}

pub async fn tenant(stores: &Stores, max_events: Option<u64>) -> TenantId {
    let t = Tenant {
        id: TenantId::generate(),
        name: "acme".into(),
        max_events,
        created_at: T0,
    };
    stores.identity.create_tenant(t.clone()).await.unwrap();
    t.id
}

/// `n` events of user "u", one a minute from `base`.
pub fn user_batch(base: i64, n: i64) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            event(
                base + i * 60_000_000,
                Some("u"),
                Some("p"),
                EventType::UserAction,
                "a",
            )
        })
        .collect()
}

/// (listed count, rows listed, hourly rollup sum) for user "u".
pub async fn user_totals(stores: &Stores, t: TenantId) -> (u64, usize, u64) {
    let by_user = ActivityFilter {
        user_id: Some("u".into()),
        ..Default::default()
    };
    let (count, rows) = stores
        .events
        .list_activities(t, &by_user, 0, 1000)
        .await
        .unwrap();
    let hours = stores
        .events
        .user_activity(t, "u", None, None)
        .await
        .unwrap();
    (count, rows.len(), hours.iter().map(|h| h.count).sum())
}

pub fn usage(client_id: Option<&str>, ts: &str) -> tally_core::usage::UsageRecord {
    let input: tally_core::usage::UsageInput = serde_json::from_value(serde_json::json!({
        "id": client_id, "provider": "openai", "model": "gpt-4o", "input_tokens": 1000,
        "output_tokens": 500, "timestamp": ts, "conversation_id": "c-1"
    }))
    .unwrap();
    tally_core::usage::validate_usage(
        input,
        &tally_core::pricing::default_catalog(),
        tally_core::time::Clock::now_micros(&tally_core::time::SystemClock),
        300,
    )
    .unwrap()
}

pub fn call(
    i: u32,
    user: &str,
    conv: &str,
    model: &str,
    ts: &str,
) -> tally_core::usage::UsageRecord {
    let input: tally_core::usage::UsageInput = serde_json::from_value(serde_json::json!({
        "id": format!("call-{i}"), "provider": "openai", "model": model, "input_tokens": 1000,
        "output_tokens": 500, "latency_ms": 100, "timestamp": ts, "user_id": user,
        "conversation_id": conv, "metadata": {"feature": if i.is_multiple_of(2) { "search" } else { "chat" }}
    }))
    .unwrap();
    tally_core::usage::validate_usage(
        input,
        &tally_core::pricing::default_catalog(),
        tally_core::time::Clock::now_micros(&tally_core::time::SystemClock),
        300,
    )
    .unwrap()
}

/// Runs every test of the suite against one backend: `store_test_suite!(sqlite,
/// open_sqlite)` makes a module `sqlite` with one `#[tokio::test]` per test, each calling
/// the backend-neutral body here with the backend's constructor (quickwit's
/// `metastore_test_suite!` is the model).
#[macro_export]
macro_rules! store_test_suite {
    ($backend:ident, $open:path) => {
        $crate::store_test_suite!(@tests $backend, $open, [
            listing_is_newest_first_with_exact_counts_and_filters,
            tenants_never_see_each_others_events,
            client_ids_make_retries_idempotent,
            storage_limit_is_enforced_per_event,
            user_rollup_counts_by_hour_project_type_and_name,
            concurrent_writers_share_commits_and_all_land,
            data_survives_shutdown_and_reopen,
            accounts_keys_and_settings,
            profiles_upsert_and_stay_in_their_tenant,
            user_pages_across_days_match_the_full_list,
            usage_records_are_stored_once_per_client_id_and_tenant,
            price_overrides_upsert_per_date_and_stay_in_their_tenant,
            usage_rollups_fold_exact_sums_and_mergeable_percentiles,
            usage_folds_per_user_day_and_per_conversation_in_the_same_commit,
            usage_records_list_with_filters_search_and_a_capped_count,
            quota_rules_replace_declaratively_and_events_are_recorded_once,
            usage_is_summed_per_api_key_for_key_scoped_quotas,
            user_ranking_spans_months_and_sums_only_the_period_days,
            deletions_in_the_same_commit_as_new_events_leave_exact_counts,
            writes_for_a_deleted_tenant_are_refused,
            a_cost_total_past_sixty_four_bits_is_refused_for_its_caller_alone,
            deletions_in_the_same_commit_as_new_usage_leave_no_rows,
            snapshots_say_which_commits_they_hold,
            credentials_upsert_by_name_stay_in_their_tenant_and_reseal_together,
            gateway_settings_replace_and_go_with_their_tenant,
        ]);
    };
    (@tests $backend:ident, $open:path, [$($name:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::suite::$name($open).await
                }
            )*
        }
    };
}

pub async fn listing_is_newest_first_with_exact_counts_and_filters(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    let mut batch = Vec::new();
    for i in 0..30i64 {
        let user = if i % 3 == 0 { Some("u1") } else { Some("u2") };
        let project = if i % 2 == 0 { Some("p1") } else { None };
        let ty = if i % 5 == 0 {
            EventType::PageView
        } else {
            EventType::UserAction
        };
        batch.push(event(T0 + i * MICROS_PER_HOUR, user, project, ty, "e"));
    }
    let out = f.stores.events.insert_events(t, None, batch).await.unwrap();
    assert!(out
        .iter()
        .all(|o| matches!(o, InsertOutcome::Inserted { .. })));

    let all = ActivityFilter::default();
    let (count, page) = f
        .stores
        .events
        .list_activities(t, &all, 0, 10)
        .await
        .unwrap();
    assert_eq!(count, 30);
    assert_eq!(page.len(), 10);
    assert!(page.windows(2).all(|w| w[0].timestamp > w[1].timestamp));
    assert_eq!(page[0].timestamp, T0 + 29 * MICROS_PER_HOUR);

    let by_user = ActivityFilter {
        user_id: Some("u1".into()),
        ..Default::default()
    };
    let (count, page) = f
        .stores
        .events
        .list_activities(t, &by_user, 0, 100)
        .await
        .unwrap();
    assert_eq!((count, page.len()), (10, 10));
    assert!(page.iter().all(|e| e.user_id.as_deref() == Some("u1")));

    let combo = ActivityFilter {
        user_id: Some("u1".into()),
        project_id: Some("p1".into()),
        event_type: Some(EventType::PageView),
        ..Default::default()
    };
    let (count, page) = f
        .stores
        .events
        .list_activities(t, &combo, 0, 100)
        .await
        .unwrap();
    // i % 3 == 0 && i % 2 == 0 && i % 5 == 0 → i in {0}
    assert_eq!((count, page.len()), (1, 1));

    let by_project = ActivityFilter {
        project_id: Some("p1".into()),
        ..Default::default()
    };
    assert_eq!(
        f.stores
            .events
            .list_activities(t, &by_project, 0, 5)
            .await
            .unwrap()
            .0,
        15
    );
    let by_type = ActivityFilter {
        event_type: Some(EventType::PageView),
        ..Default::default()
    };
    assert_eq!(
        f.stores
            .events
            .list_activities(t, &by_type, 0, 5)
            .await
            .unwrap()
            .0,
        6
    );

    // 2024-01-20 14:30 + 29h spans the 20th (10 events: 14:30..23:30) and the 21st (20)
    let day = ActivityFilter {
        date_from: NaiveDate::from_ymd_opt(2024, 1, 21),
        date_to: NaiveDate::from_ymd_opt(2024, 1, 21),
        ..Default::default()
    };
    let (count, page) = f
        .stores
        .events
        .list_activities(t, &day, 0, 100)
        .await
        .unwrap();
    assert_eq!((count, page.len()), (20, 20));
    let (count, page) = f
        .stores
        .events
        .list_activities(t, &all, 25, 10)
        .await
        .unwrap();
    assert_eq!((count, page.len()), (30, 5));
}

pub async fn tenants_never_see_each_others_events(backend: Open) {
    let f = open(backend);
    let (a, b) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let out = f
        .stores
        .events
        .insert_events(
            a,
            None,
            vec![event(T0, Some("u"), None, EventType::UserAction, "x")],
        )
        .await
        .unwrap();
    let InsertOutcome::Inserted { id, tracking_id } = out[0] else {
        panic!("not inserted")
    };
    assert!(f
        .stores
        .events
        .get_activity(a, ActivityRef::Id(id))
        .await
        .unwrap()
        .is_some());
    assert!(f
        .stores
        .events
        .get_activity(b, ActivityRef::Id(id))
        .await
        .unwrap()
        .is_none());
    assert!(f
        .stores
        .events
        .get_activity(b, ActivityRef::Tracking(tracking_id))
        .await
        .unwrap()
        .is_none());
    let (count, rows) = f
        .stores
        .events
        .list_activities(b, &ActivityFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!((count, rows.len()), (0, 0));
    assert!(f
        .stores
        .events
        .user_activity(b, "u", None, None)
        .await
        .unwrap()
        .is_empty());
}

pub async fn client_ids_make_retries_idempotent(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    let mut e = event(T0, Some("u"), None, EventType::UserAction, "x");
    e.client_id = Some("evt-1".into());
    e.dedup_ts = T0;
    let first = f
        .stores
        .events
        .insert_events(t, None, vec![e.clone()])
        .await
        .unwrap();
    let InsertOutcome::Inserted { id, tracking_id } = first[0] else {
        panic!()
    };
    let mut retry = e.clone();
    retry.tracking_id = Uuid::now_v7();
    // a retry, and a duplicate inside one batch
    let again = f
        .stores
        .events
        .insert_events(t, None, vec![retry.clone(), retry])
        .await
        .unwrap();
    assert_eq!(again, vec![InsertOutcome::Duplicate { id, tracking_id }; 2]);
    assert_eq!(f.stores.events.event_count(t).await.unwrap(), 1);
    // the same client id in another tenant is another event
    let other = tenant(&f.stores, None).await;
    e.tracking_id = Uuid::now_v7();
    let o = f
        .stores
        .events
        .insert_events(other, None, vec![e])
        .await
        .unwrap();
    assert!(matches!(o[0], InsertOutcome::Inserted { .. }));
}

pub async fn storage_limit_is_enforced_per_event(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, Some(3)).await;
    let batch = || -> Vec<_> {
        (0..2)
            .map(|i| event(T0 + i, None, None, EventType::SystemEvent, "x"))
            .collect()
    };
    f.stores
        .events
        .insert_events(t, Some(3), batch())
        .await
        .unwrap();
    let out = f
        .stores
        .events
        .insert_events(t, Some(3), batch())
        .await
        .unwrap();
    assert!(matches!(out[0], InsertOutcome::Inserted { .. }));
    assert_eq!(out[1], InsertOutcome::OverLimit { limit: 3 });
    assert_eq!(f.stores.events.event_count(t).await.unwrap(), 3);
}

pub async fn user_rollup_counts_by_hour_project_type_and_name(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    let batch = vec![
        event(T0, Some("u"), Some("p"), EventType::UserAction, "a"),
        event(T0 + 1, Some("u"), Some("p"), EventType::UserAction, "a"),
        event(T0 + 2, Some("u"), None, EventType::PageView, "b"),
        event(
            T0 + MICROS_PER_HOUR,
            Some("u"),
            None,
            EventType::PageView,
            "b",
        ),
        event(T0, None, None, EventType::PageView, "anonymous"),
    ];
    f.stores.events.insert_events(t, None, batch).await.unwrap();
    let mut rows = f
        .stores
        .events
        .user_activity(t, "u", None, None)
        .await
        .unwrap();
    rows.sort_by_key(|r| (r.hour, r.event_name.clone()));
    let h = time::hour_of(T0);
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.hour - h,
                r.project_id.as_deref(),
                r.event_name.as_str(),
                r.count,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(0, Some("p"), "a", 2), (0, None, "b", 1), (1, None, "b", 1)]
    );
    let window = f
        .stores
        .events
        .user_activity(t, "u", Some(h + 1), None)
        .await
        .unwrap();
    assert_eq!(window.len(), 1);
}

pub async fn concurrent_writers_share_commits_and_all_land(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    let mut tasks = Vec::new();
    for i in 0..64i64 {
        let s = f.stores.clone();
        tasks.push(tokio::spawn(async move {
            let batch = (0..50)
                .map(|j| {
                    event(
                        T0 + i * 1000 + j,
                        Some("u"),
                        None,
                        EventType::UserAction,
                        "x",
                    )
                })
                .collect();
            s.events.insert_events(t, None, batch).await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().len(), 50);
    }
    assert_eq!(f.stores.events.event_count(t).await.unwrap(), 64 * 50);
    let (count, _) = f
        .stores
        .events
        .list_activities(t, &ActivityFilter::default(), 0, 1)
        .await
        .unwrap();
    assert_eq!(count, 64 * 50);
}

pub async fn data_survives_shutdown_and_reopen(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    f.stores
        .events
        .insert_events(
            t,
            None,
            vec![event(T0, None, None, EventType::UserAction, "x")],
        )
        .await
        .unwrap();
    f.close().await;
    let err = f
        .stores
        .events
        .insert_events(
            t,
            None,
            vec![event(T0, None, None, EventType::UserAction, "x")],
        )
        .await;
    assert!(matches!(err, Err(StoreError::Unavailable(_))));
    let reopened = f.reopen();
    assert_eq!(reopened.events.event_count(t).await.unwrap(), 1);
    assert!(reopened.identity.get_tenant(t).await.unwrap().is_some());
}

pub async fn accounts_keys_and_settings(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    let acct = Account {
        id: AccountId::generate(),
        tenant_id: t,
        email: "Ann@Example.com".into(),
        password_hash: "h".into(),
        role: Role::Owner,
        created_at: T0,
        disabled_at: None,
        session_version: 0,
    };
    f.stores
        .identity
        .create_account(acct.clone())
        .await
        .unwrap();
    let dup = Account {
        id: AccountId::generate(),
        email: "ann@example.com".into(),
        ..acct.clone()
    };
    assert!(matches!(
        f.stores.identity.create_account(dup).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        f.stores
            .identity
            .find_account_by_email("ANN@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        acct.id
    );
    assert_eq!(f.stores.identity.count_accounts().await.unwrap(), 1);

    // Disabling, ending sessions and deleting act only within the account's tenant.
    let other = tenant(&f.stores, None).await;
    let ids = &f.stores.identity;
    assert!(!ids
        .set_account_disabled(other, acct.id, Some(T0))
        .await
        .unwrap());
    assert!(!ids.end_all_sessions(other, acct.id).await.unwrap());
    assert!(!ids.delete_account(other, acct.id).await.unwrap());
    assert!(ids
        .set_account_disabled(t, acct.id, Some(T0))
        .await
        .unwrap());
    assert!(ids.end_all_sessions(t, acct.id).await.unwrap());
    let stored = ids.get_account(acct.id).await.unwrap().unwrap();
    assert_eq!((stored.disabled_at, stored.session_version), (Some(T0), 1));
    let session = uuid::Uuid::new_v4();
    assert!(!ids.session_revoked(session).await.unwrap());
    ids.revoke_session(session, acct.id, 2_000, 1_000)
        .await
        .unwrap();
    assert!(ids.session_revoked(session).await.unwrap());
    // Revocations past their token's expiry are forgotten at the next revocation.
    ids.revoke_session(uuid::Uuid::new_v4(), acct.id, 9_000, 3_000)
        .await
        .unwrap();
    assert!(!ids.session_revoked(session).await.unwrap());
    assert_eq!(ids.list_accounts(t).await.unwrap().len(), 1);
    assert!(ids.list_accounts(other).await.unwrap().is_empty());

    let g = generate_api_key();
    let key = ApiKey {
        id: ApiKeyId::generate(),
        tenant_id: t,
        name: "ci".into(),
        prefix: g.prefix.clone(),
        key_hash: g.hash.clone(),
        scopes: [Scope::Ingest, Scope::Read].into(),
        created_at: T0,
        revoked_at: None,
    };
    f.stores.identity.create_api_key(key.clone()).await.unwrap();
    assert_eq!(
        f.stores
            .identity
            .find_api_key(&g.prefix)
            .await
            .unwrap()
            .unwrap(),
        key
    );
    let other = tenant(&f.stores, None).await;
    assert!(!f
        .stores
        .identity
        .revoke_api_key(other, key.id, T0)
        .await
        .unwrap());
    assert!(f
        .stores
        .identity
        .revoke_api_key(t, key.id, T0 + 1)
        .await
        .unwrap());
    assert!(!f
        .stores
        .identity
        .revoke_api_key(t, key.id, T0 + 2)
        .await
        .unwrap());
    assert_eq!(
        f.stores.identity.list_api_keys(t).await.unwrap()[0].revoked_at,
        Some(T0 + 1)
    );
    assert!(f
        .stores
        .identity
        .list_api_keys(other)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        f.stores.identity.init_setting("k", "v1").await.unwrap(),
        "v1"
    );
    assert_eq!(
        f.stores.identity.init_setting("k", "v2").await.unwrap(),
        "v1"
    );
    assert_eq!(
        f.stores.identity.get_setting("k").await.unwrap().as_deref(),
        Some("v1")
    );
}

pub async fn profiles_upsert_and_stay_in_their_tenant(backend: Open) {
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let p = UserProfile {
        user_id: "123".into(),
        email: Some("user@company.com".into()),
        full_name: Some("John Doe".into()),
        role: Some("MEMBER".into()),
        created_at: T0,
        updated_at: T0,
    };
    let (_, created) = f.stores.profiles.upsert_user(t, p.clone()).await.unwrap();
    assert!(created);
    let partial = UserProfile {
        email: None,
        full_name: Some("John D.".into()),
        updated_at: T0 + 1,
        ..p.clone()
    };
    let (stored, created) = f.stores.profiles.upsert_user(t, partial).await.unwrap();
    assert!(!created);
    assert_eq!(stored.email.as_deref(), Some("user@company.com"));
    assert_eq!(stored.full_name.as_deref(), Some("John D."));
    assert_eq!(stored.created_at, T0);
    assert!(f
        .stores
        .profiles
        .get_users(other, &["123".into()])
        .await
        .unwrap()
        .is_empty());

    let proj = Project {
        project_id: "p".into(),
        name: "Gestion Client".into(),
        organization_name: Some("Tech".into()),
        created_at: T0,
        updated_at: T0,
    };
    f.stores.profiles.upsert_project(t, proj).await.unwrap();
    let got = f
        .stores
        .profiles
        .get_projects(t, &["p".into(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(got["p"].name, "Gestion Client");
    assert_eq!(got.len(), 1);
    assert_eq!(
        f.stores.profiles.list_projects(t, 0, 10).await.unwrap().0,
        1
    );
    assert_eq!(
        f.stores
            .profiles
            .list_projects(other, 0, 10)
            .await
            .unwrap()
            .0,
        0
    );
}

pub async fn user_pages_across_days_match_the_full_list(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    // 3 events every 5 hours over ~4 days, with another user interleaved.
    let mut batch = Vec::new();
    for i in 0..20i64 {
        for j in 0..3 {
            batch.push(event(
                T0 + i * 5 * MICROS_PER_HOUR + j,
                Some("u"),
                None,
                EventType::UserAction,
                "a",
            ));
        }
        batch.push(event(
            T0 + i * 5 * MICROS_PER_HOUR,
            Some("other"),
            None,
            EventType::UserAction,
            "a",
        ));
    }
    f.stores.events.insert_events(t, None, batch).await.unwrap();
    let by_user = ActivityFilter {
        user_id: Some("u".into()),
        ..Default::default()
    };
    let (count, all) = f
        .stores
        .events
        .list_activities(t, &by_user, 0, 100)
        .await
        .unwrap();
    assert_eq!((count, all.len()), (60, 60));
    assert!(all
        .windows(2)
        .all(|w| (w[0].timestamp, w[0].id) > (w[1].timestamp, w[1].id)));
    for (offset, limit) in [(0, 7), (7, 7), (13, 20), (40, 30), (59, 5), (60, 5)] {
        let (_, page) = f
            .stores
            .events
            .list_activities(t, &by_user, offset, limit)
            .await
            .unwrap();
        let want: Vec<i64> = all
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|e| e.id)
            .collect();
        assert_eq!(
            page.iter().map(|e| e.id).collect::<Vec<_>>(),
            want,
            "offset {offset}"
        );
    }
}

pub async fn usage_records_are_stored_once_per_client_id_and_tenant(backend: Open) {
    use tally_store::UsageOutcome;
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    // At gpt-4o's launch price: 1,000 × $5/M + 500 × $15/M.
    let r = usage(Some("call-1"), "2024-06-20T14:00:00Z");
    assert_eq!(r.cost, tally_core::pricing::Nanos(12_500_000));
    let first = f
        .stores
        .usage
        .insert_usage(
            t,
            vec![r.clone(), usage(None, "2024-06-20T14:00:00Z")].into(),
        )
        .await
        .unwrap()
        .outcomes;
    let UsageOutcome::Inserted { id } = first[0] else {
        panic!("{first:?}")
    };
    assert!(matches!(first[1], UsageOutcome::Inserted { .. }));
    let again = f
        .stores
        .usage
        .insert_usage(t, vec![r.clone()].into())
        .await
        .unwrap()
        .outcomes;
    assert_eq!(again, vec![UsageOutcome::Duplicate { id }]);
    assert_eq!(f.stores.usage.usage_count(t).await.unwrap(), 2);
    // Another tenant's identical client id is its own record.
    assert!(matches!(
        f.stores
            .usage
            .insert_usage(other, vec![r].into())
            .await
            .unwrap()
            .outcomes[0],
        UsageOutcome::Inserted { .. }
    ));
    assert_eq!(f.stores.usage.usage_count(other).await.unwrap(), 1);
}

pub async fn price_overrides_upsert_per_date_and_stay_in_their_tenant(backend: Open) {
    use tally_core::pricing::{ModelPrice, Nanos};
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let p = ModelPrice {
        provider: "OpenAI".into(),
        model: "GPT-4o".into(),
        effective_from: NaiveDate::from_ymd_opt(2025, 3, 1).unwrap(),
        input_per_mtok: Nanos(2_000_000_000),
        output_per_mtok: Nanos(8_000_000_000),
        cached_input_per_mtok: None,
    };
    f.stores
        .usage
        .put_price_override(t, p.clone())
        .await
        .unwrap();
    let cheaper = ModelPrice {
        input_per_mtok: Nanos(1_000_000_000),
        ..p.clone()
    };
    f.stores.usage.put_price_override(t, cheaper).await.unwrap();
    let got = f.stores.usage.price_overrides(t).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].provider.as_str(), got[0].model.as_str()),
        ("openai", "gpt-4o")
    );
    assert_eq!(got[0].input_per_mtok, Nanos(1_000_000_000));
    assert!(f
        .stores
        .usage
        .price_overrides(other)
        .await
        .unwrap()
        .is_empty());
}

pub async fn usage_rollups_fold_exact_sums_and_mergeable_percentiles(backend: Open) {
    use tally_core::pricing::Nanos;
    use tally_core::usage::{validate_usage, Granularity, UsageInput};
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let now = tally_core::time::Clock::now_micros(&tally_core::time::SystemClock);
    let rec = |i: u32, hour: u32, status: &str, model: &str| {
        let input: UsageInput = serde_json::from_value(serde_json::json!({
            "id": format!("r{i}"), "provider": "openai", "model": model, "input_tokens": 1000,
            "output_tokens": 500, "latency_ms": 100 + i, "status": status, "quality_score": 8,
            "timestamp": format!("2025-07-01T{hour:02}:{:02}:00Z", i % 60)
        }))
        .unwrap();
        validate_usage(input, &tally_core::pricing::default_catalog(), now, 300).unwrap()
    };
    // 100 calls at 10:xx (3 errors), 50 at 11:xx, on gpt-4o; 10 at 11:xx on gpt-4o-mini.
    let mut batch: Vec<_> = (0..100)
        .map(|i| rec(i, 10, if i < 3 { "error" } else { "success" }, "gpt-4o"))
        .collect();
    batch.extend((100..150).map(|i| rec(i, 11, "success", "gpt-4o")));
    batch.extend((150..160).map(|i| rec(i, 11, "success", "gpt-4o-mini")));
    f.stores
        .usage
        .insert_usage(t, batch.clone().into())
        .await
        .unwrap();
    f.stores
        .usage
        .insert_usage(t, batch[..10].into())
        .await
        .unwrap(); // retries: no effect

    let day = tally_core::time::parse_rfc3339("2025-07-01T00:00:00Z").unwrap();
    let hours = f
        .stores
        .usage
        .usage_rollups(
            t,
            Granularity::Hour,
            day,
            day + tally_core::time::MICROS_PER_DAY,
        )
        .await
        .unwrap();
    let h10 = hours
        .iter()
        .find(|r| r.model == "gpt-4o" && r.bucket == day + 10 * tally_core::time::MICROS_PER_HOUR)
        .unwrap();
    assert_eq!((h10.calls, h10.errors), (100, 3));
    assert_eq!(h10.tokens.input, 100_000);
    assert_eq!(h10.cost, Nanos(100 * 7_500_000)); // $0.0075 per call
    assert_eq!(h10.quality_count, 100);
    assert_eq!(hours.len(), 3);

    // A day's percentiles come from merging the hourly sketches (or reading the day bucket).
    let days = f
        .stores
        .usage
        .usage_rollups(
            t,
            Granularity::Day,
            day,
            day + tally_core::time::MICROS_PER_DAY,
        )
        .await
        .unwrap();
    let d = days.iter().find(|r| r.model == "gpt-4o").unwrap();
    assert_eq!(d.calls, 150);
    let mut merged = hours[0].clone();
    for h in hours.iter().skip(1).filter(|h| h.model == "gpt-4o") {
        merged.merge(h).unwrap();
    }
    assert_eq!(merged.calls, d.calls);
    // latencies are 100..250 ms: the true p95 is 242 ms.
    let p95 = d.latency.quantile(0.95).unwrap();
    assert!((p95 - 242.0).abs() <= 242.0 * 0.0101, "{p95}");
    assert_eq!(d.latency_sum_ms, (100..250).map(f64::from).sum::<f64>());

    let minutes = f
        .stores
        .usage
        .usage_rollups(
            t,
            Granularity::Minute,
            day,
            day + tally_core::time::MICROS_PER_DAY,
        )
        .await
        .unwrap();
    assert_eq!(minutes.iter().map(|m| m.calls).sum::<u64>(), 160);
    assert!(f
        .stores
        .usage
        .usage_rollups(
            other,
            Granularity::Day,
            day,
            day + tally_core::time::MICROS_PER_DAY
        )
        .await
        .unwrap()
        .is_empty());
}

pub async fn usage_folds_per_user_day_and_per_conversation_in_the_same_commit(backend: Open) {
    use tally_core::pricing::Nanos;
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    // gpt-4o (since 2024-08-06): 1000 × $2.50/M + 500 × $10/M = $0.0075 per call; gpt-4o-mini: 1000 × $0.15/M + 500 × $0.60/M = $0.00045.
    let batch = vec![
        call(1, "alice", "c-1", "gpt-4o", "2025-07-01T10:00:00Z"),
        call(2, "alice", "c-1", "gpt-4o", "2025-07-01T10:05:00Z"),
        call(3, "alice", "c-2", "gpt-4o-mini", "2025-07-02T09:00:00Z"),
        call(4, "bob", "c-3", "gpt-4o-mini", "2025-07-02T11:00:00Z"),
    ];
    f.stores
        .usage
        .insert_usage(t, batch.clone().into())
        .await
        .unwrap();
    f.stores.usage.insert_usage(t, batch.into()).await.unwrap(); // retried: counted once
    f.stores
        .usage
        .insert_usage(
            t,
            vec![call(5, "alice", "c-1", "gpt-4o", "2025-07-03T08:00:00Z")].into(),
        )
        .await
        .unwrap();

    let d1 = time::day_of(time::parse_rfc3339("2025-07-01T00:00:00Z").unwrap());
    let users = f
        .stores
        .usage
        .user_usage(t, d1, d1 + 3, None, None, 10)
        .await
        .unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0].user_id, "alice");
    assert_eq!(users[0].totals.calls, 4);
    assert_eq!(users[0].totals.cost, Nanos(3 * 7_500_000 + 450_000));
    assert_eq!(users[1].user_id, "bob");
    assert_eq!(users[1].totals.cost, Nanos(450_000));
    // One day only, one user only.
    let day2 = f
        .stores
        .usage
        .user_usage(t, d1 + 1, d1 + 2, Some("alice".into()), None, 10)
        .await
        .unwrap();
    assert_eq!((day2.len(), day2[0].totals.calls), (1, 1));

    let c1 = f
        .stores
        .usage
        .conversation(t, "c-1".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c1.user_id.as_deref(), Some("alice"));
    assert_eq!((c1.totals.calls, c1.totals.cost), (3, Nanos(3 * 7_500_000)));
    assert_eq!(
        c1.totals.first_ts,
        time::parse_rfc3339("2025-07-01T10:00:00Z").unwrap()
    );
    assert_eq!(
        c1.totals.last_ts,
        time::parse_rfc3339("2025-07-03T08:00:00Z").unwrap()
    );
    assert!(f
        .stores
        .usage
        .conversation(other, "c-1".into())
        .await
        .unwrap()
        .is_none());

    // Top conversations by cost among those last active in the range.
    let all = f
        .stores
        .usage
        .top_conversations(t, 0, i64::MAX, 10)
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|c| c.conversation_id.as_str()).collect();
    assert_eq!(ids[0], "c-1");
    assert_eq!(ids.len(), 3);
    let july2 = time::parse_rfc3339("2025-07-02T00:00:00Z").unwrap();
    let on_day2 = f
        .stores
        .usage
        .top_conversations(t, july2, july2 + time::MICROS_PER_DAY, 10)
        .await
        .unwrap();
    assert_eq!(on_day2.len(), 2);
    assert_eq!(
        f.stores.usage.active_conversations(t, july2).await.unwrap(),
        3
    );
    assert_eq!(
        f.stores.usage.active_conversations(other, 0).await.unwrap(),
        0
    );
}

pub async fn usage_records_list_with_filters_search_and_a_capped_count(backend: Open) {
    use tally_core::pricing::Nanos;
    use tally_core::usage::UsageFilter;
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let batch: Vec<_> = (0..20)
        .map(|i| {
            let model = if i < 5 { "gpt-4o" } else { "gpt-4o-mini" };
            call(
                i,
                "u",
                &format!("conv-{i}"),
                model,
                &format!("2025-07-01T10:{i:02}:00Z"),
            )
        })
        .collect();
    f.stores.usage.insert_usage(t, batch.into()).await.unwrap();

    let (n, page) = f
        .stores
        .usage
        .list_usage(t, UsageFilter::default(), 0, 3, 1000)
        .await
        .unwrap();
    assert_eq!(n, 20);
    assert_eq!(page.len(), 3);
    assert_eq!(page[0].record.client_id.as_deref(), Some("call-19")); // newest first

    let expensive = UsageFilter {
        min_cost: Some(Nanos(1_000_000)),
        ..Default::default()
    };
    let (n, _) = f
        .stores
        .usage
        .list_usage(t, expensive, 0, 50, 1000)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let models = UsageFilter {
        models: vec!["gpt-4o".into(), "nope".into()],
        from: time::parse_rfc3339("2025-07-01T10:02:00Z"),
        ..Default::default()
    };
    let (n, rows) = f
        .stores
        .usage
        .list_usage(t, models, 0, 50, 1000)
        .await
        .unwrap();
    assert_eq!((n, rows.len()), (3, 3));
    // Search matches metadata and ids, case-insensitively; % and _ are literal.
    let search = |s: &str| UsageFilter {
        search: Some(s.into()),
        ..Default::default()
    };
    assert_eq!(
        f.stores
            .usage
            .list_usage(t, search("SEARCH"), 0, 50, 1000)
            .await
            .unwrap()
            .0,
        10
    );
    assert_eq!(
        f.stores
            .usage
            .list_usage(t, search("conv-1"), 0, 50, 1000)
            .await
            .unwrap()
            .0,
        11
    );
    assert_eq!(
        f.stores
            .usage
            .list_usage(t, search("%"), 0, 50, 1000)
            .await
            .unwrap()
            .0,
        0
    );
    // The count stops at the cap.
    assert_eq!(
        f.stores
            .usage
            .list_usage(t, UsageFilter::default(), 0, 1, 7)
            .await
            .unwrap()
            .0,
        7
    );
    assert_eq!(
        f.stores
            .usage
            .list_usage(other, UsageFilter::default(), 0, 50, 1000)
            .await
            .unwrap()
            .0,
        0
    );
}

pub async fn quota_rules_replace_declaratively_and_events_are_recorded_once(backend: Open) {
    use tally_core::quota::{QuotaEvent, QuotaMetric, QuotaRule, QuotaScope, QuotaWindow};
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let rule = |name: &str, metric, window, limit, user: Option<&str>| QuotaRule {
        id: 0,
        name: name.into(),
        metric,
        window,
        limit,
        scope: QuotaScope {
            user_id: user.map(Into::into),
            ..Default::default()
        },
        warn_percent: 80,
        enforce: true,
    };
    let first = f
        .stores
        .quotas
        .replace_quota_rules(
            t,
            vec![
                rule("daily", QuotaMetric::CostUsd, QuotaWindow::Day, 10, None),
                rule(
                    "alice",
                    QuotaMetric::Requests,
                    QuotaWindow::Month,
                    5,
                    Some("alice"),
                ),
            ],
            1,
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // Same scope keeps its id (new limit and name); the alice rule is dropped; one is new.
    let second = f
        .stores
        .quotas
        .replace_quota_rules(
            t,
            vec![
                rule(
                    "daily budget",
                    QuotaMetric::CostUsd,
                    QuotaWindow::Day,
                    20,
                    None,
                ),
                rule(
                    "tokens",
                    QuotaMetric::Tokens,
                    QuotaWindow::Month,
                    1000,
                    None,
                ),
            ],
            2,
        )
        .await
        .unwrap();
    assert_eq!(second.len(), 2);
    let daily = second
        .iter()
        .find(|r| r.metric == QuotaMetric::CostUsd)
        .unwrap();
    assert_eq!(
        (daily.id, daily.limit, daily.name.as_str()),
        (first[0].id, 20, "daily budget")
    );
    assert!(second.iter().all(|r| r.scope.user_id.is_none()));
    assert!(f.stores.quotas.quota_rules(other).await.unwrap().is_empty());

    let event = |threshold, ts| QuotaEvent {
        id: 0,
        rule_id: daily.id,
        rule_name: daily.name.clone(),
        metric: QuotaMetric::CostUsd,
        window_start: 0,
        threshold,
        used: 17,
        limit: 20,
        ts,
    };
    let stored = f
        .stores
        .quotas
        .record_quota_events(t, vec![event(80, 5), event(80, 6), event(100, 7)])
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(f
        .stores
        .quotas
        .record_quota_events(t, vec![event(80, 8)])
        .await
        .unwrap()
        .is_empty());
    let listed = f.stores.quotas.quota_events(t, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.threshold).collect::<Vec<_>>(),
        vec![100, 80]
    );
    assert!(f
        .stores
        .quotas
        .quota_events(other, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn user_ranking_spans_months_and_sums_only_the_period_days(backend: Open) {
    use tally_core::pricing::Nanos;
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    // carol: 2 calls on June 30 and 1 on July 1; dave: 2 calls on July 1; erin: 5 in May.
    let mut batch = vec![
        call(1, "carol", "c1", "gpt-4o", "2025-06-30T23:00:00Z"),
        call(2, "carol", "c1", "gpt-4o", "2025-06-30T23:30:00Z"),
        call(3, "carol", "c1", "gpt-4o", "2025-07-01T00:30:00Z"),
        call(4, "dave", "c2", "gpt-4o", "2025-07-01T10:00:00Z"),
        call(5, "dave", "c2", "gpt-4o", "2025-07-01T11:00:00Z"),
    ];
    batch.extend((6..11).map(|i| call(i, "erin", "c3", "gpt-4o", "2025-05-15T10:00:00Z")));
    f.stores.usage.insert_usage(t, batch.into()).await.unwrap();
    let june30 = time::day_of(time::parse_rfc3339("2025-06-30T00:00:00Z").unwrap());
    let both = f
        .stores
        .usage
        .user_usage(t, june30, june30 + 2, None, None, 10)
        .await
        .unwrap();
    let got: Vec<(&str, u64)> = both
        .iter()
        .map(|u| (u.user_id.as_str(), u.totals.calls))
        .collect();
    assert_eq!(got, vec![("carol", 3), ("dave", 2)]);
    assert_eq!(both[0].totals.cost, Nanos(3 * 7_500_000));
    // July 1 only: dave first, carol's June calls left out.
    let july = f
        .stores
        .usage
        .user_usage(t, june30 + 1, june30 + 2, None, None, 10)
        .await
        .unwrap();
    let got: Vec<(&str, u64)> = july
        .iter()
        .map(|u| (u.user_id.as_str(), u.totals.calls))
        .collect();
    assert_eq!(got, vec![("dave", 2), ("carol", 1)]);
    assert_eq!(
        f.stores
            .usage
            .user_usage(t, june30, june30 + 2, None, None, 1)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Deletions share the writer's transactions with other work: events of the same tenant or
/// user queued in the same commit must not come back through the counts written at commit.
pub async fn deletions_in_the_same_commit_as_new_events_leave_exact_counts(backend: Open) {
    let f = open(backend);
    let (doomed, kept) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let day = 86_400_000_000;
    for round in 0..5 {
        // A new day each round: its daily count exists only in memory until the commit.
        let batch = |user: &'static str| -> Vec<NewEvent> {
            (0..20)
                .map(|i| {
                    event(
                        T0 + round * day + i,
                        Some(user),
                        Some("p"),
                        EventType::UserAction,
                        "x",
                    )
                })
                .collect()
        };
        // All queued at once: the writer takes them into one transaction.
        let ev = &f.stores.events;
        let (a, b, c, gone, d, e) = tokio::join!(
            ev.insert_events(doomed, None, batch("u1")),
            ev.insert_events(kept, None, batch("u1")),
            ev.insert_events(kept, None, batch("u2")),
            async {
                if round == 0 {
                    f.stores.deletion.delete_tenant(doomed).await.map(|_| ())
                } else {
                    f.stores
                        .deletion
                        .erase_tracked_user(kept, "u1")
                        .await
                        .map(|_| ())
                }
            },
            ev.insert_events(kept, None, batch("u1")),
            ev.insert_events(kept, None, batch("u2")),
        );
        gone.unwrap();
        // The doomed tenant's late batches are refused once it is gone; the rest land.
        for r in [b, c, d, e] {
            r.unwrap();
        }
        let _ = a;
        assert_eq!(f.stores.events.event_count(doomed).await.unwrap(), 0);
        // Operations run in the order they were queued, however they are grouped into
        // commits: after an erasure of u1 only the batch queued after it is left of u1.
        let u1 = if round == 0 { 40 } else { 20 };
        let expected = u1 + 40 * (round as u64 + 1);
        let (counted, rows) = f
            .stores
            .events
            .list_activities(kept, &ActivityFilter::default(), 0, 1_000)
            .await
            .unwrap();
        assert_eq!(
            (counted, rows.len() as u64),
            (expected, expected),
            "round {round}"
        );
        assert_eq!(f.stores.events.event_count(kept).await.unwrap(), expected);
    }
}

/// Writes authenticated just before their tenant was deleted leave nothing behind.
pub async fn writes_for_a_deleted_tenant_are_refused(backend: Open) {
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    f.stores.deletion.delete_tenant(t).await.unwrap();
    let gone = |r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    };
    gone(
        f.stores
            .events
            .insert_events(
                t,
                None,
                vec![event(T0, Some("u"), None, EventType::UserAction, "x")],
            )
            .await
            .map(|_| ()),
    );
    gone(
        f.stores
            .usage
            .insert_usage(t, vec![usage(None, "2025-07-01T10:00:00Z")].into())
            .await
            .map(|_| ()),
    );
    let profile = UserProfile {
        user_id: "u".into(),
        email: None,
        full_name: None,
        role: None,
        created_at: T0,
        updated_at: T0,
    };
    gone(f.stores.profiles.upsert_user(t, profile).await.map(|_| ()));
    let price = tally_core::pricing::ModelPrice {
        provider: "openai".into(),
        model: "gpt-4o".into(),
        effective_from: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        input_per_mtok: tally_core::pricing::Nanos(1),
        output_per_mtok: tally_core::pricing::Nanos(1),
        cached_input_per_mtok: None,
    };
    gone(f.stores.usage.put_price_override(t, price).await);
    gone(
        f.stores
            .quotas
            .replace_quota_rules(t, Vec::new(), T0)
            .await
            .map(|_| ()),
    );
    assert!(f.stores.identity.get_tenant(t).await.unwrap().is_none());
}

/// Each record keeps the key it was made with; a key-scoped quota's window sums that
/// key's calls of the tenant (over every model, across days of the window), and a rule
/// naming a key is stored and read back with it, beside an otherwise identical rule for
/// another key.
pub async fn usage_is_summed_per_api_key_for_key_scoped_quotas(backend: Open) {
    use tally_core::quota::{QuotaMetric, QuotaRule, QuotaScope, QuotaWindow};
    use tally_core::ApiKeyId;
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let (a, b) = (ApiKeyId::generate(), ApiKeyId::generate());
    let with = |key: Option<ApiKeyId>, i: u32, model: &str, ts: &str| {
        let mut r = call(i, "u1", "c1", model, ts);
        r.api_key_id = key;
        r
    };
    let day = 1_718_841_600_000_000; // 2024-06-20T00:00:00Z
    f.stores
        .usage
        .insert_usage(
            t,
            vec![
                with(Some(a), 1, "gpt-4o", "2024-06-20T10:00:00Z"),
                with(Some(a), 2, "gpt-4o-mini", "2024-06-20T11:00:00Z"),
                with(Some(a), 3, "gpt-4o", "2024-06-21T09:00:00Z"),
                with(Some(b), 4, "gpt-4o", "2024-06-20T12:00:00Z"),
                with(None, 5, "gpt-4o", "2024-06-20T13:00:00Z"),
            ]
            .into(),
        )
        .await
        .unwrap();
    // The other tenant's calls with key a (an impossible id clash) stay its own.
    f.stores
        .usage
        .insert_usage(
            other,
            vec![with(Some(a), 6, "gpt-4o", "2024-06-20T10:00:00Z")].into(),
        )
        .await
        .unwrap();
    let key = |k: ApiKeyId| QuotaScope {
        api_key_id: Some(k),
        ..Default::default()
    };
    let (_, usage) = f
        .stores
        .quotas
        .quota_usage(
            t,
            vec![
                (key(a), day, day + time::MICROS_PER_DAY),
                (key(a), day, day + 2 * time::MICROS_PER_DAY),
                (key(b), day, day + time::MICROS_PER_DAY),
                (QuotaScope::default(), day, day + time::MICROS_PER_DAY),
            ],
        )
        .await
        .unwrap();
    let calls: Vec<u64> = usage.iter().map(|u| u.calls).collect();
    assert_eq!(calls, vec![2, 3, 1, 4]);
    // gpt-4o on 2024-06-20 ($5/$15 per million), 1,000 in / 500 out: $0.0125; gpt-4o-mini
    // had no price before its release in July: $0.
    assert_eq!(usage[0].cost, tally_core::pricing::Nanos(12_500_000));
    assert_eq!(usage[0].tokens, 3000);
    let (_, listed) = f
        .stores
        .usage
        .list_usage(t, Default::default(), 0, 10, 100)
        .await
        .unwrap();
    let keys: Vec<Option<ApiKeyId>> = {
        let mut r: Vec<_> = listed.iter().map(|s| s.record.api_key_id).collect();
        r.sort();
        r
    };
    let mut expected = vec![None, Some(a), Some(a), Some(a), Some(b)];
    expected.sort();
    assert_eq!(keys, expected);

    let rule = |k: ApiKeyId| QuotaRule {
        id: 0,
        name: format!("key {k}"),
        metric: QuotaMetric::CostUsd,
        window: QuotaWindow::Day,
        limit: 10,
        scope: key(k),
        warn_percent: 80,
        enforce: true,
    };
    let stored = f
        .stores
        .quotas
        .replace_quota_rules(t, vec![rule(a), rule(b)], 1)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    let read = f.stores.quotas.quota_rules(t).await.unwrap();
    let scopes: Vec<Option<ApiKeyId>> = read.iter().map(|r| r.scope.api_key_id).collect();
    assert_eq!(scopes, vec![Some(a), Some(b)]);
    // Replacing keeps each key's rule (and id).
    let again = f
        .stores
        .quotas
        .replace_quota_rules(t, vec![rule(b)], 2)
        .await
        .unwrap();
    assert_eq!(again[0].id, stored[1].id);
}

/// The commit contract the quota tracker relies on: each insert says which commit holds
/// it, commits increase in the order they are made (across a restart too), and a snapshot
/// names the last commit it holds, counting exactly the records of that commit and
/// earlier ones.
pub async fn snapshots_say_which_commits_they_hold(backend: Open) {
    use tally_core::quota::QuotaScope;
    let f = open(backend);
    let t = tenant(&f.stores, None).await;
    let day = 1_718_841_600_000_000; // 2024-06-20T00:00:00Z
    let scope = || vec![(QuotaScope::default(), day, day + time::MICROS_PER_DAY)];
    let calls = |snapshot: &[tally_core::quota::WindowUsage]| snapshot[0].calls;
    let (empty, usage) = f.stores.quotas.quota_usage(t, scope()).await.unwrap();
    assert_eq!(calls(&usage), 0);
    let first = f
        .stores
        .usage
        .insert_usage(t, vec![usage_at("2024-06-20T10:00:00Z")].into())
        .await
        .unwrap()
        .commit;
    assert!(first > empty, "{first:?} after {empty:?}");
    let (held, usage) = f.stores.quotas.quota_usage(t, scope()).await.unwrap();
    assert!(held >= first);
    assert_eq!(calls(&usage), 1);
    let second = f
        .stores
        .usage
        .insert_usage(t, vec![usage_at("2024-06-20T11:00:00Z")].into())
        .await
        .unwrap()
        .commit;
    assert!(
        second > held,
        "a later commit is after the snapshot: {second:?}, {held:?}"
    );
    let (held, usage) = f.stores.quotas.quota_usage(t, scope()).await.unwrap();
    assert!(held >= second);
    assert_eq!(calls(&usage), 2);
    f.close().await;
    let reopened = f.reopen();
    let third = reopened
        .usage
        .insert_usage(t, vec![usage_at("2024-06-20T12:00:00Z")].into())
        .await
        .unwrap()
        .commit;
    assert!(third > second, "commits go on increasing after a restart");
    close(&reopened).await;
}

fn usage_at(ts: &str) -> tally_core::usage::UsageRecord {
    usage(None, ts)
}

/// Usage totals pending in one transaction are checked against the stored ones before an
/// insert joins them: of two calls whose costs fit a 64-bit total alone but not together,
/// queued into one transaction, one is stored and the other refused with a conflict, and
/// a third caller in the same transaction is unaffected.
pub async fn a_cost_total_past_sixty_four_bits_is_refused_for_its_caller_alone(backend: Open) {
    let f = open(backend);
    let (t, other) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let half = tally_core::pricing::Nanos(i128::from(i64::MAX / 2 + 1));
    let big = || {
        let mut r = usage(None, "2024-06-20T14:00:00Z");
        r.cost = half;
        vec![r].into()
    };
    let u = &f.stores.usage;
    let (a, b, c) = tokio::join!(
        u.insert_usage(t, big()),
        u.insert_usage(t, big()),
        u.insert_usage(other, vec![usage(None, "2024-06-20T14:00:00Z")].into()),
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
        .count();
    assert_eq!(refused, 1, "{a:?} {b:?}");
    c.unwrap();
    assert_eq!(f.stores.usage.usage_count(t).await.unwrap(), 1);
    let rollups = f
        .stores
        .usage
        .usage_rollups(t, tally_core::usage::Granularity::Day, 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(rollups.len(), 1);
    assert_eq!((rollups[0].calls, rollups[0].cost), (1, half));
    // Nothing pending was lost for the other tenant either.
    assert_eq!(f.stores.usage.usage_count(other).await.unwrap(), 1);

    // Two models (two rollup rows that each fit) made with one key: the key's day is the
    // total past 64 bits, and the second call is refused.
    let third = tenant(&f.stores, None).await;
    let key = tally_core::ApiKeyId::generate();
    let keyed = |model: &str| {
        let mut r = usage(None, "2024-06-20T14:00:00Z");
        r.model = model.into();
        r.cost = half;
        r.api_key_id = Some(key);
        // The key's row alone is shared (no conversation sums the two).
        r.conversation_id = None;
        vec![r].into()
    };
    u.insert_usage(third, keyed("gpt-4o")).await.unwrap();
    let second = u.insert_usage(third, keyed("o3")).await;
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
    assert_eq!(f.stores.usage.usage_count(third).await.unwrap(), 1);
}

/// A tenant deleted in the transaction that also holds its new usage leaves no rollup,
/// per-user or conversation row behind: what was pending for it is dropped with it.
pub async fn deletions_in_the_same_commit_as_new_usage_leave_no_rows(backend: Open) {
    let f = open(backend);
    for round in 0..3 {
        let (doomed, kept) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
        let calls = |user: &str| -> std::sync::Arc<[tally_core::usage::UsageRecord]> {
            (0..5)
                .map(|i| call(i, user, "c-1", "gpt-4o", "2024-06-20T14:00:00Z"))
                .collect::<Vec<_>>()
                .into()
        };
        let u = &f.stores.usage;
        // Queued before the deletion: the doomed tenant's calls, or u1's of the kept one.
        let target = if round == 0 { doomed } else { kept };
        let (a, gone, b) = tokio::join!(
            u.insert_usage(target, calls("u1")),
            async {
                if round == 0 {
                    f.stores.deletion.delete_tenant(doomed).await.map(|_| ())
                } else {
                    f.stores
                        .deletion
                        .erase_tracked_user(kept, "u1")
                        .await
                        .map(|_| ())
                }
            },
            u.insert_usage(kept, calls("u2")),
        );
        gone.unwrap();
        b.unwrap();
        let _ = a;
        if round == 0 {
            let rollups = u
                .usage_rollups(doomed, tally_core::usage::Granularity::Minute, 0, i64::MAX)
                .await
                .unwrap();
            assert!(rollups.is_empty(), "rollups came back: {rollups:?}");
            let users = u.user_usage(doomed, JUNE_20, JUNE_20 + 1, None, None, 10);
            assert!(users.await.unwrap().is_empty());
            assert!(u
                .conversation(doomed, "c-1".into())
                .await
                .unwrap()
                .is_none());
        }
        let users = u
            .user_usage(kept, JUNE_20, JUNE_20 + 1, None, None, 10)
            .await
            .unwrap();
        assert_eq!(
            users.iter().map(|x| x.user_id.as_str()).collect::<Vec<_>>(),
            vec!["u2"],
            "round {round}"
        );
        assert_eq!(users[0].totals.calls, 5);
    }
}

/// 2024-06-20, in days since the epoch.
const JUNE_20: i64 = 19_894;

fn credential(name: &str, sealed: &[u8]) -> tally_core::credential::StoredCredential {
    tally_core::credential::StoredCredential {
        id: 0,
        name: name.into(),
        kind: tally_core::credential::ProviderKind::OpenaiCompatible,
        base_url: Some("http://127.0.0.1:9/v1".into()),
        sealed: sealed.to_vec(),
        key_version: 1,
        masked: "sk-…abcd".into(),
        models: vec!["llama3".into()],
        weight: 3,
        created_at: T0,
        updated_at: T0,
    }
}

pub async fn credentials_upsert_by_name_stay_in_their_tenant_and_reseal_together(backend: Open) {
    let f = open(backend);
    let (a, b) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let g = &f.stores.gateway;
    let first = g
        .put_credential(a, credential("local", b"one"))
        .await
        .unwrap();
    assert!(first.id > 0);
    assert_eq!(first.models, ["llama3"]);
    assert_eq!(first.weight, 3);
    let mut again = credential("local", b"two");
    again.updated_at = T0 + 5;
    again.created_at = T0 + 5;
    let second = g.put_credential(a, again).await.unwrap();
    assert_eq!(second.id, first.id, "same name, same credential");
    assert_eq!(second.sealed, b"two");
    assert_eq!((second.created_at, second.updated_at), (T0, T0 + 5));
    g.put_credential(b, credential("local", b"bees"))
        .await
        .unwrap();
    let listed = g.credentials(a).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sealed, b"two", "tenant b's credential is not a's");

    let all = g.all_credentials().await.unwrap();
    assert_eq!(all.len(), 2);
    let resealed: Vec<_> = all
        .iter()
        .map(|(t, c)| (*t, c.id, [c.sealed.as_slice(), b"!"].concat(), 2))
        .collect();
    g.reseal_credentials(resealed).await.unwrap();
    let after = g.credentials(b).await.unwrap();
    assert_eq!(
        (after[0].sealed.as_slice(), after[0].key_version),
        (&b"bees!"[..], 2)
    );

    assert!(!g.delete_credential(a, "nope".into()).await.unwrap());
    assert!(g.delete_credential(a, "local".into()).await.unwrap());
    assert!(g.credentials(a).await.unwrap().is_empty());
    assert_eq!(g.credentials(b).await.unwrap().len(), 1);
}

pub async fn gateway_settings_replace_and_go_with_their_tenant(backend: Open) {
    let f = open(backend);
    let (a, b) = (tenant(&f.stores, None).await, tenant(&f.stores, None).await);
    let g = &f.stores.gateway;
    assert_eq!(g.gateway_settings(a).await.unwrap(), None);
    g.put_gateway_settings(a, "{\"x\":1}".into(), T0)
        .await
        .unwrap();
    g.put_gateway_settings(a, "{\"x\":2}".into(), T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        g.gateway_settings(a).await.unwrap().as_deref(),
        Some("{\"x\":2}")
    );
    assert_eq!(g.gateway_settings(b).await.unwrap(), None);
    g.put_credential(a, credential("local", b"k"))
        .await
        .unwrap();
    f.stores.deletion.delete_tenant(a).await.unwrap();
    assert_eq!(g.gateway_settings(a).await.unwrap(), None);
    assert!(g.all_credentials().await.unwrap().is_empty());
}
