//! Rebuilds that survive restarts and always finish: a killed rebuild resumes from its
//! checkpoint, a cancel leaves nothing behind, probes take no lock, and a long transaction is
//! named while the rebuild waits for it rather than swapping with a backlog.

use std::process::Stdio;
use std::time::Duration;

use cutover_engine::rebuild::Job;
use cutover_engine::registry::Purpose;
use cutover_engine::registry::{self, JobState, JobStatus};
use cutover_engine::verify::verify;
use cutover_projections::inline_projectors;
use cutover_tests::{binary, json_with_status, OwnCluster, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::Command;
use uuid::Uuid;

use crate::collections::create;
use crate::faults::{start_server, wait_healthy};
use cutover_tests::free_port;

/// The `cutover` CLI against the test's database.
pub fn cli(app: &TestApp, args: &[&str]) -> Command {
    let mut command = Command::new(binary("cutover"));
    command
        .args(args)
        .env("DATABASE_URL", app.db.url())
        .env("RUST_LOG", "warn")
        .env_remove("CUTOVER_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub async fn run_cli(app: &TestApp, args: &[&str]) -> String {
    let output = cli(app, args).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cutover {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The running rebuild job once it has applied at least `done` events, before it ends.
async fn running_job(pool: &PgPool, done: i64) -> (Uuid, i64) {
    for _ in 0..1500 {
        let job: Option<(Uuid, i64)> = sqlx::query_as(
            "SELECT id, events_done FROM rebuild_jobs
              WHERE purpose = 'rebuild' AND status = 'running' AND events_done >= $1",
        )
        .bind(done)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(job) = job {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no rebuild got past {done} events");
}

/// A GET of `url` that must answer 200, as JSON.
async fn get_ok(client: &reqwest::Client, url: String) -> Value {
    json_with_status(client.get(url).send().await.unwrap(), StatusCode::OK).await
}

/// `POST /admin/projections/all/rebuild` on the server at `base`: 202 and the job.
async fn rebuild_all(client: &reqwest::Client, base: &str) -> Value {
    json_with_status(
        client
            .post(format!("{base}/admin/projections/all/rebuild"))
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await
}

/// Advisory locks held in the test's database (the lock table is the whole cluster's).
async fn advisory_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn shadow_schemas(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'cutover_job_%'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A GET of `path` on the test's server that must answer 200, as JSON.
async fn admin(app: &TestApp, path: &str) -> Value {
    json_with_status(app.get(path).send().await.unwrap(), StatusCode::OK).await
}

/// Waits until the process running `job` is seen gone (Postgres releases a killed session's
/// locks once it notices the closed connection), then checks that the CLI's `status`, the admin
/// API (the list, the projection, the job) and `/metrics` all report it `interrupted`: a
/// rebuild of every projection, `collections` among them.
async fn everyone_reports_interrupted(app: &TestApp, job: &str) {
    for _ in 0..200 {
        if admin(app, &format!("/admin/jobs/{job}")).await["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let answered = admin(app, &format!("/admin/jobs/{job}")).await;
    assert_eq!(answered["status"], "interrupted", "{answered}");
    assert_eq!(
        answered["eta_seconds"],
        Value::Null,
        "no ETA: nothing runs it"
    );

    let shown = admin(app, "/admin/projections/collections").await;
    assert_eq!(shown["state"], "rebuilding");
    assert_eq!(shown["rebuild_running"], false);
    assert_eq!(shown["latest_job"]["id"], job);
    assert_eq!(shown["latest_job"]["status"], "interrupted");
    assert_eq!(shown["latest_job"]["eta_seconds"], Value::Null);
    let listed = admin(app, "/admin/projections").await;
    for projection in listed.as_array().unwrap() {
        assert_eq!(
            projection["latest_job"]["status"], "interrupted",
            "{projection}"
        );
    }

    assert_eq!(
        app.metric("cutover_rebuild_interrupted{projection=\"collections\"}")
            .await,
        1.0
    );

    let status = run_cli(app, &["status"]).await;
    let row = status
        .lines()
        .find(|line| line.starts_with("collections "))
        .unwrap_or_else(|| panic!("no collections row: {status}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (columns[3], columns[7]),
        ("rebuilding", "interrupted"),
        "state and rebuild: {status}"
    );
    assert!(
        status.contains(&format!("interrupted: rebuild job {job}"))
            && status.contains("resume it with `cutover rebuild"),
        "{status}"
    );
}

async fn events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rebuild_killed_in_the_cli_or_the_server_resumes_from_its_checkpoint_and_verifies_clean()
{
    let app = TestApp::spawn().await;
    run_cli(&app, &["seed", "--events", "60000"]).await;
    let total = events(&app.db.pool).await;

    // kill -9 of the CLI at a checkpoint, then the same command again.
    let mut first = cli(&app, &["rebuild", "--all"]).spawn().unwrap();
    let (job, done) = running_job(&app.db.pool, 10_000).await;
    let running = admin(&app, &format!("/admin/jobs/{job}")).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(
        app.metric("cutover_rebuild_interrupted{projection=\"collections\"}")
            .await,
        0.0
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    everyone_reports_interrupted(&app, &job.to_string()).await;
    let resumed = run_cli(&app, &["rebuild", "--all"]).await;
    assert!(
        resumed.contains(&format!("resumed interrupted rebuild job {job}")),
        "{resumed}"
    );
    let replayed: i64 = resumed
        .split("rebuilt ")
        .nth(1)
        .and_then(|line| line.split(": ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no replayed count in {resumed}"));
    assert!(
        replayed < total && replayed <= total - done + 5_000,
        "{replayed} events replayed of {total} (the checkpoint was at {done} or after)"
    );
    assert_eq!(shadow_schemas(&app.db.pool).await, 0);

    // kill -9 of a server running an admin-API rebuild: after a restart the job shows as
    // interrupted, and the same request resumes it.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = start_server(&app.db.url(), port, &[]);
    wait_healthy(&client, &base).await;
    let started = rebuild_all(&client, &base).await;
    let job = started["job_id"].as_str().unwrap().to_owned();
    running_job(&app.db.pool, 10_000).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let mut server = start_server(&app.db.url(), port, &[]);
    wait_healthy(&client, &base).await;
    everyone_reports_interrupted(&app, &job).await;
    let again = rebuild_all(&client, &base).await;
    assert_eq!(
        again["job_id"],
        job.as_str(),
        "the interrupted job is resumed, not started over"
    );
    let mut finished = Value::Null;
    for _ in 0..600 {
        finished = get_ok(&client, format!("{base}/admin/jobs/{job}")).await;
        if finished["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished["status"], "succeeded", "{finished}");
    // The tables swapped out are dropped just after the swap commits.
    for _ in 0..100 {
        if shadow_schemas(&app.db.pool).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.start_kill().unwrap();
    server.wait().await.unwrap();

    let report = verify(&app.db.pool, &inline_projectors(), None)
        .await
        .unwrap();
    assert!(report.consistent(), "{report:?}");
    assert_eq!(shadow_schemas(&app.db.pool).await, 0);
}

#[tokio::test]
async fn a_cancelled_rebuild_stops_and_leaves_no_shadow_schema() {
    let app = TestApp::spawn().await;
    run_cli(&app, &["seed", "--events", "30000"]).await;
    let running = cli(&app, &["rebuild", "--all"]).spawn().unwrap();
    let (job, _) = running_job(&app.db.pool, 5_000).await;

    let cancelled = run_cli(&app, &["rebuild", "--all", "--cancel"]).await;

    assert!(
        cancelled.contains(&format!("cancelled rebuild job {job}")),
        "{cancelled}"
    );
    let output = tokio::time::timeout(Duration::from_secs(60), running.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !output.status.success(),
        "the cancelled rebuild does not claim success"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("cancelled"));
    assert_eq!(shadow_schemas(&app.db.pool).await, 0);
    let states: Vec<String> = sqlx::query_scalar("SELECT DISTINCT state FROM projections")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(states, ["live"]);
    let status: String = sqlx::query_scalar("SELECT status FROM rebuild_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");

    // Over HTTP: an interrupted job is cancelled at once; unknown and finished jobs are refused.
    let mut killed = cli(&app, &["rebuild", "collections"]).spawn().unwrap();
    let (interrupted, _) = running_job(&app.db.pool, 0).await;
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    // Postgres releases the killed session's locks once it notices the closed connection.
    for _ in 0..200 {
        let held = advisory_locks(&app.db.pool).await;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let answer = json_with_status(
        app.delete(&format!("/admin/jobs/{interrupted}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(shadow_schemas(&app.db.pool).await, 0);
    json_with_status(
        app.delete(&format!("/admin/jobs/{interrupted}"))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    json_with_status(
        app.delete(&format!("/admin/jobs/{}", Uuid::new_v4()))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_verify_whose_runner_is_gone_is_interrupted_and_one_that_ends_leaves_no_lock() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let job = Job::start(pool, inline_projectors(), Purpose::Verify)
        .await
        .unwrap();
    let id = job.id();
    let status = |job: Option<registry::Job>| job.map(|job| job.status);
    assert_eq!(
        status(registry::job(pool, id).await.unwrap()),
        Some(JobState::RUNNING)
    );

    drop(job); // its runner gone: the connection that held its lock closes

    let mut seen = None;
    for _ in 0..200 {
        seen = status(registry::job(pool, id).await.unwrap());
        if seen != Some(JobState::RUNNING) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen, Some(JobState::Interrupted));
    let unfinished = registry::unfinished_jobs(pool).await.unwrap();
    assert_eq!(
        unfinished
            .iter()
            .map(|j| (j.id, j.status))
            .collect::<Vec<_>>(),
        [(id, JobState::Interrupted)]
    );

    let report = verify(pool, &inline_projectors(), None).await.unwrap();
    assert!(report.consistent(), "{report:?}");
    let ended: Vec<JobStatus> =
        sqlx::query_scalar("SELECT status FROM rebuild_jobs WHERE id <> $1 AND purpose = $2")
            .bind(id)
            .bind(Purpose::Verify)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(ended, [JobStatus::Succeeded]);
    assert_eq!(
        advisory_locks(pool).await,
        0,
        "the verify released its lock"
    );
}

#[tokio::test]
async fn probes_in_a_tight_loop_beside_repeated_rebuilds_never_make_one_fail() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    for i in 0..20 {
        create(&app, project, &format!("c{i}")).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes = {
        let (client, base, stop) = (app.client.clone(), app.url(""), stop.clone());
        tokio::spawn(async move {
            let mut count = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for path in [
                    "/admin/projections",
                    "/metrics",
                    "/admin/projections/collections",
                ] {
                    let response = client.get(format!("{base}{path}")).send().await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    count += 1;
                }
            }
            count
        })
    };

    for _ in 0..5 {
        cutover_tests::rebuild(&app.db.pool, &["collections", "project_collections"])
            .await
            .expect("no probe makes a rebuild fail");
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(probes.await.unwrap() > 10);
    let held = advisory_locks(&app.db.pool).await;
    assert_eq!(held, 0, "no probe left a lock behind");
}

#[tokio::test]
async fn a_long_transaction_is_named_and_the_rebuild_waits_for_it_instead_of_swapping_a_backlog() {
    // A cluster of its own: the horizon is the whole cluster's, and this test holds it back.
    let own = OwnCluster::start("horizon").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = start_server(&own.url, port, &[]);
    wait_healthy(&client, &base).await;
    let path = format!("{base}/projects/{}/collections", Uuid::new_v4());
    let create = |name: String| {
        let (client, path) = (client.clone(), path.clone());
        async move {
            json_with_status(
                client
                    .post(&path)
                    .json(&serde_json::json!({ "collection_name": name }))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::CREATED,
            )
            .await
        }
    };
    create("before".to_owned()).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&own.url)
        .await
        .unwrap();
    let mut report = pool.begin().await.unwrap();
    sqlx::query("SET application_name = 'a-long-report'")
        .execute(&mut *report)
        .await
        .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *report)
        .await
        .unwrap();
    for i in 0..250 {
        create(format!("behind {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let output = Command::new(binary("cutover"))
        .arg("status")
        .env("DATABASE_URL", &own.url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.contains("the log's horizon is held back by pid")
            && status.contains("a-long-report"),
        "{status}"
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cutover_log_horizon_blocker_age_seconds{pid=")
            && metrics.contains("application=\"a-long-report\""),
        "{metrics}"
    );
    let activity = get_ok(&client, format!("{base}/admin/activity")).await;
    assert_eq!(activity["horizon_blocker"]["application"], "a-long-report");

    let rebuilding = pool.clone();
    let rebuild = tokio::spawn(async move {
        cutover_tests::rebuild(&rebuilding, &["collections", "project_collections"]).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !rebuild.is_finished(),
        "the rebuild waits while 250 events are held back (more than its swap threshold)"
    );
    report.commit().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), rebuild)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        outcome.swap_hold <= cutover_tests::SWAP_HOLD_BOUND,
        "{:?}",
        outcome.swap_hold
    );
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

/// Each projection's lag as `cutover status` prints it, and as the admin API and `/metrics`
/// answer it: the three must agree.
async fn lags(app: &TestApp) -> Vec<(String, String, i64)> {
    let status = run_cli(app, &["status"]).await;
    let mut lags = Vec::new();
    for projection in inline_projectors() {
        let name = projection.name();
        let row = status
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row: {status}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        let answered = admin(app, &format!("/admin/projections/{name}")).await;
        let lag = answered["lag"].as_i64().unwrap();
        assert_eq!(columns[6], lag.to_string(), "{name}: {status} / {answered}");
        let position = answered["last_position"]
            .as_i64()
            .map_or("-".to_owned(), |p| p.to_string());
        assert_eq!(columns[5], position, "{name}: {status} / {answered}");
        let metric = app
            .metric(&format!(
                "cutover_projection_lag_events{{projection=\"{name}\"}}"
            ))
            .await;
        assert_eq!(metric, lag as f64, "{name}");
        lags.push((name.to_owned(), position, lag));
    }
    lags
}

#[tokio::test]
async fn a_seed_without_a_rebuild_shows_as_lag_until_a_rebuild() {
    let app = TestApp::spawn().await;
    create(&app, Uuid::new_v4(), "Before the seed").await;
    assert!(lags(&app)
        .await
        .iter()
        .all(|(_, p, lag)| p != "-" && *lag == 0));

    run_cli(&app, &["seed", "--events", "3000", "--no-rebuild"]).await;
    // Each projection lacks exactly the seeded events of its aggregate types; a command
    // afterwards is projected inline and adds nothing.
    create(&app, Uuid::new_v4(), "After the seed").await;
    for (name, position, lag) in lags(&app).await {
        let projector = inline_projectors()
            .into_iter()
            .find(|p| p.name() == name)
            .unwrap();
        let types: Vec<&str> = projector.aggregate_types().to_vec();
        let seeded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events
              WHERE aggregate_type = ANY($1) AND metadata->>'command' = 'Seed'",
        )
        .bind(&types)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert!(seeded > 0, "{name}");
        assert_eq!((position.as_str(), lag), ("-", seeded), "{name}");
    }

    run_cli(&app, &["rebuild", "--all"]).await;
    assert!(lags(&app)
        .await
        .iter()
        .all(|(_, p, lag)| p != "-" && *lag == 0));
}
