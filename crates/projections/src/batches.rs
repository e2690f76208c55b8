//! What the batch routes answer with, and the queries that read it from either model: the old
//! clients' batch (the legacy `batch_state` row's shape) and completions, and the new shape's
//! batch counters and completion rows.

use chrono::{DateTime, Utc};
use cutover_core::read_source::ReadSource;
use sqlx::PgConnection;

use crate::batch_state::BatchState;
/// A completion: the old clients read its player and count, the new shape also when it was
/// recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CompletionRow {
    pub player_lookup: String,
    pub predictions_count: i32,
    /// When the completion was recorded; the old answers do not show it.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// A batch in the new shape: its counters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
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
/// [`BatchState`]; the completions of the players `$2` (an array) in batch `$1`, by player; and
/// a page of completions (`$1`, after `$2`, at most `$3`, by player). Completions are
/// [`CompletionRow`]s without their time.
pub struct OldAnswerQueries {
    pub batch: &'static str,
    pub completions_of: &'static str,
    pub completions: &'static str,
}

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

/// The completions of `players` in batch `batch_id` as the old clients read them, from
/// `source`, by player lookup.
///
/// # Errors
/// A database error.
pub async fn completions_of(
    conn: &mut PgConnection,
    source: ReadSource,
    batch_id: &str,
    players: &[String],
) -> Result<Vec<CompletionRow>, sqlx::Error> {
    sqlx::query_as(queries(source).completions_of)
        .bind(batch_id)
        .bind(players)
        .fetch_all(conn)
        .await
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
