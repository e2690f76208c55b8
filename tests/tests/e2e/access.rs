//! Access control: bearer tokens and their scopes, and the read-only database role.

use cutover_projections::inline_projectors;
use cutover_projections::rebuild::{self, Job, Purpose};
use cutover_tests::{json_with_status, AppOptions, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const TOKENS: &str = "read:r-token,write:w-token,admin:a-token";

async fn app_with_tokens() -> TestApp {
    TestApp::spawn_with(AppOptions {
        tokens: Some(TOKENS),
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn each_scope_is_allowed_where_it_should_be_and_refused_elsewhere() {
    let app = app_with_tokens().await;
    let project = Uuid::new_v4();
    let list = format!("/projects/{project}/collections");
    let read = |token: Option<&str>| {
        let request = app.get(&list);
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };
    let write = |token: Option<&str>| {
        let request = app.post(&list).json(&json!({"collection_name": "x"}));
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };
    let watch = |token: Option<&str>| {
        let request = app.get("/admin/read-sources");
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };
    let admin = |token: Option<&str>| {
        let request = app.get("/admin/consistency");
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };

    let cases = [
        (read(None), StatusCode::UNAUTHORIZED),
        (read(Some("wrong")), StatusCode::UNAUTHORIZED),
        (read(Some("r-token")), StatusCode::OK),
        (read(Some("w-token")), StatusCode::OK),
        (read(Some("a-token")), StatusCode::OK),
        (write(None), StatusCode::UNAUTHORIZED),
        (write(Some("r-token")), StatusCode::FORBIDDEN),
        (write(Some("w-token")), StatusCode::CREATED),
        (write(Some("a-token")), StatusCode::CREATED),
        (watch(None), StatusCode::UNAUTHORIZED),
        (watch(Some("r-token")), StatusCode::OK),
        (admin(None), StatusCode::UNAUTHORIZED),
        (admin(Some("r-token")), StatusCode::FORBIDDEN),
        (admin(Some("w-token")), StatusCode::FORBIDDEN),
        (admin(Some("a-token")), StatusCode::OK),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        json_with_status(response, status).await;
    }
    assert_eq!(
        app.db.event_count().await,
        2,
        "only the two allowed creates appended"
    );
    json_with_status(app.get("/health").send().await.unwrap(), StatusCode::OK).await;
}

#[tokio::test]
async fn the_read_only_role_reads_read_models_and_nothing_else() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    json_with_status(
        app.post(&format!("/projects/{project}/collections"))
            .json(&json!({"collection_name": "visible"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let user = format!("bi_{}", Uuid::new_v4().simple());
    sqlx::query(&format!(
        "CREATE ROLE {user} LOGIN PASSWORD 'bi-password' IN ROLE cutover_reader"
    ))
    .execute(&app.db.pool)
    .await
    .unwrap();
    let reader = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            app.db
                .options
                .clone()
                .username(&user)
                .password("bi-password"),
        )
        .await
        .unwrap();
    let denied = |result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| match result {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42501"),
        _ => false,
    };

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM collections")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert!(denied(
        sqlx::query("SELECT * FROM events").execute(&reader).await
    ));
    assert!(denied(
        sqlx::query("SELECT * FROM idempotency_keys")
            .execute(&reader)
            .await
    ));
    assert!(denied(
        sqlx::query("UPDATE collections SET collection_name = 'x'")
            .execute(&reader)
            .await
    ));
    assert!(denied(
        sqlx::query("DELETE FROM project_collections")
            .execute(&reader)
            .await
    ));
    // A rebuild swaps new tables in: the role still reads them.
    let selected = rebuild::select(&inline_projectors(), &["collections".to_owned()]).unwrap();
    Job::start(&app.db.pool, selected, Purpose::Rebuild)
        .await
        .unwrap()
        .run(|_| {})
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM collections")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    reader.close().await;
    sqlx::query(&format!("DROP ROLE {user}"))
        .execute(&app.db.pool)
        .await
        .unwrap();
}
