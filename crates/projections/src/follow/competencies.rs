//! The competencies domain as followed: the old document store's attempt and review documents
//! (tables `attempts` and `reviews`, each `(id, student_id, doc)`), each recorded once on its
//! student's subskill with the old document's time. Attempts and reviews are written once:
//! one changed or deleted in the old table is refused. The old `competencies` documents are
//! derived from the attempts: the handover checks them, nothing follows them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cutover_core::domain::competency::{
    Attempt, CompetencyCommand, FullReview, Review, StudentSubskill, SubskillKey,
};
use cutover_engine::read_source::{Domain, ReadSource};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::error::{legacy, FollowError};
use super::pgoutput::Value;
use super::source::{self, Change, Columns, Difference, OldTable, Source};
use crate::legacy_competencies::{
    self as documents, legacy_timestamp, AttemptDoc, Collection, LegacyDocument, ReviewDoc,
};

/// The competencies domain, followed from the old `attempts` and `reviews` tables.
pub struct Competencies;

/// The old attempts' table.
const ATTEMPTS: &str = "attempts";
/// The old reviews' table.
const REVIEWS: &str = "reviews";
/// The old competency documents, derived from the attempts: checked by the handover.
const CHECKED: &str = "competencies";

/// Two derived numbers closer than this are the same (the old system may have summed the
/// scores in another order).
const TOLERANCE: f64 = 1e-9;

/// A row of an old document table; every column but the id may be NULL there.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct OldDocument {
    /// The old table it is a row of.
    #[serde(skip)]
    pub old_table: String,
    pub id: String,
    pub student_id: Option<i64>,
    pub doc: Option<Json>,
}

/// Which subskill an old document is of.
#[derive(Deserialize)]
struct DocKey {
    student_id: i64,
    subject: String,
    skill_id: String,
    subskill_id: String,
}

impl DocKey {
    fn parse(doc: &Json) -> Result<SubskillKey, String> {
        let key = Self::deserialize(doc)
            .map_err(|e| format!("the document does not say its subskill: {e}"))?;
        SubskillKey::parse(
            key.student_id,
            &key.subject,
            &key.skill_id,
            &key.subskill_id,
        )
        .map_err(|e| e.to_string())
    }
}

/// The fields of an old document beyond its subskill's.
#[derive(Deserialize)]
struct OldAttempt {
    score: f64,
    analysis: String,
    feedback: String,
    timestamp: String,
}

/// As [`OldAttempt`].
#[derive(Deserialize)]
struct OldReview {
    problem_id: String,
    full_review: FullReview,
    score: f64,
    timestamp: String,
}

/// Every field an old attempt document may have: a document with another is refused (Cutover
/// could not show it).
const ATTEMPT_FIELDS: [&str; 8] = [
    "student_id",
    "subject",
    "skill_id",
    "subskill_id",
    "score",
    "analysis",
    "feedback",
    "timestamp",
];

/// As [`ATTEMPT_FIELDS`], of a review document.
const REVIEW_FIELDS: [&str; 8] = [
    "student_id",
    "subject",
    "skill_id",
    "subskill_id",
    "problem_id",
    "full_review",
    "score",
    "timestamp",
];

/// A document as Cutover shows it: of which old table, and the document.
#[derive(Debug, Clone)]
pub struct Shown {
    table: &'static str,
    doc: Json,
}

/// An old document as the domain takes it: the command that records it, and the document as
/// Cutover then shows it.
struct Adopted {
    command: CompetencyCommand,
    shown: Shown,
}

impl Source for Competencies {
    type Aggregate = StudentSubskill;
    type Row = OldDocument;
    type Shown = Shown;
    const DOMAIN: Domain = Domain::Competencies;
    /// Cutover deletes no attempt or review: each must still be in the old table.
    const TABLES: &'static [OldTable] = &[
        OldTable {
            name: ATTEMPTS,
            model_table: "legacy_attempts",
            must_be_old: "true",
        },
        OldTable {
            name: REVIEWS,
            model_table: "legacy_reviews",
            must_be_old: "true",
        },
    ];
    const KEY: &'static str = "id";
    const KEY_TYPE: &'static str = "text";
    const COLUMNS: &'static str = "id, student_id, doc";
    /// In the order the old system wrote them (a competency shows its latest attempt's time).
    const ORDER: &'static str = "doc ->> 'timestamp', id";

    fn key(row: &Self::Row) -> String {
        row.id.clone()
    }

    fn aggregate_id(row: &Self::Row) -> Result<String, String> {
        let doc = row.doc.as_ref().ok_or("doc is NULL")?;
        Ok(DocKey::parse(doc)?.aggregate_id())
    }

    fn command_name(command: &CompetencyCommand) -> &'static str {
        command.name()
    }

    fn read(
        table: &'static str,
        columns: &HashMap<&str, &Value>,
    ) -> Result<(Self::Row, Vec<&'static str>), String> {
        let mut columns = Columns::new(columns);
        let row = OldDocument {
            old_table: table.to_owned(),
            id: columns.text("id")?.ok_or("id is NULL")?,
            student_id: columns
                .text("student_id")?
                .map(|value| {
                    value
                        .parse()
                        .map_err(|_| format!("student_id is not a number: {value:?}"))
                })
                .transpose()?,
            doc: columns
                .text("doc")?
                .map(|value| {
                    serde_json::from_str(&value).map_err(|_| format!("doc is not JSON: {value:?}"))
                })
                .transpose()?,
        };
        Ok((row, columns.unchanged))
    }

    async fn shown(
        conn: &mut PgConnection,
        source: ReadSource,
        keys: &[String],
    ) -> Result<HashMap<String, Shown>, sqlx::Error> {
        let ids: Vec<Uuid> = keys
            .iter()
            .filter_map(|k| Uuid::parse_str(k).ok())
            .collect();
        let mut shown = HashMap::new();
        for (table, collection) in [
            (ATTEMPTS, Collection::Attempts),
            (REVIEWS, Collection::Reviews),
        ] {
            for document in documents::documents_answer(conn, source, collection, &ids).await? {
                shown.insert(
                    document.id,
                    Shown {
                        table,
                        doc: document.doc,
                    },
                );
            }
        }
        Ok(shown)
    }

    fn decide(
        change: &Change<Self::Row>,
        shown: Option<&Shown>,
        _aggregate: &StudentSubskill,
        _deleted_at: Option<DateTime<Utc>>,
    ) -> Result<(Vec<CompetencyCommand>, Option<Shown>), String> {
        let row = &change.row;
        let what = noun(&row.old_table);
        if change.deleted {
            return match shown {
                // Deleted before Cutover saw it, or never recorded: nothing to take away.
                None => Ok((Vec::new(), None)),
                Some(_) => Err(format!(
                    "the {what} was deleted in the old table: Cutover keeps every attempt and \
                     review"
                )),
            };
        }
        if change.unchanged.contains(&"doc") {
            return match shown {
                Some(_) => Ok((Vec::new(), None)),
                None => Err(format!(
                    "the update left doc unchanged, and Cutover does not hold the {what} to \
                     know it"
                )),
            };
        }
        let adopted = adopt(row)?;
        match shown {
            None => Ok((vec![adopted.command], Some(adopted.shown))),
            Some(held) if held.table != adopted.shown.table => Err(format!(
                "id {} is already the id of {} {}",
                row.id,
                if held.table == ATTEMPTS { "an" } else { "a" },
                noun(held.table)
            )),
            Some(held) if held.doc == adopted.shown.doc => Ok((Vec::new(), None)),
            Some(_) => Err(format!(
                "the {what} changed in the old table: Cutover keeps an {what} as it was first \
                 recorded"
            )),
        }
    }

    async fn compare(
        conn: &mut PgConnection,
        rows: &[Self::Row],
    ) -> Result<Vec<Difference>, sqlx::Error> {
        let mut differences = Vec::new();
        for (table, collection) in [
            (ATTEMPTS, Collection::Attempts),
            (REVIEWS, Collection::Reviews),
        ] {
            let of_table: Vec<&OldDocument> =
                rows.iter().filter(|row| row.old_table == table).collect();
            if of_table.is_empty() {
                continue;
            }
            let ids: Vec<Uuid> = of_table
                .iter()
                .filter_map(|row| Uuid::parse_str(&row.id).ok())
                .collect();
            let legacy =
                documents::documents_answer(conn, ReadSource::Legacy, collection, &ids).await?;
            let new = documents::documents_answer(conn, ReadSource::New, collection, &ids).await?;
            let find = |documents: &[LegacyDocument], id: &str| {
                documents.iter().find(|d| d.id == id).map(|d| d.doc.clone())
            };
            for row in of_table {
                // The old document as Cutover would show it; as it is, if Cutover cannot.
                let old = adopt(row).map_or_else(
                    |_| row.doc.clone().unwrap_or_default(),
                    |adopted| adopted.shown.doc,
                );
                differences.extend(source::differences(
                    &row.id,
                    "id",
                    &old,
                    find(&legacy, &row.id).as_ref(),
                    find(&new, &row.id).as_ref(),
                ));
            }
        }
        Ok(differences)
    }

    async fn check(
        conn: &mut PgConnection,
        old: &PgPool,
    ) -> Result<(u64, Vec<Difference>), FollowError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("public.{CHECKED}"))
            .fetch_one(old)
            .await
            .map_err(legacy)?;
        if !exists {
            return Ok((0, Vec::new()));
        }
        let rows: Vec<(String, Option<Json>)> =
            sqlx::query_as(&format!("SELECT id, doc FROM public.{CHECKED} ORDER BY id"))
                .fetch_all(old)
                .await
                .map_err(legacy)?;
        let mut differences = Vec::new();
        for (id, doc) in &rows {
            let doc = doc.clone().unwrap_or_default();
            let key = match DocKey::parse(&doc) {
                Ok(key) => key,
                Err(reason) => {
                    differences.push(Difference {
                        id: id.clone(),
                        field: "doc".into(),
                        old: json!(reason),
                        legacy: Json::Null,
                        new: Json::Null,
                    });
                    continue;
                }
            };
            let legacy = documents::competency_answer(conn, ReadSource::Legacy, &key).await?;
            let new = documents::competency_answer(conn, ReadSource::New, &key).await?;
            differences.extend(compare_competency(id, &doc, legacy.as_ref(), new.as_ref()));
        }
        Ok((rows.len() as u64, differences))
    }
}

/// What an old table's rows are called.
fn noun(table: &str) -> &'static str {
    if table == REVIEWS {
        "review"
    } else {
        "attempt"
    }
}

/// The command that records old document `row`, and the document as Cutover then shows it; or
/// why the domain refuses it.
fn adopt(row: &OldDocument) -> Result<Adopted, String> {
    let what = noun(&row.old_table);
    let id = Uuid::parse_str(&row.id).map_err(|_| {
        format!(
            "id {:?} is not a uuid: Cutover's {what} ids are uuids",
            row.id
        )
    })?;
    let doc = row.doc.as_ref().ok_or("doc is NULL")?;
    let key = DocKey::parse(doc)?;
    if row.student_id != Some(key.student_id) {
        return Err(format!(
            "the row's student_id ({}) is not its document's ({})",
            row.student_id
                .map_or_else(|| "NULL".to_owned(), |s| s.to_string()),
            key.student_id
        ));
    }
    let fields = if row.old_table == REVIEWS {
        &REVIEW_FIELDS
    } else {
        &ATTEMPT_FIELDS
    };
    if let Some(other) = doc
        .as_object()
        .and_then(|doc| doc.keys().find(|field| !fields.contains(&field.as_str())))
    {
        return Err(format!(
            "the document has a field {other:?} that Cutover's {what} documents do not have"
        ));
    }
    let unreadable = |e: serde_json::Error| format!("not an {what} document Cutover knows: {e}");
    let time = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| format!("timestamp is not an RFC 3339 time: {text:?}"))
    };
    if row.old_table == REVIEWS {
        let old = OldReview::deserialize(doc).map_err(unreadable)?;
        let at = time(&old.timestamp)?;
        let review = Review::parse(id, &old.problem_id, old.full_review, old.score)
            .map_err(|e| e.to_string())?;
        let doc = json!(ReviewDoc {
            key: key.clone(),
            problem_id: old.problem_id,
            full_review: review.full_review().clone(),
            score: old.score,
            timestamp: legacy_timestamp(at),
        });
        Ok(Adopted {
            command: CompetencyCommand::RecordReview {
                key,
                review: review.at(at),
            },
            shown: Shown {
                table: REVIEWS,
                doc,
            },
        })
    } else {
        let old = OldAttempt::deserialize(doc).map_err(unreadable)?;
        let at = time(&old.timestamp)?;
        let attempt = Attempt::parse(id, old.score, &old.analysis, &old.feedback)
            .map_err(|e| e.to_string())?;
        let doc = json!(AttemptDoc {
            key: key.clone(),
            score: old.score,
            analysis: old.analysis,
            feedback: old.feedback,
            timestamp: legacy_timestamp(at),
        });
        Ok(Adopted {
            command: CompetencyCommand::RecordAttempt {
                key,
                attempt: attempt.at(at),
            },
            shown: Shown {
                table: ATTEMPTS,
                doc,
            },
        })
    }
}

/// The fields on which an old competency document and the models' disagree: its id, and each
/// field of the competency (numbers within [`TOLERANCE`] are the same; times as times).
fn compare_competency(
    id: &str,
    old: &Json,
    legacy: Option<&LegacyDocument>,
    new: Option<&LegacyDocument>,
) -> Vec<Difference> {
    let same = |a: &Json, b: &Json| match (a, b) {
        (Json::Number(a), Json::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .is_some_and(|(a, b)| (a - b).abs() <= TOLERANCE),
        (Json::String(a), Json::String(b)) => {
            a == b
                || DateTime::parse_from_rfc3339(a)
                    .ok()
                    .zip(DateTime::parse_from_rfc3339(b).ok())
                    .is_some_and(|(a, b)| a == b)
        }
        (a, b) => a == b,
    };
    let mut differences = Vec::new();
    if let (Some(legacy), Some(new)) = (legacy, new) {
        if legacy.id != id || new.id != id {
            differences.push(Difference {
                id: id.to_owned(),
                field: "id".into(),
                old: json!(id),
                legacy: json!(legacy.id),
                new: json!(new.id),
            });
        }
    }
    let doc = |d: Option<&LegacyDocument>| d.map(|d| d.doc.clone());
    differences.extend(source::differences_by(
        id,
        "id",
        old,
        doc(legacy).as_ref(),
        doc(new).as_ref(),
        same,
    ));
    differences
}
