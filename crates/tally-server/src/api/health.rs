//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Storage answers reads and the writer accepts work; lists the background tasks' states.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.stores.ready().await {
        // Background tasks are reported, not judged: a task restarting after a failure
        // does not make storage unready.
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "tasks": state.tasks.snapshot() })),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            // Low free space is the operator's to fix: say so. Anything else stays
            // generic here (the log has it).
            let body = match ApiError::from(error) {
                low @ ApiError::LowSpace {
                    free_bytes,
                    min_free_bytes,
                } => json!({ "error": {
                    "code": "INSUFFICIENT_STORAGE", "message": low.to_string(),
                    "details": { "free_bytes": free_bytes, "min_free_bytes": min_free_bytes } } }),
                _ => {
                    json!({ "error": { "code": "SERVICE_UNAVAILABLE", "message": "storage is not ready", "details": {} } })
                }
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
