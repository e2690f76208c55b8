//! Competencies: one student's progress on one subskill (student, subject, skill, subskill).
//!
//! Each attempt updates the competency, derived as docs/design.md defines it:
//! `credibility = min(1, sqrt(n / 15))` over `n` attempts and
//! `current_score = credibility × mean(attempt scores) + (1 − credibility) × 5.0`.
//! The derived values are part of the `AttemptRecorded` event, so every read model (and every
//! rebuild) shows the numbers the domain computed. Reviews do not change the competency.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use cutover_engine::upcast::Upcaster;

/// Longest subject, skill id, subskill id and problem id, in characters.
pub const MAX_KEY_CHARS: usize = 100;
/// Longest analysis and feedback text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Highest score; the lowest is 0.
pub const MAX_SCORE: f64 = 10.0;
/// The largest magnitude of a number inside a review's free-form parts: Postgres's `jsonb`
/// stores larger ones, but some of those, near `f64::MAX`, do not read back from its text.
pub const MAX_REVIEW_NUMBER: f64 = 1e308;
/// The score a competency leans towards while it has few attempts.
pub const PRIOR_SCORE: f64 = 5.0;
/// Attempts after which an attempt mean is fully credible.
pub const FULL_CREDIBILITY_ATTEMPTS: f64 = 15.0;

/// A value that broke one of the competency's input rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCompetencyInput {
    #[error("student_id must be a positive integer")]
    StudentId,
    #[error("{0} must be 1–{MAX_KEY_CHARS} characters")]
    Key(&'static str),
    #[error("{0} must be a number from 0 to 10")]
    Score(&'static str),
    #[error("{0} must be at most {MAX_TEXT_CHARS} characters")]
    Text(&'static str),
    #[error("full_review holds a number larger in magnitude than {MAX_REVIEW_NUMBER:e}")]
    ReviewNumber,
}

impl InvalidCompetencyInput {
    /// The request field the broken rule is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::StudentId => "student_id",
            Self::ReviewNumber => "full_review",
            Self::Key(field) | Self::Score(field) | Self::Text(field) => field,
        }
    }
}

/// Which subskill of which student: the aggregate's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubskillKey {
    pub student_id: i64,
    pub subject: String,
    pub skill_id: String,
    pub subskill_id: String,
}

impl SubskillKey {
    /// # Errors
    /// A student id below 1, or a subject, skill id or subskill id outside 1–100 characters.
    pub fn parse(
        student_id: i64,
        subject: &str,
        skill_id: &str,
        subskill_id: &str,
    ) -> Result<Self, InvalidCompetencyInput> {
        if student_id < 1 {
            return Err(InvalidCompetencyInput::StudentId);
        }
        Ok(Self {
            student_id,
            subject: key_part("subject", subject)?,
            skill_id: key_part("skill_id", skill_id)?,
            subskill_id: key_part("subskill_id", subskill_id)?,
        })
    }

    /// The aggregate id: `{student_id}_{subject}_{skill_id}_{subskill_id}` with `%` and `_`
    /// inside a part written `%25` and `%5F`, so that two subskills never share a stream.
    pub fn aggregate_id(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.student_id,
            escape(&self.subject),
            escape(&self.skill_id),
            escape(&self.subskill_id)
        )
    }

    /// The competency document's id in the legacy shape, exactly as the old document store
    /// wrote it: `{student_id}_{subject}_{skill_id}_{subskill_id}`, nothing escaped. Two
    /// subskills can map to one such id (`a_b` + `c` and `a` + `b_c`); the legacy projector
    /// refuses the second rather than merge them.
    pub fn legacy_id(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.student_id, self.subject, self.skill_id, self.subskill_id
        )
    }
}

fn key_part(field: &'static str, raw: &str) -> Result<String, InvalidCompetencyInput> {
    let chars = raw.chars().count();
    if chars == 0 || chars > MAX_KEY_CHARS {
        return Err(InvalidCompetencyInput::Key(field));
    }
    Ok(raw.to_owned())
}

fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('_', "%5F")
}

/// A score from 0 to 10 inclusive; decimals allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(f64);

impl Score {
    /// # Errors
    /// `Score(field)` outside 0–10 (or not finite).
    pub fn parse(field: &'static str, raw: f64) -> Result<Self, InvalidCompetencyInput> {
        if !raw.is_finite() || !(0.0..=MAX_SCORE).contains(&raw) {
            return Err(InvalidCompetencyInput::Score(field));
        }
        Ok(Self(raw))
    }

    pub fn value(self) -> f64 {
        self.0
    }
}

/// A free text of at most 10,000 characters.
fn text(field: &'static str, raw: &str) -> Result<String, InvalidCompetencyInput> {
    if raw.chars().count() > MAX_TEXT_CHARS {
        return Err(InvalidCompetencyInput::Text(field));
    }
    Ok(raw.to_owned())
}

/// One attempt at a subskill.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    attempt_id: Uuid,
    score: Score,
    analysis: String,
    feedback: String,
    at: Option<DateTime<Utc>>,
}

impl Attempt {
    /// # Errors
    /// A score outside 0–10, or an analysis or feedback over 10,000 characters.
    pub fn parse(
        attempt_id: Uuid,
        score: f64,
        analysis: &str,
        feedback: &str,
    ) -> Result<Self, InvalidCompetencyInput> {
        Ok(Self {
            attempt_id,
            score: Score::parse("score", score)?,
            analysis: text("analysis", analysis)?,
            feedback: text("feedback", feedback)?,
            at: None,
        })
    }

    /// The attempt as the old system recorded it at `at` (its event then carries that time;
    /// otherwise the read models show when it was recorded).
    #[must_use]
    pub fn at(self, at: DateTime<Utc>) -> Self {
        Self {
            at: Some(at),
            ..self
        }
    }
}

/// Whether `value` holds a number past [`MAX_REVIEW_NUMBER`] in magnitude, at any depth.
fn too_large(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64().is_some_and(|f| f.abs() > MAX_REVIEW_NUMBER),
        Value::Array(items) => items.iter().any(too_large),
        Value::Object(fields) => fields.values().any(too_large),
        _ => false,
    }
}

/// A review of a problem: the reviewer's full review (observation, analysis, evaluation with
/// its score, feedback — each a JSON object) and the review's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    review_id: Uuid,
    problem_id: String,
    full_review: Value,
    score: Score,
    at: Option<DateTime<Utc>>,
}

impl Review {
    /// # Errors
    /// A problem id outside 1–100 characters, or an evaluation score or a score outside
    /// 0–10.
    pub fn parse(
        review_id: Uuid,
        problem_id: &str,
        full_review: FullReview,
        score: f64,
    ) -> Result<Self, InvalidCompetencyInput> {
        let evaluation_score = full_review
            .evaluation
            .get("score")
            .and_then(Value::as_f64)
            .ok_or(InvalidCompetencyInput::Score(
                "full_review.evaluation.score",
            ))?;
        Score::parse("full_review.evaluation.score", evaluation_score)?;
        let parts = [
            &full_review.observation,
            &full_review.analysis,
            &full_review.evaluation,
            &full_review.feedback,
        ];
        if parts.iter().any(|part| part.values().any(too_large)) {
            return Err(InvalidCompetencyInput::ReviewNumber);
        }
        let mut review = Map::new();
        review.insert("observation".into(), Value::Object(full_review.observation));
        review.insert("analysis".into(), Value::Object(full_review.analysis));
        review.insert("evaluation".into(), Value::Object(full_review.evaluation));
        review.insert("feedback".into(), Value::Object(full_review.feedback));
        Ok(Self {
            review_id,
            problem_id: key_part("problem_id", problem_id)?,
            full_review: Value::Object(review),
            score: Score::parse("score", score)?,
            at: None,
        })
    }

    /// The full review as recorded: its four parts, each a JSON object.
    pub fn full_review(&self) -> &Value {
        &self.full_review
    }

    /// As [`Attempt::at`].
    #[must_use]
    pub fn at(self, at: DateTime<Utc>) -> Self {
        Self {
            at: Some(at),
            ..self
        }
    }
}

/// The parts of a full review, each a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullReview {
    pub observation: Map<String, Value>,
    pub analysis: Map<String, Value>,
    pub evaluation: Map<String, Value>,
    pub feedback: Map<String, Value>,
}

/// What may be asked of a student's subskill. The key travels with every command because the
/// aggregate records it in its events.
#[derive(Debug, Clone, PartialEq)]
pub enum CompetencyCommand {
    RecordAttempt { key: SubskillKey, attempt: Attempt },
    RecordReview { key: SubskillKey, review: Review },
}

impl CompetencyCommand {
    /// The command's name, as events' metadata records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RecordAttempt { .. } => "RecordAttempt",
            Self::RecordReview { .. } => "RecordReview",
        }
    }
}

/// The competency after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Competency {
    pub total_attempts: u32,
    pub credibility: f64,
    pub current_score: f64,
}

impl Competency {
    /// The competency of `total_attempts` attempts whose scores sum to `score_sum`.
    pub fn derive(total_attempts: u32, score_sum: f64) -> Self {
        if total_attempts == 0 {
            return Self {
                total_attempts,
                credibility: 0.0,
                current_score: PRIOR_SCORE,
            };
        }
        let n = f64::from(total_attempts);
        let credibility = (n / FULL_CREDIBILITY_ATTEMPTS).sqrt().min(1.0);
        let mean = score_sum / n;
        Self {
            total_attempts,
            credibility,
            current_score: credibility * mean + (1.0 - credibility) * PRIOR_SCORE,
        }
    }
}

/// Facts about a student's subskill. Stored forever: names and shapes never change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompetencyEvent {
    AttemptRecorded {
        key: SubskillKey,
        attempt_id: Uuid,
        score: f64,
        analysis: String,
        feedback: String,
        /// The highest score of the scale `score` is on (version 2.0 added it; every attempt
        /// before was on the 0–10 scale).
        max_score: f64,
        /// The competency this attempt led to.
        competency: Competency,
        /// The old system's time of the attempt, for one followed from it; absent otherwise
        /// (and in every payload written before it existed): the read models then show the
        /// time the event was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<DateTime<Utc>>,
    },
    ReviewRecorded {
        key: SubskillKey,
        review_id: Uuid,
        problem_id: String,
        full_review: Value,
        score: f64,
        /// As `AttemptRecorded`'s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<DateTime<Utc>>,
    },
}

impl DomainEvent for CompetencyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AttemptRecorded { .. } => "AttemptRecorded",
            Self::ReviewRecorded { .. } => "ReviewRecorded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::AttemptRecorded { .. } => "2.0",
            Self::ReviewRecorded { .. } => "1.0",
        }
        .to_owned()
    }
}

/// The upcasters of competency events (see [`cutover_engine::upcast`]).
pub const UPCASTERS: &[Upcaster] = &[Upcaster {
    event_type: "AttemptRecorded",
    from: "1.0",
    to: "2.0",
    apply: |fields| {
        fields.insert("max_score".to_owned(), Value::from(MAX_SCORE));
        Ok(())
    },
}];

/// The one rule the history enforces: a stream holds the events of one subskill only (every
/// attempt and review of a valid key is otherwise recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompetencyError {
    #[error("the command names subskill {given}, but this stream belongs to {recorded}")]
    KeyMismatch { given: String, recorded: String },
}

/// The aggregate: how many attempts, and the sum of their scores.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StudentSubskill {
    key: Option<SubskillKey>,
    attempts: u32,
    score_sum: f64,
}

impl StudentSubskill {
    fn check_key(&self, key: &SubskillKey) -> Result<(), CompetencyError> {
        match &self.key {
            Some(recorded) if recorded != key => Err(CompetencyError::KeyMismatch {
                given: key.aggregate_id(),
                recorded: recorded.aggregate_id(),
            }),
            _ => Ok(()),
        }
    }
}

impl Aggregate for StudentSubskill {
    const TYPE: &'static str = "student_subskill";
    type Command = CompetencyCommand;
    type Event = CompetencyEvent;
    type Error = CompetencyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            CompetencyCommand::RecordAttempt { key, attempt } => {
                self.check_key(&key)?;
                let score = attempt.score.value();
                CompetencyEvent::AttemptRecorded {
                    key,
                    attempt_id: attempt.attempt_id,
                    score,
                    analysis: attempt.analysis,
                    feedback: attempt.feedback,
                    max_score: MAX_SCORE,
                    competency: Competency::derive(self.attempts + 1, self.score_sum + score),
                    at: attempt.at,
                }
            }
            CompetencyCommand::RecordReview { key, review } => {
                self.check_key(&key)?;
                CompetencyEvent::ReviewRecorded {
                    key,
                    review_id: review.review_id,
                    problem_id: review.problem_id,
                    full_review: review.full_review,
                    score: review.score.value(),
                    at: review.at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CompetencyEvent::AttemptRecorded { key, score, .. } => {
                self.key = Some(key);
                self.attempts += 1;
                self.score_sum += score;
            }
            CompetencyEvent::ReviewRecorded { key, .. } => self.key = Some(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type CompetencyTest = TestFramework<StudentSubskill>;

    fn key() -> SubskillKey {
        SubskillKey::parse(7, "math", "fractions", "adding").unwrap()
    }

    fn attempt_event(n: u128, score: f64, competency: Competency) -> CompetencyEvent {
        CompetencyEvent::AttemptRecorded {
            key: key(),
            attempt_id: Uuid::from_u128(n),
            score,
            analysis: String::new(),
            feedback: String::new(),
            max_score: MAX_SCORE,
            competency,
            at: None,
        }
    }

    #[test]
    fn payloads_without_the_old_time_read_and_are_written_as_before() {
        let key = json!({"student_id": 7, "subject": "math", "skill_id": "fractions",
                         "subskill_id": "adding"});
        let attempt = json!({"AttemptRecorded": {
            "key": key, "attempt_id": Uuid::from_u128(1), "score": 4.0, "analysis": "",
            "feedback": "", "max_score": 10.0,
            "competency": {"total_attempts": 1, "credibility": 0.25, "current_score": 4.75}}});
        let review = json!({"ReviewRecorded": {
            "key": key, "review_id": Uuid::from_u128(2), "problem_id": "p", "full_review": {},
            "score": 3.0}});
        for stored in [attempt, review] {
            let event: CompetencyEvent =
                serde_json::from_value(stored.clone()).expect("an old payload");
            assert!(matches!(
                event,
                CompetencyEvent::AttemptRecorded { at: None, .. }
                    | CompetencyEvent::ReviewRecorded { at: None, .. }
            ));
            assert_eq!(serde_json::to_value(&event).unwrap(), stored);
        }
    }

    fn attempt(n: u128, score: f64) -> CompetencyCommand {
        CompetencyCommand::RecordAttempt {
            key: key(),
            attempt: Attempt::parse(Uuid::from_u128(n), score, "", "").unwrap(),
        }
    }

    #[test]
    fn scores_8_6_10_give_credibility_root_of_a_fifth_and_score_6_3416() {
        let competency = Competency::derive(3, 24.0);

        assert!((competency.credibility - (3.0_f64 / 15.0).sqrt()).abs() < 1e-12);
        assert!((competency.current_score - 6.3416).abs() < 5e-5);
    }

    #[test]
    fn fifteen_attempts_are_fully_credible_and_more_stay_so() {
        assert_eq!(Competency::derive(15, 15.0 * 9.0).credibility, 1.0);
        assert_eq!(Competency::derive(40, 40.0 * 9.0).current_score, 9.0);
    }

    #[test]
    fn an_attempt_records_the_competency_it_leads_to() {
        let first = Competency::derive(1, 8.0);
        let second = Competency::derive(2, 14.0);
        CompetencyTest::with(())
            .given(vec![attempt_event(1, 8.0, first)])
            .when(attempt(2, 6.0))
            .then_expect_events(vec![attempt_event(2, 6.0, second)]);
    }

    #[test]
    fn a_review_leaves_the_competency_as_it_was() {
        let full_review = FullReview {
            observation: Map::new(),
            analysis: Map::new(),
            evaluation: json!({"score": 4}).as_object().unwrap().clone(),
            feedback: Map::new(),
        };
        let review = Review::parse(Uuid::from_u128(9), "p-1", full_review.clone(), 4.0).unwrap();
        let mut huge = full_review;
        huge.analysis
            .insert("deep".into(), serde_json::json!([{"n": f64::MAX}]));
        assert_eq!(
            Review::parse(Uuid::from_u128(9), "p-1", huge, 4.0),
            Err(InvalidCompetencyInput::ReviewNumber)
        );
        let events = CompetencyTest::with(())
            .given(vec![attempt_event(1, 8.0, Competency::derive(1, 8.0))])
            .when(CompetencyCommand::RecordReview { key: key(), review })
            .inspect_result()
            .unwrap();
        assert!(matches!(
            events.as_slice(),
            [CompetencyEvent::ReviewRecorded { score, .. }] if *score == 4.0
        ));
        let after = CompetencyTest::with(())
            .given(vec![
                attempt_event(1, 8.0, Competency::derive(1, 8.0)),
                events[0].clone(),
            ])
            .when(attempt(2, 6.0))
            .inspect_result()
            .unwrap();
        assert!(matches!(
            after.as_slice(),
            [CompetencyEvent::AttemptRecorded { competency, .. }] if competency.total_attempts == 2
        ));
    }

    #[test]
    fn a_stream_never_takes_another_subskill_s_events() {
        let other = SubskillKey::parse(8, "math", "fractions", "adding").unwrap();
        CompetencyTest::with(())
            .given(vec![attempt_event(1, 8.0, Competency::derive(1, 8.0))])
            .when(CompetencyCommand::RecordAttempt {
                key: other.clone(),
                attempt: Attempt::parse(Uuid::from_u128(2), 5.0, "", "").unwrap(),
            })
            .then_expect_error(CompetencyError::KeyMismatch {
                given: other.aggregate_id(),
                recorded: key().aggregate_id(),
            });
    }

    #[test]
    fn inputs_are_bounded() {
        assert_eq!(
            Score::parse("score", 10.5),
            Err(InvalidCompetencyInput::Score("score"))
        );
        assert_eq!(
            Score::parse("score", -0.1),
            Err(InvalidCompetencyInput::Score("score"))
        );
        assert!(Score::parse("score", 10.0).is_ok());
        assert_eq!(
            SubskillKey::parse(0, "m", "s", "t"),
            Err(InvalidCompetencyInput::StudentId)
        );
        assert_eq!(
            SubskillKey::parse(1, "", "s", "t"),
            Err(InvalidCompetencyInput::Key("subject"))
        );
        assert_eq!(
            SubskillKey::parse(1, "m", &"s".repeat(101), "t"),
            Err(InvalidCompetencyInput::Key("skill_id"))
        );
        assert_eq!(
            Attempt::parse(Uuid::nil(), 5.0, &"a".repeat(10_001), ""),
            Err(InvalidCompetencyInput::Text("analysis"))
        );
    }

    #[test]
    fn streams_of_different_subskills_never_collide() {
        let a = SubskillKey::parse(1, "math_a", "b", "c").unwrap();
        let b = SubskillKey::parse(1, "math", "a_b", "c").unwrap();

        assert_ne!(a.aggregate_id(), b.aggregate_id());
        assert_eq!(key().aggregate_id(), "7_math_fractions_adding");
    }

    #[test]
    fn the_legacy_id_is_the_old_stores_unescaped() {
        let key = SubskillKey::parse(12345, "Mathematics", "addition", "single_digit").unwrap();
        let other = SubskillKey::parse(12345, "Mathematics", "addition_single", "digit").unwrap();

        assert_eq!(key.legacy_id(), "12345_Mathematics_addition_single_digit");
        assert_eq!(key.legacy_id(), other.legacy_id());
        assert_eq!(
            key.aggregate_id(),
            "12345_Mathematics_addition_single%5Fdigit"
        );
    }
}
