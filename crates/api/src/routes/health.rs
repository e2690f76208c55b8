//! `GET /health`: 200 when Postgres answers, 503 when it does not.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::state::AppState;

/// How long the health check waits for Postgres.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// What the health check found: `ok` and `up` when Postgres answers, `unavailable` and
/// `down` when not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    status: HealthStatus,
    database: DatabaseStatus,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum HealthStatus {
    Ok,
    Unavailable,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum DatabaseStatus {
    Up,
    Down,
}

#[utoipa::path(
    get,
    path = "/health",
    operation_id = "getHealth",
    summary = "Check health",
    tag = "health",
    security(()),
    description = "200 when Postgres answers, 503 when not.",
    params(crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "Postgres answers", body = Health),
        crate::schemas::NotModified,
        (status = 503, description = "Postgres does not answer", body = Health)
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    // The simple protocol, which a transaction pooler passes as it is.
    let probe = sqlx::raw_sql("SELECT 1").execute(state.store.pool());
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Json(Health {
                status: HealthStatus::Ok,
                database: DatabaseStatus::Up,
            }),
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

fn unavailable() -> (StatusCode, Json<Health>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: HealthStatus::Unavailable,
            database: DatabaseStatus::Down,
        }),
    )
}
