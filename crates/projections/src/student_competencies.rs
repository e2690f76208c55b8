//! New read model of competencies: typed tables `student_attempts`, `student_reviews`,
//! `student_competencies`, and `skill_analytics` (attempts, students and mean score per
//! subskill over all students), all kept current in the command's transaction.

use chrono::{DateTime, Utc};
use cutover_core::domain::competency::{CompetencyEvent, StudentSubskill, SubskillKey};
use cutover_core::projection::ProjectionError;
use cutover_core::store::StoredEvent;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{EventProjector, Statement};

/// The projection's name.
pub const NAME: &str = "student_competencies";

/// The attempt row, the competency it leads to, and the subskill's analytics. The analytics
/// count an attempt only when its row was inserted now, so replaying an attempt cannot count
/// it twice; a student is counted at their first attempt on the subskill. Every update is
/// independent of the order attempts of different students are applied in, so a rebuild gives
/// the rows live projection gave.
const RECORD_ATTEMPT: &str = "\
WITH attempt AS (
    INSERT INTO student_attempts (attempt_id, student_id, subject, skill_id, subskill_id, score,
                                  analysis, feedback, attempted_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (attempt_id) DO NOTHING
    RETURNING score
), competency AS (
    INSERT INTO student_competencies (student_id, subject, skill_id, subskill_id, current_score,
                                      credibility, total_attempts, last_updated, last_sequence)
    VALUES ($2, $3, $4, $5, $10, $11, $12, $9, $13)
    ON CONFLICT (student_id, subject, skill_id, subskill_id) DO UPDATE
       SET current_score = EXCLUDED.current_score, credibility = EXCLUDED.credibility,
           total_attempts = EXCLUDED.total_attempts, last_updated = EXCLUDED.last_updated,
           last_sequence = EXCLUDED.last_sequence
     WHERE student_competencies.last_sequence < EXCLUDED.last_sequence
)
INSERT INTO skill_analytics AS s (subject, skill_id, subskill_id, attempts, students, score_sum,
                                  mean_score, last_updated)
SELECT $3, $4, $5, 1, CASE WHEN $12 = 1 THEN 1 ELSE 0 END, score::numeric, score, $9
  FROM attempt
ON CONFLICT (subject, skill_id, subskill_id) DO UPDATE
   SET attempts = s.attempts + 1,
       students = s.students + EXCLUDED.students,
       score_sum = s.score_sum + EXCLUDED.score_sum,
       mean_score = ((s.score_sum + EXCLUDED.score_sum) / (s.attempts + 1))::double precision,
       last_updated = greatest(s.last_updated, EXCLUDED.last_updated)";

const RECORD_REVIEW: &str = "\
INSERT INTO student_reviews (review_id, student_id, subject, skill_id, subskill_id, problem_id,
                             full_review, score, reviewed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (review_id) DO NOTHING";

const COMPETENCY_COLUMNS: &str = "student_id, subject, skill_id, subskill_id, current_score, \
                                  credibility, total_attempts, last_updated, last_sequence";

/// Projector of the typed competency tables and the skill analytics.
pub struct StudentCompetencies;

impl EventProjector for StudentCompetencies {
    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &[
        "student_attempts",
        "student_reviews",
        "student_competencies",
        "skill_analytics",
    ];
    type Aggregate = StudentSubskill;

    fn statement(
        event: &StoredEvent,
        decoded: CompetencyEvent,
    ) -> Result<Statement, ProjectionError> {
        Ok(match decoded {
            CompetencyEvent::AttemptRecorded {
                key,
                attempt_id,
                score,
                analysis,
                feedback,
                competency,
                ..
            } => sqlx::query(RECORD_ATTEMPT)
                .bind(attempt_id)
                .bind(key.student_id)
                .bind(key.subject)
                .bind(key.skill_id)
                .bind(key.subskill_id)
                .bind(score)
                .bind(analysis)
                .bind(feedback)
                .bind(event.recorded_at)
                .bind(competency.current_score)
                .bind(competency.credibility)
                .bind(i32::try_from(competency.total_attempts).unwrap_or(i32::MAX))
                .bind(event.sequence),
            CompetencyEvent::ReviewRecorded {
                key,
                review_id,
                problem_id,
                full_review,
                score,
            } => sqlx::query(RECORD_REVIEW)
                .bind(review_id)
                .bind(key.student_id)
                .bind(key.subject)
                .bind(key.skill_id)
                .bind(key.subskill_id)
                .bind(problem_id)
                .bind(full_review)
                .bind(score)
                .bind(event.recorded_at),
        })
    }
}

/// A row of `student_competencies`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StudentCompetency {
    pub student_id: i64,
    pub subject: String,
    pub skill_id: String,
    pub subskill_id: String,
    pub current_score: f64,
    pub credibility: f64,
    pub total_attempts: i32,
    pub last_updated: DateTime<Utc>,
    /// The subskill's event sequence this row reflects: its version.
    #[serde(skip)]
    pub last_sequence: i64,
}

/// A row of `student_attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StudentAttempt {
    pub attempt_id: Uuid,
    pub student_id: i64,
    pub subject: String,
    pub skill_id: String,
    pub subskill_id: String,
    pub score: f64,
    pub analysis: String,
    pub feedback: String,
    pub attempted_at: DateTime<Utc>,
}

/// A row of `student_reviews`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StudentReview {
    pub review_id: Uuid,
    pub student_id: i64,
    pub subject: String,
    pub skill_id: String,
    pub subskill_id: String,
    pub problem_id: String,
    pub full_review: Value,
    pub score: f64,
    pub reviewed_at: DateTime<Utc>,
}

/// A row of `skill_analytics`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SkillAnalytics {
    pub subject: String,
    pub skill_id: String,
    pub subskill_id: String,
    pub attempts: i64,
    pub students: i64,
    pub mean_score: f64,
    pub last_updated: DateTime<Utc>,
}

/// The competency of one subskill.
///
/// # Errors
/// A database error.
pub async fn competency<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &SubskillKey,
) -> Result<Option<StudentCompetency>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COMPETENCY_COLUMNS} FROM student_competencies \
          WHERE student_id = $1 AND subject = $2 AND skill_id = $3 AND subskill_id = $4"
    ))
    .bind(key.student_id)
    .bind(&key.subject)
    .bind(&key.skill_id)
    .bind(&key.subskill_id)
    .fetch_optional(executor)
    .await
}

/// A page of a student's competencies, by subject, skill and subskill.
///
/// # Errors
/// A database error.
pub async fn student_competencies<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    student_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<StudentCompetency>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COMPETENCY_COLUMNS} FROM student_competencies WHERE student_id = $1 \
          ORDER BY subject, skill_id, subskill_id LIMIT $2 OFFSET $3"
    ))
    .bind(student_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(executor)
    .await
}

/// The attempt `attempt_id`.
///
/// # Errors
/// A database error.
pub async fn attempt<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    attempt_id: Uuid,
) -> Result<Option<StudentAttempt>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM student_attempts WHERE attempt_id = $1")
        .bind(attempt_id)
        .fetch_optional(executor)
        .await
}

/// The review `review_id`.
///
/// # Errors
/// A database error.
pub async fn review<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    review_id: Uuid,
) -> Result<Option<StudentReview>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM student_reviews WHERE review_id = $1")
        .bind(review_id)
        .fetch_optional(executor)
        .await
}

/// A page of the skill analytics, by subject, skill and subskill, optionally of one subject;
/// `None` while the projection is retired.
///
/// # Errors
/// A database error.
pub async fn skill_analytics<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    subject: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Option<Vec<SkillAnalytics>>, sqlx::Error> {
    let rows = sqlx::query_as(
        "SELECT subject, skill_id, subskill_id, attempts, students, mean_score, last_updated \
           FROM skill_analytics \
          WHERE $1::text IS NULL OR subject = $1 \
          ORDER BY subject, skill_id, subskill_id LIMIT $2 OFFSET $3",
    )
    .bind(subject)
    .bind(limit)
    .bind(offset)
    .fetch_all(executor)
    .await;
    match rows {
        Ok(rows) => Ok(Some(rows)),
        // The projection is retired: its tables are gone.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

const UNDEFINED_TABLE: &str = "42P01";
