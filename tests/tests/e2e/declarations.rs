//! Every read-model table is declared once, in its projector (`cutover_engine::rows::Table`):
//! the migrations' tables, their rebuild templates and the registry's rows must agree with the
//! declarations, column by column (`declarations::differences`, which the servers and the CLI
//! check at start), or this fails. Likewise the states the registry stores
//! (Rust enums) and the CHECK constraints of their columns.

use std::sync::Arc;

use cutover_core::domain;
use cutover_core::domain::collection::CollectionEvent;
use cutover_engine::declarations;
use cutover_engine::event::StoredEvent;
use cutover_engine::projection::Projector;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rebuild;
use cutover_engine::registry::Purpose;
use cutover_engine::registry::{JobStatus, ProjectionState};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{timestamp, Change, Column, Merge, Returned, Table};
use cutover_projections::inline_projectors;
use cutover_tests::{TestApp, TestDb};
use serde_json::{json, Value};
use sqlx::Postgres;
use uuid::Uuid;

use crate::collections::{collection_path, create};
use crate::resume::{cli, run_cli};

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

/// The read model `docs/adding-a-read-model.md` adds, declared as its guide declares it: one row
/// per collection with its name and how often it was renamed.
struct CollectionNames;

static COLLECTION_NAMES: Table = Table {
    name: "collection_names",
    columns: &[
        Column {
            name: "collection_id",
            sql_type: "uuid",
            merge: Merge::Keep,
        },
        Column {
            name: "name",
            sql_type: "text",
            merge: Merge::Set,
        },
        Column {
            name: "renames",
            sql_type: "bigint",
            merge: Merge::Add,
        },
        Column {
            name: "renamed_at",
            sql_type: "timestamp with time zone",
            merge: Merge::Greatest,
        },
    ],
    key: &["collection_id"],
    address: &["collection_id"],
    indexes: &[],
    aggregate: Some("collection_id::text"),
    returned: Returned::No,
};

static COLLECTION_NAMES_TABLES: [&Table; 1] = [&COLLECTION_NAMES];

impl Projector for CollectionNames {
    fn name(&self) -> &'static str {
        "collection_names"
    }

    fn tables(&self) -> &'static [&'static Table] {
        &COLLECTION_NAMES_TABLES
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["collection"]
    }

    fn domain(&self) -> Domain {
        Domain::Collections
    }

    fn shape(&self) -> ReadSource {
        ReadSource::New
    }

    fn project(&self, event: &StoredEvent) -> Result<Vec<Change>, ProjectionError> {
        let at = timestamp(event.recorded_at);
        let id = &event.aggregate_id;
        Ok(match domain::decode(self.name(), event)? {
            CollectionEvent::CollectionCreated {
                collection_name, ..
            } => vec![Change::insert(
                &COLLECTION_NAMES,
                json!({"collection_id": id, "name": collection_name, "renames": 0, "renamed_at": at}),
            )],
            CollectionEvent::CollectionUpdated {
                collection_name, ..
            } => vec![Change::update(
                &COLLECTION_NAMES,
                json!({"collection_id": id, "name": collection_name, "renames": 1, "renamed_at": at}),
            )],
            _ => Vec::new(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_added_as_the_guide_says_is_registered_at_start_and_filled_by_a_rebuild() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let kept = create(&app, project, "Kept").await;
    let renamed = create(&app, project, "Before").await;
    let path = collection_path(project, &renamed);
    let response = app
        .put(&path)
        .json(&json!({"collection_name": "After"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // The guide's migration, as it is written there.
    let guide = include_str!("../../../docs/adding-a-read-model.md");
    let migration = guide
        .split("```sql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the guide's migration");
    sqlx::raw_sql(migration)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let mut projectors = inline_projectors();
    projectors.push(Arc::new(CollectionNames));
    // At start: the registry row and the template are made, and all is as declared.
    declarations::check(&app.db.pool, &projectors)
        .await
        .unwrap();
    let (state, shape, inline): (String, String, bool) = sqlx::query_as(
        "SELECT state, shape, inline_active FROM projections WHERE name = 'collection_names'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), shape.as_str(), inline),
        ("retired", "new", false)
    );
    // The rebuild fills it from the whole log and makes it live.
    let selected = rebuild::select(&projectors, &["collection_names".to_owned()]).unwrap();
    rebuild::Job::start(&app.db.pool, selected, Purpose::Rebuild)
        .await
        .unwrap()
        .run(rebuild::SwapArgs::default(), |_| {})
        .await
        .unwrap();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT collection_id::text, name, renames FROM collection_names ORDER BY name",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let id = |created: &Value| {
        created["collection"]["collection_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        rows,
        vec![
            (id(&renamed), "After".to_owned(), 1),
            (id(&kept), "Kept".to_owned(), 0)
        ]
    );
    let state: String =
        sqlx::query_scalar("SELECT state FROM projections WHERE name = 'collection_names'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(state, "live");
    let found = declarations::differences(&app.db.pool, &projectors)
        .await
        .unwrap();
    assert_eq!(found, Vec::<String>::new());
}
