//! Legacy read model of competencies: the old document store's `attempts`, `reviews` and
//! `competencies` collections as tables `legacy_attempts`, `legacy_reviews` and
//! `legacy_competencies`, each `(id, student_id, doc jsonb)`.
//!
//! The old clients' routes answer these documents whichever model serves them: the `*_answer`
//! functions read them from the legacy tables, or build them from the new typed rows with the
//! same builders the projector writes them with.

use chrono::{DateTime, SecondsFormat, Utc};
use cutover_core::domain::competency::{Competency, CompetencyEvent, StudentSubskill, SubskillKey};
use cutover_core::store::Written;
use cutover_engine::compare::Comparison;
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{Change, Merge, Returned, Table};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use std::sync::Arc;

use cutover_engine::projection::Projector;

use crate::fold::{column, Fold};
use crate::student_competencies as typed;

/// The projection's name.
pub const NAME: &str = "legacy_competencies";

/// A document's subskill (its aggregate), in SQL (the migration `switch_gate_and_repair`
/// defines the function).
const DOCUMENT_SUBSKILL: &str = "public.cutover_subskill_id(student_id, doc ->> 'subject', \
                                 doc ->> 'skill_id', doc ->> 'subskill_id')";

/// A legacy document table (`legacy_attempts`, `legacy_reviews`): written once, by id.
macro_rules! documents {
    ($name:literal) => {
        Table {
            name: $name,
            aggregate: Some(DOCUMENT_SUBSKILL),
            returned: Returned::Rows,
            columns: &[
                column!("id", "text", Keep),
                column!("student_id", "bigint", Keep),
                column!("doc", "jsonb", Keep),
            ],
            key: &["id"],
            address: &["id"],
            indexes: &[concat!($name, "_by_student")],
        }
    };
}

/// The old store's attempt documents.
pub static ATTEMPTS: Table = documents!("legacy_attempts");

/// The old store's review documents.
pub static REVIEWS: Table = documents!("legacy_reviews");

/// The old store's competency documents, by the old store's id, which two subskills can share
/// (`a_b` + `c`, `a` + `b_c`). They are never merged: when the row of that id belongs to
/// another subskill, the write calls `cutover_legacy_id_taken`, which fails the statement with
/// SQLSTATE `CUT01` naming both (the migration `legacy_contracts` defines it).
pub static COMPETENCIES: Table = Table {
    name: "legacy_competencies",
    aggregate: Some(DOCUMENT_SUBSKILL),
    returned: Returned::Rows,
    columns: &[
        column!("id", "text", Keep),
        column!("student_id", "bigint", Keep),
        cutover_engine::rows::Column {
            name: "doc",
            sql_type: "jsonb",
            merge: Merge::SameDocument(&["subject", "skill_id", "subskill_id"]),
        },
        column!("last_sequence", "bigint", Set),
    ],
    key: &["id"],
    address: &["id"],
    indexes: &["legacy_competencies_by_student"],
};

static TABLES: [&Table; 3] = [&ATTEMPTS, &REVIEWS, &COMPETENCIES];

/// A document's time as the old store writes it: RFC 3339 UTC with microseconds.
macro_rules! document_time {
    ($column:literal) => {
        concat!(
            "to_char((n).",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

/// The comparison of a legacy document table with its typed table: `$id` is the typed row's id
/// column, `$time` its time column, then the document's own fields as `(name, typed column)`,
/// after its subskill's four.
macro_rules! documents_compared {
    ($legacy:expr, $new:expr, $id:literal, $time:literal, [$(($field:literal, $typed:literal)),*]) => {
        Comparison {
            legacy: &$legacy,
            legacy_rows: None,
            new: &$new,
            key: &[
                ($id, "(l).id", concat!("(n).", $id, "::text")),
                ("student_id", "((l).doc ->> 'student_id')::bigint", "(n).student_id"),
                ("subject", "(l).doc ->> 'subject'", "(n).subject"),
                ("skill_id", "(l).doc ->> 'skill_id'", "(n).skill_id"),
                ("subskill_id", "(l).doc ->> 'subskill_id'", "(n).subskill_id"),
            ],
            joined: 1,
            fields: &[
                ("student_id", "(l).doc -> 'student_id'", "(n).student_id"),
                ("subject", "(l).doc -> 'subject'", "(n).subject"),
                ("skill_id", "(l).doc -> 'skill_id'", "(n).skill_id"),
                ("subskill_id", "(l).doc -> 'subskill_id'", "(n).subskill_id"),
                $(($field, concat!("(l).doc -> '", $field, "'"), concat!("(n).", $typed)),)*
                ("timestamp", "(l).doc -> 'timestamp'", document_time!($time)),
                ("partition_key", "(l).student_id", "(n).student_id"),
                (
                    "document_fields",
                    "ARRAY(SELECT jsonb_object_keys((l).doc) ORDER BY 1)",
                    concat!(
                        "ARRAY(SELECT unnest(ARRAY['skill_id', 'student_id', 'subject', ",
                        "'subskill_id', 'timestamp'",
                        $(", '", $field, "'",)*
                        "]) ORDER BY 1)"
                    ),
                ),
            ],
        }
    };
}

/// What the old answers show, in both models: each competency document, attempt and review.
static COMPARED: [Comparison; 3] = [
    Comparison {
        legacy: &COMPETENCIES,
        legacy_rows: None,
        new: &typed::COMPETENCIES,
        key: &[
            (
                "student_id",
                "((l).doc ->> 'student_id')::bigint",
                "(n).student_id",
            ),
            ("subject", "(l).doc ->> 'subject'", "(n).subject"),
            ("skill_id", "(l).doc ->> 'skill_id'", "(n).skill_id"),
            (
                "subskill_id",
                "(l).doc ->> 'subskill_id'",
                "(n).subskill_id",
            ),
        ],
        joined: 4,
        fields: &[
            (
                "id",
                "(l).id",
                "concat_ws('_', (n).student_id, (n).subject, (n).skill_id, (n).subskill_id)",
            ),
            ("partition_key", "(l).student_id", "(n).student_id"),
            (
                "current_score",
                "(l).doc -> 'current_score'",
                "(n).current_score",
            ),
            ("credibility", "(l).doc -> 'credibility'", "(n).credibility"),
            (
                "total_attempts",
                "(l).doc -> 'total_attempts'",
                "(n).total_attempts",
            ),
            (
                "last_updated",
                "(l).doc -> 'last_updated'",
                document_time!("last_updated"),
            ),
            ("last_sequence", "(l).last_sequence", "(n).last_sequence"),
            (
                "document_fields",
                "ARRAY(SELECT jsonb_object_keys((l).doc) ORDER BY 1)",
                "ARRAY['credibility', 'current_score', 'last_updated', 'skill_id', 'student_id',
                       'subject', 'subskill_id', 'total_attempts']",
            ),
        ],
    },
    documents_compared!(
        ATTEMPTS,
        typed::ATTEMPTS,
        "attempt_id",
        "attempted_at",
        [
            ("score", "score"),
            ("analysis", "analysis"),
            ("feedback", "feedback")
        ]
    ),
    documents_compared!(
        REVIEWS,
        typed::REVIEWS,
        "review_id",
        "reviewed_at",
        [
            ("problem_id", "problem_id"),
            ("full_review", "full_review"),
            ("score", "score")
        ]
    ),
];

/// Projector of the legacy competency documents.
pub struct LegacyCompetencies;

/// This read model's projector, maintained inline: the crate's build script finds it by this
/// function and lists it in [`crate::inline_projectors`].
pub fn projector() -> Arc<dyn Projector> {
    crate::fold::inline(LegacyCompetencies)
}

impl Fold for LegacyCompetencies {
    const NAME: &'static str = NAME;
    const DOMAIN: Domain = Domain::Competencies;
    const SHAPE: ReadSource = ReadSource::Legacy;
    type Aggregate = StudentSubskill;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn compared() -> &'static [Comparison] {
        &COMPARED
    }

    fn project(
        event: &StoredEvent,
        decoded: CompetencyEvent,
    ) -> Result<Vec<Change>, ProjectionError> {
        // The old system's time of a change followed from it, or when the event was recorded.
        let timestamp =
            |at: Option<DateTime<Utc>>| legacy_timestamp(at.unwrap_or(event.recorded_at));
        Ok(match decoded {
            CompetencyEvent::AttemptRecorded {
                key,
                attempt_id,
                score,
                analysis,
                feedback,
                competency,
                at,
                ..
            } => {
                let timestamp = timestamp(at);
                let (attempt, competency_doc) = legacy_documents(
                    &key,
                    (score, analysis.as_str(), feedback.as_str()),
                    &competency,
                    &timestamp,
                );
                vec![
                    Change::insert(
                        &ATTEMPTS,
                        json!({"id": attempt_id.to_string(), "student_id": key.student_id, "doc": attempt}),
                    ),
                    Change::upsert(
                        &COMPETENCIES,
                        json!({
                            "id": key.legacy_id(), "student_id": key.student_id,
                            "doc": competency_doc, "last_sequence": event.sequence,
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
                at,
            } => {
                let review =
                    review_document(&key, &problem_id, &full_review, score, &timestamp(at));
                vec![Change::insert(
                    &REVIEWS,
                    json!({"id": review_id.to_string(), "student_id": key.student_id, "doc": review}),
                )]
            }
        })
    }
}

/// A document of the legacy store: its id, its partition key, the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct LegacyDocument {
    pub id: String,
    pub student_id: i64,
    /// An [`AttemptDoc`], a [`CompetencyDoc`] or a [`ReviewDoc`].
    pub doc: Value,
    /// The subskill's event sequence a competency document reflects (0 for other documents).
    #[serde(skip_serializing, default)]
    #[sqlx(default)]
    pub last_sequence: i64,
}

/// Which legacy collection a document is read from by its id.
#[derive(Debug, Clone, Copy)]
pub enum Collection {
    Attempts,
    Reviews,
}

/// The documents of `collection` among `ids`, by id.
///
/// # Errors
/// A database error.
pub async fn find<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    collection: Collection,
    ids: &[String],
) -> Result<Vec<LegacyDocument>, sqlx::Error> {
    let attempts = matches!(collection, Collection::Attempts);
    sqlx::query_as!(
        LegacyDocument,
        r#"SELECT id AS "id!", student_id AS "student_id!", doc AS "doc!",
                  0::bigint AS "last_sequence!"
             FROM (SELECT id, student_id, doc FROM legacy_attempts WHERE $2 AND id = ANY($1)
                   UNION ALL
                   SELECT id, student_id, doc FROM legacy_reviews WHERE NOT $2 AND id = ANY($1))
                  AS documents
            ORDER BY id"#,
        ids,
        attempts
    )
    .fetch_all(executor)
    .await
}

/// The competency document of subskill `key`, found by its old-store id.
///
/// # Errors
/// A database error.
pub async fn competency<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &SubskillKey,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    sqlx::query_as!(
        LegacyDocument,
        "SELECT id, student_id, doc, last_sequence FROM legacy_competencies
          WHERE id = $1 AND doc ->> 'subject' = $2 AND doc ->> 'skill_id' = $3
            AND doc ->> 'subskill_id' = $4",
        key.legacy_id(),
        key.subject,
        key.skill_id,
        key.subskill_id
    )
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
    sqlx::query_as!(
        LegacyDocument,
        "SELECT id, student_id, doc, last_sequence FROM legacy_competencies
          WHERE student_id = $1 ORDER BY id LIMIT $2 OFFSET $3",
        student_id,
        limit,
        offset
    )
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
    (
        attempt_document(key, score, analysis, feedback, timestamp),
        competency_document(
            key,
            competency.current_score,
            competency.credibility,
            i64::from(competency.total_attempts),
            timestamp,
        ),
    )
}

/// A time as the old store wrote it: RFC 3339 in UTC with microseconds.
pub fn legacy_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The old store's attempt document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptDoc {
    /// The subskill: `student_id`, `subject`, `skill_id`, `subskill_id`.
    #[serde(flatten)]
    pub key: SubskillKey,
    pub score: f64,
    pub analysis: String,
    pub feedback: String,
    /// When the attempt was recorded: RFC 3339 in UTC with microseconds.
    pub timestamp: String,
}

/// The old store's competency document: the subskill's competency after its last attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompetencyDoc {
    /// The subskill: `student_id`, `subject`, `skill_id`, `subskill_id`.
    #[serde(flatten)]
    pub key: SubskillKey,
    pub current_score: f64,
    pub credibility: f64,
    pub total_attempts: i64,
    /// When the last attempt was recorded: RFC 3339 in UTC with microseconds.
    pub last_updated: String,
}

/// The old store's review document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReviewDoc {
    /// The subskill: `student_id`, `subject`, `skill_id`, `subskill_id`.
    #[serde(flatten)]
    pub key: SubskillKey,
    pub problem_id: String,
    /// The review as the reviewer sent it: `observation`, `analysis`, `evaluation` (with its
    /// `score`) and `feedback`, each a JSON object.
    #[schema(value_type = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>)]
    pub full_review: Value,
    pub score: f64,
    /// When the review was recorded: RFC 3339 in UTC with microseconds.
    pub timestamp: String,
}

/// The old store's attempt document.
fn attempt_document(
    key: &SubskillKey,
    score: f64,
    analysis: &str,
    feedback: &str,
    timestamp: &str,
) -> Value {
    json!(AttemptDoc {
        key: key.clone(),
        score,
        analysis: analysis.to_owned(),
        feedback: feedback.to_owned(),
        timestamp: timestamp.to_owned(),
    })
}

/// The old store's competency document.
fn competency_document(
    key: &SubskillKey,
    current_score: f64,
    credibility: f64,
    total_attempts: i64,
    timestamp: &str,
) -> Value {
    json!(CompetencyDoc {
        key: key.clone(),
        current_score,
        credibility,
        total_attempts,
        last_updated: timestamp.to_owned(),
    })
}

/// The old store's review document.
fn review_document(
    key: &SubskillKey,
    problem_id: &str,
    full_review: &Value,
    score: f64,
    timestamp: &str,
) -> Value {
    json!(ReviewDoc {
        key: key.clone(),
        problem_id: problem_id.to_owned(),
        full_review: full_review.clone(),
        score,
        timestamp: timestamp.to_owned(),
    })
}

/// The subskill a typed row names.
fn subskill(
    student_id: i64,
    subject: String,
    skill_id: String,
    subskill_id: String,
) -> SubskillKey {
    SubskillKey {
        student_id,
        subject,
        skill_id,
        subskill_id,
    }
}

impl From<typed::StudentCompetency> for LegacyDocument {
    fn from(row: typed::StudentCompetency) -> Self {
        let key = subskill(row.student_id, row.subject, row.skill_id, row.subskill_id);
        let doc = competency_document(
            &key,
            row.current_score,
            row.credibility,
            i64::from(row.total_attempts),
            &legacy_timestamp(row.last_updated),
        );
        Self {
            id: key.legacy_id(),
            student_id: key.student_id,
            doc,
            last_sequence: row.last_sequence,
        }
    }
}

impl From<typed::StudentAttempt> for LegacyDocument {
    fn from(row: typed::StudentAttempt) -> Self {
        let key = subskill(row.student_id, row.subject, row.skill_id, row.subskill_id);
        let at = legacy_timestamp(row.attempted_at);
        let doc = attempt_document(&key, row.score, &row.analysis, &row.feedback, &at);
        Self {
            id: row.attempt_id.to_string(),
            student_id: key.student_id,
            doc,
            last_sequence: 0,
        }
    }
}

impl From<typed::StudentReview> for LegacyDocument {
    fn from(row: typed::StudentReview) -> Self {
        let key = subskill(row.student_id, row.subject, row.skill_id, row.subskill_id);
        let at = legacy_timestamp(row.reviewed_at);
        let doc = review_document(&key, &row.problem_id, &row.full_review, row.score, &at);
        Self {
            id: row.review_id.to_string(),
            student_id: key.student_id,
            doc,
            last_sequence: 0,
        }
    }
}

/// The competency document of subskill `key` as the old clients read it, from `source`.
///
/// # Errors
/// A database error.
pub async fn competency_answer(
    conn: &mut PgConnection,
    source: ReadSource,
    key: &SubskillKey,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    Ok(match source {
        ReadSource::Legacy => competency(conn, key).await?,
        ReadSource::New => typed::competency(conn, key).await?.map(Into::into),
    })
}

/// The same after a command: the document as the command's statement wrote it to `source`'s
/// table (`written`), or, when it wrote none there, read on `conn`.
///
/// # Errors
/// A database error.
pub async fn competency_answer_after(
    conn: &mut PgConnection,
    source: ReadSource,
    key: &SubskillKey,
    written: Option<&Written>,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    let found = written.and_then(|written| match source {
        // The old store's id alone: a statement that wrote another subskill's document under
        // it would have failed (`Merge::SameDocument`).
        ReadSource::Legacy => written.find(COMPETENCIES.name, &[("id", json!(key.legacy_id()))]),
        ReadSource::New => written
            .find::<typed::StudentCompetency>(
                typed::COMPETENCIES.name,
                &[
                    ("student_id", json!(key.student_id)),
                    ("subject", json!(key.subject)),
                    ("skill_id", json!(key.skill_id)),
                    ("subskill_id", json!(key.subskill_id)),
                ],
            )
            .map(Into::into),
    });
    match found {
        Some(document) => Ok(Some(document)),
        None => competency_answer(conn, source, key).await,
    }
}

/// A page of a student's competency documents as the old clients read it (by the old store's
/// id), from `source`.
///
/// # Errors
/// A database error.
pub async fn student_competencies_answer(
    conn: &mut PgConnection,
    source: ReadSource,
    student_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<LegacyDocument>, sqlx::Error> {
    Ok(match source {
        ReadSource::Legacy => student_competencies(conn, student_id, limit, offset).await?,
        ReadSource::New => {
            let order = typed::Order::LegacyId;
            typed::student_competencies(conn, student_id, order, limit, offset)
                .await?
                .into_iter()
                .map(Into::into)
                .collect()
        }
    })
}

/// The attempt or review document `id` as the old clients read it, from `source`.
///
/// # Errors
/// A database error.
async fn document_answer(
    conn: &mut PgConnection,
    source: ReadSource,
    collection: Collection,
    id: Uuid,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    Ok(documents_answer(conn, source, collection, &[id])
        .await?
        .pop())
}

/// The same after a command: the document as the command's statement wrote it to `source`'s
/// table (`written`), or, when it wrote none there, read on `conn`.
///
/// # Errors
/// A database error.
pub async fn document_answer_after(
    conn: &mut PgConnection,
    source: ReadSource,
    collection: Collection,
    id: Uuid,
    written: Option<&Written>,
) -> Result<Option<LegacyDocument>, sqlx::Error> {
    let found = written.and_then(|written| match (source, collection) {
        (ReadSource::Legacy, Collection::Attempts) => {
            written.find(ATTEMPTS.name, &[("id", json!(id.to_string()))])
        }
        (ReadSource::Legacy, Collection::Reviews) => {
            written.find(REVIEWS.name, &[("id", json!(id.to_string()))])
        }
        (ReadSource::New, Collection::Attempts) => written
            .find::<typed::StudentAttempt>(typed::ATTEMPTS.name, &[("attempt_id", json!(id))])
            .map(Into::into),
        (ReadSource::New, Collection::Reviews) => written
            .find::<typed::StudentReview>(typed::REVIEWS.name, &[("review_id", json!(id))])
            .map(Into::into),
    });
    match found {
        Some(document) => Ok(Some(document)),
        None => document_answer(conn, source, collection, id).await,
    }
}

/// The attempt or review documents among `ids` as the old clients read them, from `source`,
/// by id.
///
/// # Errors
/// A database error.
pub async fn documents_answer(
    conn: &mut PgConnection,
    source: ReadSource,
    collection: Collection,
    ids: &[Uuid],
) -> Result<Vec<LegacyDocument>, sqlx::Error> {
    let documents: Vec<LegacyDocument> = match (source, collection) {
        (ReadSource::Legacy, _) => {
            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            return find(conn, collection, &ids).await;
        }
        (ReadSource::New, Collection::Attempts) => typed::attempts(conn, ids)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
        (ReadSource::New, Collection::Reviews) => typed::reviews(conn, ids)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    };
    Ok(documents)
}
