//! Access control: bearer tokens and their scopes, and the read-only database role.

use cutover_projections::inline_projectors;
use std::time::{Duration, Instant};

use cutover_engine::admin::AdminError;
use cutover_engine::locks::{aggregate_lock_key, APPEND_LOCK};
use cutover_engine::rebuild::{self, Job, SwapArgs, SwapBlocked};
use cutover_engine::registry::Purpose;
use cutover_tests::{json_with_status, rebuild_with, AppOptions, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use crate::collections::create;

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
    create(&app, Uuid::new_v4(), "c").await;
    let (user, reader) = create_reader(&app.db).await;
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
        .run(SwapArgs::default(), |_| {})
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM collections")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    drop_reader(&app.db, &user, reader).await;
}

/// Whether `result` is Postgres's "permission denied".
fn denied<T>(result: Result<T, sqlx::Error>) -> bool {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42501"),
        _ => false,
    }
}

/// A login in `cutover_reader`, created with the statements docs/operations.md gives operators
/// ("Tokens and the cutover_reader role"), and a pool of its connections (application `bi`).
async fn create_reader(db: &TestDb) -> (String, PgPool) {
    let user = format!("bi_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {user} LOGIN PASSWORD 'bi-password' IN ROLE cutover_reader;
         CALL cutover_limit_reader('{user}');"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let reader = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            db.options
                .clone()
                .username(&user)
                .password("bi-password")
                .application_name("bi"),
        )
        .await
        .unwrap();
    (user, reader)
}

async fn drop_reader(db: &TestDb, user: &str, reader: PgPool) {
    reader.close().await;
    sqlx::query(&format!("DROP ROLE {user}"))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// The slowest of five commands.
async fn slowest_command(app: &TestApp, project: Uuid) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        create(app, project, "c").await;
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// A reader's open transaction that has read `collections` (holding its AccessShareLock) and
/// now runs a long query; it rolls back once the query ends, and gives the query's result.
async fn long_read(reader: &PgPool) -> (i32, tokio::task::JoinHandle<Result<(), sqlx::Error>>) {
    let mut tx = reader.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM collections")
        .execute(&mut *tx)
        .await
        .unwrap();
    let reading = tokio::spawn(async move {
        let slept = sqlx::query("SELECT pg_sleep(60)").execute(&mut *tx).await;
        tx.rollback().await?;
        slept.map(|_| ())
    });
    (pid, reading)
}

#[tokio::test]
async fn a_reader_holds_nothing_that_commands_or_a_rebuild_wait_on() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let baseline = slowest_command(&app, project).await;
    let (user, reader) = create_reader(&app.db).await;

    // Its bounds, as the documented statements set them.
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(timeout, "15min");
    let limit: i32 = sqlx::query_scalar("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1")
        .bind(&user)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(limit, 4);

    // Every lock a command or a swap waits on, in every form: refused.
    let aggregate = aggregate_lock_key("collection", &Uuid::new_v4().to_string());
    for lock in [
        format!("pg_advisory_lock({APPEND_LOCK})"),
        format!("pg_advisory_lock_shared({APPEND_LOCK})"),
        format!("pg_try_advisory_lock({APPEND_LOCK})"),
        format!("pg_advisory_lock({aggregate})"),
        "pg_advisory_lock(1, 2)".to_owned(),
        "pg_try_advisory_lock_shared(1, 2)".to_owned(),
    ] {
        assert!(
            denied(
                sqlx::query(&format!("SELECT {lock}"))
                    .execute(&reader)
                    .await
            ),
            "{lock}"
        );
    }
    let mut tx = reader.begin().await.unwrap();
    assert!(denied(
        sqlx::query(&format!(
            "SELECT pg_advisory_xact_lock_shared({APPEND_LOCK})"
        ))
        .execute(&mut *tx)
        .await
    ));
    tx.rollback().await.unwrap();
    assert!(denied(
        sqlx::query("CREATE TEMP TABLE hoard (x int)")
            .execute(&reader)
            .await
    ));

    // A long query in a transaction on a read model: commands go on as fast as before.
    let (pid, reading) = long_read(&reader).await;
    let during = slowest_command(&app, project).await;
    assert!(
        during < baseline + Duration::from_secs(1),
        "commands took up to {during:?} while a reader read, {baseline:?} before"
    );

    // The rebuild's swap waits a second for it, then cancels its query and finishes.
    let swap = SwapArgs {
        swap_wait_secs: 1,
        swap_blocked: SwapBlocked::ReadersCancel,
    };
    let outcome = rebuild_with(&app.db.pool, &["collections"], swap)
        .await
        .unwrap();
    match reading.await.unwrap() {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("57014")),
        other => panic!("the reader's query was not cancelled: {other:?}"),
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM collections")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(rows, 10, "the reader reads the rebuilt table");

    // Named in the job's answer (from its row).
    let job = json_with_status(
        app.get(&format!("/admin/jobs/{}", outcome.job_id))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(job["status"], "succeeded");
    let stopped = job["swap_stopped"].as_array().unwrap();
    assert_eq!(stopped.len(), 1, "{job}");
    assert_eq!(stopped[0]["pid"], pid);
    assert_eq!(stopped[0]["user"], user.as_str());
    assert_eq!(stopped[0]["application"], "bi");
    assert_eq!(stopped[0]["query"], "SELECT pg_sleep(60)");
    assert_eq!(stopped[0]["signal"], "cancel");
    assert!(stopped[0]["query_start"].is_string());
    drop_reader(&app.db, &user, reader).await;
}

#[tokio::test]
async fn with_give_up_a_swap_held_up_by_a_reader_fails_as_before() {
    let app = TestApp::spawn().await;
    create(&app, Uuid::new_v4(), "c").await;
    let (user, reader) = create_reader(&app.db).await;
    let (pid, reading) = long_read(&reader).await;
    let swap = SwapArgs {
        swap_wait_secs: 1,
        swap_blocked: SwapBlocked::GiveUp,
    };
    let failed = rebuild_with(&app.db.pool, &["collections"], swap).await;
    let Err(AdminError::RebuildFailed { reason, .. }) = failed else {
        panic!("the rebuild did not fail: {failed:?}");
    };
    assert!(reason.contains("lock timeout"), "{reason}");
    assert!(!reading.is_finished(), "the reader's query runs on");
    let status = json_with_status(
        app.get("/admin/projections/collections")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let job = &status["latest_job"];
    assert_eq!(job["status"], "failed");
    assert_eq!(job["swap_stopped"], json!([]));
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert!(reading.await.unwrap().is_err());
    drop_reader(&app.db, &user, reader).await;
}
