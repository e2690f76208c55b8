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
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
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
use crate::rows::Parameters;

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
    inline: Arc<InlineProjections>,
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

/// The projections maintained inline, as this process last read them from the registry. The
/// append statement checks them (under the append lock, which a swap or a retirement holds
/// exclusively), so a stale set fails the statement instead of writing too few read models.
#[derive(Default)]
struct InlineProjections {
    names: Mutex<Option<Arc<[String]>>>,
}

impl InlineProjections {
    /// The names, read in `conn`'s transaction when not known.
    async fn current(&self, conn: &mut PgConnection) -> Result<Arc<[String]>, sqlx::Error> {
        if let Some(names) = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(names);
        }
        let names: Vec<String> = sqlx::query_scalar(INLINE).fetch_one(conn).await?;
        let names: Arc<[String]> = names.into();
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&names));
        Ok(names)
    }

    fn forget(&self) {
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
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

/// The stream's events after a version, and the read sources (read after the append lock, so a
/// swap or retirement that committed is seen). The single `sources` row comes back even when
/// the stream has no new events.
const LOAD: &str = "\
WITH sources AS (
    SELECT coalesce(array_agg(domain), '{}') AS domains, coalesce(array_agg(source), '{}') AS sources
      FROM read_sources
)
SELECT sources.domains, sources.sources, e.sequence, e.position, e.event_type, e.event_version,
       e.payload
  FROM sources
  LEFT JOIN events AS e
    ON e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence > $3
 ORDER BY e.sequence";

/// The read sources alone, for a command that appended nothing and read no stream.
const READ_SOURCES: &str = "\
SELECT coalesce(array_agg(domain), '{}') AS domains, coalesce(array_agg(source), '{}') AS sources
  FROM read_sources";

/// Appends a command's events (`$1` type, `$2` id, `$3`–`$6` the events' sequences, types,
/// versions and payloads, `$7` metadata, `$8` the recording time), checks that the projections
/// maintained inline are `$9` (those whose rows the statement writes: it fails with SQLSTATE
/// `CUT02` otherwise) and reads the read sources, after `WITH` parts of its own (each inline
/// projection's row changes, from `$10` on).
fn append_statement(parts: &[Arc<str>]) -> Arc<str> {
    static MADE: OnceLock<Mutex<HashMap<Vec<usize>, Arc<str>>>> = OnceLock::new();
    // The parts are kept for good by `rows`, so their addresses name them.
    let key: Vec<usize> = parts.iter().map(|p| p.as_ptr() as usize).collect();
    let made = MADE.get_or_init(Mutex::default);
    let mut made = made.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(made.entry(key).or_insert_with(|| {
    let mut sql = String::from(
        "WITH appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                        metadata, recorded_at)
    SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $7, $8
      FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[])
           AS e(sequence, event_type, event_version, payload)
     ORDER BY e.sequence
    RETURNING position, transaction_id::text::bigint AS transaction_id, sequence
), sources AS (
    SELECT coalesce(array_agg(domain), '{}') AS domains, coalesce(array_agg(source), '{}') AS sources
      FROM read_sources
), inline AS (
    SELECT CASE WHEN names = $9::text[] THEN true
                ELSE public.cutover_inline_projections_changed($9::text[], names) END AS current
      FROM (SELECT coalesce(array_agg(name ORDER BY name), '{}') AS names
              FROM projections WHERE inline_active) AS registry
)",
    );
    for (i, part) in parts.iter().enumerate() {
        sql.push_str(&format!(", projected_{i} AS ({part})"));
    }
    sql.push_str(
        "
SELECT appended.position, appended.transaction_id, appended.sequence, sources.domains,
       sources.sources, inline.current
  FROM appended CROSS JOIN sources CROSS JOIN inline",
    );
        sql.into()
    }))
}

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

/// The events' primary key (type, id, sequence): a violation means another writer took the
/// sequence number.
const EVENTS_KEY: &str = "events_pkey";

impl EventStore {
    /// `max_retries`: how many times a command is re-run after losing an append race.
    pub fn new(pool: PgPool, projectors: Vec<Arc<dyn Projector>>, max_retries: u32) -> Self {
        Self {
            pool,
            projectors: projectors.into(),
            max_retries,
            cache: Arc::default(),
            inline: Arc::default(),
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
            new_aggregate: false,
        };
        match self.begin::<A>(request, None).await? {
            Begun::Open(pending) => Ok((*pending).commit(None).await?),
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
        let (mut attempt, mut refreshes) = (1, 0);
        while attempt <= attempts {
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
            match self
                .run_member(&mut member, &request, idempotency, attempt)
                .await
            {
                Ok(Ran::Appended(committed, key)) => {
                    return Ok(Begun::Open(Box::new(Pending {
                        member,
                        key,
                        committed,
                        _aggregate: PhantomData,
                    })));
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
                    attempt += 1;
                }
                Err(Failed::InlineChanged) => {
                    if let Err(e) = member.leave(true).await {
                        tracing::debug!(error = %e, "the group of a command to be re-run failed");
                    }
                    refreshes += 1;
                    if refreshes > MAX_INLINE_REFRESHES {
                        return Err(CommandError::Broken(
                            "the projections maintained inline kept changing, or a table of one \
                             of them is missing"
                                .to_owned(),
                        ));
                    }
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
    ///
    /// On its first attempt, a command starts from this process's cache, or from nothing when
    /// its aggregate was made for it, without reading the stream: the append's unique key
    /// catches a stale start (another instance appended), and the command is run again from
    /// the log. A start that is refused or changes nothing is read again from the log before it
    /// is believed.
    async fn run_member<A>(
        &self,
        member: &mut Member,
        request: &Request<'_, A>,
        idempotency: Option<&Idempotency>,
        attempt: u32,
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
        // Whether the aggregate is known to be as the log has it (else it is a guess).
        let (mut aggregate, mut confirmed) = match kept {
            Some(aggregate) => (*aggregate, true),
            None => {
                // The group's first command starts from the cache; a later one whose group
                // lost its aggregate reads the whole stream again, in the group's transaction.
                let cached = if joined {
                    None
                } else {
                    self.cache.take::<A>(aggregate_id)
                };
                match cached {
                    Some((aggregate, version, position)) if attempt == 1 => {
                        (group.version, group.position) = (version, position);
                        (aggregate, false)
                    }
                    None if attempt == 1 && !joined && request.new_aggregate => {
                        (group.version, group.position) = (0, 0);
                        (A::default(), false)
                    }
                    cached => (group.reload::<A>(aggregate_id, cached).await?, true),
                }
            }
        };
        let new_events = loop {
            if let Some(expected) = request.expected_version {
                if expected != group.version {
                    if !confirmed {
                        let start = Some((aggregate, group.version, group.position));
                        aggregate = group.reload::<A>(aggregate_id, start).await?;
                        confirmed = true;
                        continue;
                    }
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
            match decided {
                Ok(()) if !new_events.is_empty() => break new_events,
                _ if !confirmed => {
                    // Events the refused command wrote changed the aggregate: read it all.
                    let start =
                        new_events
                            .is_empty()
                            .then_some((aggregate, group.version, group.position));
                    aggregate = group.reload::<A>(aggregate_id, start).await?;
                    confirmed = true;
                }
                Ok(()) => break new_events,
                Err(e) => {
                    if new_events.is_empty() {
                        group.state = Some(Box::new(aggregate));
                        member.kept_state = true;
                    }
                    return Err(Failed::Error(CommandError::Rejected(e)));
                }
            }
        };
        let stored = if new_events.is_empty() {
            if group.read_sources.stored.is_empty() {
                group.read_sources = read_sources(&mut group.tx).await?;
            }
            Vec::new()
        } else {
            let inline = self.inline.current(&mut group.tx).await?;
            let appended = append::<A>(
                &mut group.tx,
                &self.projectors,
                &inline,
                aggregate_id,
                group.version,
                &new_events,
                request.metadata,
            )
            .await;
            match appended {
                Ok((stored, sources)) => {
                    group.read_sources = sources;
                    stored
                }
                Err(AppendError::Conflict) => return Err(Failed::Retry),
                Err(AppendError::InlineChanged) => {
                    self.inline.forget();
                    return Err(Failed::InlineChanged);
                }
                Err(AppendError::UnknownProjection(name)) => {
                    self.inline.forget();
                    return Err(Failed::Error(CommandError::Broken(format!(
                        "projection {name} is maintained inline, but this server has no \
                         projector for it: deploy the server that has it to every instance"
                    ))));
                }
                Err(AppendError::Serialize(e)) => {
                    return Err(Failed::Error(CommandError::Serialize(e)))
                }
                Err(AppendError::Projection(e)) => return Err(Failed::Error(e.into())),
                Err(AppendError::Database(e)) => {
                    return Err(Failed::Error(CommandError::Database(e)))
                }
            }
        };
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

/// Most times one command reads the registry's inline projections again.
const MAX_INLINE_REFRESHES: u32 = 3;

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
    /// The projections maintained inline changed: run the command again with the new ones.
    InlineChanged,
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
    /// Reads aggregate `A` from its stream in the group's transaction, starting from `start` (a
    /// state as of some version) or from nothing, with the read sources.
    async fn reload<A>(
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
    /// The aggregate id was made for this command (a new collection's): its stream is empty,
    /// so it is not read before the append.
    pub new_aggregate: bool,
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
    Open(Box<Pending<A>>),
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

/// An aggregate brought up to date, with the read sources.
struct Loaded<A> {
    aggregate: A,
    /// Its version and last position, both 0 for a stream with no events.
    version: i64,
    position: i64,
    read_sources: ReadSources,
}

/// The read sources from a row's `domains` and `sources` arrays.
fn sources_of(row: &sqlx::postgres::PgRow) -> Result<ReadSources, sqlx::Error> {
    let domains: Vec<String> = row.try_get("domains")?;
    let sources: Vec<String> = row.try_get("sources")?;
    Ok(ReadSources {
        stored: domains.into_iter().zip(sources).collect(),
    })
}

/// Every domain's read source.
async fn read_sources(conn: &mut PgConnection) -> Result<ReadSources, sqlx::Error> {
    let row = sqlx::query(READ_SOURCES).fetch_one(conn).await?;
    sources_of(&row)
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
    let read_sources = match rows.first() {
        Some(row) => sources_of(row)?,
        None => ReadSources::default(),
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
        read_sources,
    })
}

enum AppendError {
    Conflict,
    /// The projections maintained inline are not the ones the statement was built for.
    InlineChanged,
    /// The registry maintains a projection inline that this server has no projector for.
    UnknownProjection(String),
    Serialize(serde_json::Error),
    Projection(ProjectionError),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some(UNIQUE_VIOLATION)
                    && db.constraint() == Some(EVENTS_KEY) =>
            {
                Self::Conflict
            }
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some(INLINE_CHANGED | UNDEFINED_TABLE)) =>
            {
                Self::InlineChanged
            }
            _ => Self::Database(e),
        }
    }
}

/// The recording time of events appended now: this server's clock, at Postgres's precision.
fn recording_time() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Appends `events` after `version` and writes every inline projection's rows for them, in one
/// statement (a projection whose changes need more than one round writes its later rounds with
/// statements of their own, after it). Returns the stored events and the read sources.
async fn append<A: Aggregate>(
    conn: &mut PgConnection,
    projectors: &[Arc<dyn Projector>],
    inline: &[String],
    aggregate_id: &str,
    version: i64,
    events: &[A::Event],
    metadata: &Value,
) -> Result<(Vec<StoredEvent>, ReadSources), AppendError> {
    let recorded_at = recording_time();
    let mut stored = Vec::with_capacity(events.len());
    for (sequence, event) in (version + 1..).zip(events) {
        stored.push(StoredEvent {
            // Filled in from the insert's answer.
            position: 0,
            transaction_id: 0,
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event).map_err(AppendError::Serialize)?,
            metadata: metadata.clone(),
            recorded_at,
        });
    }
    if let Some(unknown) = inline
        .iter()
        .find(|name| !projectors.iter().any(|p| p.name() == name.as_str()))
    {
        return Err(AppendError::UnknownProjection(unknown.clone()));
    }
    let inline_projectors: Vec<Arc<dyn Projector>> = projectors
        .iter()
        .filter(|p| inline.iter().any(|name| name == p.name()))
        .cloned()
        .collect();
    let changes = project_all(&inline_projectors, &stored).map_err(AppendError::Projection)?;
    let (fused, later) = if changes.single_round() {
        (
            changes.into_statements(Parameters::From(FIRST_ROWS_PARAMETER)),
            None,
        )
    } else {
        (Vec::new(), Some(changes))
    };
    let parts: Vec<Arc<str>> = fused.iter().map(|s| Arc::clone(&s.sql)).collect();
    let sql = append_statement(&parts);
    let mut query = sqlx::query(sql.as_ref())
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(stored.iter().map(|e| e.sequence).collect::<Vec<_>>())
        .bind(
            stored
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            stored
                .iter()
                .map(|e| e.event_version.clone())
                .collect::<Vec<_>>(),
        )
        .bind(stored.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
        .bind(metadata)
        .bind(recorded_at)
        .bind(inline);
    for statement in &fused {
        query = query.bind(&statement.rows);
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(|e| {
        let refused = crate::projection::is_legacy_id_taken(&e);
        match fused
            .iter()
            .find(|s| refused && s.sql.contains("cutover_legacy_id_taken"))
        {
            Some(statement) => {
                AppendError::Projection(ProjectionError::of(statement.projection, e))
            }
            None => AppendError::from(e),
        }
    })?;
    let mut read_sources = ReadSources::default();
    for row in &rows {
        let sequence: i64 = row.try_get("sequence")?;
        let event = stored
            .iter_mut()
            .find(|e| e.sequence == sequence)
            .ok_or(sqlx::Error::RowNotFound)?;
        event.position = row.try_get("position")?;
        event.transaction_id = row.try_get("transaction_id")?;
        read_sources = sources_of(row)?;
    }
    if stored.iter().any(|e| e.position == 0) {
        return Err(AppendError::Database(sqlx::Error::RowNotFound));
    }
    if let Some(changes) = later {
        changes.write(conn).await.map_err(AppendError::Projection)?;
    }
    Ok((stored, read_sources))
}

/// The first parameter of the row changes in the append statement (after the events' and the
/// inline projections').
const FIRST_ROWS_PARAMETER: usize = 10;

/// The names of the projections maintained inline, in name order.
const INLINE: &str =
    "SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM projections WHERE inline_active";

/// SQLSTATE of `cutover_inline_projections_changed`.
const INLINE_CHANGED: &str = "CUT02";
/// SQLSTATE of a table that does not exist (a retired projection's, named by a statement
/// built before the retirement was seen).
const UNDEFINED_TABLE: &str = "42P01";
