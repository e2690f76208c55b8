//! The batches domain as followed: the old `batch_state` documents (a batch's expected and
//! completed players, each completed player's predictions count), and the commands that take
//! a batch to the state of an old row: started with its players, then each newly completed
//! player recorded. Cutover's batches only grow: a row deleted, an expected player changed or
//! a completion taken back is refused.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cutover_core::domain::batch::{
    BatchCommand, BatchId, Completion, ExpectedPlayers, PredictionBatch,
};
use cutover_engine::read_source::{Domain, ReadSource};
use serde_json::Value as Json;
use sqlx::PgConnection;

use super::pgoutput::{text_array, Value};
use super::source::{self, Change, Columns, Difference, OldTable, Source};
use crate::batch_state::BatchState;
use crate::batches;

/// The batches domain, followed from the old `batch_state` table.
pub struct Batches;

/// A row of the old `batch_state` table; every column but the id may be NULL there.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct OldBatchRow {
    pub batch_id: String,
    pub expected_players: Option<Vec<String>>,
    pub completed_players: Option<Vec<String>>,
    /// Each completed player's predictions count, by player.
    pub predictions_by_player: Option<Json>,
    pub total_predictions: Option<i64>,
    pub is_complete: Option<bool>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Source for Batches {
    type Aggregate = PredictionBatch;
    type Row = OldBatchRow;
    /// The batch aggregate says all a change is compared with.
    type Shown = ();
    const DOMAIN: Domain = Domain::Batches;
    /// Cutover deletes no batch: each must still be in the old table.
    const TABLES: &'static [OldTable] = &[OldTable {
        name: "batch_state",
        model_table: "batch_state",
        must_be_old: "true",
    }];
    const KEY: &'static str = "batch_id";
    const KEY_TYPE: &'static str = "text";
    const COLUMNS: &'static str = "batch_id, expected_players, completed_players, \
                                   predictions_by_player, total_predictions, is_complete, updated_at";

    fn key(row: &Self::Row) -> String {
        row.batch_id.clone()
    }

    fn aggregate_id(row: &Self::Row) -> Result<String, String> {
        Ok(Self::key(row))
    }

    fn command_name(command: &BatchCommand) -> &'static str {
        command.name()
    }

    fn read(
        _table: &'static str,
        columns: &HashMap<&str, &Value>,
    ) -> Result<(Self::Row, Vec<&'static str>), String> {
        let mut columns = Columns::new(columns);
        let players = |name: &str, value: Option<String>| -> Result<_, String> {
            value
                .map(|value| {
                    text_array(&value)
                        .map_err(|e| format!("{name} is not an array of text: {e}"))?
                        .into_iter()
                        .map(|player| player.ok_or(format!("{name} holds a NULL player")))
                        .collect::<Result<Vec<String>, String>>()
                })
                .transpose()
        };
        let row = OldBatchRow {
            batch_id: columns.text("batch_id")?.ok_or("batch_id is NULL")?,
            expected_players: players("expected_players", columns.text("expected_players")?)?,
            completed_players: players("completed_players", columns.text("completed_players")?)?,
            predictions_by_player: columns
                .text("predictions_by_player")?
                .map(|value| {
                    serde_json::from_str(&value)
                        .map_err(|_| format!("predictions_by_player is not JSON: {value:?}"))
                })
                .transpose()?,
            total_predictions: columns
                .text("total_predictions")?
                .map(|value| {
                    value
                        .parse()
                        .map_err(|_| format!("total_predictions is not a number: {value:?}"))
                })
                .transpose()?,
            is_complete: columns.boolean("is_complete")?,
            updated_at: columns.time("updated_at")?,
        };
        Ok((row, columns.unchanged))
    }

    async fn shown(
        _conn: &mut PgConnection,
        _source: ReadSource,
        _ids: &[String],
    ) -> Result<HashMap<String, ()>, sqlx::Error> {
        Ok(HashMap::new())
    }

    fn decide(
        change: &Change<Self::Row>,
        _shown: Option<&()>,
        batch: &PredictionBatch,
        _deleted_at: Option<DateTime<Utc>>,
    ) -> Result<(Vec<BatchCommand>, Option<()>), String> {
        decide(change, batch).map(|commands| (commands, None))
    }

    async fn compare(
        conn: &mut PgConnection,
        rows: &[Self::Row],
    ) -> Result<Vec<Difference>, sqlx::Error> {
        let mut differences = Vec::new();
        for row in rows {
            let legacy = batches::answer(conn, ReadSource::Legacy, &row.batch_id).await?;
            let new = batches::answer(conn, ReadSource::New, &row.batch_id).await?;
            differences.extend(compare_row(row, legacy.as_ref(), new.as_ref()));
        }
        Ok(differences)
    }
}

/// The commands that take `batch` to the state of `change`'s row: started with its expected
/// players (when it is not yet), then its newly completed players recorded, with the row's
/// time; or why the domain refuses the change.
fn decide(
    change: &Change<OldBatchRow>,
    batch: &PredictionBatch,
) -> Result<Vec<BatchCommand>, String> {
    if change.deleted {
        return Err("the batch was deleted in the old table: Cutover deletes no batch".into());
    }
    let row = &change.row;
    BatchId::parse(&row.batch_id).map_err(|e| e.to_string())?;
    let mut commands = Vec::new();
    let expected: Vec<String> = match (&row.expected_players, batch.expected()) {
        (Some(expected), _) => expected.clone(),
        // Left unchanged by the update (a large value the stream does not send again).
        (None, Some(held)) if change.unchanged.contains(&"expected_players") => {
            held.iter().cloned().collect()
        }
        (None, _) => return Err("expected_players is NULL".into()),
    };
    match batch.expected() {
        None => commands.push(BatchCommand::StartBatch {
            expected_players: ExpectedPlayers::parse(&expected).map_err(|e| e.to_string())?,
            updated_at: row.updated_at,
        }),
        Some(held) if *held != expected.iter().cloned().collect::<BTreeSet<_>>() => {
            return Err(
                "the batch's expected players changed: Cutover's batches keep the players \
                 they started with"
                    .into(),
            )
        }
        Some(_) => {}
    }
    if change.unchanged.contains(&"completed_players") {
        // The completions did not change.
        return Ok(commands);
    }
    let completed = row.completed_players.clone().unwrap_or_default();
    if let Some(taken_back) = batch
        .completed()
        .keys()
        .find(|player| !completed.contains(player))
    {
        return Err(format!(
            "player {taken_back:?}'s completion was taken back in the old table: Cutover's \
             completions stay"
        ));
    }
    let counts = row.predictions_by_player.as_ref();
    let mut completions = Vec::new();
    for player in &completed {
        if !expected.contains(player) {
            return Err(format!("player {player:?} is not expected in this batch"));
        }
        let count = counts
            .and_then(|counts| counts.get(player))
            .and_then(Json::as_i64)
            .ok_or_else(|| format!("predictions_by_player has no count for player {player:?}"))?;
        let held = batch.completed().get(player);
        if held.is_some_and(|held| i64::from(*held) == count) {
            continue;
        }
        completions.push(
            Completion::parse(player, count)
                .map_err(|e| e.to_string())?
                .at(row.updated_at),
        );
    }
    if !completions.is_empty() {
        commands.push(BatchCommand::RecordCompletions(completions));
    }
    Ok(commands)
}

/// The fields on which an old batch row and the models' batches disagree (a batch either model
/// lacks is one difference, of `batch_id`). A NULL list or count is empty; a NULL time, which
/// the models cannot hold, is not compared.
fn compare_row(
    row: &OldBatchRow,
    legacy: Option<&BatchState>,
    new: Option<&BatchState>,
) -> Vec<Difference> {
    let adopted = OldBatchRow {
        completed_players: Some(row.completed_players.clone().unwrap_or_default()),
        predictions_by_player: Some(
            row.predictions_by_player
                .clone()
                .unwrap_or_else(|| Json::Object(serde_json::Map::new())),
        ),
        updated_at: row.updated_at.or(legacy.map(|b| b.updated_at)),
        ..row.clone()
    };
    source::differences(&row.batch_id, "batch_id", &adopted, legacy, new)
}
