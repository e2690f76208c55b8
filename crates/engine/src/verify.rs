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

use crate::compare::Comparison;
use crate::projection::Projector;
use crate::rows::Table;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::admin::AdminError;
use crate::rebuild::Job;
use crate::registry::projections;
use crate::registry::Purpose;
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

/// A row of [`Comparison::sql`].
type DiffRow = (
    Option<Value>,
    Option<String>,
    Option<Value>,
    Option<Value>,
    Option<String>,
    Option<i64>,
);

/// `(key, live row, rebuilt row, aggregate, NULL)` per differing row, plus
/// `(NULL, NULL, NULL, NULL, count)`.
type PairRow = (
    Option<Value>,
    Option<Value>,
    Option<Value>,
    Option<String>,
    Option<i64>,
);

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
    let mut known: Vec<&str> = Vec::new();
    for domain in projectors.iter().map(|p| p.domain().as_str()) {
        if !known.contains(&domain) {
            known.push(domain);
        }
    }
    let domains: Vec<&str> = match domain {
        Some(wanted) => {
            if !known.contains(&wanted) {
                return Err(AdminError::UnknownDomain(wanted.to_owned()));
            }
            vec![wanted]
        }
        None => known,
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
    let outcome = compare_all(
        pool,
        &mut job,
        (projectors, &domains),
        &registry,
        &mut report,
    )
    .await;
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
    sqlx::query!(
        "INSERT INTO consistency_reports (consistent, report) VALUES ($1, $2)",
        report.consistent(),
        sqlx::types::Json(report) as _
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM consistency_reports
          WHERE id <= (SELECT max(id) FROM consistency_reports) - $1",
        REPORTS_KEPT
    )
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
    sqlx::query_as!(
        Recorded,
        r#"SELECT checked_at, consistent, report AS "report: sqlx::types::Json<Value>"
             FROM consistency_reports ORDER BY id DESC LIMIT 1"#
    )
    .fetch_optional(pool)
    .await
}

async fn compare_all(
    pool: &PgPool,
    job: &mut Job,
    (projectors, domains): (&[Arc<dyn Projector>], &[&str]),
    registry: &[crate::registry::Projection],
    report: &mut Report,
) -> Result<(), AdminError> {
    job.catch_up(&mut |_| {}).await?;
    // A snapshot with no append in flight: hold the append lock while it is taken. Both
    // connections are taken first, so that commands queued behind the lock (holding pooled
    // connections) cannot starve the snapshot of one.
    let mut snapshot = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *snapshot)
        .await?;
    let mut gate = pool.begin().await?;
    sqlx::Executor::execute(&mut *gate, crate::locks::HOLD_APPENDS).await?;
    sqlx::query_scalar!("SELECT 1 AS one")
        .fetch_one(&mut *snapshot)
        .await?;
    gate.commit().await?;

    job.finish_in(&mut snapshot).await?;
    for domain in domains {
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
        let compared = projectors
            .iter()
            .filter(|p| p.domain().as_str() == *domain)
            .flat_map(|p| p.compared());
        for comparison in compared {
            legacy_vs_new(&mut snapshot, domain, comparison, registry, report).await?;
        }
    }
    for projector in job.projectors().to_vec() {
        for table in projector.tables() {
            live_vs_rebuilt(&mut snapshot, projector.name(), table, job.schema(), report).await?;
        }
    }
    snapshot.rollback().await?;
    Ok(())
}

async fn legacy_vs_new(
    conn: &mut PgConnection,
    domain: &str,
    comparison: &Comparison,
    registry: &[crate::registry::Projection],
    report: &mut Report,
) -> Result<(), AdminError> {
    let pair = comparison.name();
    let rows: Vec<DiffRow> = sqlx::query_as(&comparison.sql())
        .fetch_all(&mut *conn)
        .await?;
    for (key, field, left, right, aggregate, compared) in rows {
        match field {
            Some(field) => {
                let key = key.unwrap_or(Value::Null);
                // Which side is wrong is not known: the command repairs both projections.
                let domain = registry.iter().filter(|r| r.domain == domain);
                let names: Vec<&str> = domain.map(|r| r.name.as_str()).collect();
                let repair = aggregate.map(|a| repair::command(&names, &a));
                report.add(Difference {
                    check: "legacy_vs_new",
                    projection: pair.clone(),
                    table: pair.clone(),
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
    table: &Table,
    schema: &str,
    report: &mut Report,
) -> Result<(), AdminError> {
    let (aggregate, table) = (table.aggregate.unwrap_or("NULL"), table.name);
    let key_columns: Vec<String> = sqlx::query_scalar!(
        r#"SELECT a.attname::text AS "name!"
           FROM pg_index AS i
           JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = ('cutover_templates.' || $1)::regclass AND i.indisprimary
          ORDER BY array_position(i.indkey::int2[], a.attnum)"#,
        table
    )
    .fetch_all(&mut *conn)
    .await?;
    let key = key_columns
        .iter()
        .map(|c| format!("'{c}', t.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH live AS (SELECT jsonb_build_object({key}) AS k, to_jsonb(t) AS row,
                              ({aggregate})::text AS aggregate FROM public.{table} AS t),
              rebuilt AS (SELECT jsonb_build_object({key}) AS k, to_jsonb(t) AS row,
                                 ({aggregate})::text AS aggregate FROM {schema}.{table} AS t),
              pairs AS (SELECT coalesce(l.k, r.k) AS k, l.row AS live, r.row AS rebuilt,
                               coalesce(l.aggregate, r.aggregate) AS aggregate
                          FROM live AS l FULL JOIN rebuilt AS r ON l.k = r.k)
         SELECT k, live, rebuilt, aggregate, NULL::bigint FROM pairs
          WHERE live IS DISTINCT FROM rebuilt
         UNION ALL SELECT NULL, NULL, NULL, NULL, count(*) FROM pairs"
    );
    let rows: Vec<PairRow> = sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    for (key, live, rebuilt, aggregate, compared) in rows {
        let Some(key) = key else {
            report.rows_compared += compared.unwrap_or(0);
            continue;
        };
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
