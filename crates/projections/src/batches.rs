//! What both batch projections read from the log: batch events, with runs of consecutive
//! completions of one batch gathered into one step so that a bulk of thousands of completions
//! is written with a few set-based statements instead of one per player.

use chrono::{DateTime, Utc};
use cutover_core::domain::batch::BatchEvent;
use cutover_core::projection::ProjectionError;
use cutover_core::store::StoredEvent;

use sqlx::PgConnection;

use crate::{db, decode};

/// One write a batch projection makes.
enum BatchStep<'e> {
    Started {
        event: &'e StoredEvent,
        expected_players: Vec<String>,
    },
    /// Consecutive `PlayerCompleted` events of one batch from one command, sequences
    /// `first..=last`.
    Completions {
        batch_id: &'e str,
        first_sequence: i64,
        last_sequence: i64,
        recorded_at: DateTime<Utc>,
        players: Vec<String>,
        counts: Vec<i32>,
    },
    Completed {
        event: &'e StoredEvent,
    },
}

/// Decodes `events` (prediction-batch events in log order) into steps.
fn steps<'e>(
    projector: &'static str,
    events: &[&'e StoredEvent],
) -> Result<Vec<BatchStep<'e>>, ProjectionError> {
    let mut steps: Vec<BatchStep<'e>> = Vec::new();
    for event in events {
        match decode::<BatchEvent>(projector, event)? {
            BatchEvent::BatchStarted {
                expected_player_lookups,
            } => steps.push(BatchStep::Started {
                event,
                expected_players: expected_player_lookups,
            }),
            BatchEvent::BatchCompleted { .. } => steps.push(BatchStep::Completed { event }),
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
            } => {
                let count = i32::try_from(predictions_count).unwrap_or(i32::MAX);
                if let Some(BatchStep::Completions {
                    batch_id,
                    last_sequence,
                    recorded_at,
                    players,
                    counts,
                    ..
                }) = steps.last_mut()
                {
                    // One run is one command's completions: they share the batch, follow each
                    // other and carry the same time.
                    if *batch_id == event.aggregate_id
                        && *last_sequence + 1 == event.sequence
                        && *recorded_at == event.recorded_at
                    {
                        *last_sequence = event.sequence;
                        players.push(player_lookup);
                        counts.push(count);
                        continue;
                    }
                }
                steps.push(BatchStep::Completions {
                    batch_id: &event.aggregate_id,
                    first_sequence: event.sequence,
                    last_sequence: event.sequence,
                    recorded_at: event.recorded_at,
                    players: vec![player_lookup],
                    counts: vec![count],
                });
            }
        }
    }
    Ok(steps)
}

/// The three statements of a batch projection. Each takes the same parameters:
/// `started`: ($1 batch id, $2 expected players, $3 time, $4 sequence);
/// `completions`: ($1 batch id, $2 players, $3 counts, $4 time, $5 last sequence, $6 first
/// sequence); `completed`: ($1 batch id, $2 time, $3 sequence).
pub(crate) struct BatchStatements {
    pub started: &'static str,
    pub completions: &'static str,
    pub completed: &'static str,
}

/// Applies `events` with `statements`, one statement per step.
pub(crate) async fn apply_steps(
    projector: &'static str,
    statements: &BatchStatements,
    conn: &mut PgConnection,
    events: &[&StoredEvent],
) -> Result<(), ProjectionError> {
    for step in steps(projector, events)? {
        let query = match step {
            BatchStep::Started {
                event,
                expected_players,
            } => sqlx::query(statements.started)
                .bind(&event.aggregate_id)
                .bind(expected_players)
                .bind(event.recorded_at)
                .bind(event.sequence),
            BatchStep::Completions {
                batch_id,
                first_sequence,
                last_sequence,
                recorded_at,
                players,
                counts,
            } => sqlx::query(statements.completions)
                .bind(batch_id)
                .bind(players)
                .bind(counts)
                .bind(recorded_at)
                .bind(last_sequence)
                .bind(first_sequence),
            BatchStep::Completed { event } => sqlx::query(statements.completed)
                .bind(&event.aggregate_id)
                .bind(event.recorded_at)
                .bind(event.sequence),
        };
        query.execute(&mut *conn).await.map_err(db(projector))?;
    }
    Ok(())
}

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

/// The completion of `player` in batch `batch_id` in `T`'s read model.
///
/// # Errors
/// A database error.
pub async fn completion<'e, T: BatchRow>(
    executor: impl sqlx::PgExecutor<'e>,
    batch_id: &str,
    player: &str,
) -> Result<Option<CompletionRow>, sqlx::Error> {
    sqlx::query_as(T::SELECT_COMPLETION)
        .bind(batch_id)
        .bind(player)
        .fetch_optional(executor)
        .await
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
