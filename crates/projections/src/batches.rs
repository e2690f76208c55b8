//! What the batch routes answer with, and the queries that read it from either model: the old
//! clients' batch (the legacy `batch_state` row's shape) and completions, and the new shape's
//! batch counters and completion rows.

use cutover_core::store::Written;
use cutover_engine::read_source::ReadSource;
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::batch_completions::{CompletionRow, COMPLETIONS};
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

/// The completion of `player` in batch `batch_id` after a command, as the old clients read it
/// from `source`: as the command's statement wrote it (`written`: `batch_state` hands back the
/// players a write added, `batch_completions` its rows), or, when it wrote none there (the
/// player was completed before), read on `conn`.
///
/// # Errors
/// A database error.
pub async fn completion_after(
    conn: &mut PgConnection,
    source: ReadSource,
    batch_id: &str,
    player: &str,
    written: Option<&Written>,
) -> Result<Vec<CompletionRow>, sqlx::Error> {
    let found = written.and_then(|written| match source {
        ReadSource::Legacy => {
            let key = [("batch_id", json!(batch_id))];
            let row: Value = written.find(crate::batch_state::TABLE.name, &key)?;
            let count = row.get("predictions_by_player")?.get(player)?.as_i64()?;
            Some(CompletionRow {
                player_lookup: player.to_owned(),
                predictions_count: i32::try_from(count).ok()?,
                completed_at: None,
            })
        }
        ReadSource::New => {
            let key = [
                ("batch_id", json!(batch_id)),
                ("player_lookup", json!(player)),
            ];
            let row: CompletionRow = written.find(COMPLETIONS.name, &key)?;
            // The old answers do not show when.
            Some(CompletionRow {
                completed_at: None,
                ..row
            })
        }
    });
    match found {
        Some(row) => Ok(vec![row]),
        None => completions_of(conn, source, batch_id, &[player.to_owned()]).await,
    }
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
