//! Legacy read model of competencies: the old document store's `attempts`, `reviews` and
//! `competencies` collections as tables `legacy_attempts`, `legacy_reviews` and
//! `legacy_competencies`, each `(id, student_id, doc jsonb)`.

use chrono::SecondsFormat;
use cutover_core::domain::competency::{Competency, CompetencyEvent, StudentSubskill, SubskillKey};
use cutover_core::projection::ProjectionError;
use cutover_core::store::StoredEvent;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{EventProjector, Statement};

/// The projection's name.
pub const NAME: &str = "legacy_competencies";

/// The attempt document, and the competency document it leads to. The competency's id is the
/// old store's, which two subskills can share (`a_b` + `c`, `a` + `b_c`): when the row of that
/// id belongs to another subskill, the update calls `cutover_legacy_id_taken`, which fails the
/// statement with SQLSTATE `CUT01` naming both (the migration `legacy_contracts` defines it).
const RECORD_ATTEMPT: &str = "\
WITH attempt AS (
    INSERT INTO legacy_attempts (id, student_id, doc) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO legacy_competencies AS live (id, student_id, doc, last_sequence)
VALUES ($4, $2, $5, $6)
ON CONFLICT (id) DO UPDATE
   SET doc = CASE WHEN (live.doc ->> 'subject', live.doc ->> 'skill_id', live.doc ->> 'subskill_id')
                     = (EXCLUDED.doc ->> 'subject', EXCLUDED.doc ->> 'skill_id',
                        EXCLUDED.doc ->> 'subskill_id')
                  THEN EXCLUDED.doc
                  ELSE public.cutover_legacy_id_taken(live.id, live.doc, EXCLUDED.doc) END,
       last_sequence = EXCLUDED.last_sequence
 WHERE live.last_sequence < EXCLUDED.last_sequence
    OR (live.doc ->> 'subject', live.doc ->> 'skill_id', live.doc ->> 'subskill_id')
       IS DISTINCT FROM (EXCLUDED.doc ->> 'subject', EXCLUDED.doc ->> 'skill_id',
                         EXCLUDED.doc ->> 'subskill_id')";

const RECORD_REVIEW: &str = "\
INSERT INTO legacy_reviews (id, student_id, doc) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING";

/// A competency document by its id, if it is the one of subskill `$2`, `$3`, `$4` (another
/// subskill may map to the same id).
const SELECT_COMPETENCY: &str = "\
SELECT id, student_id, doc, last_sequence FROM legacy_competencies
 WHERE id = $1 AND doc ->> 'subject' = $2 AND doc ->> 'skill_id' = $3
   AND doc ->> 'subskill_id' = $4";

const SELECT_STUDENT_COMPETENCIES: &str = "\
SELECT id, student_id, doc, last_sequence FROM legacy_competencies
 WHERE student_id = $1
 ORDER BY id
 LIMIT $2 OFFSET $3";

const SELECT_ATTEMPT: &str = "SELECT id, student_id, doc FROM legacy_attempts WHERE id = $1";

const SELECT_REVIEW: &str = "SELECT id, student_id, doc FROM legacy_reviews WHERE id = $1";

/// Projector of the legacy competency documents.
pub struct LegacyCompetencies;

impl EventProjector for LegacyCompetencies {
    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] =
        &["legacy_attempts", "legacy_reviews", "legacy_competencies"];
    type Aggregate = StudentSubskill;

    fn statement(
        event: &StoredEvent,
        decoded: CompetencyEvent,
    ) -> Result<Statement, ProjectionError> {
        let timestamp = event
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        Ok(match decoded {
            CompetencyEvent::AttemptRecorded {
                key,
                attempt_id,
                score,
                analysis,
                feedback,
                competency,
                ..
            } => {
                let (attempt, competency_doc) = legacy_documents(
                    &key,
                    (score, analysis.as_str(), feedback.as_str()),
                    &competency,
                    &timestamp,
                );
                sqlx::query(RECORD_ATTEMPT)
                    .bind(attempt_id.to_string())
                    .bind(key.student_id)
                    .bind(attempt)
                    .bind(key.legacy_id())
                    .bind(competency_doc)
                    .bind(event.sequence)
            }
            CompetencyEvent::ReviewRecorded {
                key,
                review_id,
                problem_id,
                full_review,
                score,
            } => {
                let review = json!({
                    "student_id": key.student_id,
                    "subject": key.subject,
                    "skill_id": key.skill_id,
                    "subskill_id": key.subskill_id,
                    "problem_id": problem_id,
                    "full_review": full_review,
                    "score": score,
                    "timestamp": timestamp,
                });
                sqlx::query(RECORD_REVIEW)
                    .bind(review_id.to_string())
                    .bind(key.student_id)
                    .bind(review)
            }
        })
    }
}

/// A document of the legacy store: its id, its partition key, the document.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct LegacyDocument {
    pub id: String,
    pub student_id: i64,
    pub doc: Value,
    /// The subskill's event sequence a competency document reflects (0 for other documents).
    #[serde(skip)]
    #[sqlx(default)]
    pub last_sequence: i64,
}

/// Which legacy collection a document is read from by its id.
#[derive(Debug, Clone, Copy)]
pub enum Collection {
    Attempts,
    Reviews,
}

/// The document `id` of `collection`.
///
/// # Errors
/// A database error.
pub async fn find<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    collection: Collection,
    id: &str,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    let sql = match collection {
        Collection::Attempts => SELECT_ATTEMPT,
        Collection::Reviews => SELECT_REVIEW,
    };
    sqlx::query_as(sql).bind(id).fetch_optional(executor).await
}

/// The competency document of subskill `key`, found by its old-store id.
///
/// # Errors
/// A database error.
pub async fn competency<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &SubskillKey,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    sqlx::query_as(SELECT_COMPETENCY)
        .bind(key.legacy_id())
        .bind(&key.subject)
        .bind(&key.skill_id)
        .bind(&key.subskill_id)
        .fetch_optional(executor)
        .await
}

/// A page of a student's competency documents, by id.
///
/// # Errors
/// A database error.
pub async fn student_competencies<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    student_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<LegacyDocument>, sqlx::Error> {
    sqlx::query_as(SELECT_STUDENT_COMPETENCIES)
        .bind(student_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(executor)
        .await
}

/// An attempt's documents in the legacy store's shape: the attempt, and the competency it led
/// to, as of `timestamp` (the hand-written dual-write peer of the benchmark writes the same).
pub fn legacy_documents(
    key: &SubskillKey,
    attempt: (f64, &str, &str),
    competency: &Competency,
    timestamp: &str,
) -> (Value, Value) {
    let (score, analysis, feedback) = attempt;
    let attempt = json!({
        "student_id": key.student_id,
        "subject": key.subject,
        "skill_id": key.skill_id,
        "subskill_id": key.subskill_id,
        "score": score,
        "analysis": analysis,
        "feedback": feedback,
        "timestamp": timestamp,
    });
    let competency = json!({
        "student_id": key.student_id,
        "subject": key.subject,
        "skill_id": key.skill_id,
        "subskill_id": key.subskill_id,
        "current_score": competency.current_score,
        "credibility": competency.credibility,
        "total_attempts": competency.total_attempts,
        "last_updated": timestamp,
    });
    (attempt, competency)
}
