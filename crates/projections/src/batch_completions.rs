//! New read model of prediction batches: one `batch_completions` row per completion and one
//! `batch_counters` row per batch, kept in step by one statement per run of completions.

use cutover_core::domain::batch::{BatchEvent, PredictionBatch};
use cutover_core::projection::ProjectionError;
use cutover_core::rows::{timestamp, Change, Table};
use cutover_core::store::StoredEvent;
use serde_json::json;

use crate::batches::{BatchRow, BatchSummary};
use crate::{column, Fold};

/// The projection's name.
pub const NAME: &str = "batch_completions";

/// The new `batch_completions` table: one row per completed player.
pub static COMPLETIONS: Table = Table {
    name: "batch_completions",
    columns: &[
        column!("batch_id", "text", Keep),
        column!("player_lookup", "text", Keep),
        column!("predictions_count", "integer", Set),
        column!("completed_at", "timestamp with time zone", Set),
    ],
    key: &["batch_id", "player_lookup"],
    address: &["batch_id", "player_lookup"],
    indexes: &[],
};

/// The new `batch_counters` table: one row per batch.
pub static COUNTERS: Table = Table {
    name: "batch_counters",
    columns: &[
        column!("batch_id", "text", Keep),
        column!("expected_count", "integer", Keep),
        column!("completed_count", "integer", Add),
        column!("total_predictions", "bigint", Add),
        column!("is_complete", "boolean", Set),
        column!("last_updated", "timestamp with time zone", Set),
        column!("last_sequence", "bigint", Set),
    ],
    key: &["batch_id"],
    address: &["batch_id"],
    indexes: &[],
};

static TABLES: [&Table; 2] = [&COMPLETIONS, &COUNTERS];

const SELECT_ONE: &str = "\
SELECT batch_id, expected_count, completed_count, total_predictions, is_complete, last_updated,
       last_sequence
  FROM batch_counters
 WHERE batch_id = $1";

const SELECT_COMPLETION: &str = "\
SELECT player_lookup, predictions_count, completed_at
  FROM batch_completions
 WHERE batch_id = $1 AND player_lookup = $2";

const SELECT_COMPLETIONS: &str = "\
SELECT player_lookup, predictions_count, completed_at
  FROM batch_completions
 WHERE batch_id = $1 AND player_lookup > $2
 ORDER BY player_lookup
 LIMIT $3";

/// Projector of the new `batch_completions` and `batch_counters` tables.
pub struct BatchCompletions;

impl Fold for BatchCompletions {
    const NAME: &'static str = NAME;
    type Aggregate = PredictionBatch;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn project(event: &StoredEvent, decoded: BatchEvent) -> Result<Vec<Change>, ProjectionError> {
        let (batch_id, at, sequence) = (
            &event.aggregate_id,
            timestamp(event.recorded_at),
            event.sequence,
        );
        Ok(match decoded {
            BatchEvent::BatchStarted {
                expected_player_lookups,
            } => vec![Change::insert(
                &COUNTERS,
                json!({
                    "batch_id": batch_id, "expected_count": expected_player_lookups.len(),
                    "completed_count": 0, "total_predictions": 0, "is_complete": false,
                    "last_updated": at, "last_sequence": sequence,
                }),
            )],
            // The batch counts a player once (a redelivered completion appends nothing).
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
            } => vec![
                Change::insert(
                    &COMPLETIONS,
                    json!({
                        "batch_id": batch_id, "player_lookup": player_lookup,
                        "predictions_count": predictions_count, "completed_at": at,
                    }),
                ),
                Change::update(
                    &COUNTERS,
                    json!({
                        "batch_id": batch_id, "completed_count": 1,
                        "total_predictions": predictions_count, "last_updated": at,
                        "last_sequence": sequence,
                    }),
                ),
            ],
            BatchEvent::BatchCompleted { .. } => vec![Change::update(
                &COUNTERS,
                json!({
                    "batch_id": batch_id, "is_complete": true, "last_updated": at,
                    "last_sequence": sequence,
                }),
            )],
        })
    }
}

impl BatchRow for BatchSummary {
    const SELECT_ONE: &'static str = SELECT_ONE;
    const SELECT_SUMMARY: &'static str = SELECT_ONE;
    const SELECT_COMPLETION: &'static str = SELECT_COMPLETION;
    const SELECT_COMPLETIONS: &'static str = SELECT_COMPLETIONS;
}
