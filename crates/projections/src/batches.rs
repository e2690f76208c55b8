//! What the batch routes answer with, and the queries that read it from either model: the old
//! clients' batch (the legacy `batch_state` row's shape) and completions, and the new shape's
//! batch counters and completion rows.

use chrono::{DateTime, Utc};
use cutover_core::read_source::ReadSource;
use sqlx::{FromRow as _, PgConnection, Row as _};

use crate::batch_state::BatchState;
/// A completion: the old clients read its player and count, the new shape also when it was
/// recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct CompletionRow {
    pub player_lookup: String,
    pub predictions_count: i32,
    /// When the completion was recorded; the old answers do not show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// A batch in the new shape: its counters.
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

/// The queries of one model that read what the old clients see: the batch (`$1`) as a
/// [`BatchState`], one completion (`$1`, player `$2`) and a page of completions (`$1`, after
/// `$2`, at most `$3`, by player) as [`CompletionRow`]s without their time, and the batch with
/// one completion in one query (each side's key NULL when there is no such row).
pub struct OldAnswerQueries {
    pub batch: &'static str,
    pub completion: &'static str,
    pub completions: &'static str,
    pub batch_and_completion: &'static str,
}

/// `OldAnswerQueries` from the batch, completion and completions queries of a model, written
/// as literals (or macros that expand to them).
macro_rules! old_answer_queries {
    ($batch:expr, $completion:expr, $completions:expr) => {
        $crate::batches::OldAnswerQueries {
            batch: $batch,
            completion: $completion,
            completions: $completions,
            // A FULL JOIN of the two has no plan but a merge or hash join, which the shared
            // transactions of the command path turn off: it scanned the whole table.
            batch_and_completion: concat!(
                "SELECT * FROM (SELECT) AS one LEFT JOIN (",
                $batch,
                ") AS batch ON true LEFT JOIN (",
                $completion,
                ") AS completion ON true"
            ),
        }
    };
}
pub(crate) use old_answer_queries;

fn queries(source: ReadSource) -> &'static OldAnswerQueries {
    match source {
        ReadSource::Legacy => &crate::batch_state::OLD_ANSWER,
        ReadSource::New => &crate::batch_completions::OLD_ANSWER,
    }
}

/// Batch `batch_id` as the old clients read it, from `source`.
///
/// # Errors
/// A database error.
pub async fn answer(
    conn: &mut PgConnection,
    source: ReadSource,
    batch_id: &str,
) -> Result<Option<BatchState>, sqlx::Error> {
    sqlx::query_as(queries(source).batch)
        .bind(batch_id)
        .fetch_optional(conn)
        .await
}

/// Batch `batch_id` and the completion of `player` in it as the old clients read them, from
/// `source`, by one query.
///
/// # Errors
/// A database error.
pub async fn answer_with_completion(
    conn: &mut PgConnection,
    source: ReadSource,
    batch_id: &str,
    player: &str,
) -> Result<(Option<BatchState>, Option<CompletionRow>), sqlx::Error> {
    let row = sqlx::query(queries(source).batch_and_completion)
        .bind(batch_id)
        .bind(player)
        .fetch_optional(conn)
        .await?;
    let Some(row) = row else {
        return Ok((None, None));
    };
    let batch = match row.try_get::<Option<String>, _>("batch_id")? {
        Some(_) => Some(BatchState::from_row(&row)?),
        None => None,
    };
    let completion = match row.try_get::<Option<String>, _>("player_lookup")? {
        Some(_) => Some(CompletionRow::from_row(&row)?),
        None => None,
    };
    Ok((batch, completion))
}

/// Up to `limit` completions of `batch_id` with lookups after `after`, in lookup order, as the
/// old clients read them, from `source`.
///
/// # Errors
/// A database error.
pub async fn completions_answer(
    conn: &mut PgConnection,
    source: ReadSource,
    batch_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<CompletionRow>, sqlx::Error> {
    sqlx::query_as(queries(source).completions)
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await
}
