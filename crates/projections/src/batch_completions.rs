//! New read model of prediction batches: one `batch_completions` row per completion and one
//! `batch_counters` row per batch, kept in step by one statement per run of completions. They
//! also hold what the old answers show: the expected players, and each completion's event
//! sequence, which orders the completed players as the old array did.

use chrono::{DateTime, Utc};
use cutover_core::domain::batch::{BatchEvent, PredictionBatch};
use cutover_engine::compare::Comparison;
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{timestamp, Change, Returned, Table};
use serde_json::json;

use crate::batch_state::OldAnswerQueries;
use std::sync::Arc;

use cutover_engine::projection::Projector;

use crate::fold::{column, Fold};
use sqlx::PgConnection;

/// The projection's name.
pub const NAME: &str = "batch_completions";

/// The new `batch_completions` table: one row per completed player.
pub static COMPLETIONS: Table = Table {
    name: "batch_completions",
    aggregate: Some("batch_id"),
    returned: Returned::Rows,
    columns: &[
        column!("batch_id", "text", Keep),
        column!("player_lookup", "text", Keep),
        column!("predictions_count", "integer", Set),
        column!("completed_at", "timestamp with time zone", Set),
        column!("sequence", "bigint", Keep),
    ],
    key: &["batch_id", "player_lookup"],
    address: &["batch_id", "player_lookup"],
    indexes: &[],
};

/// The new `batch_counters` table: one row per batch.
pub static COUNTERS: Table = Table {
    name: "batch_counters",
    aggregate: Some("batch_id"),
    returned: Returned::No,
    columns: &[
        column!("batch_id", "text", Keep),
        column!("expected_count", "integer", Keep),
        column!("completed_count", "integer", Add),
        column!("total_predictions", "bigint", Add),
        column!("is_complete", "boolean", Set),
        column!("last_updated", "timestamp with time zone", Set),
        column!("last_sequence", "bigint", Set),
        column!("expected_players", "text[]", Keep),
    ],
    key: &["batch_id"],
    address: &["batch_id"],
    indexes: &[],
};

static TABLES: [&Table; 2] = [&COMPLETIONS, &COUNTERS];

/// What the old answers show, in both models: a batch, and each of its completions.
static COMPARED: [Comparison; 2] = [
    Comparison {
        legacy: &crate::batch_state::TABLE,
        legacy_rows: None,
        new: &COUNTERS,
        key: &[("batch_id", "(l).batch_id", "(n).batch_id")],
        joined: 1,
        fields: &[
            (
                "expected_players",
                "(l).expected_players",
                "(n).expected_players",
            ),
            (
                "expected_count",
                "cardinality((l).expected_players)",
                "(n).expected_count",
            ),
            (
                "completed_players",
                "(l).completed_players",
                "ARRAY(SELECT p.player_lookup FROM batch_completions AS p
                        WHERE p.batch_id = (n).batch_id ORDER BY p.sequence)",
            ),
            (
                "completed_count",
                "cardinality((l).completed_players)",
                "(n).completed_count",
            ),
            (
                "predictions_by_player",
                "(l).predictions_by_player",
                "(SELECT coalesce(jsonb_object_agg(p.player_lookup, p.predictions_count), '{}')
                    FROM batch_completions AS p WHERE p.batch_id = (n).batch_id)",
            ),
            (
                "total_predictions",
                "(l).total_predictions",
                "(n).total_predictions",
            ),
            ("is_complete", "(l).is_complete", "(n).is_complete"),
            (
                "updated_at/last_updated",
                "(l).updated_at",
                "(n).last_updated",
            ),
            ("last_sequence", "(l).last_sequence", "(n).last_sequence"),
        ],
    },
    Comparison {
        legacy: &crate::batch_state::TABLE,
        legacy_rows: Some(
            "(SELECT b.batch_id, p AS player_lookup,
                     (b.predictions_by_player ->> p)::int AS predictions_count
                FROM batch_state AS b, unnest(b.completed_players) AS p)",
        ),
        new: &COMPLETIONS,
        key: &[
            ("batch_id", "(l).batch_id", "(n).batch_id"),
            ("player_lookup", "(l).player_lookup", "(n).player_lookup"),
        ],
        joined: 2,
        fields: &[(
            "predictions_count",
            "(l).predictions_count",
            "(n).predictions_count",
        )],
    },
];

/// A completion: the old clients read its player and count, the new shape also when it was
/// recorded.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema,
)]
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

/// The old answers, read from these tables: the completed players in the order they completed,
/// their counts as the old map.
pub(crate) static OLD_ANSWER: OldAnswerQueries = OldAnswerQueries {
    batch: "SELECT c.batch_id, c.expected_players, \
                   ARRAY(SELECT p.player_lookup FROM batch_completions AS p \
                          WHERE p.batch_id = c.batch_id ORDER BY p.sequence) AS completed_players, \
                   (SELECT coalesce(jsonb_object_agg(p.player_lookup, p.predictions_count), '{}') \
                      FROM batch_completions AS p WHERE p.batch_id = c.batch_id) \
                       AS predictions_by_player, \
                   c.total_predictions, c.is_complete, c.last_updated AS updated_at, \
                   c.last_sequence \
              FROM batch_counters AS c WHERE c.batch_id = $1",
    completions_of: "SELECT player_lookup, predictions_count, NULL::timestamptz AS completed_at \
                       FROM batch_completions \
                      WHERE batch_id = $1 AND player_lookup = ANY ($2) ORDER BY player_lookup",
    completions: "SELECT player_lookup, predictions_count, NULL::timestamptz AS completed_at \
                    FROM batch_completions WHERE batch_id = $1 AND player_lookup > $2 \
                   ORDER BY player_lookup LIMIT $3",
};

/// Projector of the new `batch_completions` and `batch_counters` tables.
pub struct BatchCompletions;

/// This read model's projector, maintained inline: the crate's build script finds it by this
/// function and lists it in [`crate::inline_projectors`].
pub fn projector() -> Arc<dyn Projector> {
    crate::fold::inline(BatchCompletions)
}

impl Fold for BatchCompletions {
    const NAME: &'static str = NAME;
    const DOMAIN: Domain = Domain::Batches;
    const SHAPE: ReadSource = ReadSource::New;
    type Aggregate = PredictionBatch;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn compared() -> &'static [Comparison] {
        &COMPARED
    }

    fn project(event: &StoredEvent, decoded: BatchEvent) -> Result<Vec<Change>, ProjectionError> {
        let (batch_id, at, sequence) = (
            &event.aggregate_id,
            timestamp(decoded.updated_at().unwrap_or(event.recorded_at)),
            event.sequence,
        );
        Ok(match decoded {
            BatchEvent::BatchStarted {
                expected_player_lookups,
                ..
            } => vec![Change::insert(
                &COUNTERS,
                json!({
                    "batch_id": batch_id, "expected_count": expected_player_lookups.len(),
                    "expected_players": expected_player_lookups,
                    "completed_count": 0, "total_predictions": 0, "is_complete": false,
                    "last_updated": at, "last_sequence": sequence,
                }),
            )],
            // The batch counts a player once (a redelivered completion appends nothing).
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
                ..
            } => vec![
                Change::insert(
                    &COMPLETIONS,
                    json!({
                        "batch_id": batch_id, "player_lookup": player_lookup,
                        "predictions_count": predictions_count, "completed_at": at,
                        "sequence": sequence,
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

/// Batch `batch_id` in the new shape.
///
/// # Errors
/// A database error.
pub async fn summary(
    conn: &mut PgConnection,
    batch_id: &str,
) -> Result<Option<BatchSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT batch_id, expected_count, completed_count, total_predictions, is_complete, \
                last_updated, last_sequence \
           FROM batch_counters WHERE batch_id = $1",
    )
    .bind(batch_id)
    .fetch_optional(conn)
    .await
}

/// Up to `limit` completions of `batch_id` with lookups after `after`, in lookup order, in the
/// new shape (with when each was recorded).
///
/// # Errors
/// A database error.
pub async fn completions(
    conn: &mut PgConnection,
    batch_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<CompletionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT player_lookup, predictions_count, completed_at FROM batch_completions \
          WHERE batch_id = $1 AND player_lookup > $2 ORDER BY player_lookup LIMIT $3",
    )
    .bind(batch_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}
