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
        .json(&serde_json::json!({"collection_name": "x"}))
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

#[tokio::test]
async fn the_openapi_description_covers_every_route_and_needs_no_token() {
    let app = TestApp::spawn_with(cutover_tests::AppOptions {
        tokens: Some("admin:a"),
        ..cutover_tests::AppOptions::default()
    })
    .await;

    let spec = json_with_status(
        app.get("/openapi.json").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;

    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths: Vec<&String> = spec["paths"].as_object().unwrap().keys().collect();
    for route in [
        "/health",
        "/projects/{project_id}/collections",
        "/projects/{project_id}/collections/{collection_id}",
        "/projects/{project_id}/collections/{collection_id}/links",
        "/batches",
        "/batches/{batch_id}",
        "/batches/{batch_id}/completions",
        "/batches/{batch_id}/completions/bulk",
        "/students/{student_id}/attempts",
        "/students/{student_id}/reviews",
        "/students/{student_id}/competencies",
        "/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}",
        "/analytics/skills",
        "/events",
        "/events/stream",
        "/admin/projections",
        "/admin/projections/{name}",
        "/admin/projections/{name}/rebuild",
        "/admin/projections/{name}/retire",
        "/admin/projections/{name}/repair",
        "/admin/jobs/{id}",
        "/admin/read-sources",
        "/admin/read-sources/{domain}",
        "/admin/read-sources/{domain}/gate",
        "/admin/shadow",
        "/admin/shadow/{domain}",
        "/admin/follows",
        "/admin/follows/{domain}",
        "/admin/follows/{domain}/handover",
        "/v2/projects/{project_id}/collections",
        "/v2/projects/{project_id}/collections/{collection_id}",
        "/v2/batches/{batch_id}",
        "/v2/batches/{batch_id}/completions",
        "/v2/students/{student_id}/competencies",
        "/v2/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}",
        "/admin/consistency",
        "/admin/consistency/latest",
        "/admin/activity",
        "/metrics",
    ] {
        assert!(
            paths.iter().any(|p| *p == route),
            "{route} is not described"
        );
    }
    assert_eq!(paths.len(), 39);
    let create = &spec["paths"]["/projects/{project_id}/collections"]["post"];
    assert!(create["responses"]["422"]["content"]["application/problem+json"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    assert!(spec["components"]["schemas"]["CollectionBody"].is_object());
}
