use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;

#[tokio::test]
async fn health_is_ok_while_postgres_answers() {
    let app = TestApp::spawn().await;

    let body = json_with_status(app.get("/health").send().await.unwrap(), StatusCode::OK).await;

    assert_eq!(body["database"], "up");
}

#[tokio::test]
async fn health_is_unavailable_when_the_database_cannot_be_reached() {
    let app = TestApp::spawn().await;
    app.db.pool.close().await;

    let response = app.get("/health").send().await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn commands_answer_503_with_retry_after_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    app.db.pool.close().await;

    let response = app
        .post(&format!("/projects/{}/collections", uuid::Uuid::new_v4()))
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["retry-after"], "1");
    json_with_status(response, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let app = TestApp::spawn().await;

    json_with_status(
        app.get("/nope").send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    json_with_status(
        app.delete("/health").send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}
