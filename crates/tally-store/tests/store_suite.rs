//! The store test suite, run against every backend (today SQLite; PostgreSQL adds one
//! line).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod suite;

store_test_suite!(sqlite, crate::suite::open_sqlite);
