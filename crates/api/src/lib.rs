//! Cutover's HTTP API (axum). Handlers turn requests into commands, run them through the
//! event store, and answer with state read back from the read models in the command's transaction.

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::middleware;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

mod answer;
mod auth;
mod bounds;
mod conditional;
pub mod config;
pub mod error;
mod extract;
mod feed;
pub mod metrics;
pub mod openapi;
pub mod reads;
mod routes;
pub mod schemas;
pub mod serve;
pub mod shadow;
mod state;

pub use state::{AppState, DEFAULT_IDEMPOTENCY_TTL};

use error::ApiError;

/// The header that carries a request's id: the client's if it sent one, else a new UUID.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(routes::health::router())
        .merge(routes::collections::router())
        .merge(routes::batches::router())
        .merge(routes::competencies::router())
        .merge(routes::events::router())
        .merge(routes::admin::router())
        .merge(routes::metrics::router())
        .merge(routes::pages::router())
        .merge(openapi::router())
        .layer(middleware::from_fn(conditional::conditional_get))
        .layer(middleware::from_fn(reads::position_header))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(error::BODY_LIMIT))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Each request's log span: method, path and request id.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}
