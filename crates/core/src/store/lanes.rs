//! The commands of one aggregate in this process: a queue (one holds the turn at a time), and
//! the transaction consecutive ones share while others wait (run by [`super::group`]).

use super::cache::Kept;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_es::Aggregate;
use tokio::sync::watch;

use super::error::{CommandError, Committed, GroupFailure};
use super::stream::load;
use cutover_engine::read_source::ReadSources;

/// The commands of this process on one aggregate, queued: one holds the turn at a time.
#[derive(Default)]
pub(super) struct Lanes {
    pub(super) lanes: Mutex<HashMap<(&'static str, String), Arc<Lane>>>,
}

#[derive(Default)]
pub(super) struct Lane {
    /// Commands waiting for the turn.
    pub(super) waiting: AtomicUsize,
    /// The group left open for the next command, if any.
    pub(super) open: Arc<tokio::sync::Mutex<OpenGroup>>,
    /// Whether a command ever found another on this lane (waiting, or holding the turn):
    /// the aggregate is hot, and its commands use the lane's groups rather than transactions
    /// shared with other aggregates, until the lane is forgotten.
    pub(super) contended: AtomicBool,
}

#[derive(Default)]
pub(super) struct OpenGroup {
    pub(super) open: Option<Box<Group>>,
}

/// A command counted as waiting for the turn, until it gets it or is cancelled.
pub(super) struct Waiting(Arc<Lane>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The turn on one aggregate's lane.
pub(super) struct Turn {
    pub(super) lane: Arc<Lane>,
    pub(super) key: (&'static str, String),
    pub(super) guard: tokio::sync::OwnedMutexGuard<OpenGroup>,
}

impl std::ops::Deref for Turn {
    type Target = OpenGroup;
    fn deref(&self) -> &OpenGroup {
        &self.guard
    }
}

impl std::ops::DerefMut for Turn {
    fn deref_mut(&mut self) -> &mut OpenGroup {
        &mut self.guard
    }
}

impl Lanes {
    /// Waits for the turn on the lane of aggregate `aggregate_id` of `aggregate_type`.
    pub(super) async fn enter(&self, aggregate_type: &'static str, aggregate_id: &str) -> Turn {
        let key = (aggregate_type, aggregate_id.to_owned());
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = lanes.entry(key.clone()).or_default();
            // The map's reference, and any other is a command on the lane.
            if Arc::strong_count(entry) > 1 {
                entry.contended.store(true, Ordering::Relaxed);
            }
            let lane = Arc::clone(entry);
            lane.waiting.fetch_add(1, Ordering::SeqCst);
            lane
        };
        let waiting = Waiting(Arc::clone(&lane));
        let guard = Arc::clone(&lane.open).lock_owned().await;
        drop(waiting);
        Turn { lane, key, guard }
    }

    /// Gives the turn up, and forgets the lane when nobody else is on it.
    pub(super) fn leave(&self, turn: Turn) {
        let Turn { lane, key, guard } = turn;
        drop(guard);
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody waits, nobody holds the turn (they hold the lane first).
        if Arc::strong_count(&lane) == 2 {
            lanes.remove(&key);
        }
    }
}

/// One transaction shared by consecutive commands of one aggregate.
pub(super) struct Group {
    pub(super) tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The aggregate as of the group's last command; `None` when it must be read again.
    pub(super) state: Option<Box<dyn Kept>>,
    pub(super) version: i64,
    pub(super) position: i64,
    pub(super) read_sources: ReadSources,
    /// Commands whose answers wait for this group's commit.
    pub(super) members: usize,
    pub(super) events: u64,
    /// Set once: whether the group committed (or why not).
    pub(super) outcome: Arc<watch::Sender<Option<Result<(), GroupFailure>>>>,
}

impl Group {
    pub(super) fn new(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        Self {
            tx,
            state: None,
            version: 0,
            position: 0,
            read_sources: ReadSources::default(),
            members: 0,
            events: 0,
            outcome: Arc::new(watch::channel(None).0),
        }
    }
}

impl Group {
    /// Reads aggregate `A` from its stream in the group's transaction, starting from `start` (a
    /// state as of some version) or from nothing, with the read sources.
    pub(super) async fn reload<A>(
        &mut self,
        aggregate_id: &str,
        start: Option<(A, i64, i64)>,
    ) -> Result<A, CommandError<A::Error>>
    where
        A: Aggregate,
        A::Error: 'static,
    {
        let loaded = load::<A>(&mut self.tx, aggregate_id, start).await?;
        self.version = loaded.version;
        self.position = loaded.position;
        self.read_sources = loaded.read_sources;
        Ok(loaded.aggregate)
    }

    /// Tells the commands waiting on this group that it will not commit; rolls it back.
    pub(super) fn fail(self, failure: GroupFailure) {
        self.outcome.send_replace(Some(Err(failure)));
    }
}

/// Most commands of one aggregate that share a transaction (each takes a savepoint, and
/// Postgres keeps 64 subtransactions per transaction in shared memory).
pub const MAX_GROUP: usize = 32;

/// A lane's turn, left when dropped unless taken.
pub(super) struct Held<'a> {
    pub(super) lanes: &'a Lanes,
    pub(super) turn: Option<Turn>,
}

impl<'a> Held<'a> {
    /// Holds `turn` of `lanes` until it is taken or dropped.
    pub(super) fn new(lanes: &'a Lanes, turn: Turn) -> Self {
        Self {
            lanes,
            turn: Some(turn),
        }
    }

    pub(super) fn take(&mut self) -> Turn {
        self.turn
            .take()
            .unwrap_or_else(|| unreachable!("a held turn is taken once, as the command moves on"))
    }

    /// The command goes the usual way, on the turn held (`lost_race`: see [`Tried::Usual`]).
    pub(super) fn usual<M>(&mut self, lost_race: bool) -> Tried<M> {
        Tried::Usual {
            turn: self.take(),
            lost_race,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(turn) = self.turn.take() {
            self.lanes.leave(turn);
        }
    }
}

/// How a command's try at a quicker way than its aggregate's own transaction went.
pub(super) enum Tried<M> {
    /// It appended that way (`M` holds what it runs in): read its answer, then leave.
    Ran(Box<(M, Committed)>),
    /// It runs the usual way, on the turn it holds; `lost_race` when its append lost the race
    /// for a sequence number, which counts as an attempt.
    Usual { turn: Turn, lost_race: bool },
}
