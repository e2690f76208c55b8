//! A command alone in one statement: on a quiet store (no other command alone in flight, none
//! waiting for or in a shared transaction), a command whose answer is read from the rows its
//! statement writes ([`Request::answered_from_rows`]) is decided in memory on its aggregate as
//! the cache holds it (a new one as it starts; one neither cached nor new is read first, outside
//! any transaction) and sent as one statement, outside any transaction: the append statement of
//! [`super::stream`], which Postgres runs and commits as a whole. One round trip (two for an
//! aggregate read first), no `BEGIN`, no advisory lock, no read-back, no `COMMIT`. Commands
//! that arrive meanwhile share transactions ([`super::shared`]): each command alone commits
//! (and flushes the WAL) by itself, and under load that costs more than it saves (measured:
//! half the throughput at 16 and 64 connections).
//!
//! Without the advisory locks, the relation locks order it: the statement locks `events` (its
//! first part) when it is bound, before its snapshot is taken, and what must see no append in
//! flight (a rebuild's swap, a retirement, a verification's snapshot, the start of a follow, a
//! repair) locks `events` against row writers as well as taking the append lock
//! ([`cutover_engine::locks::HOLD_APPENDS`]). Two instances appending to one aggregate meet at
//! the events' primary key: the one that loses runs the command again the usual way.
//!
//! Anything else (a key to record, a projection that writes in more than one statement, a
//! refused or version-checked command, a lost race, commands queued for a shared transaction)
//! runs the usual way, in a transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cqrs_es::Aggregate;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};

use super::cache::Kept;
use super::error::{CommandError, Committed};
use super::event_store::{EventStore, Request};
use super::lanes::{Held, Tried, Turn};
use super::stream::{append, load, AppendError};
use cutover_runtime::database::Route;

/// A command that ran alone in one statement: committed, its answer still to be read from what
/// it wrote.
pub(super) struct Done {
    store: EventStore,
    /// The store's one command alone, given up as this one leaves.
    _alone: Alone,
    turn: Option<Turn>,
    conn: PoolConnection<Postgres>,
    /// The aggregate after the command, for the cache.
    state: Option<Box<dyn Kept>>,
    version: i64,
    position: i64,
}

/// The store's one command alone in one statement; given up when dropped.
struct Alone(Arc<AtomicBool>);

impl Drop for Alone {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl EventStore {
    /// Whether `request` may run alone in one statement now: see the module's comment.
    fn alone<A: Aggregate>(&self, request: &Request<'_, A>) -> Option<Alone> {
        let quiet =
            request.answered_from_rows && self.inner.route == Route::Direct && self.seats_idle();
        (quiet
            && self
                .inner
                .single
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then(|| Alone(Arc::clone(&self.inner.single)))
    }

    /// Runs `request` alone in one statement, if the store is quiet and the command appends
    /// (its aggregate as cached, new, or read first); else, or when the statement loses a
    /// race, it runs the usual way.
    pub(super) async fn run_single<A>(
        &self,
        request: &Request<'_, A>,
        turn: Turn,
    ) -> Result<Tried<Done>, CommandError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let id = request.aggregate_id;
        let key = turn.key.clone();
        // Left if this command fails or is cancelled before it is done (its client hung up).
        let mut held = Held::new(&self.inner.lanes, turn);
        let Some(alone) = self.alone(request) else {
            return Ok(held.usual(false));
        };
        let mut conn = self.inner.pool.acquire().await?;
        let start = match self.inner.cache.take::<A>(id) {
            Some(cached) => cached,
            None if request.new_aggregate => (A::default(), 0, 0),
            // Read outside any transaction, as the cache would have kept it: should another
            // writer append meanwhile, the append below loses the race at the events' key.
            None => {
                let loaded = load::<A>(&mut conn, id, None).await?;
                (loaded.aggregate, loaded.version, loaded.position)
            }
        };
        let (aggregate, version, position) = start;
        let Some((aggregate, mut events)) = self
            .decide(request, &key, aggregate, version, position)
            .await
        else {
            return Ok(held.usual(false));
        };
        let inline = self.inner.inline.current(&mut conn).await?;
        match append(
            &mut conn,
            &self.inner.projectors,
            &inline,
            &mut events,
            true,
        )
        .await
        {
            Ok((read_sources, written)) => {
                let (version, position) = events
                    .last()
                    .map_or((version, position), |e| (e.sequence, e.position));
                let done = Done {
                    store: self.clone(),
                    _alone: alone,
                    turn: Some(held.take()),
                    conn,
                    state: Some(Box::new(aggregate)),
                    version,
                    position,
                };
                self.inner
                    .metrics
                    .events_appended
                    .inc_by(events.len() as u64);
                self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
                let committed = Committed {
                    version,
                    position,
                    events,
                    read_sources,
                    written,
                };
                Ok(Tried::Ran(Box::new((done, committed))))
            }
            Err(AppendError::Conflict(_)) => Ok(held.usual(true)),
            Err(AppendError::InlineChanged | AppendError::UnknownProjection(_)) => {
                self.inner.inline.forget();
                Ok(held.usual(false))
            }
            Err(AppendError::NeedsTransaction) => Ok(held.usual(false)),
            Err(AppendError::Database(e)) if is_contention(&e) => Ok(held.usual(true)),
            Err(AppendError::Projection(e)) => Err(e.into()),
            Err(AppendError::Database(e)) => Err(e.into()),
        }
    }
}

/// A deadlock with a swap or a repair that locked `events` meanwhile: nothing was written, and
/// the command runs again the usual way.
fn is_contention(e: &sqlx::Error) -> bool {
    const DEADLOCK_DETECTED: &str = "40P01";
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(DEADLOCK_DETECTED))
}

impl Done {
    /// A connection outside any transaction, to read what the rows written do not show.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Keeps the aggregate in the cache and gives the turn up.
    pub(super) fn leave(mut self) {
        if let (Some(turn), Some(state)) = (self.turn.take(), self.state.take()) {
            self.store
                .inner
                .cache
                .put(&turn.key, state, self.version, self.position);
            self.store.inner.lanes.leave(turn);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        // Committed all the same; the aggregate is read again next time.
        if let Some(turn) = self.turn.take() {
            self.store.inner.lanes.leave(turn);
        }
    }
}
