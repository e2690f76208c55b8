//! The Postgres event store and the command path.
//!
//! A command runs in one transaction: take the aggregate's advisory lock, load its events,
//! let the aggregate decide, append the new events (postgres-es's `events` layout plus a global
//! `position`, the committing transaction id and `recorded_at`), run every inline projector on
//! them, commit. Either all of that commits or none of it does. cqrs-es's own
//! `CqrsFramework` is not used because it updates views only after its commit.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

use crate::projection::{project_all, ProjectionError, Projector};

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
    #[error("an event could not be serialized")]
    Serialize(#[source] serde_json::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
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
}

/// Appends events and runs the inline projectors in the same transaction.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    projectors: Arc<[Arc<dyn Projector>]>,
    max_retries: u32,
    cache: Arc<AggregateCache>,
    metrics: StoreMetrics,
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

    fn put<A: Aggregate + 'static>(
        &self,
        aggregate_id: &str,
        state: A,
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
            (A::TYPE, aggregate_id.to_owned()),
            CachedAggregate {
                version,
                position,
                state: Box::new(state),
            },
        );
    }
}

/// The stream's events after a version, and the projections the command must keep up to date
/// (read after the append lock, so a swap or retirement that committed is seen). The single
/// `active` row comes back even when the stream has no new events.
const LOAD: &str = "\
WITH active AS (
    SELECT coalesce(array_agg(name), '{}') AS names FROM projections WHERE inline_active
)
SELECT active.names, e.sequence, e.position, e.payload
  FROM active
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

/// Takes the append lock (shared) and the aggregate's lock. The aggregate lock serialises the
/// commands of one aggregate across every server instance sharing the database, so concurrent
/// commands queue instead of failing the race for a sequence number.
const LOCK_AGGREGATE: &str = "\
SELECT pg_advisory_xact_lock_shared(hashtextextended('cutover:appends', 0)),
       pg_advisory_xact_lock(hashtextextended($1, 0))";

const UNIQUE_VIOLATION: &str = "23505";

impl EventStore {
    /// `max_retries`: how many times a command is re-run after losing an append race.
    pub fn new(pool: PgPool, projectors: Vec<Arc<dyn Projector>>, max_retries: u32) -> Self {
        Self {
            pool,
            projectors: projectors.into(),
            max_retries,
            cache: Arc::default(),
            metrics: StoreMetrics::default(),
        }
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
            Begun::Replayed(_) => Err(CommandError::KeyReused),
        }
    }

    /// Runs a command up to, not including, its commit: its events are appended and projected
    /// in a transaction the caller can read back from (write-then-read) before
    /// [`Pending::commit`]. With an idempotency key seen before for the same request, nothing
    /// runs and the stored response comes back instead.
    ///
    /// # Errors
    /// See [`CommandError`]; on any error nothing was appended or projected.
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
        let Request {
            aggregate_id,
            command,
            services,
            expected_version,
            metadata,
        } = request;
        let attempts = self.max_retries + 1;
        for attempt in 1..=attempts {
            let mut tx = self.pool.begin().await?;
            sqlx::query(LOCK_AGGREGATE)
                .bind(format!("{}/{}", A::TYPE, aggregate_id))
                .execute(&mut *tx)
                .await?;
            if let Some(key) = idempotency {
                if let Some(stored) = claim_key(&mut tx, key).await? {
                    tx.rollback().await?;
                    self.metrics.replays.inc();
                    return Ok(Begun::Replayed(stored));
                }
            }
            let cached = self.cache.take::<A>(aggregate_id);
            let (mut aggregate, version, position, active) =
                load::<A>(&mut tx, aggregate_id, cached).await?;
            if let Some(expected) = expected_version {
                if expected != version {
                    self.cache.put(aggregate_id, aggregate, version, position);
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: version,
                    });
                }
            }
            let sink = EventSink::default();
            aggregate
                .handle(command.clone(), services, &sink)
                .await
                .map_err(CommandError::Rejected)?;
            let new_events = sink.collect().await;
            let stored = if new_events.is_empty() {
                Vec::new()
            } else {
                match append::<A>(&mut tx, aggregate_id, version, &new_events, metadata).await {
                    Ok(stored) => stored,
                    Err(AppendError::Conflict) => {
                        tx.rollback().await?;
                        tracing::debug!(attempt, "append conflict; retrying");
                        if attempt < attempts {
                            self.metrics.retries.inc();
                        }
                        tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
                        continue;
                    }
                    Err(AppendError::Serialize(e)) => return Err(CommandError::Serialize(e)),
                    Err(AppendError::Database(e)) => return Err(CommandError::Database(e)),
                }
            };
            let inline: Vec<Arc<dyn Projector>> = self
                .projectors
                .iter()
                .filter(|p| active.iter().any(|name| name == p.name()))
                .cloned()
                .collect();
            project_all(&inline, &mut tx, &stored).await?;
            let (version, position) = stored
                .last()
                .map_or((version, position), |e| (e.sequence, e.position));
            return Ok(Begun::Open(Pending {
                tx,
                cache: Arc::clone(&self.cache),
                events_appended: self.metrics.events_appended.clone(),
                aggregate_id: aggregate_id.to_owned(),
                aggregate,
                key: idempotency.map(|k| k.key.clone()),
                committed: Committed {
                    version,
                    position,
                    events: stored,
                },
            }));
        }
        self.metrics.conflicts.inc();
        Err(CommandError::Conflict { attempts })
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

/// A command that ran and awaits its commit. Dropping it rolls everything back.
pub struct Pending<A: Aggregate + 'static> {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    cache: Arc<AggregateCache>,
    events_appended: Counter,
    aggregate_id: String,
    aggregate: A,
    key: Option<String>,
    committed: Committed,
}

impl<A: Aggregate + 'static> Pending<A> {
    /// What the command reached (its events are not committed yet).
    pub fn committed(&self) -> &Committed {
        &self.committed
    }

    /// The command's transaction, to read the read models back from.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits; with an idempotency key, `response` is stored under it in the same
    /// transaction.
    ///
    /// # Errors
    /// A database error: nothing was committed.
    pub async fn commit(
        mut self,
        response: Option<&StoredResponse>,
    ) -> Result<Committed, sqlx::Error> {
        if let (Some(key), Some(response)) = (&self.key, response) {
            sqlx::query("UPDATE idempotency_keys SET response = $2 WHERE key = $1")
                .bind(key)
                .bind(sqlx::types::Json(response))
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        self.events_appended
            .inc_by(self.committed.events.len() as u64);
        self.cache.put(
            &self.aggregate_id,
            self.aggregate,
            self.committed.version,
            self.committed.position,
        );
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
        None => Err(CommandError::KeyReused),
    }
}

/// Brings aggregate `A` up to date from its stream, starting from `cached` (a state as of some
/// version) or from nothing: returns it with its version and last position (both 0 for a
/// stream with no events), and the names of the projections maintained inline.
async fn load<A>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    cached: Option<(A, i64, i64)>,
) -> Result<(A, i64, i64, Vec<String>), CommandError<A::Error>>
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
    let active: Vec<String> = match rows.first() {
        Some(row) => row.try_get("names")?,
        None => Vec::new(),
    };
    for row in rows {
        // The one row of a stream with no new events carries no event.
        let Some(sequence) = row.try_get::<Option<i64>, _>("sequence")? else {
            continue;
        };
        version = sequence;
        position = row.try_get("position")?;
        let payload: Value = row.try_get("payload")?;
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
    Ok((aggregate, version, position, active))
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
