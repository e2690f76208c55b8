//! What the batch routes answer with, and the queries that read it from either model: the old
//! clients' batch (the legacy `batch_state` row's shape) and completions, and the new shape's
//! batch counters and completion rows.

use cutover_engine::read_source::ReadSource;
use sqlx::PgConnection;

use crate::batch_completions::CompletionRow;
use crate::batch_state::{BatchState, OldAnswerQueries};

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
