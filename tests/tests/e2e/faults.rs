//! Guarantee 8: nothing acknowledged is lost when the server is killed (`kill -9`) or Postgres
//! restarts, under continuous load, with the real binary.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_engine::verify::verify;
use cutover_projections::inline_projectors;
use cutover_tests::{binary, free_port, OwnCluster};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use uuid::Uuid;

/// The real server on `port` with the flags `args`, its output discarded; killed if the test
/// ends early.
pub(crate) fn start_server(url: &str, port: u16, args: &[&str]) -> Child {
    Command::new(binary("cutover-api"))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting cutover-api")
}

pub(crate) async fn wait_healthy(client: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{base}/health")).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not become healthy");
}

#[derive(Default)]
struct Acknowledged {
    collections: Vec<Uuid>,
    players: Vec<String>,
    refused: usize,
    /// Answers other than 2xx and 503 (a fault must never look like a server bug).
    unexpected: Vec<u16>,
}

/// One client: creates collections and completes players until `stop`, keeping what was
/// acknowledged with a 2xx. Failures (connection refused, 503) are expected while things die.
async fn client_loop(
    base: String,
    project: Uuid,
    next_player: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Acknowledged {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut acknowledged = Acknowledged::default();
    let mut turn = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let sent = if turn.is_multiple_of(2) {
            client
                .post(format!("{base}/projects/{project}/collections"))
                .json(&json!({"collection_name": format!("fault {turn}")}))
                .send()
                .await
        } else {
            let player = format!("p{}", next_player.fetch_add(1, Ordering::Relaxed) % 10_000);
            client
                .post(format!("{base}/batches/faults/completions"))
                .json(&json!({"player_lookup": player, "predictions_count": 1}))
                .send()
                .await
        };
        let Ok(response) = sent else {
            acknowledged.refused += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if !response.status().is_success() {
            if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                acknowledged.unexpected.push(response.status().as_u16());
            }
            acknowledged.refused += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Ok(body) = response.json::<Value>().await else {
            acknowledged.refused += 1;
            continue;
        };
        if let Some(id) = body["collection"]["collection_id"].as_str() {
            acknowledged.collections.push(id.parse().expect("a uuid"));
        } else if let Some(player) = body["completion"]["player_lookup"].as_str() {
            acknowledged.players.push(player.to_owned());
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_server_is_killed_or_postgres_restarts() {
    let own = OwnCluster::start("faults").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut server = start_server(&own.url, port, &[]);
    wait_healthy(&http, &base).await;
    let players: Vec<String> = (0..10_000).map(|i| format!("p{i}")).collect();
    let started = http
        .post(format!("{base}/batches"))
        .json(&json!({"batch_id": "faults", "expected_players": players}))
        .send()
        .await
        .expect("starting the batch");
    assert!(started.status().is_success());

    let stop = Arc::new(AtomicBool::new(false));
    let next_player = Arc::new(AtomicUsize::new(0));
    let project = Uuid::new_v4();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(client_loop(
                base.clone(),
                project,
                next_player.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    server.kill().await.expect("kill -9 of the server");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut server = start_server(&own.url, port, &[]);
    wait_healthy(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let cluster = &own.cluster;
    tokio::task::block_in_place(|| cluster.restart()).expect("pg_ctl restart -m fast");
    wait_healthy(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Acknowledged::default();
    for client in clients {
        let one = client.await.expect("a client");
        acknowledged.collections.extend(one.collections);
        acknowledged.players.extend(one.players);
        acknowledged.refused += one.refused;
        acknowledged.unexpected.extend(one.unexpected);
    }
    server.kill().await.expect("stopping the server");

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&own.url)
        .await
        .expect("connecting after the faults");
    let in_log: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE event_type = 'CollectionCreated' AND aggregate_id = ANY($1)",
    )
    .bind(
        acknowledged
            .collections
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>(),
    )
    .fetch_one(&pool)
    .await
    .expect("counting collections in the log");
    let (legacy, new): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM collections WHERE collection_id = ANY($1)),
                (SELECT count(*) FROM project_collections WHERE collection_id = ANY($1))",
    )
    .bind(&acknowledged.collections)
    .fetch_one(&pool)
    .await
    .expect("counting collections in the read models");
    let (completed_in_log, completed_rows, counter): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE event_type = 'PlayerCompleted'
                   AND payload->'PlayerCompleted'->>'player_lookup' = ANY($1)),
                (SELECT count(*) FROM batch_completions WHERE player_lookup = ANY($1)),
                (SELECT completed_count::bigint FROM batch_counters WHERE batch_id = 'faults')",
    )
    .bind(&acknowledged.players)
    .fetch_one(&pool)
    .await
    .expect("counting completions");
    let all_completions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PlayerCompleted'")
            .fetch_one(&pool)
            .await
            .expect("counting every completion");
    let report = verify(&pool, &inline_projectors(), None)
        .await
        .expect("verifying");

    let collections = acknowledged.collections.len() as i64;
    let players = acknowledged.players.len() as i64;
    println!(
        "fault test: acknowledged {collections} creates and {players} completions \
         ({} requests refused while the server or Postgres was down); \
         lost {} and {}; doubled {}",
        acknowledged.refused,
        collections - in_log.min(collections),
        players - completed_in_log.min(players),
        all_completions - counter
    );
    assert!(collections > 0 && players > 0, "the load made progress");
    assert!(acknowledged.refused > 0, "the faults were felt");
    assert!(
        acknowledged.unexpected.is_empty(),
        "while Postgres restarted, answers were 503, not {:?}",
        acknowledged.unexpected
    );
    assert_eq!(
        in_log, collections,
        "every acknowledged create is in the log once"
    );
    assert_eq!(
        (legacy, new),
        (collections, collections),
        "and in both read models"
    );
    assert_eq!(
        completed_in_log, players,
        "every acknowledged completion is in the log once"
    );
    assert_eq!(completed_rows, players);
    assert_eq!(
        all_completions, counter,
        "the counter counts each logged completion once"
    );
    assert!(
        report.consistent(),
        "{:?}",
        &report.differences[..report.differences.len().min(3)]
    );
}
