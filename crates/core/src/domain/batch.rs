//! Prediction batches: a coordinator starts a batch for a set of players and records, once
//! per player, how many predictions that player completed.
//!
//! A repeated completion with the same count is an idempotent success that appends nothing (a
//! redelivered message never counts twice); a different count for a completed player is a
//! conflict. When the last expected player completes, the batch completes, once.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use cutover_engine::upcast::{rename, Upcaster};

/// Longest batch id and player lookup, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Most expected players in a batch, and most completions in one bulk request.
pub const MAX_PLAYERS: usize = 10_000;
/// Largest predictions count of one completion.
pub const MAX_PREDICTIONS: u32 = 1_000_000;

/// A value that broke one of the batch's input rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBatchInput {
    #[error("batch_id must be 1–{MAX_ID_CHARS} characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'")]
    BatchId,
    #[error("player_lookup must be 1–{MAX_ID_CHARS} characters")]
    PlayerLookup,
    #[error("expected_players must list 1–{MAX_PLAYERS} players; {0} given")]
    PlayerCount(usize),
    #[error("expected_players lists {0:?} more than once")]
    RepeatedPlayer(String),
    #[error("predictions_count must be 0–{MAX_PREDICTIONS}; {0} given")]
    PredictionsCount(i64),
    #[error("completions must list 1–{MAX_PLAYERS} completions; {0} given")]
    CompletionCount(usize),
}

impl InvalidBatchInput {
    /// The request field the broken rule is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::BatchId => "batch_id",
            Self::PlayerLookup => "player_lookup",
            Self::PlayerCount(_) | Self::RepeatedPlayer(_) => "expected_players",
            Self::PredictionsCount(_) => "predictions_count",
            Self::CompletionCount(_) => "completions",
        }
    }
}

/// A batch id: 1–128 characters from `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId(String);

impl BatchId {
    /// # Errors
    /// `BatchId` when the text is empty, too long or has another character.
    pub fn parse(raw: &str) -> Result<Self, InvalidBatchInput> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
        if raw.is_empty() || raw.len() > MAX_ID_CHARS || !raw.chars().all(allowed) {
            return Err(InvalidBatchInput::BatchId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A player lookup: 1–128 characters, kept exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlayerLookup(String);

impl PlayerLookup {
    /// # Errors
    /// `PlayerLookup` when empty or over 128 characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidBatchInput> {
        let chars = raw.chars().count();
        if chars == 0 || chars > MAX_ID_CHARS {
            return Err(InvalidBatchInput::PlayerLookup);
        }
        Ok(Self(raw.to_owned()))
    }
}

/// The players a batch waits for: 1–10,000 distinct lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPlayers(Vec<String>);

impl ExpectedPlayers {
    /// # Errors
    /// A count outside 1–10,000, a malformed lookup, or a lookup listed twice.
    pub fn parse(raw: &[String]) -> Result<Self, InvalidBatchInput> {
        if raw.is_empty() || raw.len() > MAX_PLAYERS {
            return Err(InvalidBatchInput::PlayerCount(raw.len()));
        }
        let mut seen = BTreeSet::new();
        for player in raw {
            PlayerLookup::parse(player)?;
            if !seen.insert(player.as_str()) {
                return Err(InvalidBatchInput::RepeatedPlayer(player.clone()));
            }
        }
        Ok(Self(raw.to_vec()))
    }
}

/// One player's completion: who, and how many predictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    player_lookup: PlayerLookup,
    predictions_count: u32,
    /// `Some` only when following the old system: the old row's time of the change.
    at: Option<DateTime<Utc>>,
}

impl Completion {
    /// # Errors
    /// A malformed lookup or a count outside 0–1,000,000.
    pub fn parse(player_lookup: &str, predictions_count: i64) -> Result<Self, InvalidBatchInput> {
        let count = u32::try_from(predictions_count)
            .ok()
            .filter(|c| *c <= MAX_PREDICTIONS)
            .ok_or(InvalidBatchInput::PredictionsCount(predictions_count))?;
        Ok(Self {
            player_lookup: PlayerLookup::parse(player_lookup)?,
            predictions_count: count,
            at: None,
        })
    }

    /// The completion as the old system recorded it at `at` (its events then carry that time;
    /// otherwise the read models show when they were recorded).
    #[must_use]
    pub fn at(self, at: Option<DateTime<Utc>>) -> Self {
        Self { at, ..self }
    }
}

/// What a coordinator may ask of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchCommand {
    StartBatch {
        expected_players: ExpectedPlayers,
        /// As [`Completion::at`].
        updated_at: Option<DateTime<Utc>>,
    },
    RecordCompletion(Completion),
    /// All or nothing: one refused completion refuses them all.
    RecordCompletions(Vec<Completion>),
}

impl BatchCommand {
    /// The command's name, as events' metadata records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::StartBatch { .. } => "StartBatch",
            Self::RecordCompletion(_) => "RecordCompletion",
            Self::RecordCompletions(_) => "RecordCompletions",
        }
    }
}

/// Facts about a batch. Stored forever: names and shapes never change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchEvent {
    /// Version 2.0 renamed `expected_players` to `expected_player_lookups`: each is a
    /// `player_lookup`, as completions name them.
    ///
    /// Each event's `updated_at` is the old system's time of the change, for a change followed
    /// from it; absent otherwise (and in every payload written before it existed): the read
    /// models then show the time the event was recorded.
    BatchStarted {
        expected_player_lookups: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        updated_at: Option<DateTime<Utc>>,
    },
    PlayerCompleted {
        player_lookup: String,
        predictions_count: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        updated_at: Option<DateTime<Utc>>,
    },
    BatchCompleted {
        completed_count: u32,
        total_predictions: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        updated_at: Option<DateTime<Utc>>,
    },
}

impl BatchEvent {
    /// The old system's time of the change, for an event followed from it.
    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::BatchStarted { updated_at, .. }
            | Self::PlayerCompleted { updated_at, .. }
            | Self::BatchCompleted { updated_at, .. } => *updated_at,
        }
    }
}

impl DomainEvent for BatchEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BatchStarted { .. } => "BatchStarted",
            Self::PlayerCompleted { .. } => "PlayerCompleted",
            Self::BatchCompleted { .. } => "BatchCompleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::BatchStarted { .. } => "2.0",
            _ => "1.0",
        }
        .to_owned()
    }
}

/// The upcasters of batch events (see [`cutover_engine::upcast`]).
pub const UPCASTERS: &[Upcaster] = &[Upcaster {
    event_type: "BatchStarted",
    from: "1.0",
    to: "2.0",
    apply: |fields| rename(fields, "expected_players", "expected_player_lookups"),
}];

/// A rule of the batch that a command broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a batch with this id has already been started")]
    AlreadyStarted,
    #[error("no such batch")]
    NotFound,
    #[error("player {0:?} is not expected in this batch")]
    UnknownPlayer(String),
    #[error("player {player:?} already completed with {recorded} predictions; {given} given now")]
    ConflictingPredictionCount {
        player: String,
        recorded: u32,
        given: u32,
    },
}

/// The batch aggregate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PredictionBatch {
    started: bool,
    expected: BTreeSet<String>,
    completed: BTreeMap<String, u32>,
    total_predictions: u64,
    complete: bool,
}

impl PredictionBatch {
    /// The players it expects, once started (none before).
    pub fn expected(&self) -> Option<&BTreeSet<String>> {
        self.started.then_some(&self.expected)
    }

    /// Each completed player's predictions count.
    pub fn completed(&self) -> &BTreeMap<String, u32> {
        &self.completed
    }

    /// The completions of `requested` that are new, in order; an error when one is refused.
    fn new_completions(&self, requested: Vec<Completion>) -> Result<Vec<BatchEvent>, BatchError> {
        let mut accepted: BTreeMap<String, u32> = BTreeMap::new();
        let mut events = Vec::new();
        for Completion {
            player_lookup: PlayerLookup(player),
            predictions_count: given,
            at,
        } in requested
        {
            if !self.expected.contains(&player) {
                return Err(BatchError::UnknownPlayer(player));
            }
            let earlier = self.completed.get(&player).or(accepted.get(&player));
            match earlier {
                Some(&recorded) if recorded == given => continue,
                Some(&recorded) => {
                    return Err(BatchError::ConflictingPredictionCount {
                        player,
                        recorded,
                        given,
                    })
                }
                None => {}
            }
            accepted.insert(player.clone(), given);
            events.push(BatchEvent::PlayerCompleted {
                player_lookup: player,
                predictions_count: given,
                updated_at: at,
            });
        }
        Ok(events)
    }
}

impl Aggregate for PredictionBatch {
    const TYPE: &'static str = "prediction_batch";
    type Command = BatchCommand;
    type Event = BatchEvent;
    type Error = BatchError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let requested = match command {
            BatchCommand::StartBatch {
                expected_players,
                updated_at,
            } => {
                if self.started {
                    return Err(BatchError::AlreadyStarted);
                }
                let event = BatchEvent::BatchStarted {
                    expected_player_lookups: expected_players.0,
                    updated_at,
                };
                sink.write(event, self).await;
                return Ok(());
            }
            BatchCommand::RecordCompletion(completion) => vec![completion],
            BatchCommand::RecordCompletions(completions) => completions,
        };
        if !self.started {
            return Err(BatchError::NotFound);
        }
        let mut updated_at = None;
        for event in self.new_completions(requested)? {
            updated_at = event.updated_at();
            sink.write(event, self).await;
        }
        if !self.complete && self.completed.len() == self.expected.len() {
            let event = BatchEvent::BatchCompleted {
                completed_count: u32::try_from(self.completed.len()).unwrap_or(u32::MAX),
                total_predictions: self.total_predictions,
                updated_at,
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            BatchEvent::BatchStarted {
                expected_player_lookups,
                ..
            } => {
                self.started = true;
                self.expected = expected_player_lookups.into_iter().collect();
            }
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
                ..
            } => {
                self.total_predictions += u64::from(predictions_count);
                self.completed.insert(player_lookup, predictions_count);
            }
            BatchEvent::BatchCompleted { .. } => self.complete = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type BatchTest = TestFramework<PredictionBatch>;

    fn started(players: &[&str]) -> BatchEvent {
        BatchEvent::BatchStarted {
            expected_player_lookups: players.iter().map(|p| (*p).to_owned()).collect(),
            updated_at: None,
        }
    }

    fn completed(player: &str, count: u32) -> BatchEvent {
        BatchEvent::PlayerCompleted {
            player_lookup: player.to_owned(),
            predictions_count: count,
            updated_at: None,
        }
    }

    fn completion(player: &str, count: i64) -> Completion {
        Completion::parse(player, count).unwrap()
    }

    fn record(player: &str, count: i64) -> BatchCommand {
        BatchCommand::RecordCompletion(completion(player, count))
    }

    #[test]
    fn completions_followed_from_the_old_system_keep_its_time() {
        let at = Some(DateTime::UNIX_EPOCH);
        BatchTest::with(())
            .given(vec![started(&["ann"])])
            .when(BatchCommand::RecordCompletions(vec![
                completion("ann", 2).at(at)
            ]))
            .then_expect_events(vec![
                BatchEvent::PlayerCompleted {
                    player_lookup: "ann".into(),
                    predictions_count: 2,
                    updated_at: at,
                },
                BatchEvent::BatchCompleted {
                    completed_count: 1,
                    total_predictions: 2,
                    updated_at: at,
                },
            ]);
    }

    #[test]
    fn payloads_without_the_old_time_read_and_are_written_as_before() {
        for stored in [
            serde_json::json!({"BatchStarted": {"expected_player_lookups": ["ann"]}}),
            serde_json::json!({"PlayerCompleted": {"player_lookup": "ann", "predictions_count": 2}}),
            serde_json::json!({"BatchCompleted": {"completed_count": 1, "total_predictions": 2}}),
        ] {
            let event: BatchEvent = serde_json::from_value(stored.clone()).expect("an old payload");
            assert_eq!(event.updated_at(), None);
            assert_eq!(serde_json::to_value(&event).unwrap(), stored);
        }
    }

    #[test]
    fn a_batch_starts_with_its_expected_players() {
        let players = ExpectedPlayers::parse(&["ann".into(), "bob".into()]).unwrap();
        BatchTest::with(())
            .given_no_previous_events()
            .when(BatchCommand::StartBatch {
                expected_players: players,
                updated_at: None,
            })
            .then_expect_events(vec![started(&["ann", "bob"])]);
    }

    #[test]
    fn starting_a_started_batch_is_refused() {
        let players = ExpectedPlayers::parse(&["ann".into()]).unwrap();
        BatchTest::with(())
            .given(vec![started(&["ann"])])
            .when(BatchCommand::StartBatch {
                expected_players: players,
                updated_at: None,
            })
            .then_expect_error(BatchError::AlreadyStarted);
    }

    #[test]
    fn a_completion_for_a_batch_never_started_is_not_found() {
        BatchTest::with(())
            .given_no_previous_events()
            .when(record("ann", 3))
            .then_expect_error(BatchError::NotFound);
    }

    #[test]
    fn an_expected_player_completes() {
        BatchTest::with(())
            .given(vec![started(&["ann", "bob"])])
            .when(record("ann", 3))
            .then_expect_events(vec![completed("ann", 3)]);
    }

    #[test]
    fn a_player_not_expected_is_refused() {
        BatchTest::with(())
            .given(vec![started(&["ann"])])
            .when(record("zed", 3))
            .then_expect_error(BatchError::UnknownPlayer("zed".into()));
    }

    #[test]
    fn the_same_completion_again_appends_nothing() {
        BatchTest::with(())
            .given(vec![started(&["ann", "bob"]), completed("ann", 3)])
            .when(record("ann", 3))
            .then_expect_events(vec![]);
    }

    #[test]
    fn another_count_for_a_completed_player_is_a_conflict() {
        BatchTest::with(())
            .given(vec![started(&["ann", "bob"]), completed("ann", 3)])
            .when(record("ann", 4))
            .then_expect_error(BatchError::ConflictingPredictionCount {
                player: "ann".into(),
                recorded: 3,
                given: 4,
            });
    }

    #[test]
    fn the_last_player_completes_the_batch_once() {
        BatchTest::with(())
            .given(vec![started(&["ann", "bob"]), completed("ann", 3)])
            .when(record("bob", 5))
            .then_expect_events(vec![
                completed("bob", 5),
                BatchEvent::BatchCompleted {
                    completed_count: 2,
                    total_predictions: 8,
                    updated_at: None,
                },
            ]);
        BatchTest::with(())
            .given(vec![
                started(&["ann"]),
                completed("ann", 3),
                BatchEvent::BatchCompleted {
                    completed_count: 1,
                    total_predictions: 3,
                    updated_at: None,
                },
            ])
            .when(record("ann", 3))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_bulk_records_only_what_is_new_and_completes_the_batch() {
        BatchTest::with(())
            .given(vec![started(&["ann", "bob", "cy"]), completed("ann", 3)])
            .when(BatchCommand::RecordCompletions(vec![
                completion("ann", 3),
                completion("bob", 1),
                completion("bob", 1),
                completion("cy", 0),
            ]))
            .then_expect_events(vec![
                completed("bob", 1),
                completed("cy", 0),
                BatchEvent::BatchCompleted {
                    completed_count: 3,
                    total_predictions: 4,
                    updated_at: None,
                },
            ]);
    }

    #[test]
    fn a_bulk_with_one_refused_completion_records_nothing() {
        BatchTest::with(())
            .given(vec![started(&["ann", "bob"])])
            .when(BatchCommand::RecordCompletions(vec![
                completion("ann", 3),
                completion("zed", 1),
            ]))
            .then_expect_error(BatchError::UnknownPlayer("zed".into()));
        BatchTest::with(())
            .given(vec![started(&["ann", "bob"])])
            .when(BatchCommand::RecordCompletions(vec![
                completion("ann", 3),
                completion("ann", 4),
            ]))
            .then_expect_error(BatchError::ConflictingPredictionCount {
                player: "ann".into(),
                recorded: 3,
                given: 4,
            });
    }

    #[test]
    fn ids_and_counts_are_bounded() {
        assert!(BatchId::parse("week-12:run_3.a").is_ok());
        assert_eq!(BatchId::parse(""), Err(InvalidBatchInput::BatchId));
        assert_eq!(BatchId::parse("a b"), Err(InvalidBatchInput::BatchId));
        assert_eq!(
            BatchId::parse(&"a".repeat(129)),
            Err(InvalidBatchInput::BatchId)
        );
        assert_eq!(
            Completion::parse("ann", 1_000_001),
            Err(InvalidBatchInput::PredictionsCount(1_000_001))
        );
        assert_eq!(
            Completion::parse("ann", -1),
            Err(InvalidBatchInput::PredictionsCount(-1))
        );
        assert_eq!(
            Completion::parse("", 1),
            Err(InvalidBatchInput::PlayerLookup)
        );
    }

    #[test]
    fn expected_players_are_one_to_ten_thousand_distinct_lookups() {
        assert_eq!(
            ExpectedPlayers::parse(&[]),
            Err(InvalidBatchInput::PlayerCount(0))
        );
        let too_many: Vec<String> = (0..10_001).map(|i| format!("p{i}")).collect();
        assert_eq!(
            ExpectedPlayers::parse(&too_many),
            Err(InvalidBatchInput::PlayerCount(10_001))
        );
        assert_eq!(
            ExpectedPlayers::parse(&["a".into(), "a".into()]),
            Err(InvalidBatchInput::RepeatedPlayer("a".into()))
        );
    }
}
