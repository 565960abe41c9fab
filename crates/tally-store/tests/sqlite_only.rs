//! Tests of the SQLite backend's own files and threads: the user-index file and its fold,
//! and the write-ahead log. Behaviour every backend shares is in the store suite.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod suite;

use suite::*;
use tally_core::activity::ActivityFilter;
use tally_core::event::{EventType, NewEvent};
use tally_core::time::MICROS_PER_HOUR;
use tally_store::Stores;

fn open() -> Fixture {
    suite::open(open_sqlite)
}

/// Resolves once the user-index file holds the first `events` events (its fold watermark
/// has reached them): waits on what the fold wrote, not on a fixed delay.
async fn folded(path: &std::path::Path, events: i64) {
    let users = path.with_file_name("tally.db.users");
    for _ in 0..1_000 {
        let folded: Option<i64> = rusqlite::Connection::open_with_flags(
            &users,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM user_events", [], |r| r.get(0))
                .ok()
        });
        if folded.is_some_and(|n| n >= events) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the user index did not fold {events} events within 20 s");
}

fn reopen(path: &std::path::Path) -> Stores {
    open_sqlite(path.parent().unwrap())
}

#[tokio::test]
async fn user_listing_is_exact_across_the_user_index_fold_and_a_restart() {
    let f = open();
    let t = tenant(&f.stores, None).await;
    let batch = |base: i64| {
        (0..20)
            .map(|i| event(base + i, Some("u"), Some("p"), EventType::UserAction, "a"))
            .collect::<Vec<_>>()
    };
    f.stores
        .events
        .insert_events(t, None, batch(T0))
        .await
        .unwrap();
    let by_user = ActivityFilter {
        user_id: Some("u".into()),
        ..Default::default()
    };
    // Staged in memory only: still listed and counted.
    let (count, rows) = f
        .stores
        .events
        .list_activities(t, &by_user, 0, 100)
        .await
        .unwrap();
    assert_eq!((count, rows.len()), (20, 20));
    // Once the periodic fold has taken them, add more: half folded, half staged.
    folded(&f.path, 20).await;
    f.stores
        .events
        .insert_events(t, None, batch(T0 + 1_000))
        .await
        .unwrap();
    let (count, rows) = f
        .stores
        .events
        .list_activities(t, &by_user, 5, 10)
        .await
        .unwrap();
    assert_eq!(count, 40);
    let ts: Vec<i64> = rows.iter().map(|r| r.timestamp - T0).collect();
    assert_eq!(ts, (1005..1015).rev().collect::<Vec<_>>());
    let hours = f
        .stores
        .events
        .user_activity(t, "u", None, None)
        .await
        .unwrap();
    assert_eq!(hours.iter().map(|h| h.count).sum::<u64>(), 40);
    assert_eq!(
        hours.len(),
        1,
        "staged and folded counts merge into one row"
    );

    // Simulated crash: the staged part is lost from memory but re-derived from `events`.
    close(&f.stores).await;
    let reopened = reopen(&f.path);
    let (count, rows) = reopened
        .events
        .list_activities(t, &by_user, 0, 100)
        .await
        .unwrap();
    assert_eq!((count, rows.len()), (40, 40));
    let hours = reopened
        .events
        .user_activity(t, "u", None, None)
        .await
        .unwrap();
    assert_eq!(
        hours.iter().map(|h| h.count).sum::<u64>(),
        40,
        "nothing folded twice"
    );
}

#[tokio::test]
async fn a_lost_user_index_file_is_rebuilt_from_the_events() {
    let f = open();
    let t = tenant(&f.stores, None).await;
    f.stores
        .events
        .insert_events(t, None, user_batch(T0, 30))
        .await
        .unwrap();
    close(&f.stores).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = f.path.file_name().unwrap().to_os_string();
        name.push(format!(".users{suffix}"));
        let _ = std::fs::remove_file(f.path.with_file_name(name));
    }
    let stores = reopen(&f.path);
    assert_eq!(user_totals(&stores, t).await, (30, 30, 30));
    close(&stores).await;
}

#[tokio::test]
async fn an_event_folded_by_two_processes_counts_once() {
    let f = open();
    let t = tenant(&f.stores, None).await;
    f.stores
        .events
        .insert_events(t, None, user_batch(T0, 25))
        .await
        .unwrap();
    // A second store on the same files (as `tally admin` opens one while the server runs)
    // folds the first one's staged events during its recovery; the first one folds them
    // again later, together with newer ones, and must not add them twice.
    let other_stores = reopen(&f.path);
    assert_eq!(user_totals(&other_stores, t).await, (25, 25, 25));
    close(&other_stores).await;
    f.stores
        .events
        .insert_events(t, None, user_batch(T0 + MICROS_PER_HOUR, 5))
        .await
        .unwrap();
    close(&f.stores).await;
    let stores = reopen(&f.path);
    assert_eq!(user_totals(&stores, t).await, (30, 30, 30));
    close(&stores).await;
}

#[tokio::test]
async fn a_user_index_ahead_of_a_restored_database_is_rebuilt() {
    let f = open();
    let t = tenant(&f.stores, None).await;
    f.stores
        .events
        .insert_events(t, None, user_batch(T0, 10))
        .await
        .unwrap();
    close(&f.stores).await;
    let backup = f.path.with_file_name("backup.db");
    std::fs::copy(&f.path, &backup).unwrap();
    let stores = reopen(&f.path);
    stores
        .events
        .insert_events(t, None, user_batch(T0 + MICROS_PER_HOUR, 15))
        .await
        .unwrap();
    close(&stores).await;
    // The main database goes back to its backup; the user index still holds 25 events.
    std::fs::copy(&backup, &f.path).unwrap();
    let stores = reopen(&f.path);
    assert_eq!(user_totals(&stores, t).await, (10, 10, 10));
    close(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_restarts_under_continuous_writes() {
    let f = open();
    let t = tenant(&f.stores, None).await;
    let wal = f.path.with_file_name("tally.db-wal");
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(64 * 1024));
    // 640 commits of 640 KiB: 400 MiB through the log, which would hold all of it if it
    // were never started over. Restarted, it stays near 64 MiB plus what is written before
    // the checkpointer's next look (250 ms); the bound leaves room for a fast disk.
    let mut largest = 0;
    for i in 0..640i64 {
        let batch: Vec<NewEvent> = (0..10)
            .map(|j| NewEvent {
                properties: big.clone(),
                ..event(T0 + i * 10 + j, None, None, EventType::PageView, "p")
            })
            .collect();
        f.stores.events.insert_events(t, None, batch).await.unwrap();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert_eq!(f.stores.events.event_count(t).await.unwrap(), 6400);
    assert!(
        largest < 300 * 1024 * 1024,
        "the log grew to {} MiB",
        largest / (1024 * 1024)
    );
    close(&f.stores).await;
}

#[tokio::test]
async fn a_user_index_older_than_the_pruned_commits_is_rebuilt() {
    let f = open();
    let t = tenant(&f.stores, None).await;
    f.stores
        .events
        .insert_events(t, None, user_batch(T0, 10))
        .await
        .unwrap();
    close(&f.stores).await;
    // An old copy of the index, folded up to these 10 events only.
    let copy = |from: &str, to: &str| {
        for suffix in ["", "-wal"] {
            let (a, b) = (format!("{from}{suffix}"), format!("{to}{suffix}"));
            let _ = std::fs::remove_file(f.path.with_file_name(&b));
            if f.path.with_file_name(&a).exists() {
                std::fs::copy(f.path.with_file_name(&a), f.path.with_file_name(&b)).unwrap();
            }
        }
        let _ = std::fs::remove_file(f.path.with_file_name(format!("{to}-shm")));
    };
    copy("tally.db.users", "old.users");
    let stores = reopen(&f.path);
    // Enough commits, one event each, for the writer to prune folded ones.
    for i in 0..150 {
        let one = user_batch(T0 + MICROS_PER_HOUR + i * 1_000_000, 1);
        stores.events.insert_events(t, None, one).await.unwrap();
    }
    folded(&f.path, 160).await;
    for i in 0..300 {
        let one = user_batch(T0 + 2 * MICROS_PER_HOUR + i * 1_000_000, 1);
        stores.events.insert_events(t, None, one).await.unwrap();
    }
    close(&stores).await;
    // The old index comes back: the commits it lacks are no longer all named in
    // `event_commits`, so it is rebuilt from the events instead of completed.
    copy("old.users", "tally.db.users");
    let stores = reopen(&f.path);
    assert_eq!(user_totals(&stores, t).await, (460, 460, 460));
    close(&stores).await;
}
