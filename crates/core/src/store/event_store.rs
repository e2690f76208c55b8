//! The event store: what a process keeps to run commands (its pools, projectors, caches and
//! queues) and what a command is.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cqrs_es::Aggregate;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use cutover_engine::projection::Projector;
use cutover_runtime::database::Route;

use super::cache::{AggregateCache, InlineProjections};
use super::lanes::Lanes;
use super::seats::Seats;

/// Appends events and runs the inline projectors in the same transaction. Clones share it
/// (one `Arc`: handlers clone it per request).
#[derive(Clone)]
pub struct EventStore {
    pub(super) inner: Arc<Inner>,
}

/// What an [`EventStore`]'s clones share.
#[derive(Clone)]
pub(super) struct Inner {
    pub(super) pool: PgPool,
    pub(super) route: Route,
    pub(super) projectors: Arc<[Arc<dyn Projector>]>,
    pub(super) max_retries: u32,
    pub(super) cache: Arc<AggregateCache>,
    pub(super) inline: Arc<InlineProjections>,
    pub(super) lanes: Arc<Lanes>,
    pub(super) seats: Arc<Seats>,
    /// Whether a command runs alone in one statement (see `single`): one at a time.
    pub(super) single: Arc<AtomicBool>,
    pub(super) metrics: StoreMetrics,
    pub(super) appended: Arc<watch::Sender<u64>>,
}

/// What the command path counts, for whoever exposes it (the API's `/metrics`). Clones share
/// the counts.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// Commands re-run after losing an append race.
    pub retries: Counter,
    /// Commands that lost every attempt (the client got a 409).
    pub conflicts: Counter,
    /// Commands answered from their idempotency key, without running.
    pub replays: Counter,
    /// Events committed.
    pub events_appended: Counter,
    /// Transactions shared by commands on different aggregates that committed.
    pub shared_transactions: Counter,
    /// Commands committed in them.
    pub shared_commands: Counter,
    /// Shared transactions rolled back before their commit (their commands ran again alone).
    pub shared_rollbacks: Counter,
}

impl EventStore {
    /// `max_retries`: how many times a command is re-run after losing an append race.
    pub fn new(pool: PgPool, projectors: Vec<Arc<dyn Projector>>, max_retries: u32) -> Self {
        let inner = Inner {
            pool,
            route: Route::Direct,
            projectors: projectors.into(),
            max_retries,
            cache: Arc::default(),
            inline: Arc::default(),
            lanes: Arc::default(),
            seats: Arc::default(),
            single: Arc::default(),
            metrics: StoreMetrics::default(),
            appended: Arc::new(watch::channel(0).0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The store on `self`'s pool reached by `route` (through a transaction pooler, each
    /// transaction sets its statement timeout itself).
    pub fn on_route(self, route: Route) -> Self {
        let inner = Inner {
            route,
            ..(*self.inner).clone()
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Changes after every commit of this store that appended events (the feed's wake-up; no
    /// trigger in the database notifies, so that commits are not serialised by `NOTIFY`).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn projectors(&self) -> &[Arc<dyn Projector>] {
        &self.inner.projectors
    }
}

/// What a command is: the aggregate, the command, and what it is run with.
pub struct Request<'a, A: Aggregate> {
    pub aggregate_id: &'a str,
    pub command: A::Command,
    pub services: &'a A::Services,
    /// Run only if the aggregate is at this version (`If-Match`).
    pub expected_version: Option<i64>,
    pub metadata: &'a Value,
    /// The aggregate id was made for this command (a new collection's): its stream is empty,
    /// so it is not read before the append.
    pub new_aggregate: bool,
    /// The command's answer is read from the rows its statement writes
    /// ([`super::Committed::written`]), never from others: it may then run alone in one
    /// statement, outside a transaction.
    pub answered_from_rows: bool,
}

impl<A: Aggregate> Clone for Request<'_, A>
where
    A::Command: Clone,
{
    fn clone(&self) -> Self {
        Self {
            command: self.command.clone(),
            ..*self
        }
    }
}
