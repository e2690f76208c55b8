//! Verification on 100% of rows, without changing a live table:
//! - each domain's legacy and new read models agree on everything the old clients' answers show
//!   (every field, the version, the order of lists), so that either can serve them;
//! - each live projection equals a fresh rebuild of it from the log.
//!
//! The fresh rebuild goes into a scratch schema up to what is safe to read; then, for one
//! instant, the append lock is held so that a snapshot can be taken with no append in flight.
//! In that snapshot the last events are applied to the scratch tables and both sides are
//! compared, so live and rebuilt tables are compared at exactly the same point of the log.

use std::sync::Arc;

use cutover_core::projection::{table_names, Projector};
use cutover_core::store::APPEND_LOCK;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::rebuild::Job;
use crate::registry::Purpose;
use crate::registry::{projections, AdminError};
use crate::repair;

/// Most differences listed in one report (all are counted).
pub const MAX_LISTED: usize = 1_000;

/// One difference: where, and both values.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// `legacy_vs_new` or `live_vs_rebuild`.
    #[schema(value_type = String)]
    pub check: &'static str,
    /// The projection (for `legacy_vs_new`, the domain's two projections `legacy/new`).
    pub projection: String,
    pub table: String,
    /// The row's key (a JSON value).
    pub key: Value,
    pub field: String,
    /// The legacy value, or the live one.
    pub left: Value,
    /// The new value, or the rebuilt one.
    pub right: Value,
    /// The command that repairs the row's aggregate in place (`cutover repair …`), when the
    /// row belongs to one aggregate (a `skill_analytics` row sums many: repair any of them).
    pub repair: Option<String>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub domains: Vec<String>,
    /// Rows compared, over every check.
    pub rows_compared: i64,
    /// How many differences there are in all.
    pub difference_count: usize,
    /// The first [`MAX_LISTED`] of them.
    pub differences: Vec<Difference>,
    /// Checks skipped, with why (a retired projection has nothing to compare).
    pub skipped: Vec<String>,
}

impl Report {
    pub fn consistent(&self) -> bool {
        self.difference_count == 0
    }

    fn add(&mut self, difference: Difference) {
        self.difference_count += 1;
        if self.differences.len() < MAX_LISTED {
            self.differences.push(difference);
        }
    }
}

/// The domains, with their legacy-versus-new comparisons: each query yields
/// `(key jsonb, field text, legacy jsonb, new jsonb, compared bigint)` rows, one per differing
/// field, plus one row with a NULL field that carries the number of rows compared.
const DOMAINS: &[(&str, &[(&str, &str)])] = &[
    (
        "collections",
        &[(
            "collections/project_collections",
            "WITH pairs AS (
                 SELECT coalesce(l.collection_id, n.collection_id) AS id, l, n
                   FROM collections AS l
                   FULL JOIN project_collections AS n ON n.collection_id = l.collection_id)
             SELECT jsonb_build_object('collection_id', id), f.field, f.legacy, f.new, NULL::bigint
               FROM pairs CROSS JOIN LATERAL (VALUES
                   ('row', to_jsonb((l).collection_id IS NOT NULL), to_jsonb((n).collection_id IS NOT NULL)),
                   ('project_id', to_jsonb((l).project_id), to_jsonb((n).project_id)),
                   ('collection_name', to_jsonb((l).collection_name), to_jsonb((n).collection_name)),
                   ('description', to_jsonb((l).description), to_jsonb((n).description)),
                   -- an imported NULL description is an empty research context
                   ('description/research_context', to_jsonb(coalesce((l).description, '')), to_jsonb((n).research_context)),
                   ('is_active', to_jsonb((l).is_active), to_jsonb((n).is_active)),
                   ('created_at', to_jsonb((l).created_at), to_jsonb((n).created_at)),
                   ('updated_at', to_jsonb((l).updated_at), to_jsonb((n).updated_at)),
                   ('last_sequence', to_jsonb((l).last_sequence), to_jsonb((n).last_sequence))
               ) AS f(field, legacy, new)
              WHERE f.legacy IS DISTINCT FROM f.new
                AND (f.field = 'row' OR ((l).collection_id IS NOT NULL AND (n).collection_id IS NOT NULL))
             UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs",
        )],
    ),
    (
        "batches",
        &[
            (
                "batch_state/batch_counters",
                "WITH pairs AS (
                     SELECT coalesce(l.batch_id, n.batch_id) AS id, l, n,
                            ARRAY(SELECT p.player_lookup FROM batch_completions AS p
                                   WHERE p.batch_id = n.batch_id ORDER BY p.sequence) AS completed,
                            (SELECT coalesce(jsonb_object_agg(p.player_lookup, p.predictions_count), '{}')
                               FROM batch_completions AS p WHERE p.batch_id = n.batch_id) AS predictions
                       FROM batch_state AS l FULL JOIN batch_counters AS n USING (batch_id))
                 SELECT jsonb_build_object('batch_id', id), f.field, f.legacy, f.new, NULL::bigint
                   FROM pairs CROSS JOIN LATERAL (VALUES
                       ('row', to_jsonb((l).batch_id IS NOT NULL), to_jsonb((n).batch_id IS NOT NULL)),
                       ('expected_players', to_jsonb((l).expected_players), to_jsonb((n).expected_players)),
                       ('expected_count', to_jsonb(cardinality((l).expected_players)), to_jsonb((n).expected_count)),
                       ('completed_players', to_jsonb((l).completed_players), to_jsonb(completed)),
                       ('completed_count', to_jsonb(cardinality((l).completed_players)), to_jsonb((n).completed_count)),
                       ('predictions_by_player', (l).predictions_by_player, predictions),
                       ('total_predictions', to_jsonb((l).total_predictions), to_jsonb((n).total_predictions)),
                       ('is_complete', to_jsonb((l).is_complete), to_jsonb((n).is_complete)),
                       ('updated_at/last_updated', to_jsonb((l).updated_at), to_jsonb((n).last_updated)),
                       ('last_sequence', to_jsonb((l).last_sequence), to_jsonb((n).last_sequence))
                   ) AS f(field, legacy, new)
                  WHERE f.legacy IS DISTINCT FROM f.new
                    AND (f.field = 'row' OR ((l).batch_id IS NOT NULL AND (n).batch_id IS NOT NULL))
                 UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs",
            ),
            (
                "batch_state/batch_completions",
                "WITH legacy AS (
                     SELECT b.batch_id, p AS player_lookup,
                            (b.predictions_by_player ->> p)::int AS predictions_count
                       FROM batch_state AS b, unnest(b.completed_players) AS p),
                 pairs AS (
                     SELECT coalesce(l.batch_id, n.batch_id) AS batch_id,
                            coalesce(l.player_lookup, n.player_lookup) AS player_lookup,
                            l.predictions_count AS legacy_count, n.predictions_count AS new_count,
                            l.batch_id IS NOT NULL AS in_legacy, n.batch_id IS NOT NULL AS in_new
                       FROM legacy AS l FULL JOIN batch_completions AS n USING (batch_id, player_lookup))
                 SELECT jsonb_build_object('batch_id', batch_id, 'player_lookup', player_lookup),
                        CASE WHEN in_legacy AND in_new THEN 'predictions_count' ELSE 'row' END,
                        CASE WHEN in_legacy AND in_new THEN to_jsonb(legacy_count) ELSE to_jsonb(in_legacy) END,
                        CASE WHEN in_legacy AND in_new THEN to_jsonb(new_count) ELSE to_jsonb(in_new) END,
                        NULL::bigint
                   FROM pairs
                  WHERE NOT (in_legacy AND in_new) OR legacy_count IS DISTINCT FROM new_count
                 UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs",
            ),
        ],
    ),
    (
        "competencies",
        &[
            (
                "legacy_competencies/student_competencies",
                "WITH legacy AS (
                     SELECT (doc ->> 'student_id')::bigint AS student_id, doc ->> 'subject' AS subject,
                            doc ->> 'skill_id' AS skill_id, doc ->> 'subskill_id' AS subskill_id, doc,
                            id, student_id AS partition_key, last_sequence AS sequence
                       FROM legacy_competencies),
                 pairs AS (
                     SELECT coalesce(l.student_id, n.student_id) AS student_id,
                            coalesce(l.subject, n.subject) AS subject,
                            coalesce(l.skill_id, n.skill_id) AS skill_id,
                            coalesce(l.subskill_id, n.subskill_id) AS subskill_id, l.doc, l.id,
                            l.partition_key, l.sequence, n
                       FROM legacy AS l
                       FULL JOIN student_competencies AS n USING (student_id, subject, skill_id, subskill_id))
                 SELECT jsonb_build_object('student_id', student_id, 'subject', subject,
                                           'skill_id', skill_id, 'subskill_id', subskill_id),
                        f.field, f.legacy, f.new, NULL::bigint
                   FROM pairs CROSS JOIN LATERAL (VALUES
                       ('row', to_jsonb(doc IS NOT NULL), to_jsonb((n).student_id IS NOT NULL)),
                       ('id', to_jsonb(id), to_jsonb(concat_ws('_', student_id, subject, skill_id, subskill_id))),
                       ('partition_key', to_jsonb(partition_key), to_jsonb((n).student_id)),
                       ('current_score', doc -> 'current_score', to_jsonb((n).current_score)),
                       ('credibility', doc -> 'credibility', to_jsonb((n).credibility)),
                       ('total_attempts', doc -> 'total_attempts', to_jsonb((n).total_attempts)),
                       ('last_updated', doc -> 'last_updated', to_jsonb(to_char((n).last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))),
                       ('last_sequence', to_jsonb(sequence), to_jsonb((n).last_sequence)),
                       ('document_fields', to_jsonb(ARRAY(SELECT jsonb_object_keys(doc) ORDER BY 1)),
                        to_jsonb(ARRAY['credibility', 'current_score', 'last_updated', 'skill_id', 'student_id', 'subject', 'subskill_id', 'total_attempts']))
                   ) AS f(field, legacy, new)
                  WHERE f.legacy IS DISTINCT FROM f.new
                    AND (f.field = 'row' OR (doc IS NOT NULL AND (n).student_id IS NOT NULL))
                 UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs",
            ),
            (
                "legacy_attempts/student_attempts",
                "WITH pairs AS (
                     SELECT coalesce(l.id, n.attempt_id::text) AS id, l.doc, l.student_id AS partition_key, n
                       FROM legacy_attempts AS l
                       FULL JOIN student_attempts AS n ON n.attempt_id::text = l.id)
                 SELECT jsonb_build_object('attempt_id', id,
                            'student_id', coalesce((n).student_id, (doc ->> 'student_id')::bigint),
                            'subject', coalesce((n).subject, doc ->> 'subject'),
                            'skill_id', coalesce((n).skill_id, doc ->> 'skill_id'),
                            'subskill_id', coalesce((n).subskill_id, doc ->> 'subskill_id')),
                        f.field, f.legacy, f.new, NULL::bigint
                   FROM pairs CROSS JOIN LATERAL (VALUES
                       ('row', to_jsonb(doc IS NOT NULL), to_jsonb((n).attempt_id IS NOT NULL)),
                       ('student_id', doc -> 'student_id', to_jsonb((n).student_id)),
                       ('subject', doc -> 'subject', to_jsonb((n).subject)),
                       ('skill_id', doc -> 'skill_id', to_jsonb((n).skill_id)),
                       ('subskill_id', doc -> 'subskill_id', to_jsonb((n).subskill_id)),
                       ('score', doc -> 'score', to_jsonb((n).score)),
                       ('analysis', doc -> 'analysis', to_jsonb((n).analysis)),
                       ('feedback', doc -> 'feedback', to_jsonb((n).feedback)),
                       ('timestamp', doc -> 'timestamp', to_jsonb(to_char((n).attempted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))),
                       ('partition_key', to_jsonb(partition_key), to_jsonb((n).student_id)),
                       ('document_fields', to_jsonb(ARRAY(SELECT jsonb_object_keys(doc) ORDER BY 1)),
                        to_jsonb(ARRAY['analysis', 'feedback', 'score', 'skill_id', 'student_id', 'subject', 'subskill_id', 'timestamp']))
                   ) AS f(field, legacy, new)
                  WHERE f.legacy IS DISTINCT FROM f.new
                    AND (f.field = 'row' OR (doc IS NOT NULL AND (n).attempt_id IS NOT NULL))
                 UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs",
            ),
            (
                "legacy_reviews/student_reviews",
                "WITH pairs AS (
                     SELECT coalesce(l.id, n.review_id::text) AS id, l.doc, l.student_id AS partition_key, n
                       FROM legacy_reviews AS l
                       FULL JOIN student_reviews AS n ON n.review_id::text = l.id)
                 SELECT jsonb_build_object('review_id', id,
                            'student_id', coalesce((n).student_id, (doc ->> 'student_id')::bigint),
                            'subject', coalesce((n).subject, doc ->> 'subject'),
                            'skill_id', coalesce((n).skill_id, doc ->> 'skill_id'),
                            'subskill_id', coalesce((n).subskill_id, doc ->> 'subskill_id')),
                        f.field, f.legacy, f.new, NULL::bigint
                   FROM pairs CROSS JOIN LATERAL (VALUES
                       ('row', to_jsonb(doc IS NOT NULL), to_jsonb((n).review_id IS NOT NULL)),
                       ('student_id', doc -> 'student_id', to_jsonb((n).student_id)),
                       ('subject', doc -> 'subject', to_jsonb((n).subject)),
                       ('skill_id', doc -> 'skill_id', to_jsonb((n).skill_id)),
                       ('subskill_id', doc -> 'subskill_id', to_jsonb((n).subskill_id)),
                       ('problem_id', doc -> 'problem_id', to_jsonb((n).problem_id)),
                       ('full_review', doc -> 'full_review', (n).full_review),
                       ('score', doc -> 'score', to_jsonb((n).score)),
                       ('timestamp', doc -> 'timestamp', to_jsonb(to_char((n).reviewed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))),
                       ('partition_key', to_jsonb(partition_key), to_jsonb((n).student_id)),
                       ('document_fields', to_jsonb(ARRAY(SELECT jsonb_object_keys(doc) ORDER BY 1)),
                        to_jsonb(ARRAY['full_review', 'problem_id', 'score', 'skill_id', 'student_id', 'subject', 'subskill_id', 'timestamp']))
                   ) AS f(field, legacy, new)
                  WHERE f.legacy IS DISTINCT FROM f.new
                    AND (f.field = 'row' OR (doc IS NOT NULL AND (n).review_id IS NOT NULL))
                 UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs",
            ),
        ],
    ),
];

type DiffRow = (
    Option<Value>,
    Option<String>,
    Option<Value>,
    Option<Value>,
    Option<i64>,
);

/// `(key, live row, rebuilt row, NULL)` per differing row, plus `(NULL, NULL, NULL, count)`.
type PairRow = (Option<Value>, Option<Value>, Option<Value>, Option<i64>);

/// Verifies `domain` (or every domain): legacy against new, and each live projection against
/// a fresh rebuild.
///
/// # Errors
/// `UnknownDomain`, or a database or projection error.
pub async fn verify(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    domain: Option<&str>,
) -> Result<Report, AdminError> {
    let domains: Vec<&str> = match domain {
        Some(wanted) => {
            let known = DOMAINS.iter().any(|(name, _)| *name == wanted);
            if !known {
                return Err(AdminError::UnknownDomain(wanted.to_owned()));
            }
            vec![wanted]
        }
        None => DOMAINS.iter().map(|(name, _)| *name).collect(),
    };
    let registry = projections(pool).await?;
    let mut report = Report {
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        rows_compared: 0,
        difference_count: 0,
        differences: Vec::new(),
        skipped: Vec::new(),
    };
    let live: Vec<Arc<dyn Projector>> = projectors
        .iter()
        .filter(|p| {
            registry.iter().any(|r| {
                r.name == p.name() && r.inline_active && domains.contains(&r.domain.as_str())
            })
        })
        .cloned()
        .collect();
    for r in &registry {
        if domains.contains(&r.domain.as_str()) && !r.inline_active {
            report
                .skipped
                .push(format!("{} is retired: nothing to compare", r.name));
        }
    }

    let mut job = Job::start(pool, live.clone(), Purpose::Verify).await?;
    let outcome = compare_all(pool, &mut job, &domains, &registry, &mut report).await;
    let failure = outcome.as_ref().err().map(ToString::to_string);
    let discarded = job.discard(failure.as_deref()).await;
    outcome?;
    discarded?;
    record(pool, &report).await?;
    Ok(report)
}

/// How many reports are kept.
const REPORTS_KEPT: i64 = 100;

/// Keeps `report` as the latest, and forgets all but the newest [`REPORTS_KEPT`].
async fn record(pool: &PgPool, report: &Report) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO consistency_reports (consistent, report) VALUES ($1, $2)")
        .bind(report.consistent())
        .bind(sqlx::types::Json(report))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM consistency_reports
          WHERE id <= (SELECT max(id) FROM consistency_reports) - $1",
    )
    .bind(REPORTS_KEPT)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A report as it was kept: when, and what it found.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Recorded {
    pub checked_at: chrono::DateTime<chrono::Utc>,
    pub consistent: bool,
    /// The [`Report`] as it was kept.
    #[schema(value_type = Report)]
    pub report: sqlx::types::Json<Value>,
}

/// The newest report, if any verification ran.
///
/// # Errors
/// A database error.
pub async fn latest(pool: &PgPool) -> Result<Option<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT checked_at, consistent, report FROM consistency_reports ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

async fn compare_all(
    pool: &PgPool,
    job: &mut Job,
    domains: &[&str],
    registry: &[crate::registry::Projection],
    report: &mut Report,
) -> Result<(), AdminError> {
    job.catch_up(&mut |_| {}).await?;
    // A snapshot with no append in flight: hold the append lock while it is taken. Both
    // connections are taken first, so that commands queued behind the lock (holding pooled
    // connections) cannot starve the snapshot of one.
    let mut snapshot = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *snapshot)
        .await?;
    let mut gate = pool.begin().await?;
    sqlx::query(&format!("SELECT pg_advisory_xact_lock({APPEND_LOCK})"))
        .execute(&mut *gate)
        .await?;
    sqlx::query("SELECT 1").execute(&mut *snapshot).await?;
    gate.commit().await?;

    job.finish_in(&mut snapshot).await?;
    for (domain, checks) in DOMAINS {
        if !domains.contains(domain) {
            continue;
        }
        let both_live = registry
            .iter()
            .filter(|r| r.domain == *domain)
            .all(|r| r.inline_active);
        if !both_live {
            report.skipped.push(format!(
                "{domain}: legacy against new needs both projections live"
            ));
            continue;
        }
        for (pair, sql) in *checks {
            legacy_vs_new(&mut snapshot, (domain, pair), registry, sql, report).await?;
        }
    }
    for projector in job.projectors().to_vec() {
        for table in table_names(projector.as_ref()) {
            live_vs_rebuilt(&mut snapshot, projector.name(), table, job.schema(), report).await?;
        }
    }
    snapshot.rollback().await?;
    Ok(())
}

async fn legacy_vs_new(
    conn: &mut PgConnection,
    (domain, pair): (&str, &str),
    registry: &[crate::registry::Projection],
    sql: &str,
    report: &mut Report,
) -> Result<(), AdminError> {
    let rows: Vec<DiffRow> = sqlx::query_as(sql).fetch_all(&mut *conn).await?;
    for (key, field, left, right, compared) in rows {
        match field {
            Some(field) => {
                let key = key.unwrap_or(Value::Null);
                // Which side is wrong is not known: the command repairs both projections.
                let domain = registry.iter().filter(|r| r.domain == domain);
                let names: Vec<&str> = domain.map(|r| r.name.as_str()).collect();
                let repair = repair::aggregate_of(&key).map(|a| repair::command(&names, &a));
                report.add(Difference {
                    check: "legacy_vs_new",
                    projection: pair.to_owned(),
                    table: pair.to_owned(),
                    key,
                    field,
                    left: left.unwrap_or(Value::Null),
                    right: right.unwrap_or(Value::Null),
                    repair,
                });
            }
            None => report.rows_compared += compared.unwrap_or(0),
        }
    }
    Ok(())
}

/// Compares a live table with its rebuilt copy, row by row on the primary key, field by field.
async fn live_vs_rebuilt(
    conn: &mut PgConnection,
    projection: &str,
    table: &str,
    schema: &str,
    report: &mut Report,
) -> Result<(), AdminError> {
    let key_columns: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text
           FROM pg_index AS i
           JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = ('cutover_templates.' || $1)::regclass AND i.indisprimary
          ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let key = key_columns
        .iter()
        .map(|c| format!("'{c}', t.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH live AS (SELECT jsonb_build_object({key}) AS k, to_jsonb(t) AS row FROM public.{table} AS t),
              rebuilt AS (SELECT jsonb_build_object({key}) AS k, to_jsonb(t) AS row FROM {schema}.{table} AS t),
              pairs AS (SELECT coalesce(l.k, r.k) AS k, l.row AS live, r.row AS rebuilt
                          FROM live AS l FULL JOIN rebuilt AS r ON l.k = r.k)
         SELECT k, live, rebuilt, NULL::bigint FROM pairs WHERE live IS DISTINCT FROM rebuilt
         UNION ALL SELECT NULL, NULL, NULL, count(*) FROM pairs"
    );
    let rows: Vec<PairRow> = sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    for (key, live, rebuilt, compared) in rows {
        let Some(key) = key else {
            report.rows_compared += compared.unwrap_or(0);
            continue;
        };
        let aggregate = [Some(&key), live.as_ref(), rebuilt.as_ref()]
            .into_iter()
            .flatten()
            .find_map(repair::aggregate_of);
        let repair = aggregate.map(|a| repair::command(&[projection], &a));
        for (field, left, right) in field_differences(live, rebuilt) {
            report.add(Difference {
                check: "live_vs_rebuild",
                projection: projection.to_owned(),
                table: table.to_owned(),
                key: key.clone(),
                field,
                left,
                right,
                repair: repair.clone(),
            });
        }
    }
    Ok(())
}

/// The fields in which two rows differ; a missing row is one difference on field `row`.
fn field_differences(live: Option<Value>, rebuilt: Option<Value>) -> Vec<(String, Value, Value)> {
    let as_map = |row: Option<Value>| match row {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    };
    match (as_map(live), as_map(rebuilt)) {
        (Some(live), Some(rebuilt)) => {
            let mut fields: Vec<&String> = live.keys().chain(rebuilt.keys()).collect();
            fields.sort();
            fields.dedup();
            fields
                .into_iter()
                .filter_map(|field| {
                    let left = live.get(field).cloned().unwrap_or(Value::Null);
                    let right = rebuilt.get(field).cloned().unwrap_or(Value::Null);
                    (left != right).then(|| (field.clone(), left, right))
                })
                .collect()
        }
        (live, rebuilt) => vec![(
            "row".to_owned(),
            Value::Bool(live.is_some()),
            Value::Bool(rebuilt.is_some()),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_differs_on_each_field_that_differs() {
        let live = json!({"id": 1, "name": "a", "n": 2});
        let rebuilt = json!({"id": 1, "name": "b", "n": 2});

        let differences = field_differences(Some(live), Some(rebuilt));

        assert_eq!(
            differences,
            vec![("name".to_owned(), json!("a"), json!("b"))]
        );
    }

    #[test]
    fn a_missing_row_is_one_difference() {
        let differences = field_differences(Some(json!({"id": 1})), None);

        assert_eq!(
            differences,
            vec![("row".to_owned(), json!(true), json!(false))]
        );
    }
}
