//! What every handler shares ([`AppState`]), and starting what runs beside them: the feed's
//! signals, the metrics' sampler and following the old system.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use cutover_core::store::EventStore;
use cutover_projections::follow;
use cutover_runtime::auth::Tokens;
use tokio::sync::watch;

use crate::feed::FeedSignals;
use crate::{metrics, reads};

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
        tokio::spawn(metrics::sample(
            state.metrics.clone(),
            state.session.clone(),
            shutdown,
        ));
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

impl FromRef<AppState> for reads::Reads {
    fn from_ref(state: &AppState) -> Self {
        state.reads.clone()
    }
}
