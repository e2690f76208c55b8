//! What both batch projections answer with: the rows their queries read.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::{FromRow as _, Row as _};

/// A completion as a read model lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct CompletionRow {
    pub player_lookup: String,
    pub predictions_count: i32,
    /// When the completion was recorded; the legacy shape does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// A batch's counters, as command answers carry them (whichever the read source: the legacy
/// row's arrays are counted, not sent).
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct BatchSummary {
    pub batch_id: String,
    pub expected_count: i32,
    pub completed_count: i32,
    pub total_predictions: i64,
    pub is_complete: bool,
    pub last_updated: DateTime<Utc>,
    /// The batch's event sequence the row reflects: its version.
    #[serde(skip)]
    pub last_sequence: i64,
}

/// A read-model row of one batch, with the queries that read it and its completions.
pub trait BatchRow: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin {
    /// One batch, by `$1` batch id.
    const SELECT_ONE: &'static str;
    /// The [`BatchSummary`] of batch `$1`.
    const SELECT_SUMMARY: &'static str;
    /// The completion of player `$2` in batch `$1`, as a [`CompletionRow`].
    const SELECT_COMPLETION: &'static str;
    /// Up to `$3` completions of batch `$1` with player lookups after `$2`, by lookup.
    const SELECT_COMPLETIONS: &'static str;
}

/// The row of batch `batch_id`, if the table has one.
///
/// # Errors
/// A database error.
pub async fn find<'e, T: BatchRow>(
    executor: impl sqlx::PgExecutor<'e>,
    batch_id: &str,
) -> Result<Option<T>, sqlx::Error> {
    sqlx::query_as(T::SELECT_ONE)
        .bind(batch_id)
        .fetch_optional(executor)
        .await
}

/// The summary of batch `batch_id` in `T`'s read model.
///
/// # Errors
/// A database error.
pub async fn summary<'e, T: BatchRow>(
    executor: impl sqlx::PgExecutor<'e>,
    batch_id: &str,
) -> Result<Option<BatchSummary>, sqlx::Error> {
    sqlx::query_as(T::SELECT_SUMMARY)
        .bind(batch_id)
        .fetch_optional(executor)
        .await
}

/// The summary of batch `batch_id` in `T`'s read model and the completion of `player` in it,
/// read by one query.
///
/// # Errors
/// A database error.
pub async fn summary_and_completion<'e, T: BatchRow + 'static>(
    executor: impl sqlx::PgExecutor<'e>,
    batch_id: &str,
    player: &str,
) -> Result<(Option<BatchSummary>, Option<CompletionRow>), sqlx::Error> {
    let row = sqlx::query(summary_and_completion_sql::<T>())
        .bind(batch_id)
        .bind(player)
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else {
        return Ok((None, None));
    };
    // One row, whatever the read model holds: each side's key is null when it has no row.
    let batch = match row.try_get::<Option<String>, _>("batch_id")? {
        Some(_) => Some(BatchSummary::from_row(&row)?),
        None => None,
    };
    let completion = match row.try_get::<Option<String>, _>("player_lookup")? {
        Some(_) => Some(CompletionRow::from_row(&row)?),
        None => None,
    };
    Ok((batch, completion))
}

/// `T`'s summary and completion queries joined into one, made once per read model. (A `FULL
/// JOIN` of the two has no plan but a merge or hash join, which the shared transactions of the
/// command path turn off: it scanned the whole table.)
fn summary_and_completion_sql<T: BatchRow + 'static>() -> &'static str {
    static MADE: OnceLock<Mutex<HashMap<TypeId, &'static str>>> = OnceLock::new();
    let mut made = MADE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    made.entry(TypeId::of::<T>()).or_insert_with(|| {
        let sql = format!(
            "SELECT * FROM (SELECT) AS one LEFT JOIN ({}) AS summary ON true \
             LEFT JOIN ({}) AS completion ON true",
            T::SELECT_SUMMARY,
            T::SELECT_COMPLETION
        );
        // A few bytes per read model, kept for the process's life.
        Box::leak(sql.into_boxed_str())
    })
}

/// Up to `limit` completions of `batch_id` with lookups after `after`, in lookup order.
///
/// # Errors
/// A database error.
pub async fn completions<'e, T: BatchRow>(
    executor: impl sqlx::PgExecutor<'e>,
    batch_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<CompletionRow>, sqlx::Error> {
    sqlx::query_as(T::SELECT_COMPLETIONS)
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await
}
