//! Idempotency keys: a repeat gets the first answer and appends nothing, also when the two
//! arrive at once; the same key with another request is refused.

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

fn create(app: &TestApp, project: Uuid, key: &str, name: &str) -> reqwest::RequestBuilder {
    app.post(&format!("/projects/{project}/collections"))
        .header("idempotency-key", key)
        .json(&json!({"collection_name": name}))
}

#[tokio::test]
async fn idempotency_a_repeat_with_its_key_gets_the_first_answer_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();

    let first = create(&app, project, "order-17", "Interviews")
        .send()
        .await
        .unwrap();
    let first_location = first.headers()["location"].clone();
    let first = json_with_status(first, StatusCode::CREATED).await;
    let again = create(&app, project, "order-17", "Interviews")
        .send()
        .await
        .unwrap();
    let again_location = again.headers()["location"].clone();
    let again = json_with_status(again, StatusCode::CREATED).await;

    assert_eq!(again, first);
    assert_eq!(again_location, first_location);
    assert_eq!(app.db.event_count().await, 1);
}

#[tokio::test]
async fn idempotency_concurrent_repeats_run_the_command_once() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();

    let sends: Vec<_> = (0..8)
        .map(|_| tokio::spawn(create(&app, project, "same", "Once").send()))
        .collect();
    let mut bodies = Vec::new();
    for send in sends {
        bodies.push(json_with_status(send.await.unwrap().unwrap(), StatusCode::CREATED).await);
    }

    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every repeat got the first answer"
    );
    assert_eq!(app.db.event_count().await, 1);
}

#[tokio::test]
async fn idempotency_a_completion_repeated_with_its_key_answers_201_again() {
    let app = TestApp::spawn().await;
    json_with_status(
        app.post("/batches")
            .json(&json!({"batch_id": "b1", "expected_players": ["ann", "bob"]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let complete = || {
        app.post("/batches/b1/completions")
            .header("idempotency-key", "msg-1")
            .json(&json!({"player_lookup": "ann", "predictions_count": 3}))
            .send()
    };

    let first = json_with_status(complete().await.unwrap(), StatusCode::CREATED).await;
    let again = json_with_status(complete().await.unwrap(), StatusCode::CREATED).await;

    assert_eq!(again, first);
    assert_eq!(app.db.event_count().await, 2);
}

#[tokio::test]
async fn bad_input_the_same_key_with_another_request_is_422_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    json_with_status(
        create(&app, project, "k1", "Interviews")
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;

    let other_body = create(&app, project, "k1", "Something else")
        .send()
        .await
        .unwrap();
    let other_route = app
        .post("/batches")
        .header("idempotency-key", "k1")
        .json(&json!({"batch_id": "b1", "expected_players": ["ann"]}))
        .send()
        .await
        .unwrap();

    let body = json_with_status(other_body, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"));
    json_with_status(other_route, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(app.db.event_count().await, 1);
}

#[tokio::test]
async fn bad_input_a_malformed_key_is_400() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();

    for key in ["", "has space", &"k".repeat(256), "tab\there"] {
        let response = app
            .post(&format!("/projects/{project}/collections"))
            .header("idempotency-key", key)
            .json(&json!({"collection_name": "x"}))
            .send()
            .await
            .unwrap();
        json_with_status(response, StatusCode::BAD_REQUEST).await;
    }
    assert_eq!(app.db.event_count().await, 0);
    json_with_status(
        create(&app, project, &"k".repeat(255), "x")
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test]
async fn idempotency_an_expired_key_runs_the_command_again() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let first = json_with_status(
        create(&app, project, "k1", "Interviews")
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let again = json_with_status(
        create(&app, project, "k1", "Interviews")
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;

    assert_ne!(
        again["collection"]["collection_id"],
        first["collection"]["collection_id"]
    );
    assert_eq!(app.db.event_count().await, 2);
}

#[tokio::test]
async fn a_refused_command_does_not_use_up_its_key() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let missing = format!("/projects/{project}/collections/{}", Uuid::new_v4());

    let refused = app
        .put(&missing)
        .header("idempotency-key", "k1")
        .json(&json!({"collection_name": "x"}))
        .send()
        .await
        .unwrap();

    json_with_status(refused, StatusCode::NOT_FOUND).await;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0);
}
