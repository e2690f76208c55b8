//! Following the old system while it still writes: a second Postgres cluster with
//! `wal_level = logical` plays the old system, its application writing the old `collections`
//! table (NULLs, quotes, non-ASCII text, large values, transactions of hundreds of rows, soft
//! and hard deletes), and `cutover follow` makes Cutover's log and both models follow it:
//! every change applied once, in commit order, across a follower killed with -9 and an old
//! server restarted; what the domain refuses kept with why.

use std::time::Duration;

use cutover_projections::follow;
use cutover_runtime::local_postgres::LocalPostgres;
use cutover_tests::{AppOptions, OwnCluster, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use crate::resume::{cli, run_cli};

/// The old system's table, in its own shape, published for Cutover; deletes carry the whole
/// row.
const OLD_SCHEMA: &str = include_str!("../../old_system.sql");

/// The old system: a cluster of the test's own with logical decoding, and its database.
struct OldSystem {
    cluster: OwnCluster,
    url: String,
    pool: PgPool,
}

impl OldSystem {
    async fn start(name: &str) -> Self {
        let cluster = OwnCluster::start(name).await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.cluster.url("postgres"))
            .await
            .unwrap();
        for statement in [
            "ALTER SYSTEM SET wal_level = logical",
            "DROP DATABASE IF EXISTS oldapp WITH (FORCE)",
            "CREATE DATABASE oldapp",
        ] {
            sqlx::query(statement).execute(&admin).await.unwrap();
        }
        admin.close().await;
        tokio::task::block_in_place(|| cluster.cluster.restart()).unwrap();
        let url = cluster.cluster.url("oldapp");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        sqlx::raw_sql(OLD_SCHEMA).execute(&pool).await.unwrap();
        Self { cluster, url, pool }
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap();
    }

    /// Every old row: (id, project, name, description, active).
    async fn rows(&self) -> Vec<(Uuid, Uuid, String, Option<String>, bool)> {
        sqlx::query_as(
            "SELECT collection_id, project_id, collection_name, description, is_active
               FROM collections ORDER BY collection_id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// `cutover follow --until-caught-up` against `old`; its output.
async fn catch_up(app: &TestApp, old: &OldSystem) -> String {
    run_cli(
        app,
        &["follow", "--legacy-url", &old.url, "--until-caught-up"],
    )
    .await
}

/// What the old clients' GET answers for each old row matches the row: name, description,
/// active flag; a deleted one is gone (410) and a hard-deleted one too.
async fn answers_match(app: &TestApp, old: &OldSystem, hard_deleted: &[(Uuid, Uuid)]) {
    for (id, project, name, description, active) in old.rows().await {
        let response = app
            .get(&format!("/projects/{project}/collections/{id}"))
            .send()
            .await
            .unwrap();
        if !active {
            assert_eq!(response.status(), StatusCode::GONE, "{id}");
            continue;
        }
        assert_eq!(response.status(), StatusCode::OK, "{id}");
        let body: Value = response.json().await.unwrap();
        let row = &body["collection"];
        assert_eq!(row["collection_name"], name.trim(), "{id}: {body}");
        assert_eq!(row["description"], serde_json::json!(description), "{id}");
        assert_eq!(row["is_active"], true, "{id}");
    }
    for (project, id) in hard_deleted {
        let response = app
            .get(&format!("/projects/{project}/collections/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GONE, "{id}");
    }
}

/// A collection created through Cutover's API in `project`: the answer's status.
async fn create(app: &TestApp, project: Uuid) -> StatusCode {
    app.post(&format!("/projects/{project}/collections"))
        .json(&serde_json::json!({"collection_name": "Mine"}))
        .send()
        .await
        .unwrap()
        .status()
}

/// What `GET /admin/follows` answers.
async fn following(app: &TestApp) -> Value {
    app.get("/admin/follows")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_copies_the_old_rows_then_applies_each_change_once_and_keeps_what_it_refuses() {
    let old = OldSystem::start("follow_changes").await;
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name, description, is_active)
         VALUES ('{a}', '{project}', 'Interview notes', NULL, true),
                ('{b}', '{project}', 'Entretiens « été » ''q'' \"d\"', 'Round one', true),
                ('{c}', '{project}', 'Old', 'gone', false)"
    ))
    .await;

    let first = catch_up(&app, &old).await;
    assert!(first.contains("copied 3 rows"), "{first}");
    answers_match(&app, &old, &[]).await;

    // One writer at a time: the old application writes the followed domain; Cutover's own
    // commands on it are refused (and change nothing), those of other domains are not.
    let before = events(&app).await;
    for refused in [
        app.post(&format!("/projects/{project}/collections"))
            .json(&serde_json::json!({"collection_name": "Mine"})),
        app.put(&format!("/projects/{project}/collections/{a}"))
            .json(&serde_json::json!({"collection_name": "Mine"})),
    ] {
        let response = refused.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("followed from the old system")),
            "{problem}"
        );
    }
    assert_eq!(events(&app).await, before);
    crate::batches::start(&app, "followed-b1", &["p1"]).await;

    // The old application goes on writing: a transaction of 200 new rows, renames, a soft and
    // a hard delete, a large description then a rename that leaves it unchanged, and two
    // changes the domain refuses (an empty name; a description back to NULL).
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name, description)
         SELECT gen_random_uuid(), '{project}', 'Batch ' || n, repeat('x', n) FROM generate_series(1, 200) n"
    ))
    .await;
    old.exec(&format!(
        "UPDATE collections SET collection_name = 'Renamed', updated_at = now() WHERE collection_id = '{a}';
         UPDATE collections SET is_active = false WHERE collection_id = '{b}';
         UPDATE collections SET collection_name = collection_name || ' (2)'
          WHERE collection_name LIKE 'Batch 1%';"
    ))
    .await;
    let large = Uuid::new_v4();
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name, description)
         VALUES ('{large}', '{project}', 'Large', (SELECT string_agg(md5(n::text), '') FROM generate_series(1, 250) n));
         UPDATE collections SET collection_name = 'Large, renamed' WHERE collection_id = '{large}';"
    ))
    .await;
    let hard = Uuid::new_v4();
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name) VALUES ('{hard}', '{project}', 'Brief');
         DELETE FROM collections WHERE collection_id = '{hard}';"
    ))
    .await;
    let (empty, moved, nulled) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name) VALUES ('{empty}', '{project}', '  ');
         INSERT INTO collections (collection_id, project_id, collection_name, description)
         VALUES ('{moved}', '{project}', 'Moved', 'x'), ('{nulled}', '{project}', 'Nulled', 'y');"
    ))
    .await;
    old.exec(&format!(
        "UPDATE collections SET project_id = gen_random_uuid() WHERE collection_id = '{moved}';
         UPDATE collections SET description = NULL WHERE collection_id = '{nulled}';"
    ))
    .await;

    let second = catch_up(&app, &old).await;
    let refused: Vec<(String, Value)> =
        sqlx::query_as("SELECT reason, legacy_row FROM follow_refusals ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert!(second.contains("refused 2"), "{second} {refused:?}");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].0.contains("empty"), "{refused:?}");
    assert_eq!(refused[0].1["collection_id"], empty.to_string());
    assert!(refused[1].0.contains("another project"), "{refused:?}");
    assert_eq!(refused[1].1["collection_id"], moved.to_string());
    // The refused rows aside, every answer is the old row's.
    old.exec(&format!(
        "DELETE FROM collections WHERE collection_id IN ('{empty}', '{moved}')"
    ))
    .await;
    catch_up(&app, &old).await;
    answers_match(&app, &old, &[(project, hard)]).await;

    // Nothing more to apply: a run appends nothing.
    let before = events(&app).await;
    let third = catch_up(&app, &old).await;
    assert_eq!(events(&app).await, before, "{third}");
    let status = String::from_utf8_lossy(&cli(&app, &["status"]).output().await.unwrap().stdout)
        .into_owned();
    assert!(
        status.contains("following collections from the old public.collections")
            && status.contains("2 refused"),
        "{status}"
    );

    let metric = |name: &str| format!("cutover_follow_{name}{{domain=\"collections\"}}");
    assert_eq!(app.metric(&metric("changes_refused")).await, 2.0);
    assert_eq!(app.metric(&metric("stopped")).await, 0.0);
    // Every streamed change is counted in the lag histogram, and "+Inf" counts them all.
    let streamed: i64 = sqlx::query_scalar(
        "SELECT (SELECT sum(n) FROM unnest(lag_histogram) AS n)::bigint FROM follows",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(streamed > 0);
    let all = "cutover_follow_lag_changes{domain=\"collections\",le=\"+Inf\"}";
    assert_eq!(app.metric(all).await, streamed as f64);
    assert!(
        status.contains("99% of the changes streamed were applied within"),
        "{status}"
    );
    // The admin API shows the same.
    let following = following(&app).await;
    let followed = &following["follows"][0];
    assert_eq!(followed["domain"], "collections", "{following}");
    assert_eq!(followed["legacy_table"], "public.collections");
    assert_eq!(followed["changes_refused"], 2);
    assert_eq!(followed["stopped"], false);
    assert!(
        followed["lag_p99_seconds"].as_f64().is_some(),
        "{following}"
    );
    assert_eq!(following["handovers"], serde_json::json!([]));
    // A follower that stopped two minutes ago: the old database keeps WAL for it.
    sqlx::query("UPDATE follows SET updated_at = now() - interval '2 minutes'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(app.metric(&metric("stopped")).await, 1.0);
    let status = run_cli(&app, &["status"]).await;
    assert!(
        status.contains("warning: no follower has run since"),
        "{status}"
    );

    let dropped = cli(&app, &["follow", "--legacy-url", &old.url, "--drop"])
        .output()
        .await
        .unwrap();
    assert!(dropped.status.success());
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots")
        .fetch_one(&old.pool)
        .await
        .unwrap();
    assert_eq!(slots, 0, "the slot is gone from the old database");
    // Followed no more: Cutover writes the domain again.
    assert_eq!(create(&app, project).await, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_at_any_moment_and_an_old_server_restarted_lose_and_repeat_nothing() {
    let old = OldSystem::start("follow_kill").await;
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    // 300 collections, each inserted in a transaction of its own.
    let ids: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        old.exec(&format!(
            "INSERT INTO collections (collection_id, project_id, collection_name)
             VALUES ('{id}', '{project}', 'v0')"
        ))
        .await;
    }
    catch_up(&app, &old).await;
    // Renamed three times: each rename its own transaction, then all 300 in one transaction
    // (applied in several batches, each recording how far into it it reached), then one by one
    // again.
    for round in 1..=3 {
        if round == 2 {
            old.exec("UPDATE collections SET collection_name = 'v2'")
                .await;
            continue;
        }
        for id in &ids {
            old.exec(&format!(
                "UPDATE collections SET collection_name = 'v{round}' WHERE collection_id = '{id}'"
            ))
            .await;
        }
    }

    // Killed twice in the middle of applying (batches of 40 changes), the old server restarted
    // in between.
    for _ in 0..2 {
        let mut follower = cli(&app, &["follow", "--legacy-url", &old.url, "--batch", "40"])
            .spawn()
            .unwrap();
        let before: i64 = sqlx::query_scalar("SELECT changes_applied FROM follows")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        for _ in 0..600 {
            let applied: i64 = sqlx::query_scalar("SELECT changes_applied FROM follows")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            if applied >= before + 150 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        follower.start_kill().unwrap();
        follower.wait().await.unwrap();
        tokio::task::block_in_place(|| old.cluster.cluster.restart()).unwrap();
    }
    let applied: i64 = sqlx::query_scalar("SELECT changes_applied FROM follows")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(
        applied < 4 * ids.len() as i64,
        "the follower was killed before it applied everything: {applied} applied"
    );
    catch_up(&app, &old).await;

    // Each collection: imported once, renamed exactly three times, in order.
    let renames: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FILTER (WHERE event_type = 'CollectionUpdated')
           FROM events WHERE aggregate_type = 'collection' GROUP BY aggregate_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(renames.len(), ids.len());
    // The first collection that was not, with its history (each event's old transaction).
    if let Some((bad, _)) = renames.iter().find(|(_, n)| *n != 3) {
        let history: Vec<(i64, i64, i64, Value, Value)> = sqlx::query_as(
            "SELECT sequence, position, transaction_id::text::bigint, payload, metadata FROM events
              WHERE aggregate_id = $1 ORDER BY sequence",
        )
        .bind(bad)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        panic!("collection {bad} was not renamed exactly three times: {history:#?}");
    }
    assert_eq!(events(&app).await, 4 * ids.len() as i64);
    answers_match(&app, &old, &[]).await;
}

/// The old table's error for a write, once handed over.
async fn old_write_error(old: &OldSystem, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(&old.pool).await {
        Ok(_) => panic!("the old table took a write after the handover: {sql}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handover_moves_the_writes_to_cutover_only_when_every_old_row_matches() {
    let old = OldSystem::start("follow_handover").await;
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let (a, b, c, e) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name, description)
         VALUES ('{a}', '{project}', 'Alpha', 'first'), ('{b}', '{project}', 'Beta', NULL),
                ('{c}', '{project}', 'Gamma', 'third'), ('{e}', '{project}', '   ', 'empty')"
    ))
    .await;
    catch_up(&app, &old).await;
    // The old application goes on: a rename and a soft delete at its own times, a row
    // deleted outright.
    old.exec(&format!(
        "UPDATE collections SET collection_name = 'Alpha 2', updated_at = '2031-01-02 03:04:05.123456+00'
          WHERE collection_id = '{a}';
         UPDATE collections SET is_active = false, updated_at = '2031-01-03 00:00:00+00'
          WHERE collection_id = '{c}';
         DELETE FROM collections WHERE collection_id = '{b}';"
    ))
    .await;

    // The row the domain refused (an empty name) is not in Cutover: no handover, and the old
    // system stays the writer.
    let refused = cli(&app, &["handover", "--legacy-url", &old.url])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains(&format!("{e}: collection_id")), "{said}");
    assert!(said.contains("is not handed over"), "{said}");
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name)
         VALUES (gen_random_uuid(), '{project}', 'Written after a refused handover')"
    ))
    .await;
    assert_eq!(
        create(&app, project).await,
        StatusCode::CONFLICT,
        "still followed"
    );

    // Mended in the old table: the handover drains the mend and goes through.
    old.exec(&format!(
        "UPDATE collections SET collection_name = 'Echo' WHERE collection_id = '{e}'"
    ))
    .await;
    let done = run_cli(&app, &["handover", "--legacy-url", &old.url]).await;
    assert!(done.contains("collections is handed over"), "{done}");
    assert!(
        done.contains("0 differences, 1 collections deleted outright"),
        "{done}"
    );

    // The old application's writes are refused, with where they go now.
    for sql in [
        format!(
            "INSERT INTO collections (collection_id, project_id, collection_name)
             VALUES (gen_random_uuid(), '{project}', 'Too late')"
        ),
        format!("UPDATE collections SET collection_name = 'Too late' WHERE collection_id = '{a}'"),
        format!("DELETE FROM collections WHERE collection_id = '{a}'"),
        "TRUNCATE collections".to_owned(),
    ] {
        let error = old_write_error(&old, &sql).await;
        assert!(
            error.contains("public.collections is written by Cutover since its handover"),
            "{error}"
        );
    }
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots")
        .fetch_one(&old.pool)
        .await
        .unwrap();
    assert_eq!(slots, 0, "the slot is dropped");
    let status = run_cli(&app, &["status"]).await;
    assert!(
        status.contains("collections was handed over from the old public.collections"),
        "{status}"
    );
    let following = following(&app).await;
    assert_eq!(following["follows"], serde_json::json!([]), "{following}");
    assert_eq!(following["handovers"][0]["domain"], "collections");
    assert_eq!(following["handovers"][0]["rows_compared"], 4, "{following}");

    // The old clients read what the old system showed, its times included, and Cutover's
    // commands continue the same aggregates.
    let read = |id: Uuid| {
        let app = &app;
        async move {
            let response = app
                .get(&format!("/projects/{project}/collections/{id}"))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = read(a).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["collection"]["collection_name"], "Alpha 2");
    assert_eq!(
        body["collection"]["updated_at"], "2031-01-02T03:04:05.123456Z",
        "{body}"
    );
    assert_eq!(read(c).await.0, StatusCode::GONE);
    let renamed = app
        .put(&format!("/projects/{project}/collections/{a}"))
        .json(&serde_json::json!({"collection_name": "Alpha 3", "description": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let (_, body) = read(a).await;
    assert_eq!(body["collection"]["collection_name"], "Alpha 3");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(a.to_string())
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        [1, 2, 3],
        "imported, renamed by the old system, renamed here"
    );

    // The read-only role sees nothing of following.
    let mut conn = app.db.pool.acquire().await.unwrap();
    for table in ["follows", "follow_refusals", "handovers"] {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        sqlx::query("SET LOCAL ROLE cutover_reader")
            .execute(&mut *tx)
            .await
            .unwrap();
        let denied = sqlx::query(&format!("SELECT * FROM {table}"))
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        tx.rollback().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_follower_waits_out_an_old_server_restart_and_goes_on() {
    let old = OldSystem::start("follow_restart").await;
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let insert = |n: usize| {
        format!(
            "INSERT INTO collections (collection_id, project_id, collection_name)
             SELECT gen_random_uuid(), '{project}', 'c' || i FROM generate_series(1, {n}) AS i"
        )
    };
    let mut follower = cli(&app, &["follow", "--legacy-url", &old.url])
        .spawn()
        .unwrap();
    let applied = |want: i64| {
        let pool = app.db.pool.clone();
        async move {
            for _ in 0..1_500 {
                let applied: Option<i64> =
                    sqlx::query_scalar("SELECT changes_applied FROM follows")
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                if applied == Some(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{want} changes were not applied in 30 s");
        }
    };
    old.exec(&insert(50)).await;
    applied(50).await;
    // The old server goes away under the running follower for two seconds (several of its
    // looks fail), and comes back.
    tokio::task::block_in_place(|| old.cluster.cluster.stop()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Why it waits is on the domain's row, for status and the console.
    let error = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT last_error FROM follows")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    let said = error().await.unwrap_or_default();
    assert!(said.starts_with("the old database: "), "{said}");
    let requested = old.cluster.cluster.location().requested.clone();
    let cluster =
        tokio::task::block_in_place(|| LocalPostgres::ensure_running(&requested)).unwrap();
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower waits while the old server is away"
    );
    drop(cluster); // the same server as `old.cluster`'s, which stops it at the end
    let old = OldSystem {
        pool: PgPoolOptions::new()
            .max_connections(4)
            .connect(&old.url)
            .await
            .unwrap(),
        ..old
    };
    old.exec(&insert(70)).await;
    applied(120).await;
    // Cleared by the next good look (the round that applied them, as it ends).
    let mut said = error().await;
    for _ in 0..250 {
        if said.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        said = error().await;
    }
    assert_eq!(said, None, "cleared by the next good look");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower is still running"
    );
    follower.start_kill().unwrap();
    follower.wait().await.unwrap();
    assert_eq!(events(&app).await, 120, "each row imported once");
    answers_match(&app, &old, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_batches_records_each_new_completion_once_then_hands_them_over() {
    let old = OldSystem::start("follow_batches").await;
    let app = TestApp::spawn().await;
    let follow = [
        "follow",
        "--legacy-url",
        &old.url,
        "--until-caught-up",
        "batches",
    ];
    old.exec(
        "INSERT INTO batch_state (batch_id, expected_players, completed_players,
                                  predictions_by_player, total_predictions, updated_at)
         VALUES ('b1', '{ann,bob,\"c d\"}', '{ann}', '{\"ann\": 3}', 3, '2031-01-01 00:00:00+00'),
                ('b2', '{x}', '{}', '{}', 0, '2031-02-01 00:00:00+00')",
    )
    .await;
    let copied = run_cli(&app, &follow).await;
    assert!(copied.contains("copied 2 rows"), "{copied}");
    let batch = |id: &'static str| {
        let app = &app;
        async move {
            let response = app.get(&format!("/batches/{id}")).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (_, b1) = batch("b1").await;
    assert_eq!(
        b1["batch"]["expected_players"],
        serde_json::json!(["ann", "bob", "c d"])
    );
    assert_eq!(b1["batch"]["completed_players"], serde_json::json!(["ann"]));
    assert_eq!(b1["batch"]["updated_at"], "2031-01-01T00:00:00Z", "{b1}");

    // The old application completes the players one by one; it also records a player the
    // batch does not expect and deletes a batch, which Cutover refuses.
    old.exec(
        "UPDATE batch_state SET completed_players = completed_players || '{bob}',
                predictions_by_player = predictions_by_player || '{\"bob\": 5}',
                total_predictions = 8, updated_at = '2031-01-02 00:00:00+00'
          WHERE batch_id = 'b1';
         UPDATE batch_state SET completed_players = completed_players || '{c d}',
                predictions_by_player = predictions_by_player || '{\"c d\": 1}',
                total_predictions = 9, is_complete = true, updated_at = '2031-01-03 00:00:00+00'
          WHERE batch_id = 'b1';
         UPDATE batch_state SET completed_players = '{zed}', predictions_by_player = '{\"zed\": 1}'
          WHERE batch_id = 'b2';
         DELETE FROM batch_state WHERE batch_id = 'b2';",
    )
    .await;
    let streamed = run_cli(&app, &follow).await;
    assert!(streamed.contains("refused 2"), "{streamed}");
    let (_, b1) = batch("b1").await;
    assert_eq!(
        b1["batch"]["completed_players"],
        serde_json::json!(["ann", "bob", "c d"])
    );
    assert_eq!(b1["batch"]["total_predictions"], 9);
    assert_eq!(b1["batch"]["is_complete"], true);
    assert_eq!(b1["batch"]["updated_at"], "2031-01-03T00:00:00Z", "{b1}");
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM follow_refusals ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert!(
        reasons[0].contains("\"zed\" is not expected"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("Cutover deletes no batch"),
        "{reasons:?}"
    );
    // Applied once: the copy and the stream again append nothing.
    let before = events(&app).await;
    assert_eq!(
        before,
        2 + 3 + 1,
        "two starts, three completions, one batch completed"
    );
    run_cli(&app, &follow).await;
    assert_eq!(events(&app).await, before);

    // The old application writes a total that is not its completions' (the follower has
    // nothing to do for it); the handover finds it, and the batch deleted in the old table, and
    // does not go through.
    old.exec("UPDATE batch_state SET total_predictions = 10 WHERE batch_id = 'b1'")
        .await;
    let handover = ["handover", "--legacy-url", &old.url, "batches"];
    let refused = cli(&app, &handover).output().await.unwrap();
    let said = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("batches b2: batch_id"), "{said}");
    assert!(
        said.contains(
            "batches b1: total_predictions is 10 in the old table, 9 in the legacy model, 9 in \
             the new"
        ),
        "{said}"
    );
    assert!(said.contains("2 differences"), "{said}");
    // Mended in the old table (the total right, the batch back as it was), it goes through.
    old.exec(
        "UPDATE batch_state SET total_predictions = 9 WHERE batch_id = 'b1';
         INSERT INTO batch_state (batch_id, expected_players, updated_at)
         VALUES ('b2', '{x}', '2031-02-01 00:00:00+00')",
    )
    .await;
    let done = run_cli(&app, &handover).await;
    assert!(done.contains("batches is handed over"), "{done}");
    let error = old_write_error(
        &old,
        "UPDATE batch_state SET completed_players = '{x}' WHERE batch_id = 'b2'",
    )
    .await;
    assert!(
        error.contains("public.batch_state is written by Cutover since its handover"),
        "{error}"
    );
    let recorded = app
        .post("/batches/b2/completions")
        .json(&serde_json::json!({"player_lookup": "x", "predictions_count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(recorded.status(), StatusCode::CREATED);
    let (_, b2) = batch("b2").await;
    assert_eq!(b2["batch"]["is_complete"], true, "{b2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_followers_take_turns_through_a_retirement_and_a_rebuild_and_repeat_nothing() {
    let old = OldSystem::start("follow_rebuild").await;
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        old.exec(&format!(
            "INSERT INTO collections (collection_id, project_id, collection_name)
             VALUES ('{id}', '{project}', 'v0')"
        ))
        .await;
    }
    let mut follower = cli(
        &app,
        &[
            "follow",
            "--legacy-url",
            &old.url,
            "--batch",
            "10",
            "collections",
        ],
    )
    .spawn()
    .unwrap();
    let applied = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT changes_applied FROM follows WHERE domain = 'collections'",
        )
        .fetch_optional(&app.db.pool)
        .await
        .unwrap()
        .unwrap_or(0)
    };
    // The copy first: renames during it would be taken by the copy, not as renames.
    while applied().await < 50 {
        assert!(
            follower.try_wait().unwrap().is_none(),
            "the follower stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second follower of the same domain (a server's, or a second `cutover follow`): the
    // two take turns, a round each, and neither applies what the other did.
    let mut second = cli(
        &app,
        &[
            "follow",
            "--legacy-url",
            &old.url,
            "--batch",
            "7",
            "collections",
        ],
    )
    .spawn()
    .unwrap();
    // The old application renames every collection 20 times, one transaction each, while the
    // legacy projection is retired (the projections written inline change under the
    // followers' batches) and rebuilt.
    let writer = {
        let (pool, ids) = (old.pool.clone(), ids.clone());
        tokio::spawn(async move {
            for round in 1..=20 {
                for id in &ids {
                    sqlx::query(&format!(
                        "UPDATE collections SET collection_name = 'v{round}'
                          WHERE collection_id = '{id}'"
                    ))
                    .execute(&pool)
                    .await
                    .unwrap();
                }
            }
        })
    };
    run_cli(&app, &["read-source", "collections", "new", "--force"]).await;
    run_cli(&app, &["retire", "collections"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run_cli(&app, &["rebuild", "collections"]).await;
    run_cli(&app, &["read-source", "collections", "legacy", "--force"]).await;
    writer.await.unwrap();
    let total: i64 = 50 + 20 * 50;
    let mut done = 0;
    for _ in 0..1_500 {
        done = applied().await;
        if done == total {
            break;
        }
        assert!(
            follower.try_wait().unwrap().is_none(),
            "the follower stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    follower.start_kill().unwrap();
    let output = follower.wait_with_output().await.unwrap();
    assert_eq!(
        done,
        total,
        "every change applied; the follower said {}; refused {:?}",
        String::from_utf8_lossy(&output.stderr),
        sqlx::query_scalar::<_, String>("SELECT reason FROM follow_refusals LIMIT 3")
            .fetch_all(&app.db.pool)
            .await
            .unwrap()
    );
    let renames: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE event_type = 'CollectionUpdated')
           FROM events WHERE aggregate_type = 'collection' GROUP BY aggregate_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(renames, vec![20; ids.len()], "every rename applied once");
    let verified = run_cli(&app, &["verify", "collections"]).await;
    assert!(verified.contains(" 0 differences"), "{verified}");
    answers_match(&app, &old, &[]).await;
}

/// The old application of the competencies: it writes each attempt and the subskill's
/// competency document in one transaction, as the old document store did.
struct OldCompetencies<'a> {
    old: &'a OldSystem,
    /// Per subskill: attempts and the sum of their scores.
    subskills: std::collections::HashMap<String, (u32, f64)>,
}

impl OldCompetencies<'_> {
    fn key(student: i64, subskill: &str) -> Value {
        serde_json::json!({
            "student_id": student, "subject": "math", "skill_id": "fractions",
            "subskill_id": subskill,
        })
    }

    /// Writes an attempt at `at` (seconds into 2031); its id.
    async fn attempt(&mut self, student: i64, subskill: &str, score: f64, at: u32) -> Uuid {
        let id = Uuid::new_v4();
        let timestamp = format!("2031-01-01T00:{:02}:{:02}.000001Z", at / 60, at % 60);
        let mut doc = Self::key(student, subskill);
        doc["score"] = score.into();
        doc["analysis"] = "naïve – \"quoted\" 'and' 完成".into();
        doc["feedback"] = format!("attempt at {at}").into();
        doc["timestamp"] = timestamp.clone().into();
        let legacy_id = format!("{student}_math_fractions_{subskill}");
        let (n, sum) = self.subskills.entry(legacy_id.clone()).or_default();
        *n += 1;
        *sum += score;
        let credibility = (f64::from(*n) / 15.0).sqrt().min(1.0);
        let mut competency = Self::key(student, subskill);
        competency["current_score"] =
            (credibility * (*sum / f64::from(*n)) + (1.0 - credibility) * 5.0).into();
        competency["credibility"] = credibility.into();
        competency["total_attempts"] = (*n).into();
        competency["last_updated"] = timestamp.into();
        let mut tx = self.old.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO attempts (id, student_id, doc) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(student)
            .bind(&doc)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO competencies (id, student_id, doc) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
        )
        .bind(&legacy_id)
        .bind(student)
        .bind(&competency)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// Writes a review; its id and document.
    async fn review(&self, student: i64, subskill: &str, score: f64) -> (Uuid, Value) {
        let id = Uuid::new_v4();
        let mut doc = Self::key(student, subskill);
        doc["problem_id"] = "p-1".into();
        doc["full_review"] = serde_json::json!({
            "observation": {"text": "saw it"}, "analysis": {"steps": [1, 2.5]},
            "evaluation": {"score": score}, "feedback": {}});
        doc["score"] = score.into();
        doc["timestamp"] = "2031-02-01T00:00:00.000000Z".into();
        sqlx::query("INSERT INTO reviews (id, student_id, doc) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(student)
            .bind(&doc)
            .execute(&self.old.pool)
            .await
            .unwrap();
        (id, doc)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_competencies_records_each_attempt_and_review_once_then_hands_them_over() {
    let old = OldSystem::start("follow_competencies").await;
    let app = TestApp::spawn().await;
    let mut docs = OldCompetencies {
        old: &old,
        subskills: std::collections::HashMap::new(),
    };
    let follow = [
        "follow",
        "--legacy-url",
        &old.url,
        "--until-caught-up",
        "competencies",
    ];
    // Written before the follower starts: the copy takes them, in the order they were written.
    docs.attempt(42, "adding", 7.0, 3).await;
    docs.attempt(42, "adding", 9.5, 1).await;
    let (kept_review, kept_doc) = docs.review(42, "adding", 4.0).await;
    let copied = run_cli(&app, &follow).await;
    assert!(copied.contains("copied 3 rows"), "{copied}");
    // Then streamed: more attempts, one transaction of a hundred, a review; and what the domain
    // refuses: a score out of range, a field Cutover's documents lack, an id that is not a
    // uuid, an attempt changed, a review deleted.
    let changed = docs.attempt(42, "adding", 2.0, 5).await;
    for i in 0..100 {
        docs.attempt(7, "halving", f64::from(i % 11), 10 + i).await;
    }
    docs.review(7, "halving", 10.0).await;
    old.exec(&format!(
        "INSERT INTO attempts (id, student_id, doc) VALUES
           ('{}', 42, '{{\"student_id\": 42, \"subject\": \"math\", \"skill_id\": \"fractions\",
             \"subskill_id\": \"adding\", \"score\": 11, \"analysis\": \"\", \"feedback\": \"\",
             \"timestamp\": \"2031-01-01T01:00:00Z\"}}'),
           ('{}', 42, '{{\"student_id\": 42, \"subject\": \"math\", \"skill_id\": \"fractions\",
             \"subskill_id\": \"adding\", \"score\": 1, \"analysis\": \"\", \"feedback\": \"\",
             \"hint\": \"x\", \"timestamp\": \"2031-01-01T01:00:00Z\"}}'),
           ('attempt-1', 42, (SELECT doc FROM attempts WHERE id = '{changed}'));
         UPDATE attempts SET doc = jsonb_set(doc, '{{score}}', '3') WHERE id = '{changed}';
         DELETE FROM reviews WHERE id = '{kept_review}';",
        Uuid::new_v4(),
        Uuid::new_v4(),
    ))
    .await;
    let streamed = run_cli(&app, &follow).await;
    assert!(streamed.contains("refused 5"), "{streamed}");
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM follow_refusals ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    for (reason, expected) in reasons.iter().zip([
        "score must be a number from 0 to 10",
        "a field \"hint\"",
        "is not a uuid",
        "Cutover keeps an attempt as it was first recorded",
        "the review was deleted in the old table",
    ]) {
        assert!(reason.contains(expected), "{reasons:?}");
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE aggregate_type = 'student_subskill'"
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap(),
        3 + 1 + 100 + 1,
        "each attempt and review recorded once"
    );
    // The old times are served: the competency's is its latest attempt's.
    let competency = |student: i64, subskill: &'static str| {
        let app = &app;
        async move {
            let response = app
                .get(&format!(
                    "/students/{student}/competencies/math/fractions/{subskill}"
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()["competency"].clone()
        }
    };
    let adding = competency(42, "adding").await;
    assert_eq!(adding["id"], "42_math_fractions_adding", "{adding}");
    assert_eq!(adding["doc"]["total_attempts"], 3, "{adding}");
    assert_eq!(
        adding["doc"]["last_updated"], "2031-01-01T00:00:05.000001Z",
        "{adding}"
    );
    // One writer: Cutover's own commands for the domain are refused while it is followed.
    let attempt = serde_json::json!({
        "subject": "math", "skill_id": "fractions", "subskill_id": "adding", "score": 6.0,
    });
    let refused = app
        .post("/students/42/attempts")
        .json(&attempt)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    // The handover compares every attempt, review and competency document: the refused rows,
    // the changed attempt, the deleted review and a competency the old system got wrong are
    // differences, and the old tables take writes again.
    old.exec(
        "UPDATE competencies SET doc = jsonb_set(doc, '{current_score}', '9.99')
          WHERE id = '7_math_fractions_halving'",
    )
    .await;
    let handover = ["handover", "--legacy-url", &old.url, "competencies"];
    let refused = cli(&app, &handover).output().await.unwrap();
    let said = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("competencies is not handed over"), "{said}");
    assert!(
        said.contains("7_math_fractions_halving: current_score is 9.99"),
        "{said}"
    );
    assert!(said.contains(&format!("{changed}: score is 3.0")), "{said}");
    assert!(
        said.contains(&format!("{kept_review}: id is null")),
        "{said}"
    );
    // Mended in the old tables: the refused rows removed, the attempt and the competency as
    // they were, the review back.
    old.exec(&format!(
        "DELETE FROM attempts WHERE doc ->> 'score' = '11' OR doc ? 'hint' OR id = 'attempt-1';
         UPDATE attempts SET doc = jsonb_set(doc, '{{score}}', '2.0') WHERE id = '{changed}';"
    ))
    .await;
    docs.attempt(7, "halving", 4.0, 200).await;
    sqlx::query("INSERT INTO reviews (id, student_id, doc) VALUES ($1, 42, $2)")
        .bind(kept_review.to_string())
        .bind(&kept_doc)
        .execute(&old.pool)
        .await
        .unwrap();
    let said = run_cli(&app, &handover).await;
    assert!(said.contains("competencies is handed over"), "{said}");
    assert!(said.contains(" 0 differences"), "{said}");
    let error = old_write_error(&old, "DELETE FROM attempts").await;
    assert!(
        error.contains("public.attempts is written by Cutover since its handover"),
        "{error}"
    );
    old_write_error(&old, "DELETE FROM reviews").await;
    // Cutover's commands continue the same subskills.
    let recorded = app
        .post("/students/42/attempts")
        .json(&attempt)
        .send()
        .await
        .unwrap();
    assert_eq!(recorded.status(), StatusCode::CREATED);
    let recorded: Value = recorded.json().await.unwrap();
    assert_eq!(
        recorded["competency"]["doc"]["total_attempts"], 4,
        "{recorded}"
    );
    assert_eq!(competency(7, "halving").await["doc"]["total_attempts"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_follows_stops_and_hands_over_a_domain_from_the_admin_api() {
    let old = OldSystem::start("follow_admin").await;
    let app = TestApp::spawn_with(AppOptions {
        legacy_url: Some(old.url.clone()),
        ..AppOptions::default()
    })
    .await;
    let answer = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap_or_default())
    };
    // Bad requests change nothing: an unknown domain, a domain not followed, and a server
    // that follows no old database.
    for (request, expected) in [
        (app.post("/admin/follows/students"), StatusCode::NOT_FOUND),
        (
            app.delete("/admin/follows/collections"),
            StatusCode::NOT_FOUND,
        ),
        (
            app.post("/admin/follows/collections/handover"),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = answer(request).await;
        assert_eq!(status, expected, "{body}");
    }
    let without = TestApp::spawn().await;
    let (status, body) = answer(without.post("/admin/follows/collections")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("--legacy-url"),
        "{body}"
    );
    assert!(following(&app).await["follows"]
        .as_array()
        .unwrap()
        .is_empty());

    let project = Uuid::new_v4();
    let (a, b, empty) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    old.exec(&format!(
        "INSERT INTO collections (collection_id, project_id, collection_name) VALUES
           ('{a}', '{project}', 'A'), ('{b}', '{project}', 'B'), ('{empty}', '{project}', '')"
    ))
    .await;
    let (status, body) = answer(app.post("/admin/follows/collections")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["domain"], "collections", "{body}");
    // The server's follower copies the rows, then applies what the old application writes.
    let shown = |applied: i64| {
        let app = &app;
        async move {
            let mut shown = Value::Null;
            for _ in 0..500 {
                shown = following(app).await["follows"][0].clone();
                if shown["changes_applied"] == applied {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shown
        }
    };
    assert_eq!(shown(2).await["changes_applied"], 2);
    old.exec(&format!(
        "UPDATE collections SET collection_name = 'B2' WHERE collection_id = '{b}'"
    ))
    .await;
    let shown = shown(3).await;
    assert_eq!(shown["changes_applied"], 3, "{shown}");
    assert_eq!(shown["changes_refused"], 1, "{shown}");
    assert_eq!(create(&app, project).await, StatusCode::CONFLICT);

    // The refused row is a difference: 409 with the report, and the old table takes writes.
    let (status, report) = answer(app.post("/admin/follows/collections/handover")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{report}");
    assert_eq!(report["handed_over"], false, "{report}");
    assert_eq!(
        report["differences"][0]["id"],
        empty.to_string(),
        "{report}"
    );
    old.exec(&format!(
        "UPDATE collections SET collection_name = 'C' WHERE collection_id = '{empty}'"
    ))
    .await;
    let (status, report) = answer(app.post("/admin/follows/collections/handover")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["handed_over"], true, "{report}");
    assert_eq!(report["rows_compared"], 3, "{report}");
    let error = old_write_error(&old, "DELETE FROM collections").await;
    assert!(error.contains("written by Cutover"), "{error}");
    assert_eq!(create(&app, project).await, StatusCode::CREATED);
    // A domain handed over is not followed again.
    let (status, body) = answer(app.post("/admin/follows/collections")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("was handed over"),
        "{body}"
    );

    // Another domain followed, then no longer: its slot leaves the old database.
    let (status, _) = answer(app.post("/admin/follows/batches")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = answer(app.delete("/admin/follows/batches")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(following(&app).await["follows"]
        .as_array()
        .unwrap()
        .is_empty());
    // A server's follower that listed it before the drop takes it up no more, and makes no
    // slot again.
    let system = follow::OldSystem::open(&app.db.pool, &old.url).unwrap();
    let taken = follow::Follower::take_up(system.store, system.old, "batches").await;
    assert!(
        matches!(taken, Err(follow::FollowError::NotFollowed(_))),
        "{:?}",
        taken.err()
    );
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots")
        .fetch_one(&old.pool)
        .await
        .unwrap();
    assert_eq!(slots, 0);
}
