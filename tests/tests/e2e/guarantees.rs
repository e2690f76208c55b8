//! The guarantees of docs/design.md, each proven by a test that could fail.

use std::collections::BTreeSet;
use std::time::Duration;

use cutover_tests::{json_with_status, AppOptions, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::collections::{collection_path, create};

/// Makes every write to `project_collections` fail, as a broken read model would.
async fn break_new_read_model(app: &TestApp) {
    for statement in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'project_collections refuses writes'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON project_collections \
         FOR EACH ROW EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(statement).execute(&app.db.pool).await.unwrap();
    }
}

/// A command on a quiet server (a collection's create: alone in one statement, outside a
/// transaction) takes its first lock on the log's table: while something holds the appends
/// back (a rebuild's swap, a retirement, a verification's snapshot, the start of a follow), it
/// waits holding no lock on a read-model table, so it can neither deadlock with the swap's
/// moves of those tables nor write the tables the swap moves aside; once the log is let go it
/// commits, answered with what it wrote.
#[tokio::test]
async fn atomic_commands_a_command_waits_for_held_appends_before_it_locks_a_read_model() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    // The first command makes the caches (the registry's inline names, the statement).
    create(&app, project, "first").await;
    let mut holder = app.db.pool.begin().await.unwrap();
    sqlx::Executor::execute(&mut *holder, cutover_engine::locks::HOLD_APPENDS)
        .await
        .unwrap();
    let request = app
        .post(&format!("/projects/{project}/collections"))
        .json(&json!({"collection_name": "second"}))
        .send();
    let sent = tokio::spawn(request);
    let mut waiting = None;
    for _ in 0..100 {
        waiting = sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid() LIMIT 1",
        )
        .fetch_optional(&app.db.pool)
        .await
        .unwrap();
        if waiting.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = waiting.expect("the command waits for the held appends");
    let read_models: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation
          WHERE l.pid = $1 AND c.relname IN ('collections', 'project_collections')",
    )
    .bind(waiting)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(read_models, Vec::<String>::new(), "locked before the log");
    assert_eq!(app.db.event_count().await, 1);

    holder.commit().await.unwrap();
    let response = sent.await.unwrap().unwrap();
    let answer = json_with_status(response, StatusCode::CREATED).await;
    assert_eq!(answer["collection"]["collection_name"], "second");
    assert_eq!(app.db.event_count().await, 2);
}

#[tokio::test]
async fn atomic_commands_a_failing_read_model_leaves_no_event_and_no_legacy_row() {
    let app = TestApp::spawn().await;
    break_new_read_model(&app).await;
    let project = Uuid::new_v4();

    let response = app
        .post(&format!("/projects/{project}/collections"))
        .json(&json!({"collection_name": "Interviews"}))
        .send()
        .await
        .unwrap();

    json_with_status(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(app.db.event_count().await, 0);
    let legacy_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM collections")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(legacy_rows, 0);
}

/// A registry that maintains a read model this server cannot write refuses commands: the read
/// model would fall behind the log.
#[tokio::test]
async fn atomic_commands_an_inline_projection_the_server_does_not_know_refuses_commands() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    create(&app, project, "before").await;
    sqlx::query(
        "INSERT INTO projections (name, domain, shape, tables, state, inline_active)
         VALUES ('from_a_newer_server', 'collections', 'new', '{}', 'live', true)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();

    let response = app
        .post(&format!("/projects/{project}/collections"))
        .json(&json!({"collection_name": "after"}))
        .send()
        .await
        .unwrap();

    json_with_status(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(app.db.event_count().await, 1);
}

#[tokio::test]
async fn atomic_commands_a_failed_update_changes_neither_the_log_nor_the_legacy_row() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    break_new_read_model(&app).await;

    let response = app
        .put(&collection_path(project, &created))
        .json(&json!({"collection_name": "Renamed"}))
        .send()
        .await
        .unwrap();

    json_with_status(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(app.db.event_count().await, 1);
    let name: String = sqlx::query_scalar("SELECT collection_name FROM collections")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(name, "Interviews");
}

#[tokio::test]
async fn write_then_read_every_command_answer_equals_a_fresh_get() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);
    let updated = json_with_status(
        app.put(&path)
            .json(&json!({"collection_name": "Renamed", "description": "new"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    for source in ["legacy", "new"] {
        app.set_read_source("collections", source).await;
        let linked = json_with_status(
            app.put(&format!("{path}/links"))
                .json(&json!({"tags": [source]}))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let fresh = json_with_status(app.get(&path).send().await.unwrap(), StatusCode::OK).await;

        assert_eq!(linked["collection"], fresh["collection"], "{source}");
        assert_eq!(linked["version"], fresh["version"]);
        assert_eq!(linked["read_source"], source);
    }
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY sequence")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(created["position"], positions[0]);
    assert_eq!(updated["position"], positions[1]);
}

#[tokio::test]
async fn optimistic_concurrency_twenty_parallel_updates_all_land_with_versions_2_to_21() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);

    let updates = (0..20).map(|i| {
        let request = app
            .put(&path)
            .json(&json!({"collection_name": format!("name {i}")}));
        async move { request.send().await.unwrap() }
    });
    let responses = futures_join_all(updates).await;

    let mut versions = BTreeSet::new();
    for response in responses {
        let body = json_with_status(response, StatusCode::OK).await;
        versions.insert(body["version"].as_i64().unwrap());
    }
    assert_eq!(versions, (2..=21).collect());
    assert_eq!(app.db.event_count().await, 21);
    let sequences: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM events ORDER BY sequence")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sequences, (1..=21).collect::<Vec<_>>());
    let (last_sequence, name): (i64, String) =
        sqlx::query_as("SELECT last_sequence, collection_name FROM collections")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(last_sequence, 21);
    let last_name: String = sqlx::query_scalar(
        "SELECT payload->'CollectionUpdated'->>'collection_name' FROM events WHERE sequence = 21",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(name, last_name, "the legacy row shows the last update");
}

/// The body of command `i` of a burst: every fourth has a description Postgres refuses (a NUL
/// character).
fn every_fourth_refused(i: usize) -> serde_json::Value {
    let description = if i % 4 == 3 {
        format!("refused \u{0} {i}")
    } else {
        format!("kept {i}")
    };
    json!({"collection_name": format!("name {i}"), "description": description})
}

/// Commands on one aggregate that arrive together share a transaction: a command of the group
/// that Postgres refuses (a NUL character) is undone alone, and the others commit.
#[tokio::test]
async fn atomic_commands_a_refused_command_in_a_shared_transaction_leaves_the_others_committed() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);

    let updates = (0..24).map(|i| {
        let request = app.put(&path).json(&every_fourth_refused(i));
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_join_all(updates).await;

    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    let kept = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!((kept, refused), (18, 6), "{statuses:?}");
    assert_eq!(
        app.db.event_count().await,
        19,
        "the creation and the 18 kept updates"
    );
    let sequences: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM events ORDER BY sequence")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sequences, (1..=19).collect::<Vec<_>>(), "no gap, no double");
    let refused_written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%refused%'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(refused_written, 0);
    let (last_sequence, description): (i64, String) =
        sqlx::query_as("SELECT last_sequence, description FROM collections")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(last_sequence, 19);
    let last: String = sqlx::query_scalar(
        "SELECT payload->'CollectionUpdated'->>'description' FROM events WHERE sequence = 19",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        description, last,
        "the read model shows the last kept update"
    );
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT transaction_id) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(
        transactions < 19,
        "the updates shared transactions ({transactions} for 19 events)"
    );
}

/// Creates of different collections that arrive together share transactions; one refused by
/// Postgres (a NUL character) fails its shared transaction before the commit, and every
/// command of it runs again alone: the refused ones are answered 422 and leave nothing, every
/// other one commits with its read models.
#[tokio::test]
async fn atomic_commands_a_command_refused_in_a_transaction_shared_across_aggregates_leaves_the_others_committed(
) {
    let app = TestApp::spawn().await;
    let creates = (0..32).map(|i| {
        let request = app
            .post(&format!("/projects/{}/collections", Uuid::new_v4()))
            .json(&every_fourth_refused(i));
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_join_all(creates).await;

    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!((created, refused), (24, 8), "{statuses:?}");
    assert_eq!(app.db.event_count().await, 24);
    for (table, description) in [
        ("collections", "description"),
        ("project_collections", "research_context"),
    ] {
        let (rows, refused_rows): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(*) FILTER (WHERE {description} LIKE 'refused%') FROM {table}"
        ))
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!((rows, refused_rows), (24, 0), "{table}");
    }
    assert!(
        app.metric("cutover_shared_rollbacks_total").await >= 1.0,
        "a refused command's shared transaction was rolled back"
    );
}

/// Creates of different collections that arrive together share a transaction (group commit):
/// each answer is still its own collection as a fresh read shows it, at version 1.
#[tokio::test]
async fn write_then_read_commands_sharing_a_transaction_across_aggregates_each_read_their_own_write(
) {
    let app = TestApp::spawn().await;
    let mut shared: i64 = 0;
    for _round in 0..5 {
        let creates = (0..32).map(|i| {
            let request = app
                .post(&format!("/projects/{}/collections", Uuid::new_v4()))
                .json(&json!({"collection_name": format!("name {i}")}));
            async move {
                let response = request.send().await.unwrap();
                json_with_status(response, StatusCode::CREATED).await
            }
        });
        for answer in futures_join_all(creates).await {
            assert_eq!(answer["version"], 1);
            let id = answer["collection"]["collection_id"].as_str().unwrap();
            let project = answer["collection"]["project_id"].as_str().unwrap();
            let fresh = app
                .get(&format!("/projects/{project}/collections/{id}"))
                .send()
                .await
                .unwrap();
            let fresh = json_with_status(fresh, StatusCode::OK).await;
            assert_eq!(answer["collection"], fresh["collection"]);
        }
        shared = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT transaction_id FROM events GROUP BY transaction_id \
             HAVING count(DISTINCT aggregate_id) > 1) AS shared",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if shared > 0 {
            break;
        }
    }
    assert!(shared > 0, "no transaction held events of two collections");
    let transactions = app.metric("cutover_shared_transactions_total").await;
    let commands = app.metric("cutover_shared_commands_total").await;
    assert!(
        transactions >= 1.0 && commands > transactions,
        "{commands} commands in {transactions} shared transactions"
    );
}

/// Clients of commands that share a transaction hang up mid-way (their requests are cancelled
/// in the server): every command answered 200 is in the log at the version it was given, the
/// stream has no gap, and the aggregate still takes commands.
#[tokio::test]
async fn nothing_acknowledged_is_lost_when_clients_of_a_shared_transaction_hang_up() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);

    let updates = (0..40).map(|i| {
        let mut request = app
            .put(&path)
            .json(&json!({"collection_name": format!("name {i}")}));
        if i % 2 == 1 {
            request = request.timeout(Duration::from_millis(2 + i % 7));
        }
        async move {
            match request.send().await {
                Ok(response) if response.status() == StatusCode::OK => {
                    let body: serde_json::Value = response.json().await.unwrap();
                    Some((body["version"].as_i64().unwrap(), format!("name {i}")))
                }
                Ok(response) => panic!("update {i}: {}", response.status()),
                Err(e) => {
                    assert!(e.is_timeout(), "update {i}: {e}");
                    None
                }
            }
        }
    });
    let acknowledged: Vec<(i64, String)> = futures_join_all(updates)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        acknowledged.len() >= 20,
        "the patient half is always answered"
    );

    let last = tokio::time::timeout(
        Duration::from_secs(10),
        app.put(&path)
            .json(&json!({"collection_name": "after"}))
            .send(),
    )
    .await
    .expect("the aggregate still takes commands")
    .unwrap();
    let last = json_with_status(last, StatusCode::OK).await;
    let head = last["version"].as_i64().unwrap();
    let names: Vec<(i64, String)> = sqlx::query_as(
        "SELECT sequence, coalesce(payload->'CollectionUpdated'->>'collection_name', '') FROM events ORDER BY sequence",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        names
            .iter()
            .map(|(sequence, _)| *sequence)
            .collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "no gap, no double"
    );
    for (version, name) in &acknowledged {
        assert_eq!(
            &names[usize::try_from(*version - 1).unwrap()].1,
            name,
            "the update answered with version {version} is in the log"
        );
    }
    let legacy: String = sqlx::query_scalar("SELECT collection_name FROM collections")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(legacy, "after");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(stuck, 0, "no connection was left inside a transaction");
}

/// Runs every future concurrently on the test's runtime and collects the outputs in order.
async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn optimistic_concurrency_if_match_on_a_stale_version_is_412_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);
    json_with_status(
        app.put(&path)
            .header("if-match", "\"1\"")
            .json(&json!({"collection_name": "second"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    let stale = app
        .put(&path)
        .header("if-match", "\"1\"")
        .json(&json!({"collection_name": "third"}))
        .send()
        .await
        .unwrap();

    json_with_status(stale, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(app.db.event_count().await, 2);
}

/// Appends `CollectionUpdated` at `sequence` in a transaction the caller commits, the way a
/// writer that does not take the aggregate lock (another tool, an older instance) would.
async fn foreign_append(
    app: &TestApp,
    collection_id: &str,
    sequence: i64,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('collection', $1, $2, 'CollectionUpdated', '1.0', \
                 '{\"CollectionUpdated\": {\"name\": \"foreign\", \"description\": \"\"}}', '{}')",
    )
    .bind(collection_id)
    .bind(sequence)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Sends an update to a fresh collection while a rival transaction holds sequence 2 open, and
/// commits the rival once the update is waiting on it.
async fn update_racing_a_rival(app: &TestApp) -> reqwest::Response {
    let project = Uuid::new_v4();
    let created = create(app, project, "Interviews").await;
    let id = created["collection"]["collection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rival = foreign_append(app, &id, 2).await;
    let request = app
        .put(&collection_path(project, &created))
        .json(&json!({"collection_name": "mine"}))
        .send();
    let pending = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rival.commit().await.unwrap();
    pending.await.unwrap().unwrap()
}

#[tokio::test]
async fn optimistic_concurrency_a_command_that_loses_the_append_race_is_retried() {
    let app = TestApp::spawn().await;

    let response = update_racing_a_rival(&app).await;

    let body = json_with_status(response, StatusCode::OK).await;
    assert_eq!(
        body["version"], 3,
        "the command ran again on top of the rival's event"
    );
    assert_eq!(body["collection"]["collection_name"], "mine");
    assert_eq!(app.db.event_count().await, 3);
    assert_eq!(app.metric("cutover_command_retries_total").await, 1.0);
    assert_eq!(app.metric("cutover_command_conflicts_total").await, 0.0);
}

#[tokio::test]
async fn optimistic_concurrency_a_conflict_that_outlasts_the_retries_is_409_and_appends_nothing() {
    let app = TestApp::spawn_with(AppOptions {
        command_retries: 0,
        ..AppOptions::default()
    })
    .await;

    let response = update_racing_a_rival(&app).await;

    json_with_status(response, StatusCode::CONFLICT).await;
    assert_eq!(
        app.db.event_count().await,
        2,
        "only the rival's event was added"
    );
    assert_eq!(app.metric("cutover_command_conflicts_total").await, 1.0);
}
