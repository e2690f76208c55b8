//! Reads from a real streaming replica (`pg_basebackup -R` of a test's own primary, hot
//! standby): served by it, reading one's own writes with `Cutover-Min-Position`, going on when
//! it is stopped, lagging or promoted, and a feed that misses no late commit.

use std::time::Duration;

use cutover_api::reads::ReadArgs;
use cutover_tests::{json_with_status, AppOptions, OwnCluster, Replica, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::feed::hold_a_late_commit;

/// A primary of the test's own, a replica of it, and a server reading from the replica.
async fn replicated(name: &str, max_lag_ms: u64) -> (OwnCluster, Replica, TestApp) {
    let primary = OwnCluster::start(name).await;
    let replica = Replica::of(&primary).await;
    let app = TestApp::spawn_on(
        TestDb::at(&primary.url).await,
        AppOptions {
            reads: ReadArgs {
                urls: vec![replica.url.clone()],
                replica_max_lag_ms: max_lag_ms,
                replica_wait_ms: 1_000,
            },
            ..AppOptions::default()
        },
    )
    .await;
    wait_for_rotation(&app, 1.0).await;
    (primary, replica, app)
}

/// Waits (up to 30 s) until the replica's `cutover_replica_in_rotation` is `expected`.
async fn wait_for_rotation(app: &TestApp, expected: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app
        .metric("cutover_replica_in_rotation{replica=\"0\"}")
        .await
        != expected
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica's rotation did not become {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn served_by(app: &TestApp, server: &str) -> f64 {
    app.metric(&format!("cutover_reads_total{{served_by=\"{server}\"}}"))
        .await
}

/// Creates a collection; its answer and the `Cutover-Position` header.
async fn create(app: &TestApp, project: Uuid, name: &str) -> (Value, i64) {
    let response = app
        .post(&format!("/projects/{project}/collections"))
        .json(&json!({"collection_name": name, "description": "d"}))
        .send()
        .await
        .unwrap();
    let header: i64 = response.headers()["cutover-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = json_with_status(response, StatusCode::CREATED).await;
    assert_eq!(
        body["position"], header,
        "the header is the body's position"
    );
    (body, header)
}

fn path(project: Uuid, created: &Value) -> String {
    format!(
        "/projects/{project}/collections/{}",
        created["collection"]["collection_id"].as_str().unwrap()
    )
}

async fn on_replica(replica: &Replica, statement: &str) {
    sqlx::query(statement)
        .execute(&replica.pool().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn reads_are_served_by_the_replica_and_a_commands_position_reads_its_own_write() {
    let (_primary, replica, app) = replicated("replica_reads", 5_000).await;
    let project = Uuid::new_v4();
    let (first, _) = create(&app, project, "first").await;
    // Served by the replica once it shows the write.
    let response = app
        .get(&path(project, &first))
        .header("cutover-min-position", first["position"].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let before = served_by(&app, "replica").await;
    assert!(before >= 1.0, "the read was served by the replica");

    on_replica(&replica, "SELECT pg_wal_replay_pause()").await;
    let (second, position) = create(&app, project, "second").await;
    // Without the header the read may lag: the replica does not show the write yet, and says
    // how far it is.
    let lagging = app.get(&path(project, &second)).send().await.unwrap();
    assert_eq!(lagging.status(), StatusCode::NOT_FOUND);
    let shown: i64 = lagging.headers()["cutover-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        shown < position,
        "the replica shows {shown}, before {position}"
    );
    assert_eq!(served_by(&app, "replica").await, before + 1.0);
    // With it, the read waits for the replica, then reads the primary: it sees its write.
    let own = app
        .get(&path(project, &second))
        .header("cutover-min-position", position.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        own.headers()["cutover-position"]
            .to_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= position
    );
    let own = json_with_status(own, StatusCode::OK).await;
    assert_eq!(own["collection"], second["collection"]);
    assert_eq!(app.metric("cutover_reads_waited_out_total").await, 1.0);

    on_replica(&replica, "SELECT pg_wal_replay_resume()").await;
    let caught_up = app
        .get(&path(project, &second))
        .header("cutover-min-position", position.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(caught_up.status(), StatusCode::OK);
    assert_eq!(served_by(&app, "replica").await, before + 2.0);
}

#[tokio::test]
async fn bad_input_a_malformed_min_position_is_400_and_one_no_event_has_412_on_a_replica_and_alone()
{
    let (_primary, _replica, app) = replicated("replica_bad_position", 5_000).await;
    let alone = TestApp::spawn().await;
    for app in [&app, &alone] {
        for bad in ["soon", "0", "-3", "1.5", "+4", "07", "1000000000000000000"] {
            let response = app
                .get("/events")
                .header("cutover-min-position", bad)
                .send()
                .await
                .unwrap();
            let problem = json_with_status(response, StatusCode::BAD_REQUEST).await;
            assert!(problem["detail"]
                .as_str()
                .unwrap()
                .contains("Cutover-Min-Position"));
        }
        let response = app
            .get("/events")
            .header("cutover-min-position", "100000000000000000")
            .send()
            .await
            .unwrap();
        let problem = json_with_status(response, StatusCode::PRECONDITION_FAILED).await;
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains("no event has position"));
    }
}

#[tokio::test]
async fn a_replica_stopped_lagging_or_promoted_leaves_the_rotation_and_reads_go_on() {
    let (_primary, mut replica, app) = replicated("replica_faults", 400).await;
    let project = Uuid::new_v4();
    let (created, _) = create(&app, project, "kept").await;

    // Stopped: reads go on, from the primary; started again, it returns by itself.
    replica.stop().await;
    for _ in 0..3 {
        let read = app.get(&path(project, &created)).send().await.unwrap();
        assert_eq!(read.status(), StatusCode::OK);
    }
    wait_for_rotation(&app, 0.0).await;
    replica.start().await;
    wait_for_rotation(&app, 1.0).await;

    // Lagging past the bound: out until it catches up.
    on_replica(&replica, "SELECT pg_wal_replay_pause()").await;
    let (late, _) = create(&app, project, "while paused").await;
    wait_for_rotation(&app, 0.0).await;
    let primary_reads = served_by(&app, "primary").await;
    let read = app.get(&path(project, &late)).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK, "served by the primary");
    assert_eq!(served_by(&app, "primary").await, primary_reads + 1.0);
    on_replica(&replica, "SELECT pg_wal_replay_resume()").await;
    wait_for_rotation(&app, 1.0).await;

    // Promoted: it no longer follows this primary, and is noticed.
    replica.promote().await;
    wait_for_rotation(&app, 0.0).await;
    let read = app.get(&path(project, &late)).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
}

#[tokio::test]
async fn gap_free_global_order_the_feed_read_on_a_replica_never_skips_an_event_that_commits_late() {
    let (_primary, replica, app) = replicated("replica_feed", 5_000).await;
    let (_, before) = create(&app, Uuid::new_v4(), "before").await;
    // A writer takes a position and holds its transaction open ...
    let (slow, late) = hold_a_late_commit(&app).await;
    // ... while another command takes a later position and commits first ...
    let (_, early) = create(&app, Uuid::new_v4(), "after").await;
    assert!(early > late, "the later position committed first");
    // ... and the replica has replayed that commit, so only the horizon can hold it back.
    let replica_pool = replica.pool().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let replayed = "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)";
    while !sqlx::query_scalar::<_, bool>(replayed)
        .bind(early)
        .fetch_one(&replica_pool)
        .await
        .unwrap()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica did not replay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let replica_reads = served_by(&app, "replica").await;
    let page = json_with_status(
        app.get(&format!("/events?after={before}&limit=10"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(served_by(&app, "replica").await, replica_reads + 1.0);
    let seen: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(
        !seen.contains(&early),
        "the replica served a position after an uncommitted one before it"
    );
    slow.commit().await.unwrap();

    let mut after = page["next"].as_i64().unwrap();
    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rest.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the feed stalled");
        let page = json_with_status(
            app.get(&format!("/events?after={after}&limit=10"))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        after = page["next"].as_i64().unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rest.extend(events.iter().map(|e| e["position"].as_i64().unwrap()));
    }
    assert!(rest.contains(&late), "the late commit was skipped");
    assert!(rest.contains(&early));
}
