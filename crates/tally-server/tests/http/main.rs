//! Tests through the whole HTTP stack (routing, layers, extractors, services, SQLite),
//! driven in-process with `tower::ServiceExt::oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod activities;
mod analytics;
mod auth;
mod contract;
mod deletion;
mod demo;
mod edges;
mod gateway;
mod headroom;
mod numbers;
mod quotas;
mod sessions;
mod support;
mod tracking;
mod usage;
