//! Losing the primary: Cutover's server on a pg_auto_failover formation (a monitor and two
//! nodes with synchronous replication, `scripts/ha-demo`), reached by a libpq multi-host URL
//! with `target_session_attrs=read-write`, while commands with idempotency keys keep coming.
//! The primary's postmaster is killed with -9 (its keeper restarts it, or the monitor fails
//! over: either may happen), then the primary is switched over by hand. Commands resume
//! without restarting the server, every acknowledged command is on the primary exactly once,
//! in every read model; a reader paging through the feed all along sees no gap and no
//! duplicate; reads keep being answered, by the node that is a standby at the time (both nodes
//! are in `--read-database-url`); an idempotency key answered before a failover gets the same
//! answer after it. Then a
//! rebuild is running in the CLI when the primary's postmaster is killed again: it ends, and
//! the same command run again finishes it, and verifies clean.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_api::reads::ReadArgs;
use cutover_tests::{binary, AppOptions, Formation, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// One acknowledged command: its idempotency key, the collection it created, and when its
/// answer came.
struct Acknowledged {
    key: String,
    collection_id: String,
    answered: Instant,
}

/// Creates collections until `stop`, each under a key of its own, sending a command again
/// (same key) after a 503, as a client should.
async fn writer(app: Arc<TestApp>, project: Uuid, stop: Arc<AtomicBool>) -> Vec<Acknowledged> {
    let mut acknowledged = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let key = Uuid::new_v4().to_string();
        let sent = Instant::now();
        loop {
            let response = app
                .post(&format!("/projects/{project}/collections"))
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(30))
                .json(&json!({"collection_name": format!("c-{key}")}))
                .send()
                .await;
            match response {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    let body: Value = r.json().await.expect("a JSON answer");
                    let collection_id = body["collection"]["collection_id"]
                        .as_str()
                        .expect("the created collection's id")
                        .to_owned();
                    acknowledged.push(Acknowledged {
                        key,
                        collection_id,
                        answered: Instant::now(),
                    });
                    break;
                }
                // The server stays up: a command it could not finish is a 503, never a broken
                // connection.
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {}
                Ok(r) => panic!("unexpected answer {}: {:?}", r.status(), r.text().await),
                Err(e) => panic!("{e}"),
            }
            assert!(
                sent.elapsed() < Duration::from_secs(90),
                "a command was not acknowledged within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acknowledged
}

/// What the writers saw of one event.
struct Through {
    acknowledged: Vec<Acknowledged>,
    /// When the event began.
    happened: Instant,
    /// The longest time without an acknowledged command from then on.
    outage: Duration,
}

/// Runs writers while `event` happens to the formation.
async fn through(
    app: &Arc<TestApp>,
    formation: &Formation,
    project: Uuid,
    event: &[&str],
) -> Through {
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(writer(Arc::clone(app), project, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let happened = Instant::now();
    formation.expect(event).await;
    let done = happened.elapsed();
    // Writers go on until commands have been acknowledged again for a while.
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let probe = app
            .get("/health")
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if probe.is_ok_and(|r| r.status().is_success())
            && happened.elapsed() > Duration::from_secs(8)
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.expect("a writer"));
    }
    let mut answered: Vec<Instant> = acknowledged
        .iter()
        .map(|a| a.answered)
        .filter(|at| *at >= happened)
        .collect();
    answered.sort();
    assert!(
        answered.iter().any(|at| at.duration_since(happened) > done),
        "commands were acknowledged after the event"
    );
    let outage = std::iter::once(happened)
        .chain(answered.iter().copied())
        .zip(answered.iter().copied())
        .map(|(before, after)| after.duration_since(before))
        .max()
        .unwrap_or_default();
    Through {
        acknowledged,
        happened,
        outage,
    }
}

/// Pages through the feed from the start until `stop` (a 503 is asked again; an unknown
/// position, an event given and then lost, fails the test), then to its end; every position it
/// was given, in order.
async fn feed_reader(app: Arc<TestApp>, stop: Arc<AtomicBool>) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let page = app
            .get(&format!("/events?after={after}&limit=500"))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let page: Value = match page {
            Ok(r) if r.status() == StatusCode::OK => r.json().await.expect("a JSON page"),
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(r) => panic!("the feed answered {}: {:?}", r.status(), r.text().await),
            Err(e) => panic!("{e}"),
        };
        let events = page["events"].as_array().expect("events");
        seen.extend(
            events
                .iter()
                .map(|e| e["position"].as_i64().expect("a position")),
        );
        after = page["next"].as_i64().expect("next");
        if events.is_empty() {
            if stopping {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads collection `path` until `stop`; how many reads were answered, which must be 200 or,
/// while the database is unavailable, 503.
async fn reader(app: Arc<TestApp>, path: String, stop: Arc<AtomicBool>) -> u64 {
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        match app.get(&path).timeout(Duration::from_secs(30)).send().await {
            Ok(r) if r.status() == StatusCode::OK => answered += 1,
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(r) => panic!("a read answered {}: {:?}", r.status(), r.text().await),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answered
}

/// Sends the command of `acknowledged` again, with its key: the same collection, no new event.
async fn resend(app: &TestApp, project: Uuid, acknowledged: &Acknowledged) {
    let response = app
        .post(&format!("/projects/{project}/collections"))
        .header("Idempotency-Key", &acknowledged.key)
        .json(&json!({"collection_name": format!("c-{}", acknowledged.key)}))
        .send()
        .await
        .expect("sending a command again");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("a JSON answer");
    assert_eq!(
        body["collection"]["collection_id"].as_str(),
        Some(acknowledged.collection_id.as_str())
    );
}

/// Waits until the server reads from the node that is a standby now (`replica` is its place in
/// `--read-database-url`) and not from the other.
async fn reading_from(app: &TestApp, replica: usize) {
    let other = 1 - replica;
    for _ in 0..300 {
        let standby = app
            .metric(&format!(
                "cutover_replica_in_rotation{{replica=\"{replica}\"}}"
            ))
            .await;
        let primary = app
            .metric(&format!(
                "cutover_replica_in_rotation{{replica=\"{other}\"}}"
            ))
            .await;
        if (standby, primary) == (1.0, 0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica {replica}, the standby now, is not the one in the rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_a_killed_primary_a_switchover_and_a_rebuild_in_flight() {
    let formation = Formation::start("failover").await;
    let url = formation.url().await;
    let options = AppOptions {
        reads: ReadArgs {
            urls: formation.node_urls().to_vec(),
            replica_max_lag_ms: 5_000,
            replica_wait_ms: 1_000,
        },
        ..AppOptions::default()
    };
    let app = Arc::new(TestApp::spawn_on(TestDb::following(&url).await, options).await);
    let project = Uuid::new_v4();
    let first = crate::collections::create(&app, project, "read all along").await;
    let stop_reading = Arc::new(AtomicBool::new(false));
    let feed = tokio::spawn(feed_reader(Arc::clone(&app), Arc::clone(&stop_reading)));
    let reads = tokio::spawn(reader(
        Arc::clone(&app),
        crate::collections::collection_path(project, &first),
        Arc::clone(&stop_reading),
    ));
    // The monitor fails nothing over in its first 10 seconds.
    if let Some(grace) = Duration::from_secs(11).checked_sub(formation.started.elapsed()) {
        tokio::time::sleep(grace).await;
    }

    let before = formation.primary().await;
    reading_from(&app, standby_place(&formation).await).await;
    let killed = through(&app, &formation, project, &["kill-postmaster"]).await;
    formation.expect(&["wait-stable", "120"]).await;
    let after_kill = formation.primary().await;
    reading_from(&app, standby_place(&formation).await).await;
    // A key answered before the failover is honoured after it.
    for answered in killed
        .acknowledged
        .iter()
        .filter(|a| a.answered < killed.happened)
        .take(10)
    {
        resend(&app, project, answered).await;
    }
    let switched = through(&app, &formation, project, &["switchover"]).await;
    let after_switchover = formation.primary().await;
    reading_from(&app, standby_place(&formation).await).await;
    stop_reading.store(true, Ordering::Relaxed);
    let read = reads.await.expect("the reader");
    let fed = feed.await.expect("the feed reader");
    let (killed_outage, switchover_outage) = (killed.outage, switched.outage);
    let mut acknowledged = killed.acknowledged;
    acknowledged.extend(switched.acknowledged);
    eprintln!(
        "failover: primary {before}, after kill -9 of its postmaster {after_kill} (longest time \
         without an acknowledged command: {killed_outage:?}), after the switchover \
         {after_switchover} ({switchover_outage:?}); {} commands acknowledged, none lost; \
         {read} reads answered, {} events read from the feed along the way",
        acknowledged.len(),
        fed.len()
    );
    assert_ne!(
        after_kill, after_switchover,
        "the switchover moved the primary"
    );

    // Every acknowledged command once in the log and in both read models, on the primary now.
    let pool = &app.db.pool;
    let ids: Vec<String> = acknowledged
        .iter()
        .map(|a| a.collection_id.clone())
        .collect();
    let keys: HashSet<&str> = acknowledged.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys.len(), acknowledged.len());
    let (created, legacy, new): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events
                  WHERE event_type = 'CollectionCreated' AND aggregate_id = ANY($1)),
                (SELECT count(*) FROM collections WHERE collection_id::text = ANY($1)),
                (SELECT count(*) FROM project_collections WHERE collection_id::text = ANY($1))",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .expect("counting what was acknowledged");
    let expected = i64::try_from(ids.len()).expect("a count");
    assert_eq!((created, legacy, new), (expected, expected, expected));

    // The feed, read all along: every event once, in order.
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("counting events");
    assert!(
        fed.windows(2).all(|pair| pair[0] != pair[1]),
        "no event twice in a row in the feed"
    );
    let distinct: HashSet<i64> = fed.iter().copied().collect();
    assert_eq!(distinct.len(), fed.len(), "no event twice in the feed");
    assert_eq!(
        i64::try_from(fed.len()).expect("a count"),
        total,
        "no event missing from the feed"
    );
    assert!(read > 0, "reads were answered");

    // A rebuild in flight in the CLI when the primary dies.
    formation.expect(&["wait-stable", "120"]).await;
    cutover(&url, &["seed", "--events", "60000", "--no-rebuild"]).await;
    let rebuilding = cli(&url, &["rebuild", "--all"])
        .spawn()
        .expect("starting the rebuild");
    running_rebuild(pool, 10_000).await;
    formation.expect(&["kill-postmaster"]).await;
    let ended = rebuilding
        .wait_with_output()
        .await
        .expect("the rebuild's end");
    eprintln!(
        "failover: the rebuild in flight ended ({}): {}",
        ended.status,
        String::from_utf8_lossy(&ended.stderr).trim()
    );
    formation.expect(&["wait-stable", "120"]).await;
    let finished = cutover(&url, &["rebuild", "--all"]).await;
    eprintln!("failover: the rebuild run again: {}", finished.trim());
    assert!(finished.contains("rebuilt "), "{finished}");
    let verified = cutover(&url, &["verify"]).await;
    assert!(verified.contains(", 0 differences"), "{verified}");
}

/// The place in `--read-database-url` (the formation's nodes, in order) of the node that is
/// the standby now.
async fn standby_place(formation: &Formation) -> usize {
    match formation.expect(&["secondary"]).await.as_str() {
        "node1" => 0,
        "node2" => 1,
        other => panic!("no standby, or an unknown node: {other:?}"),
    }
}

/// The `cutover` CLI on the formation's `url`.
fn cli(url: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary("cutover"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the CLI on `url` until it succeeds (a command that meets a failover still under way
/// fails, and is run again); its output.
async fn cutover(url: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let output = cli(url, args).output().await.expect("running cutover");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "cutover {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until a rebuild job runs and has applied at least `done` events.
async fn running_rebuild(pool: &sqlx::PgPool, done: i64) {
    for _ in 0..3000 {
        let running: Option<i64> = sqlx::query_scalar(
            "SELECT events_done FROM rebuild_jobs
              WHERE purpose = 'rebuild' AND status = 'running' AND events_done >= $1",
        )
        .bind(done)
        .fetch_optional(pool)
        .await
        .expect("reading the jobs");
        if running.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no rebuild got past {done} events");
}
