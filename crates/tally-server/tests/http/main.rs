//! Tests through the whole HTTP stack (routing, layers, extractors, services, SQLite),
//! driven in-process with `tower::ServiceExt::oneshot`.

mod activities;
mod auth;
mod edges;
mod support;
mod tracking;
