//! Cutover's HTTP API (axum). Handlers turn requests into commands, run them through the
//! event store, and answer with state read back from the read models in the command's transaction.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use cutover_core::auth::Tokens;
use cutover_core::store::EventStore;
use tower_http::trace::TraceLayer;

mod auth;
pub mod config;
pub mod error;
mod extract;
mod feed;
pub mod openapi;
mod routes;

use error::ApiError;
use feed::FeedSignals;
use tokio::sync::watch;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: EventStore,
    pub feed: FeedSignals,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// The bearer tokens requests need; `None` accepts every request (loopback only).
    pub tokens: Option<Arc<Tokens>>,
}

/// Default of [`AppState::idempotency_ttl`]: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl AppState {
    /// The state of a server on `store`; starts listening for appended events. Live event
    /// streams end when `shutdown` turns true.
    pub fn new(store: EventStore, shutdown: watch::Receiver<bool>) -> Self {
        let feed = FeedSignals::start(store.pool().clone(), shutdown);
        Self {
            store,
            feed,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            tokens: None,
        }
    }
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(routes::health::router())
        .merge(routes::collections::router())
        .merge(routes::batches::router())
        .merge(routes::competencies::router())
        .merge(routes::events::router())
        .merge(routes::admin::router())
        .merge(openapi::router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(error::BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
