//! Legacy read model of prediction batches: table `batch_state`, one row per batch with the
//! completed players as an array and their counts as a JSON map.

use chrono::{DateTime, Utc};
use cutover_core::domain::batch::{BatchEvent, PredictionBatch};
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{timestamp, Change, Returned, Table};
use serde::Serialize;
use serde_json::json;

use std::sync::Arc;

use cutover_engine::projection::Projector;

use crate::fold::{column, Fold};

/// The projection's name.
pub const NAME: &str = "batch_state";

/// The legacy `batch_state` table: one row per batch.
pub static TABLE: Table = Table {
    name: "batch_state",
    aggregate: Some("batch_id"),
    // A completion's answer: the players it completed, with their counts.
    returned: Returned::Columns(&["batch_id", "predictions_by_player"]),
    columns: &[
        column!("batch_id", "text", Keep),
        column!("expected_players", "text[]", Keep),
        column!("completed_players", "text[]", Concat),
        column!("predictions_by_player", "jsonb", Concat),
        column!("total_predictions", "bigint", Add),
        column!("is_complete", "boolean", Set),
        column!("updated_at", "timestamp with time zone", Set),
        column!("last_sequence", "bigint", Set),
    ],
    key: &["batch_id"],
    address: &["batch_id"],
    indexes: &[],
};

static TABLES: [&Table; 1] = [&TABLE];

/// The queries of one model that read what the old clients see: the batch (`$1`) as a
/// [`BatchState`]; the completions of the players `$2` (an array) in batch `$1`, by player; and
/// a page of completions (`$1`, after `$2`, at most `$3`, by player). Completions are
/// [`crate::batch_completions::CompletionRow`]s without their time.
pub struct OldAnswerQueries {
    pub batch: &'static str,
    pub completions_of: &'static str,
    pub completions: &'static str,
}

/// The old answers, read from this table.
pub(crate) static OLD_ANSWER: OldAnswerQueries = OldAnswerQueries {
    batch: "SELECT batch_id, expected_players, completed_players, predictions_by_player, \
                   total_predictions, is_complete, updated_at, last_sequence \
              FROM batch_state WHERE batch_id = $1",
    completions_of: "SELECT p AS player_lookup, \
                            (b.predictions_by_player ->> p)::int AS predictions_count, \
                            NULL::timestamptz AS completed_at \
                       FROM batch_state AS b, unnest($2::text[]) AS p \
                      WHERE b.batch_id = $1 AND b.predictions_by_player ? p ORDER BY p",
    completions: "SELECT p AS player_lookup, \
                         (b.predictions_by_player ->> p)::int AS predictions_count, \
                         NULL::timestamptz AS completed_at \
                    FROM batch_state AS b, unnest(b.completed_players) AS p \
                   WHERE b.batch_id = $1 AND p > $2 ORDER BY p LIMIT $3",
};

/// Projector of the legacy `batch_state` table.
pub struct LegacyBatchState;

/// This read model's projector, maintained inline: the crate's build script finds it by this
/// function and lists it in [`crate::inline_projectors`].
pub fn projector() -> Arc<dyn Projector> {
    crate::fold::inline(LegacyBatchState)
}

impl Fold for LegacyBatchState {
    const NAME: &'static str = NAME;
    const DOMAIN: Domain = Domain::Batches;
    const SHAPE: ReadSource = ReadSource::Legacy;
    type Aggregate = PredictionBatch;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn project(event: &StoredEvent, decoded: BatchEvent) -> Result<Vec<Change>, ProjectionError> {
        let (batch_id, at, sequence) = (
            &event.aggregate_id,
            timestamp(decoded.updated_at().unwrap_or(event.recorded_at)),
            event.sequence,
        );
        Ok(vec![match decoded {
            BatchEvent::BatchStarted {
                expected_player_lookups,
                ..
            } => Change::insert(
                &TABLE,
                json!({
                    "batch_id": batch_id, "expected_players": expected_player_lookups,
                    "completed_players": [], "predictions_by_player": {},
                    "total_predictions": 0, "is_complete": false, "updated_at": at,
                    "last_sequence": sequence,
                }),
            ),
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
                ..
            } => Change::update(
                &TABLE,
                json!({
                    "batch_id": batch_id, "completed_players": [&player_lookup],
                    "predictions_by_player": {player_lookup: predictions_count},
                    "total_predictions": predictions_count, "updated_at": at,
                    "last_sequence": sequence,
                }),
            ),
            BatchEvent::BatchCompleted { .. } => Change::update(
                &TABLE,
                json!({
                    "batch_id": batch_id, "is_complete": true, "updated_at": at,
                    "last_sequence": sequence,
                }),
            ),
        }])
    }
}

/// A batch as the old clients read it: the legacy row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BatchState {
    pub batch_id: String,
    pub expected_players: Vec<String>,
    pub completed_players: Vec<String>,
    /// Each completed player's predictions count, by player lookup.
    #[schema(value_type = std::collections::BTreeMap<String, i64>)]
    pub predictions_by_player: serde_json::Value,
    pub total_predictions: i64,
    pub is_complete: bool,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub last_sequence: i64,
}
