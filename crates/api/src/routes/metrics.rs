//! The routes of the server's own figures: `/metrics` for Prometheus, `/admin/activity` for
//! the console, and the middleware that counts and times every request.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cutover_engine::log;
use serde::Serialize;

use crate::error::ApiError;
use crate::metrics::Sample;
use crate::state::AppState;

/// Counts and times every request by the route it matched.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.record(
        &method,
        route.as_deref(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/admin/activity", get(activity))
}

/// The metrics in the OpenMetrics text format, or in the Prometheus text format (0.0.4) when
/// the client asks for `text/plain` and not for OpenMetrics.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    summary = "Scrape metrics",
    tag = "operations",
    description = "Prometheus metrics: the OpenMetrics text format, or the Prometheus text \
                   format 0.0.4 when `Accept` asks for `text/plain` (and not for \
                   `application/openmetrics-text`). Needs a read token when tokens are \
                   configured.",
    responses(
        (status = 200, description = "the metrics", content(
            (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
            (String = "text/plain; version=0.0.4; charset=utf-8"),
        )),
        crate::schemas::Errors
    )
)]
pub async fn scrape(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (content_type, body) = state
        .metrics
        .exposition(&state.session, &state.store, accept)
        .await?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response())
}

/// The console's history, and where the log ends (to follow the feed from now on).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Activity {
    /// The highest position in the log (0 when empty): pass it as `after` to the feed.
    pub log_head: i64,
    /// The transaction that holds the log's horizon back, if one does: `{pid, age_seconds,
    /// application, query}` (the feed and rebuilds' catch-up wait for it).
    pub horizon_blocker: Option<log::HorizonBlocker>,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

#[utoipa::path(
    get,
    path = "/admin/activity",
    operation_id = "getActivity",
    summary = "Get recent activity",
    tag = "admin",
    description = "The last ten minutes of this server's command rate and the running \
                   rebuilds' event rate, a point every two seconds, and the log's head.",
    responses(
        (status = 200, description = "the history", body = Activity),
        crate::schemas::Errors
    )
)]
pub async fn activity(State(state): State<AppState>) -> Result<axum::Json<Activity>, ApiError> {
    let log_head: i64 =
        sqlx::query_scalar!(r#"SELECT coalesce(max(position), 0) AS "head!" FROM events"#)
            .fetch_one(&state.session)
            .await?;
    let horizon_blocker = log::horizon_blocker(&state.session).await?;
    let samples = state.metrics.samples();
    Ok(axum::Json(Activity {
        log_head,
        horizon_blocker,
        samples,
    }))
}
