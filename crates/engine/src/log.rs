//! Reading the event log in a gap-free order.
//!
//! A position is handed out when an event is inserted, not when it commits, so under
//! concurrent writers position 120 can be visible while 100 is still in flight. A reader that
//! resumed "after 120" would skip 100 for ever. Readers here follow the transaction-id
//! technique: they order by `(transaction_id, position)` and take only events whose
//! transaction id is below `pg_snapshot_xmin(pg_current_snapshot())`, i.e. whose transaction
//! and every older one has ended. Whatever commits later sorts after what was already read.
//!
//! Clients resume with a position alone: the position of an event they were given names
//! exactly one place in that order, because its transaction id is looked up.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row as _};

use crate::event::StoredEvent;

/// A place in the log order: after the event with this transaction id and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogCursor {
    pub transaction_id: i64,
    pub position: i64,
}

impl LogCursor {
    /// Before the first event.
    pub const START: Self = Self {
        transaction_id: 0,
        position: 0,
    };
}

/// The payload and metadata are sent only for wanted events (`$3`: the wanted types).
const EVENT_COLUMNS: &str = "position, transaction_id::text::bigint AS transaction_id, \
    aggregate_type, aggregate_id, sequence, event_type, event_version, \
    CASE WHEN $3::text[] IS NULL OR aggregate_type = ANY($3) THEN payload END AS payload, \
    CASE WHEN $3::text[] IS NULL OR aggregate_type = ANY($3) THEN metadata END AS metadata, \
    recorded_at";

/// The cursor just after the event at `position`; `None` when no event has it. Position 0
/// is the start of the log.
///
/// # Errors
/// A database error.
pub async fn cursor_at<'e>(
    executor: impl PgExecutor<'e>,
    position: i64,
) -> Result<Option<LogCursor>, sqlx::Error> {
    if position == 0 {
        return Ok(Some(LogCursor::START));
    }
    let transaction_id: Option<i64> = sqlx::query_scalar!(
        r#"SELECT transaction_id::text::bigint AS "transaction_id!" FROM events WHERE position = $1"#,
        position
    )
    .fetch_optional(executor)
    .await?;
    Ok(transaction_id.map(|transaction_id| LogCursor {
        transaction_id,
        position,
    }))
}

/// How far a read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// Only events that no in-flight transaction can precede: what any reader may take.
    Safe,
    /// Every visible event. Only for a reader that holds the append lock exclusively (or reads
    /// in a snapshot taken while it was held), when no append can be in flight.
    Everything,
}

/// What one read of the log found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Read {
    /// The events of the wanted aggregate types, in log order.
    pub events: Vec<StoredEvent>,
    /// Just after the last event looked at, wanted or not; `None` when there was none. The
    /// next read starts here.
    pub scanned_to: Option<LogCursor>,
    /// How many events were looked at.
    pub scanned: usize,
}

/// Up to `limit` events after `after` in log order that no in-flight transaction can precede;
/// of them, those of the given aggregate types.
///
/// # Errors
/// A database error, or a stored row that does not fit [`StoredEvent`].
pub async fn read_safe<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
    limit: i64,
    aggregate_types: Option<&[String]>,
) -> Result<Read, sqlx::Error> {
    read(executor, after, limit, aggregate_types, Horizon::Safe).await
}

/// Whether everything the primary of `conn` shows now is also on a synchronous standby, waiting
/// up to `timeout` for it: `true` at once on a server without synchronous standbys (or on a
/// standby, or when the role may not see the standbys' positions: `pg_read_all_stats`). With
/// several synchronous standbys one having it is enough: a failover promotes the most advanced.
///
/// A commit that waits for its standby is not visible; but a primary that crashes and restarts
/// shows the commits that were waiting (they are in its WAL), and a failover right after may
/// promote a standby that never received them. A reader of the log on the primary asks this
/// after its read and before it hands the events out, so that it never hands out an event a
/// failover can take back.
///
/// # Errors
/// A database error.
pub async fn on_standby(
    conn: &mut sqlx::PgConnection,
    timeout: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    // Every commit the read saw was flushed before now: a synchronous commit is flushed
    // before it is visible, and a crash's recovery flushes what it replays.
    let shown = sqlx::query_scalar!(
        r#"SELECT CASE WHEN pg_is_in_recovery()
                         OR current_setting('synchronous_standby_names') = '' THEN NULL
                    ELSE pg_current_wal_flush_lsn()::text END AS shown"#
    )
    .fetch_one(&mut *conn)
    .await?;
    let Some(shown) = shown else {
        return Ok(true);
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // A role without pg_read_all_stats sees every column but the pid as NULL.
        let standby = sqlx::query!(
            r#"SELECT count(*) FILTER (WHERE flush_lsn IS NULL) AS "hidden!",
                      coalesce(max(flush_lsn) FILTER (WHERE sync_state IN ('sync', 'quorum'))
                                   >= $1::text::pg_lsn, false) AS "has_it!"
                 FROM pg_stat_replication"#,
            shown
        )
        .fetch_one(&mut *conn)
        .await?;
        if standby.has_it || standby.hidden > 0 {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Up to `limit` events after `after` in log order, up to `horizon`; of them, those of the
/// given aggregate types.
///
/// The scan always follows the `(transaction_id, position)` index and filters types as it
/// goes (the payload of an unwanted event is not even sent): a type condition in the `WHERE`
/// clause lets the planner pick a scan that sorts every remaining event of those types, which
/// on a large log costs seconds per page.
///
/// # Errors
/// A database error, or a stored row that does not fit [`StoredEvent`].
pub async fn read<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
    limit: i64,
    aggregate_types: Option<&[String]>,
    horizon: Horizon,
) -> Result<Read, sqlx::Error> {
    Rows::fetch(executor, after, limit, aggregate_types, horizon)
        .await?
        .decode()
}

/// The rows of a [`read`], not yet decoded (a rebuild decodes them on a thread of their own).
pub struct Rows(Vec<PgRow>);

impl Rows {
    /// The rows of [`read`].
    ///
    /// # Errors
    /// A database error.
    pub async fn fetch<'e>(
        executor: impl PgExecutor<'e>,
        after: LogCursor,
        limit: i64,
        aggregate_types: Option<&[String]>,
        horizon: Horizon,
    ) -> Result<Self, sqlx::Error> {
        let bound = match horizon {
            Horizon::Safe => "AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
            Horizon::Everything => "",
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS},
                    $3::text[] IS NULL OR aggregate_type = ANY($3) AS wanted
               FROM events
              WHERE (transaction_id, position) > ($1::text::xid8, $2)
                {bound}
              -- the table's columns, not the output's bigint transaction_id: the index order
              ORDER BY events.transaction_id, events.position
              LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(after.transaction_id)
            .bind(after.position)
            .bind(aggregate_types)
            .bind(limit)
            .fetch_all(executor)
            .await?;
        Ok(Self(rows))
    }

    /// How many rows the read scanned.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The events of the rows, and how far they reach.
    ///
    /// # Errors
    /// A stored row that does not fit [`StoredEvent`].
    pub fn decode(self) -> Result<Read, sqlx::Error> {
        let rows = self.0;
        let mut read = Read {
            scanned: rows.len(),
            ..Read::default()
        };
        for row in &rows {
            read.scanned_to = Some(LogCursor {
                transaction_id: row.try_get("transaction_id")?,
                position: row.try_get("position")?,
            });
            if row.try_get::<bool, _>("wanted")? {
                read.events.push(stored_event(row)?);
            }
        }
        Ok(read)
    }
}

/// Every event of the aggregates `aggregate_ids` of `aggregate_type`, in log order (for a
/// repair, which holds those aggregates' locks, so none of their events is in flight).
///
/// # Errors
/// A database error, or a stored payload that cannot be upcast.
pub async fn aggregate_events<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_ids: &[String],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
          WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND $3::text[] IS NULL
          ORDER BY events.transaction_id, events.position"
    );
    let rows = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_ids)
        .bind(Option::<Vec<String>>::None)
        .fetch_all(executor)
        .await?;
    rows.iter().map(stored_event).collect()
}

/// Whether committed events after `after` are being held back because an older transaction
/// is still running (they will be served once it ends).
///
/// # Errors
/// A database error.
pub async fn held_back<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM events
                           WHERE (transaction_id, position) > ($1::bigint::text::xid8, $2)
                             AND transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))
                  AS "held_back!""#,
        after.transaction_id,
        after.position
    )
    .fetch_one(executor)
    .await
}

/// How many committed events the feed holds back because an older transaction is still
/// running anywhere in the cluster.
///
/// # Errors
/// A database error.
pub async fn held_back_count<'e>(executor: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "held_back!" FROM events
            WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())"#
    )
    .fetch_one(executor)
    .await
}

/// An event as its row holds it, in the shape it was stored in (its readers bring it to the
/// current shape: see [`crate::upcast`]); a payload left out by the query (another aggregate
/// type) is `null`.
fn stored_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        position: row.try_get("position")?,
        transaction_id: row.try_get("transaction_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get::<Value, _>("metadata")?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    })
}

/// A transaction that holds the log's horizon back: readers that follow the log (the feed, a
/// rebuild's catch-up) wait for it to end before they read what committed after it started.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HorizonBlocker {
    pub pid: i32,
    /// How long its transaction has been open, in seconds.
    pub age_seconds: f64,
    pub application: String,
    /// The first line of its current (or last) statement.
    pub query: String,
}

/// Transactions younger than this are ordinary traffic, not a blocker.
pub const BLOCKER_AFTER_SECONDS: f64 = 1.0;

/// The oldest running transaction of the cluster, when it holds the horizon back (it has a
/// transaction id at the horizon and has been open for [`BLOCKER_AFTER_SECONDS`] or more).
///
/// # Errors
/// A database error.
pub async fn horizon_blocker<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Option<HorizonBlocker>, sqlx::Error> {
    // backend_xid is the 32-bit form of the horizon's xid8.
    sqlx::query_as(
        "SELECT pid, extract(epoch FROM now() - xact_start)::float8 AS age_seconds,
                application_name AS application, split_part(query, E'\\n', 1) AS query
           FROM pg_stat_activity
          WHERE backend_xid::text
                = (pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296)::text
            AND now() - xact_start >= make_interval(secs => $1)
          ORDER BY xact_start
          LIMIT 1",
    )
    .bind(BLOCKER_AFTER_SECONDS)
    .fetch_optional(executor)
    .await
}
