//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Storage answers reads and the writer accepts work.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let read = state.stores.identity.get_setting("auth.jwt_secret").await;
    let write = state
        .stores
        .identity
        .init_setting("readyz.probe", "ok")
        .await;
    match (read, write) {
        (Ok(_), Ok(_)) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        (r, w) => {
            let error = r
                .err()
                .or(w.err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "error": { "code": "SERVICE_UNAVAILABLE", "message": "storage is not ready", "details": {} } }),
                ),
            )
        }
    }
}
