//! `GET /health`: 200 when Postgres answers, 503 when it does not.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::AppState;

/// How long the health check waits for Postgres.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

#[utoipa::path(
    get,
    path = "/health",
    operation_id = "getHealth",
    summary = "Check health",
    tag = "health",
    security(()),
    description = "200 when Postgres answers, 503 when not.",
    params(crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "Postgres answers", body = crate::openapi::AnyObject),
        crate::openapi::NotModified,
        (status = 503, description = "Postgres does not answer", body = crate::openapi::AnyObject)
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    // The simple protocol, which a transaction pooler passes as it is.
    let probe = sqlx::raw_sql("SELECT 1").execute(state.store.pool());
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "database": "up"})),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database down");
            unavailable()
        }
        Err(_) => {
            tracing::warn!("health check: database did not answer in time");
            unavailable()
        }
    }
}

fn unavailable() -> (StatusCode, Json<Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "database": "down"})),
    )
}
