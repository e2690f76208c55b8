//! The SQL of an aggregate's stream: reading it (with the read sources), and the one statement
//! that appends a command's events together with every inline projection's rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::{CommandError, StoredEvent};
use crate::projection::{project_all, ProjectionError, Projector};
use crate::read_source::ReadSources;
use crate::rows::Parameters;

/// The stream's events after a version, and the read sources (read after the append lock, so a
/// swap or retirement that committed is seen). The single `sources` row comes back even when
/// the stream has no new events.
pub(super) const LOAD: &str = "\
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
pub(super) const READ_SOURCES: &str = "\
SELECT coalesce(array_agg(domain), '{}') AS domains, coalesce(array_agg(source), '{}') AS sources
  FROM read_sources";

/// Appends a command's events (`$1` type, `$2` id, `$3`–`$6` the events' sequences, types,
/// versions and payloads, `$7` metadata, `$8` the recording time), checks that the projections
/// maintained inline are `$9` (those whose rows the statement writes: it fails with SQLSTATE
/// `CUT02` otherwise) and reads the read sources, after `WITH` parts of its own (each inline
/// projection's row changes, from `$10` on).
pub(super) fn append_statement(parts: &[Arc<str>]) -> Arc<str> {
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

pub(super) const UNIQUE_VIOLATION: &str = "23505";

/// The events' primary key (type, id, sequence): a violation means another writer took the
/// sequence number.
pub(super) const EVENTS_KEY: &str = "events_pkey";

/// An aggregate brought up to date, with the read sources.
pub(super) struct Loaded<A> {
    pub(super) aggregate: A,
    /// Its version and last position, both 0 for a stream with no events.
    pub(super) version: i64,
    pub(super) position: i64,
    pub(super) read_sources: ReadSources,
}

/// The read sources from a row's `domains` and `sources` arrays.
pub(super) fn sources_of(row: &sqlx::postgres::PgRow) -> Result<ReadSources, sqlx::Error> {
    let domains: Vec<String> = row.try_get("domains")?;
    let sources: Vec<String> = row.try_get("sources")?;
    Ok(ReadSources {
        stored: domains.into_iter().zip(sources).collect(),
    })
}

/// Every domain's read source.
pub(super) async fn read_sources(conn: &mut PgConnection) -> Result<ReadSources, sqlx::Error> {
    let row = sqlx::query(READ_SOURCES).fetch_one(conn).await?;
    sources_of(&row)
}

/// Brings aggregate `A` up to date from its stream, starting from `cached` (a state as of some
/// version) or from nothing.
pub(super) async fn load<A>(
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

pub(super) enum AppendError {
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
pub(super) fn recording_time() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Appends `events` after `version` and writes every inline projection's rows for them, in one
/// statement (a projection whose changes need more than one round writes its later rounds with
/// statements of their own, after it). Returns the stored events and the read sources.
pub(super) async fn append<A: Aggregate>(
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
pub(super) const FIRST_ROWS_PARAMETER: usize = 10;

/// SQLSTATE of `cutover_inline_projections_changed`.
pub(super) const INLINE_CHANGED: &str = "CUT02";
/// SQLSTATE of a table that does not exist (a retired projection's, named by a statement
/// built before the retirement was seen).
pub(super) const UNDEFINED_TABLE: &str = "42P01";
