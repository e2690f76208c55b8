//! The cutover is gated by verification: a read-source switch needs a clean consistency report
//! of its domain taken after the last rebuild of its projections, unless forced (recorded).

use cutover_projections::inline_projectors;
use cutover_projections::verify::verify;
use cutover_tests::{json_with_status, AppOptions, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

async fn switch(app: &TestApp, body: Value) -> reqwest::Response {
    app.put("/admin/read-sources/collections")
        .bearer_auth("admin-token")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn gate(app: &TestApp) -> Value {
    json_with_status(
        app.get("/admin/read-sources/collections/gate")
            .bearer_auth("admin-token")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await
}

async fn source(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT source FROM read_sources WHERE domain = 'collections'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn actions(app: &TestApp) -> Vec<(String, bool, Value)> {
    sqlx::query_as("SELECT actor, forced, detail FROM admin_actions ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

async fn gated_app() -> TestApp {
    let app = TestApp::spawn_with(AppOptions {
        tokens: Some("admin:admin-token"),
        ..AppOptions::default()
    })
    .await;
    json_with_status(
        app.post(&format!("/projects/{}/collections", Uuid::new_v4()))
            .bearer_auth("admin-token")
            .json(&json!({"collection_name": "gated"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    app
}

#[tokio::test]
async fn a_switch_without_a_consistency_report_is_refused_with_409_and_changes_nothing() {
    let app = gated_app().await;

    let refused = json_with_status(
        switch(&app, json!({"source": "new"})).await,
        StatusCode::CONFLICT,
    )
    .await;

    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("no consistency report of collections")
            && detail.contains("cutover verify collections"),
        "{detail}"
    );
    assert_eq!(source(&app).await, "legacy");
    assert!(actions(&app).await.is_empty());
    assert_eq!(gate(&app).await["gate"]["open"], false);
}

#[tokio::test]
async fn a_switch_after_a_clean_verify_succeeds_and_a_rebuild_closes_the_gate_again() {
    let app = gated_app().await;
    assert!(
        verify(&app.db.pool, &inline_projectors(), Some("collections"))
            .await
            .unwrap()
            .consistent()
    );
    assert_eq!(gate(&app).await["gate"]["open"], true);

    let switched =
        json_with_status(switch(&app, json!({"source": "new"})).await, StatusCode::OK).await;

    assert_eq!(switched["forced"], false);
    assert_eq!(source(&app).await, "new");
    let recorded = actions(&app).await;
    assert_eq!(recorded.len(), 1);
    assert!(!recorded[0].1);
    cutover_tests::rebuild(&app.db.pool, &["collections"])
        .await
        .unwrap();
    let closed = gate(&app).await;
    assert_eq!(closed["gate"]["open"], false);
    assert!(
        closed["gate"]["reason"]
            .as_str()
            .unwrap()
            .contains("older than the last rebuild"),
        "{closed}"
    );
    json_with_status(
        switch(&app, json!({"source": "legacy"})).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(source(&app).await, "new");
}

#[tokio::test]
async fn a_report_with_differences_keeps_the_gate_closed() {
    let app = gated_app().await;
    sqlx::query("UPDATE project_collections SET research_context = 'tampered'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert!(
        !verify(&app.db.pool, &inline_projectors(), Some("collections"))
            .await
            .unwrap()
            .consistent()
    );

    let refused = json_with_status(
        switch(&app, json!({"source": "new"})).await,
        StatusCode::CONFLICT,
    )
    .await;

    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("found differences"),
        "{refused}"
    );
    assert_eq!(source(&app).await, "legacy");
}

#[tokio::test]
async fn a_forced_switch_is_made_and_recorded_with_who_and_when() {
    let app = gated_app().await;

    let forced = json_with_status(
        switch(&app, json!({"source": "new", "force": true})).await,
        StatusCode::OK,
    )
    .await;

    assert_eq!(forced["forced"], true);
    assert_eq!(source(&app).await, "new");
    let recorded = actions(&app).await;
    assert_eq!(recorded.len(), 1);
    let (actor, was_forced, detail) = &recorded[0];
    assert!(
        actor.starts_with("api:admin token ") && !actor.contains("admin-token"),
        "{actor}"
    );
    assert!(was_forced);
    assert_eq!(detail["source"], "new");
    assert_eq!(detail["gate"]["open"], false);
    let last = &gate(&app).await["last_switch"];
    assert_eq!(last["forced"], true);
    assert_eq!(&last["actor"], actor);
    assert!(last["at"].is_string());
}
