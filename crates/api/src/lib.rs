//! Cutover's HTTP API (axum). Handlers turn requests into commands, run them through the
//! event store, and answer with state read back from the read models in the command's transaction.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::middleware;
use axum::Router;
use cutover_core::auth::Tokens;
use cutover_core::store::EventStore;
use cutover_projections::follow;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

mod answer;
mod auth;
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

use error::ApiError;
use feed::FeedSignals;
use tokio::sync::watch;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: EventStore,
    /// A direct connection to the primary: the admin routes, metrics, LISTEN and rebuilds.
    pub session: sqlx::PgPool,
    /// Where GETs are served.
    pub reads: reads::Reads,
    pub feed: FeedSignals,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// The bearer tokens requests need; `None` accepts every request (loopback only).
    pub tokens: Option<Arc<Tokens>>,
    pub metrics: metrics::Metrics,
    /// How a rebuild's swap treats the readers that hold it up.
    pub swap: cutover_engine::rebuild::SwapArgs,
    /// The old system's database this server follows (`--legacy-url`), if any.
    pub old_system: Option<follow::OldSystem>,
}

/// Default of [`AppState::idempotency_ttl`]: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl AppState {
    /// The state of a server on `store`, with `session` a direct connection to the primary,
    /// and reads served by `reads`; starts listening for appended events. Live event streams
    /// end when `shutdown` turns true.
    pub fn new(
        store: EventStore,
        session: sqlx::PgPool,
        reads: reads::Reads,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let feed = FeedSignals::start(&store, &session, shutdown.clone());
        let state = Self {
            metrics: metrics::Metrics::new(&store, &reads),
            store,
            session,
            reads,
            feed,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            tokens: None,
            swap: cutover_engine::rebuild::SwapArgs::default(),
            old_system: None,
        };
        tokio::spawn(metrics::sample(state.clone(), shutdown));
        state
    }

    /// Follows the old system's database at `url` from this server: every domain `follows`
    /// lists, in turns with any other follower of it, until `stopping` turns true.
    ///
    /// # Errors
    /// A URL that does not parse.
    pub fn follow_old_system(
        &mut self,
        url: &str,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), follow::FollowError> {
        let old_system = follow::OldSystem::open(&self.session, url)?;
        let follow::OldSystem { store, old } = old_system.clone();
        tokio::spawn(async move {
            let stop = async move {
                // A closed channel is a server gone: stop too.
                let _ = stopping.wait_for(|stopped| *stopped).await;
            };
            let domains = follow::Domains::Listed {
                batch: follow::DEFAULT_BATCH.into(),
            };
            let report = |followed: &follow::Follow, progress: follow::Progress| {
                tracing::debug!(
                    domain = %followed.domain,
                    copied = progress.copied,
                    applied = progress.applied,
                    refused = progress.refused,
                    lsn = %followed.lsn,
                    "followed the old system"
                );
                Ok::<_, follow::FollowError>(())
            };
            if let Err(e) = follow::keep_following(&store, &old, domains, false, stop, report).await
            {
                tracing::error!(error = %e, "following the old system stopped");
            }
        });
        self.old_system = Some(old_system);
        Ok(())
    }
}

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
        .merge(metrics::router())
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
            metrics::track,
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
