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

use crate::store::StoredEvent;

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

    /// Just after `event`.
    pub fn after(event: &StoredEvent) -> Self {
        Self {
            transaction_id: event.transaction_id,
            position: event.position,
        }
    }
}

const EVENT_COLUMNS: &str = "position, transaction_id::text::bigint AS transaction_id, \
    aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
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
    let transaction_id: Option<i64> =
        sqlx::query_scalar("SELECT transaction_id::text::bigint FROM events WHERE position = $1")
            .bind(position)
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

/// Up to `limit` events after `after` in log order that no in-flight transaction can precede,
/// optionally only of the given aggregate types.
///
/// # Errors
/// A database error, or a stored row that does not fit [`StoredEvent`].
pub async fn read_safe<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
    limit: i64,
    aggregate_types: Option<&[String]>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read(executor, after, limit, aggregate_types, Horizon::Safe).await
}

/// Up to `limit` events after `after` in log order, up to `horizon`, optionally only of the
/// given aggregate types.
///
/// # Errors
/// A database error, or a stored row that does not fit [`StoredEvent`].
pub async fn read<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
    limit: i64,
    aggregate_types: Option<&[String]>,
    horizon: Horizon,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let bound = match horizon {
        Horizon::Safe => "AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
        Horizon::Everything => "",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
          WHERE (transaction_id, position) > ($1::text::xid8, $2)
            {bound}
            AND ($3::text[] IS NULL OR aggregate_type = ANY($3))
          ORDER BY transaction_id, position
          LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(aggregate_types)
        .bind(limit)
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
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events
                         WHERE (transaction_id, position) > ($1::text::xid8, $2)
                           AND transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))",
    )
    .bind(after.transaction_id)
    .bind(after.position)
    .fetch_one(executor)
    .await
}

fn stored_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        position: row.try_get("position")?,
        transaction_id: row.try_get("transaction_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get::<Value, _>("payload")?,
        metadata: row.try_get::<Value, _>("metadata")?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    })
}
