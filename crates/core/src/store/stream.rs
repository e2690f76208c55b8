//! The SQL of an aggregate's stream: reading it (with the read sources), and the one statement
//! that appends a command's events together with every inline projection's rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgConnection, Row};

use super::error::{CommandError, Written};
use cutover_engine::event::StoredEvent;
use cutover_engine::locks::APPEND_LOCK;
use cutover_engine::projection::{project_all, Projector};
use cutover_engine::read_source::ReadSources;
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::Statement;
use cutover_runtime::database::Route;

/// Appends events of one stream or several (`$1`–`$7` each event's aggregate type and id,
/// sequence, type, version, payload and metadata, in the order they take positions; `$8` the
/// recording time), checks that the projections maintained inline are `$9` (those whose rows the
/// statement writes: it fails with SQLSTATE `CUT02` otherwise) and that no domain of the events
/// is followed from the old system (SQLSTATE [`super::FOLLOWED_SQLSTATE`] otherwise), and reads
/// the read sources, after `WITH` parts of its own (each inline projection's row changes, from
/// `$10` on).
pub(super) fn append_statement(parts: &[Statement]) -> Arc<str> {
    static MADE: OnceLock<Mutex<HashMap<Vec<usize>, Arc<str>>>> = OnceLock::new();
    let key: Vec<usize> = parts.iter().map(|p| p.text).collect();
    let made = MADE.get_or_init(Mutex::default);
    let mut made = made.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(made.entry(key).or_insert_with(|| {
    let mut sql = String::from(
        "WITH appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                        metadata, recorded_at)
    SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload,
           e.metadata, $8
      FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[],
                  $7::jsonb[]) WITH ORDINALITY
           AS e(aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, n)
     ORDER BY e.n
    RETURNING position, transaction_id::text::bigint AS transaction_id, aggregate_type,
              aggregate_id, sequence
), sources AS (
    SELECT coalesce(array_agg(domain), '{}') AS domains, coalesce(array_agg(source), '{}') AS sources
      FROM read_sources
), inline AS (
    SELECT CASE WHEN names = $9::text[] THEN true
                ELSE public.cutover_inline_projections_changed($9::text[], names) END AS current
      FROM (SELECT coalesce(array_agg(name ORDER BY name), '{}') AS names
              FROM projections WHERE inline_active) AS registry
), writable AS (
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM follows WHERE aggregate_type = ANY ($1::text[]))
                  OR current_setting('cutover.writer', true) = 'follow' THEN true
                ELSE public.cutover_refuse_followed($1::text[]) END AS writable
)",
    );
    for (i, part) in parts.iter().enumerate() {
        sql.push_str(&format!(", projected_{i} AS ({})", part.sql));
    }
    let returned: Vec<String> = parts
        .iter()
        .enumerate()
        .filter(|(_, part)| part.returns)
        .map(|(i, _)| format!("SELECT written_table, written_row FROM projected_{i}"))
        .collect();
    if returned.is_empty() {
        sql.push_str(", written AS (SELECT '[]'::jsonb AS rows)");
    } else {
        sql.push_str(&format!(
            ", written AS (
    SELECT coalesce(jsonb_agg(jsonb_build_array(w.written_table, w.written_row)), '[]') AS rows
      FROM ({}) AS w
)",
            returned.join(" UNION ALL ")
        ));
    }
    sql.push_str(
        "
SELECT appended.position, appended.transaction_id, appended.aggregate_type, appended.aggregate_id,
       appended.sequence, sources.domains, sources.sources, inline.current,
       CASE WHEN appended.position = (SELECT min(position) FROM appended) THEN written.rows END
           AS written
  FROM appended CROSS JOIN sources CROSS JOIN inline CROSS JOIN writable CROSS JOIN written",
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

/// The read sources from the `domains` and `sources` arrays a statement read.
fn sources(domains: Vec<String>, sources: Vec<String>) -> ReadSources {
    ReadSources {
        stored: domains.into_iter().zip(sources).collect(),
    }
}

/// The read sources from a row's `domains` and `sources` columns.
pub(super) fn sources_of(row: &sqlx::postgres::PgRow) -> Result<ReadSources, sqlx::Error> {
    Ok(sources(row.try_get("domains")?, row.try_get("sources")?))
}

/// Every domain's read source, for a command that appended nothing and read no stream.
pub(super) async fn read_sources(conn: &mut PgConnection) -> Result<ReadSources, sqlx::Error> {
    let read = sqlx::query!(
        r#"SELECT coalesce(array_agg(domain), '{}') AS "domains!",
                  coalesce(array_agg(source), '{}') AS "sources!"
             FROM read_sources"#
    )
    .fetch_one(conn)
    .await?;
    Ok(sources(read.domains, read.sources))
}

/// A row of [`fetch`]: the read sources, the stream's place among those asked for (from 1),
/// and one of its events (none in the one row of a stream with no new events).
pub(super) struct StreamRow {
    domains: Vec<String>,
    sources: Vec<String>,
    stream: i64,
    sequence: Option<i64>,
    position: Option<i64>,
    event_type: Option<String>,
    event_version: Option<String>,
    payload: Option<Value>,
}

/// The new events of each of `streams` (type, id, version), in order, and the read sources
/// (read after the append lock, so a swap or retirement that committed is seen).
pub(super) async fn fetch(
    conn: &mut PgConnection,
    streams: &[(&str, &str, i64)],
) -> Result<(Vec<Vec<StreamRow>>, ReadSources), sqlx::Error> {
    let types: Vec<&str> = streams.iter().map(|s| s.0).collect();
    let ids: Vec<&str> = streams.iter().map(|s| s.1).collect();
    let versions: Vec<i64> = streams.iter().map(|s| s.2).collect();
    let rows = sqlx::query_as!(
        StreamRow,
        r#"WITH sources AS (
               SELECT coalesce(array_agg(domain), '{}') AS domains,
                      coalesce(array_agg(source), '{}') AS sources
                 FROM read_sources
           )
           SELECT sources.domains AS "domains!", sources.sources AS "sources!",
                  wanted.stream AS "stream!", e.sequence AS "sequence?", e.position AS "position?",
                  e.event_type AS "event_type?", e.event_version AS "event_version?",
                  e.payload AS "payload?"
             FROM sources
            CROSS JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY
                  AS wanted(aggregate_type, aggregate_id, after, stream)
             LEFT JOIN events AS e
               ON e.aggregate_type = wanted.aggregate_type
              AND e.aggregate_id = wanted.aggregate_id AND e.sequence > wanted.after
            ORDER BY wanted.stream, e.sequence"#,
        &types as _,
        &ids as _,
        &versions
    )
    .fetch_all(conn)
    .await?;
    let read_sources = match rows.first() {
        Some(row) => sources(row.domains.clone(), row.sources.clone()),
        None => ReadSources::default(),
    };
    let mut each: Vec<Vec<StreamRow>> = streams.iter().map(|_| Vec::new()).collect();
    for row in rows {
        let place = usize::try_from(row.stream - 1)
            .ok()
            .and_then(|i| each.get_mut(i))
            .ok_or(sqlx::Error::RowNotFound)?;
        place.push(row);
    }
    Ok((each, read_sources))
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
    let (aggregate, version, position) = cached.unwrap_or_default();
    let (mut rows, read_sources) = fetch(conn, &[(A::TYPE, aggregate_id, version)]).await?;
    let mut loaded = Loaded {
        aggregate,
        version,
        position,
        read_sources,
    };
    loaded.apply(aggregate_id, rows.pop().unwrap_or_default())?;
    Ok(loaded)
}

impl<A: Aggregate> Loaded<A> {
    /// Applies the events of `rows` (a stream's, from [`fetch`]) on top.
    pub(super) fn apply(
        &mut self,
        aggregate_id: &str,
        rows: Vec<StreamRow>,
    ) -> Result<(), CommandError<A::Error>>
    where
        A::Error: 'static,
    {
        for row in rows {
            // The one row of a stream with no new events carries no event.
            let Some(sequence) = row.sequence else {
                continue;
            };
            let (Some(position), Some(event_type), Some(event_version), Some(payload)) =
                (row.position, row.event_type, row.event_version, row.payload)
            else {
                return Err(CommandError::Broken(format!(
                    "event {sequence} of {aggregate_id} was read without its columns"
                )));
            };
            self.version = sequence;
            self.position = position;
            let (_, payload) = crate::domain::current(&event_type, &event_version, payload)?;
            let event = serde_json::from_value::<A::Event>(payload).map_err(|source| {
                CommandError::CorruptEvent {
                    aggregate_type: A::TYPE.to_owned(),
                    aggregate_id: aggregate_id.to_owned(),
                    sequence,
                    source,
                }
            })?;
            self.aggregate.apply(event);
        }
        Ok(())
    }
}

pub(super) enum AppendError {
    /// Another writer took a sequence number; Postgres's detail names the key.
    Conflict(Option<String>),
    /// The projections maintained inline are not the ones the statement was built for.
    InlineChanged,
    /// The registry maintains a projection inline that this server has no projector for.
    UnknownProjection(String),
    /// A projection's rows need more than one statement, and one was asked for.
    NeedsTransaction,
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
                Self::Conflict(
                    db.try_downcast_ref::<PgDatabaseError>()
                        .and_then(PgDatabaseError::detail)
                        .map(str::to_owned),
                )
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

/// A command's events, ready to append after `version` of aggregate `aggregate_id`'s stream
/// (their positions, transaction id and recording time are the append's).
pub(super) fn to_store<A: Aggregate>(
    aggregate_id: &str,
    version: i64,
    events: &[A::Event],
    metadata: &Value,
) -> Result<Vec<StoredEvent>, serde_json::Error> {
    let recorded_at = recording_time();
    (version + 1..)
        .zip(events)
        .map(|(sequence, event)| {
            Ok(StoredEvent {
                position: 0,
                transaction_id: 0,
                aggregate_type: A::TYPE.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_value(event)?,
                metadata: metadata.clone(),
                recorded_at,
            })
        })
        .collect()
}

/// Appends `events` (of one stream or several, each stream's in sequence order, from
/// [`to_store`]) and writes every inline projection's rows for them, in one statement (a
/// projection whose changes need more than one round writes its later rounds with statements
/// of their own, after it; with `one_statement`, such a projection is refused instead, before
/// anything is sent: outside a transaction, the statements would not commit together). Fills in
/// the events' positions, transaction id and recording time; returns the read sources, and the
/// rows written when the one statement wrote them all.
pub(super) async fn append(
    conn: &mut PgConnection,
    projectors: &[Arc<dyn Projector>],
    inline: &[String],
    events: &mut [StoredEvent],
    one_statement: bool,
) -> Result<(ReadSources, Option<Written>), AppendError> {
    let recorded_at = recording_time();
    for event in events.iter_mut() {
        event.recorded_at = recorded_at;
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
    let changes = project_all(&inline_projectors, events)
        .map_err(AppendError::Projection)?
        .in_lock_order();
    let (fused, later) = if changes.single_round() {
        (changes.into_statements(FIRST_ROWS_PARAMETER), None)
    } else if one_statement {
        return Err(AppendError::NeedsTransaction);
    } else {
        (Vec::new(), Some(changes))
    };
    let sql = append_statement(&fused);
    let column = |f: fn(&StoredEvent) -> &str| events.iter().map(f).collect::<Vec<_>>();
    let mut query = sqlx::query(sql.as_ref())
        .bind(column(|e| &e.aggregate_type))
        .bind(column(|e| &e.aggregate_id))
        .bind(events.iter().map(|e| e.sequence).collect::<Vec<_>>())
        .bind(column(|e| &e.event_type))
        .bind(column(|e| &e.event_version))
        .bind(events.iter().map(|e| &e.payload).collect::<Vec<_>>())
        .bind(events.iter().map(|e| &e.metadata).collect::<Vec<_>>())
        .bind(recorded_at)
        .bind(inline);
    for statement in &fused {
        query = query.bind(&statement.rows);
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(|e| {
        let refused = cutover_engine::rows::is_legacy_id_taken(&e);
        match fused.iter().find(|s| refused && s.refuses) {
            Some(statement) => {
                AppendError::Projection(ProjectionError::of(statement.projection, e))
            }
            None => AppendError::from(e),
        }
    })?;
    let mut read_sources = ReadSources::default();
    let mut written = None;
    for (i, row) in rows.iter().enumerate() {
        let (aggregate_type, aggregate_id, sequence): (&str, &str, i64) = (
            row.try_get("aggregate_type")?,
            row.try_get("aggregate_id")?,
            row.try_get("sequence")?,
        );
        let is = |e: &StoredEvent| {
            e.sequence == sequence
                && e.aggregate_id == aggregate_id
                && e.aggregate_type == aggregate_type
        };
        // The rows come back in the order they were inserted, in practice.
        let place = match events.get(i) {
            Some(e) if is(e) => Some(i),
            _ => events.iter().position(is),
        };
        let event = place
            .and_then(|i| events.get_mut(i))
            .ok_or(sqlx::Error::RowNotFound)?;
        event.position = row.try_get("position")?;
        event.transaction_id = row.try_get("transaction_id")?;
        read_sources = sources_of(row)?;
        if let Some(rows) = row.try_get::<Option<Value>, _>("written")? {
            written = Written::from_json(rows);
        }
    }
    if events.iter().any(|e| e.position == 0) {
        return Err(AppendError::Database(sqlx::Error::RowNotFound));
    }
    match later {
        Some(changes) => {
            changes.write(conn).await.map_err(AppendError::Projection)?;
            Ok((read_sources, None))
        }
        None => Ok((read_sources, written)),
    }
}

/// Whether a conflict's `detail` names one of `events` as the key another writer took.
pub(super) fn conflict_names(detail: &str, events: &[StoredEvent]) -> bool {
    events.iter().any(|e| {
        detail.contains(&format!(
            "=({}, {}, {})",
            e.aggregate_type, e.aggregate_id, e.sequence
        ))
    })
}

/// The first parameter of the row changes in the append statement (after the events' and the
/// inline projections').
pub(super) const FIRST_ROWS_PARAMETER: usize = 10;

/// SQLSTATE of `cutover_inline_projections_changed`.
pub(super) const INLINE_CHANGED: &str = "CUT02";
/// SQLSTATE of a table that does not exist (a retired projection's, named by a statement
/// built before the retirement was seen).
pub(super) const UNDEFINED_TABLE: &str = "42P01";

/// Begins a command's transaction and takes, in the same round trip, the append lock (shared)
/// and the aggregates' locks (`locks`, from [`aggregate_lock_key`], in ascending order when
/// there are several). The aggregate lock serialises the commands of one aggregate across every
/// server instance sharing the database, so concurrent commands queue instead of failing the
/// race for a sequence number. The statement holds only numbers, never client input.
/// `route`'s settings follow the `BEGIN`.
pub(super) fn begin_locked(route: Route, locks: &[i64]) -> String {
    let mut sql = format!(
        "BEGIN{}; SELECT pg_advisory_xact_lock_shared({APPEND_LOCK})",
        route.transaction_settings()
    );
    if locks.len() <= FEW_LOCKS {
        for lock in locks {
            sql.push_str(&format!(", pg_advisory_xact_lock({lock})"));
        }
    } else {
        // Past a select list's length: one row per lock, taken in the order given.
        let keys: Vec<String> = locks.iter().map(i64::to_string).collect();
        sql.push_str(&format!(
            "; SELECT count(*) FROM (SELECT pg_advisory_xact_lock(k) \
             FROM unnest('{{{}}}'::bigint[]) WITH ORDINALITY AS l(k, n) ORDER BY n) AS locked",
            keys.join(",")
        ));
    }
    sql
}

/// Most aggregate locks [`begin_locked`] takes in its select list.
const FEW_LOCKS: usize = 64;
