//! The old system's contracts: its clients' request bodies, its documents' ids and its rows
//! as the old tables held them.

use cutover_core::import::import_collections;
use cutover_engine::verify::verify;
use cutover_projections::inline_projectors;
use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

async fn legacy_row(app: &TestApp, collection: &str) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT collection_name, description FROM collections WHERE collection_id = $1::uuid",
    )
    .bind(collection)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_old_frontends_bodies_round_trip_on_create_and_update() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let list = format!("/projects/{project}/collections");

    let created = json_with_status(
        app.post(&list)
            .json(&json!({"collection_name": "Interviews", "description": "Round one"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let id = created["collection"]["collection_id"].as_str().unwrap();
    assert_eq!(created["collection"]["collection_name"], "Interviews");
    assert_eq!(created["collection"]["description"], "Round one");
    assert_eq!(
        legacy_row(&app, id).await,
        ("Interviews".to_owned(), Some("Round one".to_owned()))
    );

    let path = format!("{list}/{id}");
    let updated = json_with_status(
        app.put(&path)
            .json(&json!({"collection_name": "Field notes", "description": "Round two"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["collection"]["collection_name"], "Field notes");
    assert_eq!(
        legacy_row(&app, id).await,
        ("Field notes".to_owned(), Some("Round two".to_owned()))
    );

    // `name` is an alias of `collection_name`, and a `null` description is an empty one.
    let aliased = json_with_status(
        app.put(&path)
            .json(&json!({"name": "Aliased", "description": null}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(aliased["collection"]["collection_name"], "Aliased");
    assert_eq!(aliased["collection"]["description"], "");
}

#[tokio::test]
async fn a_body_with_both_the_name_and_its_alias_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();

    let refused = json_with_status(
        app.post(&format!("/projects/{project}/collections"))
            .json(&json!({"collection_name": "a", "name": "b"}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("duplicate field"),
        "{refused}"
    );
    assert_eq!(app.db.event_count().await, 0);
}

async fn attempt(app: &TestApp, skill: &str, subskill: &str) -> reqwest::Response {
    app.post("/students/12345/attempts")
        .json(&json!({
            "subject": "Mathematics", "skill_id": skill, "subskill_id": subskill,
            "score": 7, "analysis": "", "feedback": ""
        }))
        .send()
        .await
        .unwrap()
}

async fn legacy_ids(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM legacy_competencies ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_subskill_with_underscores_gets_the_old_stores_document_id() {
    let app = TestApp::spawn().await;

    let answer = json_with_status(
        attempt(&app, "addition", "single_digit").await,
        StatusCode::CREATED,
    )
    .await;

    assert_eq!(
        answer["competency"]["id"],
        "12345_Mathematics_addition_single_digit"
    );
    assert_eq!(
        legacy_ids(&app).await,
        ["12345_Mathematics_addition_single_digit"]
    );
    let read = json_with_status(
        app.get("/students/12345/competencies/Mathematics/addition/single_digit")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        read["competency"]["id"],
        "12345_Mathematics_addition_single_digit"
    );
}

#[tokio::test]
async fn two_subskills_with_one_old_id_are_never_merged() {
    let app = TestApp::spawn().await;
    json_with_status(
        attempt(&app, "addition", "single_digit").await,
        StatusCode::CREATED,
    )
    .await;
    let events = app.db.event_count().await;

    let refused = json_with_status(
        attempt(&app, "addition_single", "digit").await,
        StatusCode::CONFLICT,
    )
    .await;

    let detail = refused["detail"].as_str().unwrap();
    for part in [
        "12345_Mathematics_addition_single_digit",
        "'addition', subskill_id 'single_digit'",
        "'addition_single', subskill_id 'digit'",
    ] {
        assert!(detail.contains(part), "{detail} names {part}");
    }
    assert_eq!(app.db.event_count().await, events, "nothing appended");
    let typed: i64 = sqlx::query_scalar("SELECT count(*) FROM student_attempts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(typed, 1, "no row of the refused attempt in the new shape");
    // The other subskill's competency is not found through the shared id.
    json_with_status(
        app.get("/students/12345/competencies/Mathematics/addition_single/digit")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;

    // Retiring the legacy shape lifts the limit: the new shape keys on all four parts.
    app.set_read_source("competencies", "new").await;
    json_with_status(
        app.post("/admin/projections/legacy_competencies/retire")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    json_with_status(
        attempt(&app, "addition_single", "digit").await,
        StatusCode::CREATED,
    )
    .await;

    // Bringing the legacy shape back meets the pair, and fails naming it.
    let failed = cutover_tests::rebuild(&app.db.pool, &["legacy_competencies"])
        .await
        .expect_err("the rebuild fails");
    let mut chain = failed.to_string();
    let mut cause = std::error::Error::source(&failed);
    while let Some(e) = cause {
        chain = format!("{chain}: {e}");
        cause = e.source();
    }
    assert!(
        chain.contains("12345_Mathematics_addition_single_digit")
            && chain.contains("'addition_single', subskill_id 'digit'"),
        "{chain}"
    );
}

/// An export of the old `collections` table, as `psql \copy … TO … CSV HEADER` writes it: an
/// unquoted empty field is NULL.
const EXPORT: &str = "\
collection_id,project_id,collection_name,description,is_active,created_at,updated_at
00000000-0000-4000-8000-000000000001,00000000-0000-4000-8000-0000000000aa,Plain,,t,2019-05-01 10:00:00+00,2019-05-02 10:00:00+00
00000000-0000-4000-8000-000000000002,00000000-0000-4000-8000-0000000000aa,\"Quotes \"\"and\"\", commas\",\"tab\there, line
two\",f,2019-06-01 10:00:00+00,
00000000-0000-4000-8000-000000000003,00000000-0000-4000-8000-0000000000aa,Ünïcödé 数据 ✓,\"\",,,
00000000-0000-4000-8000-000000000004,00000000-0000-4000-8000-0000000000aa,,no name,t,2019-06-01 10:00:00+00,2019-06-01 10:00:00+00
";

#[tokio::test]
async fn a_csv_export_with_nulls_and_awkward_text_imports_once_and_verifies_clean() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw(
            "COPY import_collections (collection_id, project_id, collection_name, description, \
             is_active, created_at, updated_at) FROM STDIN WITH (FORMAT csv, HEADER true)",
        )
        .await
        .unwrap();
    copy.send(EXPORT.as_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    drop(conn);
    let store = app.db.store();

    let first = import_collections(&store).await.unwrap();
    let second = import_collections(&store).await.unwrap();

    assert_eq!((first.appended, first.already_present), (3, 0));
    assert_eq!(
        (second.appended, second.already_present),
        (0, 0),
        "the imported rows were consumed"
    );
    let refused: Vec<String> = first.refused.iter().map(|r| r.0.to_string()).collect();
    assert_eq!(refused, ["00000000-0000-4000-8000-000000000004"]);
    assert_eq!(app.db.event_count().await, 3);

    let legacy: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(c) - 'last_sequence' FROM collections AS c ORDER BY collection_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(legacy[0]["description"], Value::Null, "NULL stays NULL");
    assert_eq!(legacy[1]["collection_name"], "Quotes \"and\", commas");
    assert_eq!(legacy[1]["description"], "tab\there, line\ntwo");
    assert_eq!(legacy[1]["is_active"], false);
    assert_eq!(
        legacy[1]["updated_at"], legacy[1]["created_at"],
        "a missing updated_at is the created_at"
    );
    assert_eq!(legacy[2]["collection_name"], "Ünïcödé 数据 ✓");
    assert_eq!(
        legacy[2]["description"], "",
        "a quoted empty field is empty"
    );
    assert_eq!(
        legacy[2]["is_active"], true,
        "no flag is an active collection"
    );
    let contexts: Vec<(String, bool)> = sqlx::query_as(
        "SELECT research_context, is_active FROM project_collections ORDER BY collection_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        contexts,
        [
            (String::new(), true),
            ("tab\there, line\ntwo".to_owned(), false),
            (String::new(), true)
        ],
        "the inactive one keeps a new row too, for the old answers"
    );
    let path = "/projects/00000000-0000-4000-8000-0000000000aa/collections/\
                00000000-0000-4000-8000-000000000001";
    let read = json_with_status(app.get(path).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(read["collection"]["description"], Value::Null);
    app.set_read_source("collections", "new").await;
    let from_new = json_with_status(app.get(path).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(
        from_new["collection"], read["collection"],
        "NULL stays NULL in the new model"
    );

    let report = verify(&app.db.pool, &inline_projectors(), None)
        .await
        .unwrap();
    assert!(report.consistent(), "{report:?}");
}
