//! Prediction batches: both read models, idempotent completions, all-or-nothing bulks and a
//! hot batch under concurrent completions.

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub async fn start(app: &TestApp, batch_id: &str, players: &[&str]) -> Value {
    let response = app
        .post("/batches")
        .json(&json!({"batch_id": batch_id, "expected_players": players}))
        .send()
        .await
        .unwrap();
    json_with_status(response, StatusCode::CREATED).await
}

pub async fn complete(
    app: &TestApp,
    batch_id: &str,
    player: &str,
    count: i64,
) -> reqwest::Response {
    app.post(&format!("/batches/{batch_id}/completions"))
        .json(&json!({"player_lookup": player, "predictions_count": count}))
        .send()
        .await
        .unwrap()
}

async fn count_events(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// The legacy array length, the new row count and the new counter of `batch_id`, and the
/// legacy and new totals.
async fn both_shapes(app: &TestApp, batch_id: &str) -> (i64, i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT cardinality(s.completed_players)::bigint,
                (SELECT count(*) FROM batch_completions c WHERE c.batch_id = s.batch_id),
                k.completed_count::bigint, s.total_predictions, k.total_predictions
           FROM batch_state s JOIN batch_counters k USING (batch_id)
          WHERE s.batch_id = $1",
    )
    .bind(batch_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn starting_a_batch_answers_201_with_the_legacy_document_read_back() {
    let app = TestApp::spawn().await;

    let response = app
        .post("/batches")
        .json(&json!({"batch_id": "wk-12:a", "expected_players": ["ann", "bob"]}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["location"], "/batches/wk-12:a");
    let body = json_with_status(response, StatusCode::CREATED).await;
    assert_eq!(body["version"], 1);
    assert_eq!(body["read_source"], "legacy");
    let started = &body["batch"];
    assert_eq!(started["expected_players"], json!(["ann", "bob"]));
    assert_eq!(started["completed_players"], json!([]));
    assert_eq!(started["total_predictions"], 0);
    assert_eq!(started["is_complete"], false);
    let document = json_with_status(
        app.get("/batches/wk-12:a").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        document["batch"], body["batch"],
        "the command answers as its GET"
    );
    assert_eq!(document["batch"]["predictions_by_player"], json!({}));
}

#[tokio::test]
async fn a_completion_is_201_and_its_redelivery_is_200_and_counts_once() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["ann", "bob"]).await;

    let first = json_with_status(complete(&app, "b1", "ann", 7).await, StatusCode::CREATED).await;
    let again = json_with_status(complete(&app, "b1", "ann", 7).await, StatusCode::OK).await;

    assert_eq!(first["version"], 2);
    assert_eq!(again["version"], 2);
    assert_eq!(again["position"], first["position"]);
    assert_eq!(
        first["completion"],
        json!({"player_lookup": "ann", "predictions_count": 7}),
        "a completion answers with what it wrote, as GET …/completions lists it"
    );
    assert_eq!(again["completion"], first["completion"]);
    let listed = json_with_status(
        app.get("/batches/b1/completions").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"], json!([first["completion"]]));
    assert_eq!(count_events(&app, "PlayerCompleted").await, 1);
    assert_eq!(both_shapes(&app, "b1").await, (1, 1, 1, 7, 7));
}

#[tokio::test]
async fn idempotency_a_redelivered_completion_sent_twice_at_once_counts_once() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["ann", "bob"]).await;

    let (a, b) = tokio::join!(
        complete(&app, "b1", "ann", 7),
        complete(&app, "b1", "ann", 7)
    );

    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CREATED]);
    assert_eq!(count_events(&app, "PlayerCompleted").await, 1);
    assert_eq!(both_shapes(&app, "b1").await, (1, 1, 1, 7, 7));
}

#[tokio::test]
async fn fifty_concurrent_completions_on_one_batch_all_land_and_both_shapes_agree() {
    let app = TestApp::spawn().await;
    let players: Vec<String> = (0..50).map(|i| format!("player-{i:02}")).collect();
    let names: Vec<&str> = players.iter().map(String::as_str).collect();
    start(&app, "hot", &names).await;

    let sends = players.iter().enumerate().map(|(i, player)| {
        let request = app
            .post("/batches/hot/completions")
            .json(&json!({"player_lookup": player, "predictions_count": i}));
        tokio::spawn(async move { request.send().await.unwrap() })
    });
    let handles: Vec<_> = sends.collect();
    let mut versions = Vec::new();
    for handle in handles {
        let body = json_with_status(handle.await.unwrap(), StatusCode::CREATED).await;
        versions.push(body["version"].as_i64().unwrap());
    }

    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 50, "every completion got its own version");
    let total: i64 = (0..50).sum();
    assert_eq!(both_shapes(&app, "hot").await, (50, 50, 50, total, total));
    assert_eq!(count_events(&app, "BatchCompleted").await, 1);
    let complete: (bool, bool) = sqlx::query_as(
        "SELECT s.is_complete, k.is_complete FROM batch_state s JOIN batch_counters k USING (batch_id)",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(complete, (true, true));
}

#[tokio::test]
async fn a_bulk_records_every_completion_in_one_command_and_completes_the_batch() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["ann", "bob", "cy"]).await;
    json_with_status(complete(&app, "b1", "ann", 1).await, StatusCode::CREATED).await;

    let response = app
        .post("/batches/b1/completions/bulk")
        .json(&json!({"completions": [
            {"player_lookup": "ann", "predictions_count": 1},
            {"player_lookup": "bob", "predictions_count": 2},
            {"player_lookup": "cy", "predictions_count": 3},
        ]}))
        .send()
        .await
        .unwrap();

    let body = json_with_status(response, StatusCode::CREATED).await;
    assert_eq!(body["version"], 5, "bob, cy, then the batch completed");
    assert_eq!(
        body["completions"],
        json!([
            {"player_lookup": "ann", "predictions_count": 1},
            {"player_lookup": "bob", "predictions_count": 2},
            {"player_lookup": "cy", "predictions_count": 3},
        ])
    );
    let document =
        json_with_status(app.get("/batches/b1").send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(document["batch"]["is_complete"], true);
    assert_eq!(
        document["batch"]["completed_players"],
        json!(["ann", "bob", "cy"])
    );
    assert_eq!(both_shapes(&app, "b1").await, (3, 3, 3, 6, 6));
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT transaction_id::text) FROM events")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(transactions, 3, "start, the single completion, the bulk");
}

#[tokio::test]
async fn bad_input_a_bulk_with_one_bad_item_changes_nothing() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["ann", "bob"]).await;
    json_with_status(complete(&app, "b1", "ann", 1).await, StatusCode::CREATED).await;
    let before = app.db.event_count().await;
    let bulk = |items: Value| {
        app.post("/batches/b1/completions/bulk")
            .json(&json!({ "completions": items }))
            .send()
    };

    let unknown = bulk(json!([
        {"player_lookup": "bob", "predictions_count": 2},
        {"player_lookup": "zed", "predictions_count": 2},
    ]))
    .await
    .unwrap();
    let conflicting = bulk(json!([
        {"player_lookup": "bob", "predictions_count": 2},
        {"player_lookup": "ann", "predictions_count": 9},
    ]))
    .await
    .unwrap();
    let malformed = bulk(json!([
        {"player_lookup": "bob", "predictions_count": 2},
        {"player_lookup": "ann", "predictions_count": -1},
    ]))
    .await
    .unwrap();
    let empty = bulk(json!([])).await.unwrap();

    json_with_status(unknown, StatusCode::UNPROCESSABLE_ENTITY).await;
    json_with_status(conflicting, StatusCode::CONFLICT).await;
    let body = json_with_status(malformed, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["field"], "completions[1].predictions_count");
    let body = json_with_status(empty, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["field"], "completions");
    assert_eq!(app.db.event_count().await, before);
    assert_eq!(both_shapes(&app, "b1").await, (1, 1, 1, 1, 1));
}

#[tokio::test]
async fn completion_rules_and_malformed_input_answer_4xx_and_append_nothing() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["ann", "bob"]).await;
    json_with_status(complete(&app, "b1", "ann", 7).await, StatusCode::CREATED).await;
    let before = app.db.event_count().await;

    let cases = [
        (complete(&app, "b1", "ann", 8).await, StatusCode::CONFLICT),
        (
            complete(&app, "b1", "zed", 1).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            complete(&app, "b1", "bob", 1_000_001).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            complete(&app, "b1", "", 1).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            complete(&app, "nope", "ann", 1).await,
            StatusCode::NOT_FOUND,
        ),
        (
            complete(&app, "bad%20id", "ann", 1).await,
            StatusCode::BAD_REQUEST,
        ),
        (
            app.post("/batches/b1/completions")
                .json(&json!({"player_lookup": "bob"}))
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            app.post("/batches")
                .json(&json!({"batch_id": "b1", "expected_players": ["x"]}))
                .send()
                .await
                .unwrap(),
            StatusCode::CONFLICT,
        ),
        (
            app.post("/batches")
                .json(&json!({"batch_id": "has space", "expected_players": ["x"]}))
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            app.post("/batches")
                .json(&json!({"batch_id": "b2", "expected_players": ["x", "x"]}))
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            app.post("/batches")
                .json(&json!({"batch_id": "b2", "expected_players": []}))
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            app.get("/batches/b1/completions?limit=0")
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.get("/batches/nope").send().await.unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            app.get("/batches/nope/completions").send().await.unwrap(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (response, status) in cases {
        json_with_status(response, status).await;
    }
    assert_eq!(app.db.event_count().await, before);
}

#[tokio::test]
async fn the_batch_and_its_completions_read_from_either_source() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["cy", "ann", "bob"]).await;
    for (player, count) in [("cy", 3), ("ann", 1), ("bob", 2)] {
        json_with_status(
            complete(&app, "b1", player, count).await,
            StatusCode::CREATED,
        )
        .await;
    }

    let legacy =
        json_with_status(app.get("/batches/b1").send().await.unwrap(), StatusCode::OK).await;
    let legacy_page = json_with_status(
        app.get("/batches/b1/completions?limit=2")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    app.set_read_source("batches", "new").await;
    let new = json_with_status(app.get("/batches/b1").send().await.unwrap(), StatusCode::OK).await;
    let new_page = json_with_status(
        app.get("/batches/b1/completions?limit=2&after=ann")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    assert_eq!(legacy["version"], 5);
    assert_eq!(
        legacy["batch"]["completed_players"],
        json!(["cy", "ann", "bob"])
    );
    assert_eq!(legacy["batch"]["is_complete"], true);
    assert_eq!(
        legacy_page["items"],
        json!([
            {"player_lookup": "ann", "predictions_count": 1},
            {"player_lookup": "bob", "predictions_count": 2},
        ])
    );
    assert_eq!(legacy_page["next"], "bob");
    assert_eq!(new["read_source"], "new");
    assert_eq!(new["version"], 5);
    assert_eq!(
        new["batch"], legacy["batch"],
        "the switch changes no answer"
    );
    assert_eq!(
        new_page["items"],
        json!([
            {"player_lookup": "bob", "predictions_count": 2},
            {"player_lookup": "cy", "predictions_count": 3},
        ])
    );
}

#[tokio::test]
async fn a_completion_appended_by_another_writer_is_seen_by_the_next_command() {
    let app = TestApp::spawn().await;
    start(&app, "b1", &["ann", "bob", "cy"]).await;
    json_with_status(complete(&app, "b1", "bob", 1).await, StatusCode::CREATED).await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('prediction_batch', 'b1', 3, 'PlayerCompleted', '1.0', \
                 '{\"PlayerCompleted\": {\"player_lookup\": \"ann\", \"predictions_count\": 4}}', '{}')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();

    let repeat = complete(&app, "b1", "bob", 1).await;
    let conflicting = complete(&app, "b1", "ann", 5).await;

    let body = json_with_status(repeat, StatusCode::OK).await;
    assert_eq!(
        body["version"], 3,
        "the no-op answer knows the other writer's event"
    );
    let body = json_with_status(conflicting, StatusCode::CONFLICT).await;
    assert!(body["detail"].as_str().unwrap().contains("4 predictions"));
}

/// A completion answers with what its statement wrote, whichever model is the read source, and
/// on a quiet server that statement is all it sends: held back with the appends, it waits at
/// the log's table, not at the append lock a command's transaction takes first. A completion
/// repeated (nothing written) answers 200 with the completion read back.
#[tokio::test]
async fn a_completion_is_one_statement_and_answers_what_it_wrote_from_either_source() {
    let app = TestApp::spawn().await;
    for (source, batch) in [("legacy", "one"), ("new", "two")] {
        app.set_read_source("batches", source).await;
        start(&app, batch, &["ann", "bob"]).await;
        let request = app
            .post(&format!("/batches/{batch}/completions"))
            .json(&json!({"player_lookup": "ann", "predictions_count": 7}));
        let (waiting, response) = app.lock_awaited_by(request).await;
        assert_eq!(
            waiting,
            Some(("relation".to_owned(), "events".to_owned())),
            "{source}: waits at the log, in no transaction of its own"
        );
        let answer = json_with_status(response, StatusCode::CREATED).await;
        assert_eq!(answer["read_source"], source);
        assert_eq!(answer["version"], 2, "{source}");
        assert_eq!(
            answer["completion"],
            json!({"player_lookup": "ann", "predictions_count": 7}),
            "{source}"
        );
        let listed = json_with_status(
            app.get(&format!("/batches/{batch}/completions"))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(answer["completion"], listed["items"][0], "{source}");
        let again = json_with_status(complete(&app, batch, "ann", 7).await, StatusCode::OK).await;
        assert_eq!(again["completion"], answer["completion"], "{source}");
        assert_eq!(again["version"], 2, "{source}");
    }
}
