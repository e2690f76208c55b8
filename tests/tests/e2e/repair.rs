//! Partial repair: a drift that verify finds is repaired in place by the command it prints,
//! while commands on other aggregates go on.

use std::time::Duration;

use cutover_engine::locks::aggregate_lock_key;
use cutover_engine::verify::{verify, Report};
use cutover_projections::inline_projectors;
use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::collections::create;

async fn attempt(app: &TestApp, student: i64, score: f64) {
    json_with_status(
        app.post(&format!("/students/{student}/attempts"))
            .json(
                &json!({"subject": "math", "skill_id": "frac_tions", "subskill_id": "adding",
                          "score": score, "analysis": "", "feedback": ""}),
            )
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
}

async fn verify_all(app: &TestApp) -> Report {
    verify(&app.db.pool, &inline_projectors(), None)
        .await
        .unwrap()
}

/// Runs a printed `cutover …` command with the real binary against the test's database.
fn printed(app: &TestApp, command: &str) -> tokio::process::Command {
    let rest = command.strip_prefix("cutover ").expect("a cutover command");
    let mut cli = tokio::process::Command::new("sh");
    cli.arg("-c")
        .arg(format!(
            "exec '{}' {rest}",
            cutover_tests::binary("cutover").display()
        ))
        .env("DATABASE_URL", app.db.url())
        .env_remove("CUTOVER_TOKEN")
        .env("RUST_LOG", "warn");
    cli
}

#[tokio::test]
async fn a_tampered_row_is_found_by_verify_and_repaired_by_the_printed_command_while_other_aggregates_take_commands(
) {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let tampered = create(&app, project, "kept").await["collection"]["collection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    create(&app, project, "untouched").await;
    attempt(&app, 7, 8.0).await;
    attempt(&app, 7, 6.0).await;
    attempt(&app, 8, 10.0).await;
    sqlx::query(
        "UPDATE collections SET collection_name = 'by hand' WHERE collection_id = $1::uuid",
    )
    .bind(&tampered)
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "UPDATE student_competencies SET current_score = 0 WHERE student_id = 7;
         UPDATE skill_analytics SET attempts = 99;",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();

    let report = verify_all(&app).await;

    assert!(!report.consistent());
    let mut commands: Vec<String> = report
        .differences
        .iter()
        .filter_map(|d| d.repair.clone())
        .collect();
    commands.sort();
    commands.dedup();
    assert!(
        commands.contains(&format!(
            "cutover repair collections --aggregate '{tampered}'"
        )) && commands.contains(
            &"cutover repair student_competencies --aggregate '7_math_frac%5Ftions_adding'"
                .to_owned()
        ),
        "{commands:#?}"
    );
    assert!(
        report
            .differences
            .iter()
            .any(|d| d.table == "skill_analytics"),
        "the sum over students differs too"
    );

    // A command of the repaired collection is in flight (it holds the aggregate's lock): the
    // repair waits for it, and meanwhile other aggregates take commands.
    let holder = app.db.another_pool(1).await;
    let mut held = holder.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(aggregate_lock_key("collection", &tampered))
        .execute(&mut *held)
        .await
        .unwrap();
    let collection_repair = format!("cutover repair collections --aggregate '{tampered}'");
    let mut running = printed(&app, &collection_repair).spawn().unwrap();
    let waiting = async {
        loop {
            let waits: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            if waits > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the repair waits");
    let during = tokio::time::timeout(
        Duration::from_secs(5),
        create(&app, project, "during the repair"),
    )
    .await
    .expect("another aggregate's command does not wait for the repair");
    assert_eq!(during["collection"]["collection_name"], "during the repair");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(aggregate_lock_key("collection", &tampered))
        .execute(&mut *held)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let subskill = printed(
        &app,
        "cutover repair student_competencies --aggregate '7_math_frac%5Ftions_adding'",
    )
    .output()
    .await
    .unwrap();
    assert!(
        subskill.status.success(),
        "{}",
        String::from_utf8_lossy(&subskill.stderr)
    );
    assert!(String::from_utf8_lossy(&subskill.stdout).contains("2 events replayed"));

    let after = verify_all(&app).await;
    assert!(after.consistent(), "{after:#?}");
    let name: String = sqlx::query_scalar(
        "SELECT collection_name FROM collections WHERE collection_id = $1::uuid",
    )
    .bind(&tampered)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(name, "kept");
}

#[tokio::test]
async fn bad_input_a_repair_that_names_nothing_real_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = create(&app, Uuid::new_v4(), "x").await["collection"]["collection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(changed_at::text, ',' ORDER BY name) FROM projections",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
    };
    let before = changed().await;
    let cases = [
        (
            "/admin/projections/nope/repair",
            json!({"aggregates": [id]}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/admin/projections/collections/repair",
            json!({"aggregates": ["no-such-collection"]}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/admin/projections/collections/repair",
            json!({"aggregates": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/admin/projections/collections/repair",
            json!({"aggregate": [id]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (path, body, status) in cases {
        let problem =
            json_with_status(app.post(path).json(&body).send().await.unwrap(), status).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    app.set_read_source("collections", "new").await;
    json_with_status(
        app.post("/admin/projections/collections/retire")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let before_retired = changed().await;
    let refused = json_with_status(
        app.post("/admin/projections/collections/repair")
            .json(&json!({"aggregates": [id]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        refused["detail"].as_str().unwrap().contains("not live"),
        "{refused}"
    );
    assert_ne!(
        before, before_retired,
        "the retirement itself changed the registry"
    );
    assert_eq!(
        changed().await,
        before_retired,
        "no refused repair touched the registry"
    );
}
