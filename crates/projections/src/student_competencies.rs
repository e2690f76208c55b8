//! New read model of competencies: typed tables `student_attempts`, `student_reviews`,
//! `student_competencies`, and `skill_analytics` (attempts, students and mean score per
//! subskill over all students), all kept current in the command's transaction.

use chrono::{DateTime, Utc};
use cutover_core::domain::competency::{CompetencyEvent, StudentSubskill, SubskillKey};
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{numeric, timestamp, Change, Returned, Table};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use std::sync::Arc;

use cutover_engine::projection::Projector;

use crate::fold::{column, Fold};

/// The projection's name.
pub const NAME: &str = "student_competencies";

/// The attempt row, the competency it leads to, and the subskill's analytics. The analytics
/// count an attempt only when its row was inserted now, so replaying an attempt cannot count
/// it twice; a student is counted at their first attempt on the subskill. Every update is
/// independent of the order attempts of different students are applied in, so a rebuild gives
/// the rows live projection gave.
/// A typed row's subskill (its aggregate), in SQL (the migration `switch_gate_and_repair`
/// defines the function).
const SUBSKILL: &str = "public.cutover_subskill_id(student_id, subject, skill_id, subskill_id)";

/// The new `student_attempts` table: one row per attempt.
pub static ATTEMPTS: Table = Table {
    name: "student_attempts",
    aggregate: Some(SUBSKILL),
    returned: Returned::Rows,
    columns: &[
        column!("attempt_id", "uuid", Keep),
        column!("student_id", "bigint", Keep),
        column!("subject", "text", Keep),
        column!("skill_id", "text", Keep),
        column!("subskill_id", "text", Keep),
        column!("score", "double precision", Keep),
        column!("analysis", "text", Keep),
        column!("feedback", "text", Keep),
        column!("attempted_at", "timestamp with time zone", Keep),
    ],
    key: &["attempt_id"],
    address: &["attempt_id"],
    indexes: &["student_attempts_by_subskill"],
};

/// The new `student_reviews` table: one row per review.
pub static REVIEWS: Table = Table {
    name: "student_reviews",
    aggregate: Some(SUBSKILL),
    returned: Returned::Rows,
    columns: &[
        column!("review_id", "uuid", Keep),
        column!("student_id", "bigint", Keep),
        column!("subject", "text", Keep),
        column!("skill_id", "text", Keep),
        column!("subskill_id", "text", Keep),
        column!("problem_id", "text", Keep),
        column!("full_review", "jsonb", Keep),
        column!("score", "double precision", Keep),
        column!("reviewed_at", "timestamp with time zone", Keep),
    ],
    key: &["review_id"],
    address: &["review_id"],
    indexes: &["student_reviews_by_subskill"],
};

/// The new `student_competencies` table: one row per student's subskill.
pub static COMPETENCIES: Table = Table {
    name: "student_competencies",
    aggregate: Some(SUBSKILL),
    returned: Returned::Rows,
    columns: &[
        column!("student_id", "bigint", Keep),
        column!("subject", "text", Keep),
        column!("skill_id", "text", Keep),
        column!("subskill_id", "text", Keep),
        column!("current_score", "double precision", Set),
        column!("credibility", "double precision", Set),
        column!("total_attempts", "integer", Set),
        column!("last_updated", "timestamp with time zone", Set),
        column!("last_sequence", "bigint", Set),
    ],
    key: &["student_id", "subject", "skill_id", "subskill_id"],
    address: &["student_id", "subject", "skill_id", "subskill_id"],
    indexes: &[],
};

/// The new `skill_analytics` table: one row per subskill, summed over every student.
pub static ANALYTICS: Table = Table {
    name: "skill_analytics",
    aggregate: None,
    returned: Returned::No,
    columns: &[
        column!("subject", "text", Keep),
        column!("skill_id", "text", Keep),
        column!("subskill_id", "text", Keep),
        column!("attempts", "bigint", Add),
        column!("students", "bigint", Add),
        column!("score_sum", "numeric", Add),
        column!("last_updated", "timestamp with time zone", Greatest),
        column!("mean_score", "double precision", Generated),
    ],
    key: &["subject", "skill_id", "subskill_id"],
    address: &["subject", "skill_id", "subskill_id"],
    indexes: &[],
};

static TABLES: [&Table; 4] = [&ATTEMPTS, &REVIEWS, &COMPETENCIES, &ANALYTICS];

const COMPETENCY_COLUMNS: &str = "student_id, subject, skill_id, subskill_id, current_score, \
                                  credibility, total_attempts, last_updated, last_sequence";

/// Projector of the typed competency tables and the skill analytics.
pub struct StudentCompetencies;

/// This read model's projector, maintained inline: the crate's build script finds it by this
/// function and lists it in [`crate::inline_projectors`].
pub fn projector() -> Arc<dyn Projector> {
    crate::fold::inline(StudentCompetencies)
}

impl Fold for StudentCompetencies {
    const NAME: &'static str = NAME;
    const DOMAIN: Domain = Domain::Competencies;
    const SHAPE: ReadSource = ReadSource::New;
    type Aggregate = StudentSubskill;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    /// A repair's replay counted the aggregates' attempts into `skill_analytics` again: each
    /// subskill they touch is recomputed from every student's attempts, as the projector would
    /// have summed them (a single attempt's mean is its score).
    fn settle() -> &'static [&'static str] {
        &["WITH touched AS (
               SELECT DISTINCT subject, skill_id, subskill_id FROM student_attempts
                WHERE public.cutover_subskill_id(student_id, subject, skill_id, subskill_id)
                      = ANY($1)),
           fresh AS (
               SELECT a.subject, a.skill_id, a.subskill_id, count(*) AS attempts,
                      count(DISTINCT a.student_id) AS students, sum(a.score::numeric) AS score_sum,
                      max(a.attempted_at) AS last_updated
                 FROM student_attempts AS a JOIN touched USING (subject, skill_id, subskill_id)
                GROUP BY a.subject, a.skill_id, a.subskill_id)
           INSERT INTO skill_analytics AS s (subject, skill_id, subskill_id, attempts, students,
                                             score_sum, last_updated)
           SELECT * FROM fresh
           ON CONFLICT (subject, skill_id, subskill_id) DO UPDATE
              SET attempts = EXCLUDED.attempts, students = EXCLUDED.students,
                  score_sum = EXCLUDED.score_sum, last_updated = EXCLUDED.last_updated"]
    }

    fn project(
        event: &StoredEvent,
        decoded: CompetencyEvent,
    ) -> Result<Vec<Change>, ProjectionError> {
        // The old system's time of a change followed from it, or when the event was recorded.
        let at = |old: Option<DateTime<Utc>>| timestamp(old.unwrap_or(event.recorded_at));
        Ok(match decoded {
            CompetencyEvent::AttemptRecorded {
                key,
                attempt_id,
                score,
                analysis,
                feedback,
                competency,
                at: old_at,
                ..
            } => {
                let at = at(old_at);
                vec![
                    Change::insert(
                        &ATTEMPTS,
                        json!({
                            "attempt_id": attempt_id, "student_id": key.student_id,
                            "subject": key.subject, "skill_id": key.skill_id,
                            "subskill_id": key.subskill_id, "score": score, "analysis": analysis,
                            "feedback": feedback, "attempted_at": at,
                        }),
                    ),
                    Change::upsert(
                        &COMPETENCIES,
                        json!({
                            "student_id": key.student_id, "subject": key.subject,
                            "skill_id": key.skill_id, "subskill_id": key.subskill_id,
                            "current_score": competency.current_score,
                            "credibility": competency.credibility,
                            "total_attempts": competency.total_attempts, "last_updated": at,
                            "last_sequence": event.sequence,
                        }),
                    ),
                    // A student's first attempt at the subskill adds a student.
                    Change::upsert(
                        &ANALYTICS,
                        json!({
                            "subject": key.subject, "skill_id": key.skill_id,
                            "subskill_id": key.subskill_id, "attempts": 1,
                            "students": i64::from(competency.total_attempts == 1),
                            "score_sum": numeric(score), "last_updated": at,
                        }),
                    ),
                ]
            }
            CompetencyEvent::ReviewRecorded {
                key,
                review_id,
                problem_id,
                full_review,
                score,
                at: old_at,
            } => vec![Change::insert(
                &REVIEWS,
                json!({
                    "review_id": review_id, "student_id": key.student_id,
                    "subject": key.subject, "skill_id": key.skill_id,
                    "subskill_id": key.subskill_id, "problem_id": problem_id,
                    "full_review": full_review, "score": score, "reviewed_at": at(old_at),
                }),
            )],
        })
    }
}

/// A row of `student_competencies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
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
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub last_sequence: i64,
}

/// A row of `student_attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// The order of a page of a student's competencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By subject, skill and subskill: the new shape's.
    Subskill,
    /// By the old store's document id (`{student_id}_{subject}_{skill_id}_{subskill_id}`, as
    /// text): the old clients'.
    LegacyId,
}

/// A page of a student's competencies in `order`.
///
/// # Errors
/// A database error.
pub async fn student_competencies<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    student_id: i64,
    order: Order,
    limit: i64,
    offset: i64,
) -> Result<Vec<StudentCompetency>, sqlx::Error> {
    let order = match order {
        Order::Subskill => "subject, skill_id, subskill_id",
        Order::LegacyId => {
            "student_id::text || '_' || subject || '_' || skill_id || '_' || subskill_id"
        }
    };
    sqlx::query_as(&format!(
        "SELECT {COMPETENCY_COLUMNS} FROM student_competencies WHERE student_id = $1 \
          ORDER BY {order} LIMIT $2 OFFSET $3"
    ))
    .bind(student_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(executor)
    .await
}

/// The attempts among `ids`, by id.
///
/// # Errors
/// A database error.
pub async fn attempts<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<StudentAttempt>, sqlx::Error> {
    sqlx::query_as!(
        StudentAttempt,
        "SELECT attempt_id, student_id, subject, skill_id, subskill_id, score, analysis, feedback,
                attempted_at
           FROM student_attempts WHERE attempt_id = ANY($1) ORDER BY attempt_id",
        ids
    )
    .fetch_all(executor)
    .await
}

/// The reviews among `ids`, by id.
///
/// # Errors
/// A database error.
pub async fn reviews<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<StudentReview>, sqlx::Error> {
    sqlx::query_as!(
        StudentReview,
        "SELECT review_id, student_id, subject, skill_id, subskill_id, problem_id, full_review,
                score, reviewed_at
           FROM student_reviews WHERE review_id = ANY($1) ORDER BY review_id",
        ids
    )
    .fetch_all(executor)
    .await
}

/// A page of the skill analytics, by subject, skill and subskill, optionally of one subject.
///
/// # Errors
/// A database error.
pub async fn skill_analytics<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    subject: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<SkillAnalytics>, sqlx::Error> {
    sqlx::query_as(
        "SELECT subject, skill_id, subskill_id, attempts, students, mean_score, last_updated \
           FROM skill_analytics \
          WHERE $1::text IS NULL OR subject = $1 \
          ORDER BY subject, skill_id, subskill_id LIMIT $2 OFFSET $3",
    )
    .bind(subject)
    .bind(limit)
    .bind(offset)
    .fetch_all(executor)
    .await
}
