//! Migration is a rebuild: rebuild under live writes, verify, cut over and back, retire and
//! restore, adopt legacy rows — through the library the CLI uses and through the admin API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::import::import_collections;
use cutover_engine::rebuild::{self, Job, SwapArgs};
use cutover_engine::registry::Purpose;
use cutover_engine::verify::{verify, Report};
use cutover_projections::inline_projectors;
use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::collections::create;
use crate::resume::cli;

async fn verify_all(app: &TestApp) -> Report {
    verify(&app.db.pool, &inline_projectors(), None)
        .await
        .unwrap()
}

async fn rebuild(app: &TestApp, names: &[&str]) -> rebuild::Outcome {
    cutover_tests::rebuild(&app.db.pool, names).await.unwrap()
}

/// Rows of `table` as JSON, in a stable order.
async fn rows(app: &TestApp, table: &str) -> Value {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]') FROM {table} AS t"
    ))
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

async fn projection_status(app: &TestApp, name: &str) -> Value {
    let response = app
        .get(&format!("/admin/projections/{name}"))
        .send()
        .await
        .unwrap();
    json_with_status(response, StatusCode::OK).await
}

async fn some_history(app: &TestApp) -> Uuid {
    let project = Uuid::new_v4();
    for name in ["a", "b", "c"] {
        let created = create(app, project, name).await;
        let id = created["collection"]["collection_id"].as_str().unwrap();
        json_with_status(
            app.put(&format!("/projects/{project}/collections/{id}/links"))
                .json(&json!({"tags": [name]}))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
    }
    json_with_status(
        app.post("/batches")
            .json(&json!({"batch_id": "b1", "expected_players": ["ann", "bob"]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    json_with_status(
        app.post("/students/1/attempts")
            .json(&json!({"subject": "math", "skill_id": "f", "subskill_id": "a", "score": 7}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    project
}

/// What the writers had acknowledged: (key, position) of every 2xx, and the failures.
#[derive(Default)]
struct Acknowledged {
    created: Vec<(String, i64)>,
    completions: Vec<(String, i64)>,
    attempts: Vec<(String, i64)>,
    failures: Vec<String>,
}

type Written = (Vec<(String, i64)>, Vec<String>);

/// A writer: sends `request(i)` for i = 1, 2, … until `stop` (or `max` requests), and keeps
/// `key(i, body)` with the position of each acknowledged command.
fn writer(
    app: &TestApp,
    stop: Arc<AtomicBool>,
    max: usize,
    request: impl Fn(usize) -> (String, Value) + Send + 'static,
    key: impl Fn(usize, &Value) -> String + Send + 'static,
) -> tokio::task::JoinHandle<Written> {
    let (client, base) = (app.client.clone(), app.url(""));
    tokio::spawn(async move {
        let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
        for i in 1..=max {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (path, body) = request(i);
            let response = client
                .post(format!("{base}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let answer: Value = response.json().await.unwrap();
            if status.is_success() {
                acknowledged.push((key(i, &answer), answer["position"].as_i64().unwrap()));
            } else {
                failures.push(format!("{status}: {answer}"));
            }
        }
        (acknowledged, failures)
    })
}

/// Runs three writers (collections, completions of one hot batch, attempts) until `stop`.
async fn write_until(app: &TestApp, stop: Arc<AtomicBool>) -> Acknowledged {
    let players: Vec<String> = (0..5_000).map(|i| format!("p{i}")).collect();
    let players: Vec<&str> = players.iter().map(String::as_str).collect();
    crate::batches::start(app, "hot", &players).await;
    let project = Uuid::new_v4();
    let collections = writer(
        app,
        stop.clone(),
        usize::MAX,
        move |i| {
            (
                format!("/projects/{project}/collections"),
                json!({"collection_name": format!("c{i}")}),
            )
        },
        |_, body| {
            body["collection"]["collection_id"]
                .as_str()
                .unwrap()
                .to_owned()
        },
    );
    let completions = writer(
        app,
        stop.clone(),
        4_999,
        |i| {
            let body = json!({"player_lookup": format!("p{i}"), "predictions_count": 1});
            ("/batches/hot/completions".to_owned(), body)
        },
        |i, _| format!("p{i}"),
    );
    let attempts = writer(
        app,
        stop,
        usize::MAX,
        |i| {
            let body =
                json!({"subject": "math", "skill_id": "s", "subskill_id": "t", "score": i % 11});
            (format!("/students/{}/attempts", 100 + i % 7), body)
        },
        |i, _| i.to_string(),
    );
    let (created, mut failures) = collections.await.unwrap();
    let (completions, more) = completions.await.unwrap();
    failures.extend(more);
    let (attempts, more) = attempts.await.unwrap();
    failures.extend(more);
    Acknowledged {
        created,
        completions,
        attempts,
        failures,
    }
}

#[tokio::test]
async fn rebuild_equals_live_while_commands_keep_coming_and_nothing_is_dropped_or_doubled() {
    let app = TestApp::spawn().await;
    some_history(&app).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = {
        let stop = stop.clone();
        let app_ref = &app;
        async move { write_until(app_ref, stop).await }
    };
    let rebuilds = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(rebuild(&app, &["all"]).await);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        stop.store(true, Ordering::Relaxed);
        outcomes
    };

    let (acknowledged, outcomes) = tokio::join!(writers, rebuilds);

    assert!(
        acknowledged.failures.is_empty(),
        "{:?}",
        acknowledged.failures
    );
    for outcome in &outcomes {
        assert!(
            outcome.swap_hold <= cutover_tests::SWAP_HOLD_BOUND,
            "appends were held {:?} at a swap under writers",
            outcome.swap_hold
        );
    }
    let swap_positions: Vec<i64> = outcomes.iter().map(|o| o.position).collect();
    let all_positions: Vec<i64> = acknowledged
        .created
        .iter()
        .map(|(_, p)| *p)
        .chain(acknowledged.completions.iter().map(|(_, p)| *p))
        .chain(acknowledged.attempts.iter().map(|(_, p)| *p))
        .collect();
    assert!(
        all_positions.iter().any(|p| *p < swap_positions[0])
            && all_positions.iter().any(|p| *p > swap_positions[2]),
        "commands ran before and after the swaps"
    );
    let report = verify_all(&app).await;
    assert!(
        report.consistent(),
        "{:?}",
        &report.differences[..report.differences.len().min(3)]
    );
    // Every acknowledged command is in the log and in both read models exactly once.
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position = ANY($1)")
        .bind(&all_positions)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(logged, i64::try_from(all_positions.len()).unwrap());
    let ids: Vec<Uuid> = acknowledged
        .created
        .iter()
        .map(|(id, _)| id.parse().unwrap())
        .collect();
    let (legacy, new): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM collections WHERE collection_id = ANY($1)),
                (SELECT count(*) FROM project_collections WHERE collection_id = ANY($1))",
    )
    .bind(&ids)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((legacy, new), (ids.len() as i64, ids.len() as i64));
    let (array, completed_rows, counter): (i64, i64, i64) = sqlx::query_as(
        "SELECT cardinality(completed_players)::bigint,
                (SELECT count(*) FROM batch_completions WHERE batch_id = 'hot'),
                (SELECT completed_count::bigint FROM batch_counters WHERE batch_id = 'hot')
           FROM batch_state WHERE batch_id = 'hot'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let acknowledged_completions = acknowledged.completions.len() as i64;
    assert_eq!(
        (array, completed_rows, counter),
        (
            acknowledged_completions,
            acknowledged_completions,
            acknowledged_completions
        )
    );
    let attempts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM legacy_attempts WHERE student_id >= 100),
                (SELECT count(*) FROM student_attempts WHERE student_id >= 100)",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let acknowledged_attempts = acknowledged.attempts.len() as i64;
    assert_eq!(attempts, (acknowledged_attempts, acknowledged_attempts));
}

#[tokio::test]
async fn verify_names_a_tampered_row_and_a_rebuild_repairs_it() {
    let app = TestApp::spawn().await;
    some_history(&app).await;
    let victim: Uuid =
        sqlx::query_scalar("SELECT min(collection_id::text)::uuid FROM project_collections")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    sqlx::query(
        "UPDATE project_collections SET research_context = 'tampered' WHERE collection_id = $1",
    )
    .bind(victim)
    .execute(&app.db.pool)
    .await
    .unwrap();

    let report = json_with_status(
        app.get("/admin/consistency").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;

    assert_eq!(report["consistent"], false);
    let differences = report["differences"].as_array().unwrap();
    assert!(differences.iter().any(|d| d["check"] == "live_vs_rebuild"
        && d["projection"] == "project_collections"
        && d["key"]["collection_id"] == victim.to_string()
        && d["field"] == "research_context"
        && d["left"] == "tampered"
        && d["right"] == "what we learned"));
    assert!(differences
        .iter()
        .any(|d| d["check"] == "legacy_vs_new" && d["field"] == "description/research_context"));
    let started = json_with_status(
        app.post("/admin/projections/project_collections/rebuild")
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await;
    let job = started["job"].as_str().unwrap().to_owned();
    let mut finished = Value::Null;
    for _ in 0..100 {
        finished = json_with_status(app.get(&job).send().await.unwrap(), StatusCode::OK).await;
        if finished["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert!(finished["events_per_second"].as_f64().unwrap() > 0.0);
    assert!(verify_all(&app).await.consistent());
    let status = projection_status(&app, "project_collections").await;
    assert_eq!(status["version"], 2);
    assert_eq!(status["state"], "live");
    assert_eq!(status["latest_job"]["status"], "succeeded");
    assert!(status["latest_job"]["swap_hold_ms"].as_f64().unwrap() >= 0.0);
}

/// The reloptions of every table of `schema` that the collections projections declare.
/// Each table a domain's new model shares with its legacy one, tampered on the legacy side in
/// one field: verification names the pair, the field and the aggregate to repair, for all six.
#[tokio::test]
async fn verify_compares_every_declared_pair_of_tables_and_names_the_aggregate_to_repair() {
    let app = TestApp::spawn().await;
    some_history(&app).await;
    crate::batches::start(&app, "vb", &["p1", "p2"]).await;
    let completed = crate::batches::complete(&app, "vb", "p1", 3).await;
    assert_eq!(completed.status(), StatusCode::CREATED);
    crate::competencies::attempt(&app, 7, "adding", 8.0).await;
    let reviewed = app
        .post("/students/7/reviews")
        .json(&crate::competencies::review_body(4.0))
        .send()
        .await
        .unwrap();
    assert_eq!(reviewed.status(), StatusCode::CREATED);
    let clean = verify_all(&app).await;
    assert!(clean.consistent(), "{:?}", clean.differences);
    assert!(clean.rows_compared > 0);
    let collection: String = sqlx::query_scalar("SELECT min(collection_id::text) FROM collections")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    for tamper in [
        "UPDATE collections SET collection_name = 'tampered'
          WHERE collection_id = (SELECT min(collection_id::text)::uuid FROM collections)",
        "UPDATE batch_state SET total_predictions = 9,
                predictions_by_player = jsonb_set(predictions_by_player, '{p1}', '9')
          WHERE batch_id = 'vb'",
        "UPDATE legacy_competencies SET doc = jsonb_set(doc, '{total_attempts}', '5') WHERE student_id = 7",
        "UPDATE legacy_attempts SET doc = jsonb_set(doc, '{feedback}', '\"tampered\"') WHERE student_id = 7",
        "UPDATE legacy_reviews SET doc = jsonb_set(doc, '{problem_id}', '\"p-0\"') WHERE student_id = 7",
    ] {
        sqlx::query(tamper).execute(&app.db.pool).await.unwrap();
    }
    let report = verify_all(&app).await;

    let subskill = "7_math_fractions_adding";
    let expected = [
        (
            "collections/project_collections",
            "collection_name",
            collection.as_str(),
        ),
        ("batch_state/batch_counters", "total_predictions", "vb"),
        ("batch_state/batch_counters", "predictions_by_player", "vb"),
        ("batch_state/batch_completions", "predictions_count", "vb"),
        (
            "legacy_competencies/student_competencies",
            "total_attempts",
            subskill,
        ),
        ("legacy_attempts/student_attempts", "feedback", subskill),
        ("legacy_reviews/student_reviews", "problem_id", subskill),
    ];
    let found: Vec<_> = report
        .differences
        .iter()
        .filter(|d| d.check == "legacy_vs_new")
        .collect();
    for (pair, field, aggregate) in expected {
        let difference = found
            .iter()
            .find(|d| d.projection == pair && d.field == field)
            .unwrap_or_else(|| panic!("{pair} {field} not found in {found:?}"));
        let repair = difference.repair.as_deref().unwrap_or_default();
        assert!(
            repair.ends_with(&format!("--aggregate '{aggregate}'")),
            "{pair}: {repair}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:?}");
}

async fn reloptions(app: &TestApp, schema: &str) -> Vec<Option<Vec<String>>> {
    sqlx::query_scalar(
        "SELECT c.reloptions::text[] FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname IN ('collections', 'project_collections')
          ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn autovacuum_keeps_off_a_rebuilds_tables_until_the_swap_and_comes_back_with_it() {
    let app = TestApp::spawn().await;
    some_history(&app).await;
    let selected = rebuild::select(
        &inline_projectors(),
        &["collections".to_owned(), "project_collections".to_owned()],
    )
    .unwrap();
    let job = Job::start(&app.db.pool, selected, Purpose::Rebuild)
        .await
        .unwrap();
    let off = Some(vec!["autovacuum_enabled=false".to_owned()]);
    assert_eq!(
        reloptions(&app, job.schema()).await,
        vec![off.clone(), off],
        "an autovacuum of a job's table would hold the swap (and appends) back"
    );
    job.run(SwapArgs::default(), |_| {}).await.unwrap();
    assert_eq!(reloptions(&app, "public").await, vec![None, None]);
}

#[tokio::test]
async fn an_interrupted_rebuild_leaves_the_live_tables_intact_and_a_rerun_resumes_it() {
    let app = TestApp::spawn().await;
    let project = some_history(&app).await;
    let before = (
        rows(&app, "collections").await,
        rows(&app, "project_collections").await,
    );
    let selected = rebuild::select(&inline_projectors(), &["collections".to_owned()]).unwrap();
    let mut job = Job::start(&app.db.pool, selected, Purpose::Rebuild)
        .await
        .unwrap();
    // Every event read (another test's open transaction may hold the horizon back a moment).
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'collection'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let mut done = 0;
    for _ in 0..200 {
        job.catch_up(&mut |p| done = p.events_done).await.unwrap();
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done, total);
    let schema = job.schema().to_owned();

    drop(job); // killed before the swap: its lock connection goes away with it

    assert_eq!(
        (
            rows(&app, "collections").await,
            rows(&app, "project_collections").await
        ),
        before
    );
    // The server notices the closed connection and releases its lock within moments.
    let mut status = projection_status(&app, "collections").await;
    for _ in 0..100 {
        if status["rebuild_running"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = projection_status(&app, "collections").await;
    }
    assert_eq!(status["state"], "rebuilding");
    assert_eq!(status["rebuild_running"], false);
    create(&app, project, "written meanwhile").await;
    let outcome = rebuild(&app, &["collections"]).await;
    assert!(
        outcome.resumed_from.is_some(),
        "the rerun resumes the interrupted job"
    );
    assert!(outcome.replayed >= 1 && outcome.replayed < outcome.events);
    let leftover: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
            .bind(&schema)
            .fetch_optional(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(leftover, None, "the job's tables were swapped in");
    let jobs: Vec<String> =
        sqlx::query_scalar("SELECT status FROM rebuild_jobs WHERE purpose = 'rebuild'")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(jobs, ["succeeded"], "one job, resumed and finished");
    assert!(verify_all(&app).await.consistent());
}

#[tokio::test]
async fn retire_then_rebuild_restores_identical_rows() {
    let app = TestApp::spawn().await;
    let project = some_history(&app).await;
    let before = rows(&app, "project_collections").await;

    let retired = json_with_status(
        app.post("/admin/projections/project_collections/retire")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let created_while_retired = create(&app, project, "while retired").await;

    assert_eq!(retired["state"], "retired");
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public.project_collections')::text")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(table, None, "the retired projection's table is dropped");
    json_with_status(
        app.put("/admin/read-sources/collections")
            .json(&json!({"source": "new"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    let report = verify_all(&app).await;
    assert!(report.consistent());
    assert!(!report.skipped.is_empty());

    rebuild(&app, &["project_collections"]).await;

    let after = rows(&app, "project_collections").await;
    for row in before.as_array().unwrap() {
        assert!(
            after.as_array().unwrap().contains(row),
            "{row} came back identical"
        );
    }
    let id = created_while_retired["collection"]["collection_id"]
        .as_str()
        .unwrap();
    assert!(
        after.to_string().contains(id),
        "what happened while retired is there too"
    );
    assert!(verify_all(&app).await.consistent());
    let status = projection_status(&app, "project_collections").await;
    assert_eq!(status["state"], "live");
    assert_eq!(status["inline_active"], true);
}

/// A rebuild sends rows in another form than a command (columns of text, not JSON): every
/// value must come out as the command wrote it, text that an array literal must escape
/// included.
#[tokio::test]
async fn a_rebuild_writes_every_row_as_the_commands_wrote_it() {
    let app = TestApp::spawn().await;
    let project = some_history(&app).await;
    let awkward = [
        r#"quote " inside"#,
        r"back\slash",
        "{braces,comma}",
        "NULL",
        "null",
        "sp ace",
        "ünïcødé ✓",
        "'single'",
    ];
    let created = create(&app, project, r#"name "with" \ odd {chars}"#).await;
    json_with_status(
        app.put(&format!(
            "{}/links",
            crate::collections::collection_path(project, &created)
        ))
        .json(&json!({"tags": awkward, "question_ids": [Uuid::new_v4()]}))
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    crate::batches::start(&app, "odd", &awkward).await;
    for (count, player) in (0..).zip(awkward.iter().take(3)) {
        json_with_status(
            crate::batches::complete(&app, "odd", player, count).await,
            StatusCode::CREATED,
        )
        .await;
    }
    let tables: Vec<&str> = inline_projectors()
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| t.name))
        .collect();
    let mut before = Vec::new();
    for table in &tables {
        before.push(rows(&app, table).await);
    }
    assert!(
        before
            .iter()
            .any(|rows| rows.to_string().contains(r#"back\\slash"#)),
        "the awkward values were written"
    );

    rebuild(&app, &["all"]).await;

    for (table, before) in tables.iter().zip(before) {
        assert_eq!(rows(&app, table).await, before, "{table} rebuilt identical");
    }
    assert!(verify_all(&app).await.consistent());
}

/// The rows left in the staging table of `cutover import-legacy`, with why each was refused.
async fn staged(app: &TestApp) -> Vec<(Uuid, Option<String>)> {
    sqlx::query_as("SELECT collection_id, refused FROM import_collections ORDER BY collection_id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn import_legacy_twice_appends_once() {
    let app = TestApp::spawn().await;
    let (active, inactive, invalid) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let project = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO import_collections (collection_id, project_id, collection_name, description,
                                         is_active, created_at, updated_at)
         VALUES ($1, $4, 'Old notes', 'from 2019', true, '2019-05-01T10:00:00Z', '2020-01-02T03:04:05Z'),
                ($2, $4, 'Gone', '', false, '2019-06-01T10:00:00Z', '2019-07-01T10:00:00Z'),
                ($3, $4, '   ', '', true, '2019-06-01T10:00:00Z', '2019-07-01T10:00:00Z')",
    )
    .bind(active)
    .bind(inactive)
    .bind(invalid)
    .bind(project)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let store = app.db.store();

    let first = import_collections(&store).await.unwrap();
    // Staged again, as by a run that stopped between committing a row's event and deleting it.
    sqlx::query(
        "INSERT INTO import_collections (collection_id, project_id, collection_name)
         VALUES ($1, $2, 'Old notes')",
    )
    .bind(active)
    .bind(project)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let second = import_collections(&store).await.unwrap();

    assert_eq!((first.appended, first.already_present), (2, 0));
    assert_eq!((second.appended, second.already_present), (0, 1));
    for run in [&first, &second] {
        assert_eq!(
            run.refused,
            [(invalid, "collection_name must not be empty".to_owned())]
        );
    }
    assert_eq!(app.db.event_count().await, 2);
    assert_eq!(
        staged(&app).await,
        [(
            invalid,
            Some("collection_name must not be empty".to_owned())
        )],
        "what was imported is consumed; the refused row stays, with why"
    );
    let legacy = json_with_status(
        app.get(&format!("/projects/{project}/collections/{active}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(legacy["collection"]["collection_name"], "Old notes");
    assert_eq!(legacy["collection"]["created_at"], "2019-05-01T10:00:00Z");
    assert_eq!(legacy["collection"]["updated_at"], "2020-01-02T03:04:05Z");
    json_with_status(
        app.get(&format!("/projects/{project}/collections/{inactive}"))
            .send()
            .await
            .unwrap(),
        StatusCode::GONE,
    )
    .await;
    let new_rows: Vec<bool> =
        sqlx::query_scalar("SELECT is_active FROM project_collections ORDER BY is_active")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        new_rows,
        [false, true],
        "a collection deleted in the old system keeps an inactive new row, for the old answers"
    );
    json_with_status(
        app.put(&format!("/projects/{project}/collections/{active}"))
            .json(&json!({"collection_name": "Adopted"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(verify_all(&app).await.consistent());
}

#[tokio::test]
async fn import_legacy_refuses_a_row_until_it_is_fixed_then_has_nothing_left_to_do() {
    let app = TestApp::spawn().await;
    let (good, orphan, project) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO import_collections (collection_id, project_id, collection_name)
         VALUES ($1, $3, 'Notes'), ($2, NULL, 'Orphan')",
    )
    .bind(good)
    .bind(orphan)
    .bind(project)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let import = || async {
        let output = cli(&app, &["import-legacy"]).output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), stdout, staged(&app).await)
    };

    let (code, stdout, staged) = import().await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains(&format!("refused {orphan}: project_id is NULL")));
    assert!(stdout.contains("imported 1 collections; 0 already had a history; 1 refused"));
    assert_eq!(staged, [(orphan, Some("project_id is NULL".to_owned()))]);

    sqlx::query("UPDATE import_collections SET project_id = $1 WHERE collection_id = $2")
        .bind(project)
        .bind(orphan)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (code, stdout, staged) = import().await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("imported 1 collections; 0 already had a history; 0 refused"));
    assert_eq!(staged, []);

    let (code, stdout, _) = import().await;
    assert_eq!(code, Some(0), "a run with nothing new succeeds: {stdout}");
    assert!(stdout.contains("imported 0 collections; 0 already had a history; 0 refused"));
    assert_eq!(app.db.event_count().await, 2);
    json_with_status(
        app.get(&format!("/projects/{project}/collections/{orphan}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn a_read_source_switch_and_a_rebuild_are_seen_by_every_instance_at_once() {
    let first = TestApp::spawn().await;
    let second = first.second_instance().await;
    let project = Uuid::new_v4();
    let created = create(&first, project, "shared").await;
    let path = format!(
        "/projects/{project}/collections/{}",
        created["collection"]["collection_id"].as_str().unwrap()
    );

    let before = json_with_status(second.get(&path).send().await.unwrap(), StatusCode::OK).await;
    assert!(
        verify_all(&first).await.consistent(),
        "a clean report and a clean shadow window open the switch gate"
    );
    first.shadow_reads("collections", &path, 3, None).await;
    json_with_status(
        first
            .put("/admin/read-sources/collections")
            .json(&json!({"source": "new"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let after = json_with_status(second.get(&path).send().await.unwrap(), StatusCode::OK).await;

    assert_eq!(before["read_source"], "legacy");
    assert_eq!(before["collection"]["collection_name"], "shared");
    assert_eq!(after["read_source"], "new");
    assert_eq!(
        after["collection"], before["collection"],
        "the switch changes no answer"
    );
    let sources = json_with_status(
        second.get("/admin/read-sources").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(sources["collections"], "new");

    let started = json_with_status(
        first
            .post("/admin/projections/batch_state/rebuild")
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await;
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = projection_status(&second, "batch_state").await;
        if seen["latest_job"]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["latest_job"]["id"], started["job_id"]);
    assert_eq!(seen["latest_job"]["status"], "succeeded");
    let after_rebuild = create(&second, project, "after").await;
    assert_eq!(after_rebuild["read_source"], "new");
}

#[tokio::test]
async fn admin_actions_that_the_state_does_not_allow_are_refused_clearly() {
    let app = TestApp::spawn().await;
    some_history(&app).await;
    let selected = rebuild::select(&inline_projectors(), &["batch_state".to_owned()]).unwrap();
    let running = Job::start(&app.db.pool, selected, Purpose::Rebuild)
        .await
        .unwrap();

    let cases = [
        (
            app.post("/admin/projections/batch_state/rebuild"),
            StatusCode::CONFLICT,
        ),
        (
            app.post("/admin/projections/all/rebuild"),
            StatusCode::CONFLICT,
        ),
        (
            app.post("/admin/projections/batch_state/retire"),
            StatusCode::CONFLICT,
        ),
        (
            app.post("/admin/projections/collections/retire"),
            StatusCode::CONFLICT,
        ),
        (
            app.post("/admin/projections/nope/rebuild"),
            StatusCode::NOT_FOUND,
        ),
        (
            app.post("/admin/projections/nope/retire"),
            StatusCode::NOT_FOUND,
        ),
        (app.get("/admin/projections/nope"), StatusCode::NOT_FOUND),
        (
            app.get(&format!("/admin/jobs/{}", Uuid::new_v4())),
            StatusCode::NOT_FOUND,
        ),
        (app.get("/admin/jobs/42"), StatusCode::BAD_REQUEST),
        (
            app.get("/admin/consistency?domain=nope"),
            StatusCode::NOT_FOUND,
        ),
        (
            app.put("/admin/read-sources/nope")
                .json(&json!({"source": "new"})),
            StatusCode::NOT_FOUND,
        ),
        (
            app.put("/admin/read-sources/collections")
                .json(&json!({"source": "old"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (request, status) in cases {
        let body = json_with_status(request.send().await.unwrap(), status).await;
        assert!(!body["detail"].as_str().unwrap().is_empty());
    }
    let busy = json_with_status(
        app.post("/admin/projections/batch_state/rebuild")
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(busy["detail"].as_str().unwrap().contains("already running"));
    running.run(SwapArgs::default(), |_| {}).await.unwrap();
    json_with_status(
        app.post("/admin/projections/batch_completions/retire")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
}
