//! The Postgres event store and the command path.
//!
//! A command runs in one transaction: take the aggregate's advisory lock, load its events,
//! let the aggregate decide, append the new events (postgres-es's `events` layout plus a global
//! `position`, the committing transaction id and `recorded_at`), run every inline projector on
//! them, commit. Either all of that commits or none of it does. cqrs-es's own
//! `CqrsFramework` is not used because it updates views only after its commit.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;

use crate::projection::{project_all, ProjectionError, Projector};
use crate::read_source::ReadSources;

/// One event as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global position: unique, handed out at insert time (not commit time).
    pub position: i64,
    /// Id of the transaction that appended the event (`xid8`, as a number).
    pub transaction_id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event; starts at 1.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Decodes the payload into the aggregate's event type.
    ///
    /// # Errors
    /// The payload does not match the event type's shape.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        E::deserialize(&self.payload)
    }
}

/// How a command ended when it did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// The client demanded a version (`If-Match`) that is not the current one.
    #[error("expected version {expected}, but the current version is {actual}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// Other writers kept winning the race for the next sequence number.
    #[error("gave up after {attempts} attempts: other writers kept appending to this aggregate")]
    Conflict { attempts: u32 },
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(
        "a stored event of {aggregate_type} {aggregate_id} at sequence {sequence} cannot be read"
    )]
    CorruptEvent {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        #[source]
        source: serde_json::Error,
    },
    /// The idempotency key was used before with another request.
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    /// A bug of the server, not of the request: an event the domain made could not be
    /// serialized.
    #[error("an event could not be serialized")]
    Serialize(#[source] serde_json::Error),
    /// A bug of the server, not of the request: the store met a state its own rules exclude.
    #[error("the event store broke one of its own rules: {0}")]
    Broken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A stored event of an older version that no upcaster turns into the current shape.
    #[error(transparent)]
    Upcast(#[from] crate::upcast::UpcastError),
}

/// A command's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The transaction this command shared with other commands of its aggregate failed
    /// elsewhere (its commit, or another command's undo); nothing of it was committed.
    #[error(
        "the transaction this command shared with other commands of its aggregate did not \
         commit: {}", .0.why
    )]
    SharedTransaction(GroupFailure),
}

/// Why a shared transaction did not commit, as its commands are told.
#[derive(Debug, Clone)]
pub struct GroupFailure {
    pub why: String,
    /// Whether the cause was the database being out of reach (see
    /// [`crate::database::is_unreachable`]) rather than a fault of the server.
    pub unreachable: bool,
}

impl GroupFailure {
    fn of(e: &sqlx::Error) -> Self {
        Self {
            why: e.to_string(),
            unreachable: crate::database::is_unreachable(e),
        }
    }

    fn fault(why: &str) -> Self {
        Self {
            why: why.to_owned(),
            unreachable: false,
        }
    }
}

/// What a committed (or accepted no-op) command reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The aggregate's version (the sequence of its last event).
    pub version: i64,
    /// The global position of the aggregate's last event.
    pub position: i64,
    /// The events this command appended; empty when the command changed nothing.
    pub events: Vec<StoredEvent>,
    /// Every domain's read source, as read after the command's locks.
    pub read_sources: ReadSources,
}

/// Appends events and runs the inline projectors in the same transaction.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    projectors: Arc<[Arc<dyn Projector>]>,
    max_retries: u32,
    cache: Arc<AggregateCache>,
    lanes: Arc<Lanes>,
    metrics: StoreMetrics,
    appended: Arc<watch::Sender<u64>>,
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
}

/// Aggregates as of their last committed command in this process, so that a command on a long
/// stream (a batch with thousands of completions) reads only the events it has not seen.
///
/// An entry is taken out while a command runs (under the aggregate's advisory lock, so no
/// other command of this aggregate runs anywhere) and put back only after a commit; the
/// events appended meanwhile by anyone else are read from the log on top of it. An entry is
/// therefore always the exact state of some prefix of the stream.
#[derive(Default)]
struct AggregateCache {
    entries: Mutex<HashMap<(&'static str, String), CachedAggregate>>,
}

struct CachedAggregate {
    version: i64,
    position: i64,
    state: Box<dyn Any + Send>,
}

/// Most aggregates kept in the cache; past that an arbitrary one is dropped.
const CACHE_CAPACITY: usize = 1_000;

impl AggregateCache {
    fn take<A: Aggregate + 'static>(&self, aggregate_id: &str) -> Option<(A, i64, i64)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.remove(&(A::TYPE, aggregate_id.to_owned()))?;
        let state = entry.state.downcast::<A>().ok()?;
        Some((*state, entry.version, entry.position))
    }

    fn put_any(
        &self,
        key: &(&'static str, String),
        state: Box<dyn Any + Send>,
        version: i64,
        position: i64,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_CAPACITY {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(
            key.clone(),
            CachedAggregate {
                version,
                position,
                state,
            },
        );
    }
}

/// The stream's events after a version, the projections the command must keep up to date and
/// the read sources (read after the append lock, so a swap or retirement that committed is
/// seen). The single
/// `active` row comes back even when the stream has no new events.
const LOAD: &str = "\
WITH active AS (
    SELECT coalesce(array_agg(name), '{}') AS names FROM projections WHERE inline_active
), sources AS (
    SELECT coalesce(array_agg(domain), '{}') AS domains, coalesce(array_agg(source), '{}') AS sources
      FROM read_sources
)
SELECT active.names, sources.domains, sources.sources, e.sequence, e.position, e.event_type,
       e.event_version, e.payload
  FROM active
 CROSS JOIN sources
  LEFT JOIN events AS e
    ON e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence > $3
 ORDER BY e.sequence";

const APPEND: &str = "\
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $7
  FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[]) AS e(sequence, event_type, event_version, payload)
 ORDER BY e.sequence
RETURNING position, transaction_id::text::bigint AS transaction_id, sequence, recorded_at";

/// The append lock, in SQL: every writer of the log holds it shared for its transaction; a
/// rebuild's swap (and a retirement) holds it exclusively, so that no append is in flight
/// while tables are swapped and the set of inline projections changes.
pub const APPEND_LOCK: &str = "hashtextextended('cutover:appends', 0)";

/// Begins a command's transaction and takes, in the same round trip, the append lock (shared)
/// and the aggregate's lock. The aggregate lock serialises the commands of one aggregate across
/// every server instance sharing the database, so concurrent commands queue instead of failing
/// the race for a sequence number. The statement holds only numbers, never client input.
fn begin_locked(aggregate_type: &str, aggregate_id: &str) -> String {
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock_shared({APPEND_LOCK}), pg_advisory_xact_lock({})",
        aggregate_lock_key(aggregate_type, aggregate_id)
    )
}

/// The advisory-lock key of an aggregate: the first 8 bytes of SHA-256 of `type/id`. Every
/// command on the aggregate holds it for its transaction (and so does a repair of it).
pub fn aggregate_lock_key(aggregate_type: &str, aggregate_id: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(aggregate_type.as_bytes())
        .chain_update(b"/")
        .chain_update(aggregate_id.as_bytes())
        .finalize();
    let mut key = [0_u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

const UNIQUE_VIOLATION: &str = "23505";

impl EventStore {
    /// `max_retries`: how many times a command is re-run after losing an append race.
    pub fn new(pool: PgPool, projectors: Vec<Arc<dyn Projector>>, max_retries: u32) -> Self {
        Self {
            pool,
            projectors: projectors.into(),
            max_retries,
            cache: Arc::default(),
            lanes: Arc::default(),
            metrics: StoreMetrics::default(),
            appended: Arc::new(watch::channel(0).0),
        }
    }

    /// Changes after every commit of this store that appended events (the feed's wake-up; no
    /// trigger in the database notifies, so that commits are not serialised by `NOTIFY`).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn projectors(&self) -> &[Arc<dyn Projector>] {
        &self.projectors
    }

    /// Runs `command` against aggregate `aggregate_id` of type `A` and commits.
    ///
    /// With `expected_version`, the command runs only if the aggregate is at that version.
    ///
    /// # Errors
    /// See [`CommandError`]; on any error nothing was appended or projected.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        expected_version: Option<i64>,
        metadata: &Value,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let request = Request {
            aggregate_id,
            command,
            services,
            expected_version,
            metadata,
        };
        match self.begin::<A>(request, None).await? {
            Begun::Open(pending) => Ok(pending.commit(None).await?),
            // Only a command sent with an idempotency key can be replayed; this one has none.
            Begun::Replayed(_) => Err(CommandError::Broken(
                "a command without an idempotency key was answered as a replay".to_owned(),
            )),
        }
    }

    /// Runs a command up to, not including, its commit: its events are appended and projected
    /// in a transaction the caller can read back from (write-then-read) before
    /// [`Pending::commit`]. With an idempotency key seen before for the same request, nothing
    /// runs and the stored response comes back instead.
    ///
    /// Commands of one aggregate queue in this process (first come, first served) and run one
    /// at a time; while others wait, consecutive ones share a transaction (a group, at most
    /// [`MAX_GROUP`] commands, each after a savepoint of its own), so that a hot aggregate
    /// pays for one lock, one load and one commit per group instead of per command. A command
    /// of a group is acknowledged only after the group commits.
    ///
    /// # Errors
    /// See [`CommandError`]; on any error nothing of this command was appended or projected.
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %request.aggregate_id), err(level = "debug"))]
    pub async fn begin<A>(
        &self,
        request: Request<'_, A>,
        idempotency: Option<&Idempotency>,
    ) -> Result<Begun<A>, CommandError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let attempts = self.max_retries + 1;
        for attempt in 1..=attempts {
            let mut turn = self.lanes.enter(A::TYPE, request.aggregate_id).await;
            let mut member = match turn.open.take() {
                Some(group) => Member {
                    store: self.clone(),
                    turn: Some(turn),
                    before: (group.version, group.position),
                    group: Some(group),
                    joined: true,
                    kept_state: false,
                },
                None => {
                    // In a task of its own: a `BEGIN` cancelled while it waits for the locks
                    // (the client hung up) would leave sqlx believing the connection is not
                    // in a transaction, and return it to the pool holding the locks.
                    let pool = self.pool.clone();
                    let statement = begin_locked(A::TYPE, request.aggregate_id);
                    let tx = tokio::spawn(async move { pool.begin_with(statement).await })
                        .await
                        .map_err(|e| {
                            CommandError::Broken(format!(
                                "the task beginning the command's transaction ended: {e}"
                            ))
                        })??;
                    Member {
                        store: self.clone(),
                        turn: Some(turn),
                        group: Some(Box::new(Group::new(tx))),
                        before: (0, 0),
                        joined: false,
                        kept_state: false,
                    }
                }
            };
            if member.joined {
                let savepoint = sqlx::query("SAVEPOINT member")
                    .execute(&mut *member.group_mut().tx)
                    .await;
                if let Err(e) = savepoint {
                    if let Err(left) = member.leave(true).await {
                        tracing::debug!(error = %left, "a group failed");
                    }
                    return Err(CommandError::Database(e));
                }
            }
            match self.run_member(&mut member, &request, idempotency).await {
                Ok(Ran::Appended(committed, key)) => {
                    return Ok(Begun::Open(Pending {
                        member,
                        key,
                        committed,
                        _aggregate: PhantomData,
                    }));
                }
                Ok(Ran::Replayed(stored)) => {
                    // Answered before; but an answer stored by an earlier command of this very
                    // group is true only once the group commits.
                    member.leave(false).await?;
                    self.metrics.replays.inc();
                    return Ok(Begun::Replayed(stored));
                }
                Err(Failed::Retry) => {
                    if let Err(e) = member.leave(true).await {
                        tracing::debug!(error = %e, "the group of a command to be retried failed");
                    }
                    tracing::debug!(attempt, "append conflict; retrying");
                    if attempt < attempts {
                        self.metrics.retries.inc();
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
                }
                Err(Failed::Error(e)) => {
                    if let Err(left) = member.leave(true).await {
                        tracing::debug!(error = %left, "the group of a failed command failed");
                    }
                    return Err(e);
                }
            }
        }
        self.metrics.conflicts.inc();
        Err(CommandError::Conflict { attempts })
    }

    /// Runs one command in `member`'s group: claims its key, brings the aggregate up to date
    /// (from the group, the cache or the log), lets it decide, appends and projects. On a
    /// failure the group's aggregate is kept only when the command left it untouched.
    async fn run_member<A>(
        &self,
        member: &mut Member,
        request: &Request<'_, A>,
        idempotency: Option<&Idempotency>,
    ) -> Result<Ran, Failed<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let aggregate_id = request.aggregate_id;
        let joined = member.joined;
        member.kept_state = false;
        let group = member.group_mut();
        if let Some(key) = idempotency {
            if let Some(stored) = claim_key(&mut group.tx, key).await? {
                return Ok(Ran::Replayed(stored));
            }
        }
        let kept = group
            .state
            .take()
            .and_then(|state| state.downcast::<A>().ok());
        let mut aggregate = match kept {
            Some(aggregate) => *aggregate,
            None => {
                // The group's first command starts from the cache; a later one whose group
                // lost its aggregate reads the whole stream again, in the group's transaction.
                let cached = if joined {
                    None
                } else {
                    self.cache.take::<A>(aggregate_id)
                };
                let loaded = load::<A>(&mut group.tx, aggregate_id, cached).await?;
                group.version = loaded.version;
                group.position = loaded.position;
                group.active = loaded.active;
                group.read_sources = loaded.read_sources;
                loaded.aggregate
            }
        };
        if let Some(expected) = request.expected_version {
            if expected != group.version {
                let actual = group.version;
                group.state = Some(Box::new(aggregate));
                member.kept_state = true;
                return Err(Failed::Error(CommandError::VersionMismatch {
                    expected,
                    actual,
                }));
            }
        }
        let sink = EventSink::default();
        let decided = aggregate
            .handle(request.command.clone(), request.services, &sink)
            .await;
        let new_events = sink.collect().await;
        if let Err(e) = decided {
            if new_events.is_empty() {
                group.state = Some(Box::new(aggregate));
                member.kept_state = true;
            }
            return Err(Failed::Error(CommandError::Rejected(e)));
        }
        let stored = if new_events.is_empty() {
            Vec::new()
        } else {
            match append::<A>(
                &mut group.tx,
                aggregate_id,
                group.version,
                &new_events,
                request.metadata,
            )
            .await
            {
                Ok(stored) => stored,
                Err(AppendError::Conflict) => return Err(Failed::Retry),
                Err(AppendError::Serialize(e)) => {
                    return Err(Failed::Error(CommandError::Serialize(e)))
                }
                Err(AppendError::Database(e)) => {
                    return Err(Failed::Error(CommandError::Database(e)))
                }
            }
        };
        let inline: Vec<Arc<dyn Projector>> = self
            .projectors
            .iter()
            .filter(|p| group.active.iter().any(|name| name == p.name()))
            .cloned()
            .collect();
        project_all(&inline, &mut group.tx, &stored)
            .await
            .map_err(|e| Failed::Error(e.into()))?;
        if let Some(last) = stored.last() {
            group.version = last.sequence;
            group.position = last.position;
        }
        group.state = Some(Box::new(aggregate));
        let committed = Committed {
            version: group.version,
            position: group.position,
            events: stored,
            read_sources: group.read_sources.clone(),
        };
        Ok(Ran::Appended(committed, idempotency.map(|k| k.key.clone())))
    }
}

/// Most commands of one aggregate that share a transaction (each takes a savepoint, and
/// Postgres keeps 64 subtransactions per transaction in shared memory).
pub const MAX_GROUP: usize = 32;

/// How a command of a group ran.
enum Ran {
    Appended(Committed, Option<String>),
    Replayed(StoredResponse),
}

/// How a command of a group failed.
enum Failed<E: std::error::Error + 'static> {
    /// Another writer took the next sequence number: run the command again.
    Retry,
    Error(CommandError<E>),
}

impl<E: std::error::Error + 'static> From<sqlx::Error> for Failed<E> {
    fn from(e: sqlx::Error) -> Self {
        Self::Error(CommandError::Database(e))
    }
}

impl<E: std::error::Error + 'static> From<CommandError<E>> for Failed<E> {
    fn from(e: CommandError<E>) -> Self {
        Self::Error(e)
    }
}

/// The commands of this process on one aggregate, queued: one holds the turn at a time.
#[derive(Default)]
struct Lanes {
    lanes: Mutex<HashMap<(&'static str, String), Arc<Lane>>>,
}

#[derive(Default)]
struct Lane {
    /// Commands waiting for the turn.
    waiting: AtomicUsize,
    /// The group left open for the next command, if any.
    open: Arc<tokio::sync::Mutex<OpenGroup>>,
}

#[derive(Default)]
struct OpenGroup {
    open: Option<Box<Group>>,
}

/// A command counted as waiting for the turn, until it gets it or is cancelled.
struct Waiting(Arc<Lane>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The turn on one aggregate's lane.
struct Turn {
    lane: Arc<Lane>,
    key: (&'static str, String),
    guard: tokio::sync::OwnedMutexGuard<OpenGroup>,
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
    async fn enter(&self, aggregate_type: &'static str, aggregate_id: &str) -> Turn {
        let key = (aggregate_type, aggregate_id.to_owned());
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let lane = Arc::clone(lanes.entry(key.clone()).or_default());
            lane.waiting.fetch_add(1, Ordering::SeqCst);
            lane
        };
        let waiting = Waiting(Arc::clone(&lane));
        let guard = Arc::clone(&lane.open).lock_owned().await;
        drop(waiting);
        Turn { lane, key, guard }
    }

    /// Gives the turn up, and forgets the lane when nobody else is on it.
    fn leave(&self, turn: Turn) {
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
struct Group {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The aggregate as of the group's last command; `None` when it must be read again.
    state: Option<Box<dyn Any + Send>>,
    version: i64,
    position: i64,
    active: Vec<String>,
    read_sources: ReadSources,
    /// Commands whose answers wait for this group's commit.
    members: usize,
    events: u64,
    /// Set once: whether the group committed (or why not).
    outcome: Arc<watch::Sender<Option<Result<(), GroupFailure>>>>,
}

impl Group {
    fn new(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        Self {
            tx,
            state: None,
            version: 0,
            position: 0,
            active: Vec::new(),
            read_sources: ReadSources::default(),
            members: 0,
            events: 0,
            outcome: Arc::new(watch::channel(None).0),
        }
    }
}

/// A command's place in a group, until the group is handed on or committed. Dropped without
/// [`Member::leave`] (a cancelled request), it still undoes this command alone and hands the
/// group on, from a task of its own.
struct Member {
    store: EventStore,
    turn: Option<Turn>,
    group: Option<Box<Group>>,
    /// Whether the group had commands before this one (which then took a savepoint).
    joined: bool,
    /// The group's version and position before this command.
    before: (i64, i64),
    /// Whether the group's aggregate is still as before this command, after a failure.
    kept_state: bool,
}

impl Member {
    fn group_mut(&mut self) -> &mut Group {
        self.group
            .as_mut()
            .unwrap_or_else(|| unreachable!("a member's group is taken only when it leaves"))
    }

    /// Leaves the group: with `undo`, this command's work is undone first (to its savepoint; a
    /// group of this command alone is rolled back). Then the group is handed to the next
    /// command waiting, if any and if not full, and this one waits for its commit; or it is
    /// committed now.
    ///
    /// # Errors
    /// The group failed to commit: nothing of it, this command included, was committed.
    async fn leave(mut self, undo: bool) -> Result<(), CommitError> {
        let (Some(mut turn), Some(mut group)) = (self.turn.take(), self.group.take()) else {
            return Ok(());
        };
        let store = self.store.clone();
        if undo {
            if self.joined {
                let undone = sqlx::query("ROLLBACK TO SAVEPOINT member")
                    .execute(&mut *group.tx)
                    .await;
                if let Err(e) = undone {
                    group.fail(GroupFailure::of(&e));
                    store.lanes.leave(turn);
                    return Err(e.into());
                }
                (group.version, group.position) = self.before;
                if !self.kept_state {
                    // Read again by the next command.
                    group.state = None;
                }
            } else {
                // Nothing but this command in it: roll it all back.
                group.fail(GroupFailure::fault("rolled back"));
                store.lanes.leave(turn);
                return Ok(());
            }
        } else {
            group.members += 1;
        }
        if group.members == 0 {
            // Only undone commands in it.
            group.fail(GroupFailure::fault("rolled back"));
            store.lanes.leave(turn);
            return Ok(());
        }
        let has_waiters = turn.lane.waiting.load(Ordering::SeqCst) > 0;
        if has_waiters && group.members < MAX_GROUP {
            let mut outcome = group.outcome.subscribe();
            let watched = Arc::downgrade(&group.outcome);
            let (lane, key) = (Arc::clone(&turn.lane), turn.key.clone());
            turn.open = Some(group);
            store.lanes.leave(turn);
            tokio::spawn(store.clone().adopt_if_orphaned(lane, key, watched));
            let outcome = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
            return match outcome {
                Ok(Some(Ok(()))) => Ok(()),
                Ok(Some(Err(failure))) => Err(CommitError::SharedTransaction(failure)),
                Ok(None) | Err(_) => Err(CommitError::SharedTransaction(GroupFailure::fault(
                    "the group was abandoned",
                ))),
            };
        }
        let committed = store.commit_group(&turn.key, group).await;
        store.lanes.leave(turn);
        Ok(committed?)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.turn.is_none() {
            return;
        }
        // Cancelled before it left: leave from a task (the undo needs the database).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime any more: the group rolls back with its connection.
            self.group.take();
            self.turn.take();
            return;
        };
        let member = Member {
            store: self.store.clone(),
            turn: self.turn.take(),
            group: self.group.take(),
            joined: self.joined,
            before: self.before,
            kept_state: self.kept_state,
        };
        runtime.spawn(async move {
            if let Err(e) = member.leave(true).await {
                tracing::debug!(error = %e, "a cancelled command's group failed");
            }
        });
    }
}

impl Group {
    /// Tells the commands waiting on this group that it will not commit; rolls it back.
    fn fail(self, failure: GroupFailure) {
        self.outcome.send_replace(Some(Err(failure)));
    }
}

/// How often a group handed to a waiting command is checked for having been left behind.
const ORPHAN_CHECK: Duration = Duration::from_millis(100);

impl EventStore {
    /// Commits the group handed on to the lane's next command if that command never took it
    /// (it was cancelled while it waited): otherwise the group's transaction, with its locks,
    /// would stay open until the aggregate's next command.
    async fn adopt_if_orphaned(
        self,
        lane: Arc<Lane>,
        key: (&'static str, String),
        watched: std::sync::Weak<watch::Sender<Option<Result<(), GroupFailure>>>>,
    ) {
        tokio::time::sleep(ORPHAN_CHECK).await;
        match watched.upgrade() {
            Some(outcome) if outcome.borrow().is_none() => {}
            // Ended, one way or the other.
            _ => return,
        }
        // Commands queued before this one take the lane first; if the group still waits in
        // the lane after them, nobody is coming for it, and committing it now is safe (every
        // command in it has finished its part).
        let mut open = Arc::clone(&lane.open).lock_owned().await;
        match open.open.take() {
            Some(group) if std::ptr::eq(Arc::as_ptr(&group.outcome), watched.as_ptr()) => {
                if let Err(e) = self.commit_group(&key, group).await {
                    tracing::warn!(error = %e, "a group left behind failed to commit");
                }
            }
            // Taken by the next command, which finishes it (or hands it on again, and that
            // hand-over is watched in turn).
            other => open.open = other,
        }
    }

    /// Commits a group and tells its commands.
    async fn commit_group(
        &self,
        key: &(&'static str, String),
        group: Box<Group>,
    ) -> Result<(), sqlx::Error> {
        let Group {
            tx,
            state,
            version,
            position,
            events,
            outcome,
            ..
        } = *group;
        match tx.commit().await {
            Ok(()) => {
                outcome.send_replace(Some(Ok(())));
                if events > 0 {
                    self.metrics.events_appended.inc_by(events);
                    self.appended.send_modify(|n| *n = n.wrapping_add(1));
                }
                if let Some(state) = state {
                    self.cache.put_any(key, state, version, position);
                }
                Ok(())
            }
            Err(e) => {
                outcome.send_replace(Some(Err(GroupFailure::of(&e))));
                Err(e)
            }
        }
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
}

/// A client's `Idempotency-Key` and what identifies its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// A digest of the request (method, path, body): the same key with another request is
    /// refused.
    pub fingerprint: String,
    /// How long the key is remembered.
    pub ttl: Duration,
}

/// A response as it was first sent, kept under its idempotency key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// How [`EventStore::begin`] went.
pub enum Begun<A: Aggregate + 'static> {
    /// The command ran; commit it.
    Open(Pending<A>),
    /// The same request came with this key before: its response, nothing ran.
    Replayed(StoredResponse),
}

/// A command that ran and awaits its commit. Dropping it undoes this command (and, if it was
/// the only one of its group, the group).
pub struct Pending<A: Aggregate + 'static> {
    member: Member,
    key: Option<String>,
    committed: Committed,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate + 'static> Pending<A> {
    /// What the command reached (its events are not committed yet).
    pub fn committed(&self) -> &Committed {
        &self.committed
    }

    /// The command's transaction, to read the read models back from.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.member.group_mut().tx
    }

    /// Commits (or, while other commands of the aggregate wait, hands the transaction on and
    /// waits for its commit); with an idempotency key, `response` is stored under it in the
    /// same transaction.
    ///
    /// # Errors
    /// A database error: nothing of this command was committed.
    pub async fn commit(
        mut self,
        response: Option<&StoredResponse>,
    ) -> Result<Committed, CommitError> {
        if let (Some(key), Some(response)) = (&self.key, response) {
            let stored = sqlx::query("UPDATE idempotency_keys SET response = $2 WHERE key = $1")
                .bind(key)
                .bind(sqlx::types::Json(response))
                .execute(&mut *self.member.group_mut().tx)
                .await;
            if let Err(e) = stored {
                if let Err(left) = self.member.leave(true).await {
                    tracing::debug!(error = %left, "the group of a failed command failed");
                }
                return Err(e.into());
            }
        }
        self.member.group_mut().events += self.committed.events.len() as u64;
        self.member.leave(false).await?;
        Ok(self.committed)
    }
}

/// Takes `key` for this command, or finds it taken: `Some(response)` when the same request
/// was answered before. A key taken by a transaction still running is waited for. An expired
/// key is taken afresh.
///
/// # Errors
/// `KeyReused` when the key came with another request; a database error.
async fn claim_key<E: std::error::Error + 'static>(
    conn: &mut PgConnection,
    key: &Idempotency,
) -> Result<Option<StoredResponse>, CommandError<E>> {
    let ttl_secs = key.ttl.as_secs_f64();
    let claimed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, fingerprint, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, expires_at = EXCLUDED.expires_at,
                response = NULL, created_at = now()
          WHERE idempotency_keys.expires_at <= now()
         RETURNING true",
    )
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(ttl_secs)
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        return Ok(None);
    }
    let (fingerprint, response): (String, Option<sqlx::types::Json<StoredResponse>>) =
        sqlx::query_as("SELECT fingerprint, response FROM idempotency_keys WHERE key = $1")
            .bind(&key.key)
            .fetch_one(&mut *conn)
            .await?;
    if fingerprint != key.fingerprint {
        return Err(CommandError::KeyReused);
    }
    match response {
        Some(stored) => Ok(Some(stored.0)),
        // Taken by a command that committed no response: cannot happen through this store,
        // whose key rows and responses commit together.
        None => Err(CommandError::Broken(format!(
            "Idempotency-Key {:?} is taken but holds no answer",
            key.key
        ))),
    }
}

/// An aggregate brought up to date, with what the command needs to know of the registry.
struct Loaded<A> {
    aggregate: A,
    /// Its version and last position, both 0 for a stream with no events.
    version: i64,
    position: i64,
    /// The projections maintained inline.
    active: Vec<String>,
    read_sources: ReadSources,
}

/// Brings aggregate `A` up to date from its stream, starting from `cached` (a state as of some
/// version) or from nothing.
async fn load<A>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    cached: Option<(A, i64, i64)>,
) -> Result<Loaded<A>, CommandError<A::Error>>
where
    A: Aggregate,
    A::Error: 'static,
{
    let (mut aggregate, mut version, mut position) = cached.unwrap_or_default();
    let rows = sqlx::query(LOAD)
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(version)
        .fetch_all(conn)
        .await?;
    let (active, read_sources) = match rows.first() {
        Some(row) => {
            let domains: Vec<String> = row.try_get("domains")?;
            let sources: Vec<String> = row.try_get("sources")?;
            let stored = domains.into_iter().zip(sources).collect();
            (row.try_get("names")?, ReadSources { stored })
        }
        None => (Vec::new(), ReadSources::default()),
    };
    for row in rows {
        // The one row of a stream with no new events carries no event.
        let Some(sequence) = row.try_get::<Option<i64>, _>("sequence")? else {
            continue;
        };
        version = sequence;
        position = row.try_get("position")?;
        let (_, payload) = crate::upcast::current(
            row.try_get("event_type")?,
            row.try_get("event_version")?,
            row.try_get("payload")?,
        )?;
        let event = serde_json::from_value::<A::Event>(payload).map_err(|source| {
            CommandError::CorruptEvent {
                aggregate_type: A::TYPE.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence: version,
                source,
            }
        })?;
        aggregate.apply(event);
    }
    Ok(Loaded {
        aggregate,
        version,
        position,
        active,
        read_sources,
    })
}

enum AppendError {
    Conflict,
    Serialize(serde_json::Error),
    Database(sqlx::Error),
}

async fn append<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    version: i64,
    events: &[A::Event],
    metadata: &Value,
) -> Result<Vec<StoredEvent>, AppendError> {
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let sequences: Vec<i64> = (version + 1..=version + count).collect();
    let event_types: Vec<String> = events.iter().map(DomainEvent::event_type).collect();
    let event_versions: Vec<String> = events.iter().map(DomainEvent::event_version).collect();
    let payloads = events
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(AppendError::Serialize)?;
    let rows = sqlx::query(APPEND)
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(&sequences)
        .bind(&event_types)
        .bind(&event_versions)
        .bind(&payloads)
        .bind(metadata)
        .fetch_all(conn)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                AppendError::Conflict
            }
            _ => AppendError::Database(e),
        })?;
    let mut by_sequence: HashMap<i64, (i64, i64, DateTime<Utc>)> = HashMap::new();
    for row in rows {
        let read = (|| {
            Ok::<_, sqlx::Error>((
                row.try_get::<i64, _>("sequence")?,
                row.try_get::<i64, _>("position")?,
                row.try_get::<i64, _>("transaction_id")?,
                row.try_get::<DateTime<Utc>, _>("recorded_at")?,
            ))
        })()
        .map_err(AppendError::Database)?;
        by_sequence.insert(read.0, (read.1, read.2, read.3));
    }
    let mut stored = Vec::with_capacity(events.len());
    for (((sequence, event_type), event_version), payload) in sequences
        .into_iter()
        .zip(event_types)
        .zip(event_versions)
        .zip(payloads)
    {
        let Some(&(position, transaction_id, recorded_at)) = by_sequence.get(&sequence) else {
            return Err(AppendError::Database(sqlx::Error::RowNotFound));
        };
        stored.push(StoredEvent {
            position,
            transaction_id,
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            event_type,
            event_version,
            payload,
            metadata: metadata.clone(),
            recorded_at,
        });
    }
    Ok(stored)
}
