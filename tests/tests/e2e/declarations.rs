//! Every read-model table is declared once, in its projector (`cutover_core::rows::Table`):
//! the migrations' tables, their rebuild templates and the registry's rows must agree with the
//! declarations, column by column (`declarations::differences`, which the servers and the CLI
//! check at start), or this fails. Likewise the states the registry stores
//! (Rust enums) and the CHECK constraints of their columns.

use cutover_core::read_source::ReadSource;
use cutover_projections::rebuild::Purpose;
use cutover_projections::registry::{JobStatus, ProjectionState};
use cutover_projections::{declarations, inline_projectors};
use cutover_tests::{TestApp, TestDb};

use crate::resume::{cli, run_cli};
use sqlx::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_and_registry_row_matches_its_projectors_declaration_before_and_after_a_rebuild(
) {
    let app = TestApp::spawn().await;
    let found = declarations::differences(&app.db.pool, &inline_projectors())
        .await
        .unwrap();
    assert_eq!(found, Vec::<String>::new());
    // A rebuild's tables, made from the templates, replace the live ones.
    run_cli(&app, &["rebuild", "all"]).await;
    let found = declarations::differences(&app.db.pool, &inline_projectors())
        .await
        .unwrap();
    assert_eq!(found, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_differs_from_its_declaration_is_named_and_nothing_starts_on_it() {
    let app = TestApp::spawn().await;
    // As a migration not applied, or a change by hand, would leave them.
    sqlx::raw_sql(
        "ALTER TABLE batch_counters ALTER COLUMN total_predictions TYPE numeric;
         ALTER TABLE cutover_templates.collections ADD COLUMN note text;
         DROP INDEX student_attempts_by_subskill;
         UPDATE projections SET tables = '{legacy_attempts,legacy_reviews}'
          WHERE name = 'legacy_competencies';",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let found = declarations::differences(&app.db.pool, &inline_projectors())
        .await
        .unwrap();
    for expected in [
        "public.batch_counters.total_predictions is numeric, declared bigint",
        "cutover_templates.collections has a column note (text) that its projector does not declare",
        "public.student_attempts has 0 indexes besides its primary key (), declared 1 \
         (student_attempts_by_subskill)",
        "the registry lists the tables [\"legacy_attempts\", \"legacy_reviews\"] for projection \
         legacy_competencies",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "{expected:?} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), 4, "{found:#?}");
    // The CLI refuses to act on it, and says why.
    let output = cli(&app, &["status"]).output().await.unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("public.batch_counters.total_predictions is numeric, declared bigint"),
        "{said}"
    );
}

/// The values the CHECK constraint `constraint` allows, sorted.
async fn allowed(db: &TestDb, constraint: &str) -> Vec<String> {
    let mut values: Vec<String> = sqlx::query_scalar(
        "SELECT (regexp_matches(pg_get_constraintdef(oid), '''([a-z_]+)''', 'g'))[1]
           FROM pg_constraint WHERE conname = $1",
    )
    .bind(constraint)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("the values of {constraint}: {e}"));
    values.sort();
    values
}

/// `variants` are stored as the values `constraint` allows, every one of them, and answered
/// in JSON with the same spelling; each stored value reads back as its variant.
async fn mirrors<T>(db: &TestDb, constraint: &str, variants: &[T])
where
    T: for<'q> sqlx::Encode<'q, Postgres>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + serde::Serialize
        + PartialEq
        + std::fmt::Debug
        + Copy
        + Send
        + Sync
        + Unpin,
{
    let mut stored = Vec::new();
    for variant in variants {
        let spelled: String = sqlx::query_scalar("SELECT $1")
            .bind(*variant)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(variant).unwrap(),
            spelled.as_str(),
            "{variant:?}: the answers' spelling"
        );
        let read: T = sqlx::query_scalar("SELECT $1::text")
            .bind(&spelled)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(read, *variant);
        stored.push(spelled);
    }
    stored.sort();
    assert_eq!(stored, allowed(db, constraint).await, "{constraint}");
}

#[tokio::test]
async fn every_stored_state_is_an_enum_that_mirrors_its_check_constraint() {
    use JobStatus::{Cancelled, Failed, Running, Succeeded};
    use ProjectionState::{Live, Rebuilding, Retired};
    let db = TestDb::new().await;
    mirrors(&db, "projections_state_check", &[Live, Rebuilding, Retired]).await;
    let shapes = [ReadSource::Legacy, ReadSource::New];
    mirrors(&db, "projections_shape_check", &shapes).await;
    mirrors(&db, "read_sources_source_check", &shapes).await;
    let statuses = [Running, Succeeded, Failed, Cancelled];
    mirrors(&db, "rebuild_jobs_status_check", &statuses).await;
    let purposes = [Purpose::Rebuild, Purpose::Verify];
    mirrors(&db, "rebuild_jobs_purpose_check", &purposes).await;
    db.pool.close().await;
}
