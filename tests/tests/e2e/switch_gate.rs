//! The cutover is gated by verification and shadow reads: a read-source switch needs a clean
//! consistency report of its domain taken after the last rebuild of its projections, and enough
//! shadow reads since then with no mismatch, unless forced (recorded).

use cutover_engine::verify::verify;
use cutover_projections::inline_projectors;
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
    sqlx::query_as(
        "SELECT actor, forced, detail FROM admin_actions WHERE action = 'read_source' ORDER BY id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

async fn gated_app() -> TestApp {
    gated_app_with_collection().await.0
}

/// A server with tokens and one collection, with its path.
async fn gated_app_with_collection() -> (TestApp, String) {
    let app = TestApp::spawn_with(AppOptions {
        tokens: Some("admin:admin-token"),
        ..AppOptions::default()
    })
    .await;
    let project = Uuid::new_v4();
    let created = json_with_status(
        app.post(&format!("/projects/{project}/collections"))
            .bearer_auth("admin-token")
            .json(&json!({"collection_name": "gated"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let id = created["collection"]["collection_id"].as_str().unwrap();
    let path = format!("/projects/{project}/collections/{id}");
    (app, path)
}

async fn verify_collections(app: &TestApp) -> bool {
    verify(&app.db.pool, &inline_projectors(), Some("collections"))
        .await
        .unwrap()
        .consistent()
}

async fn shadow_window(app: &TestApp) -> Value {
    let windows = json_with_status(
        app.get("/admin/shadow")
            .bearer_auth("admin-token")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    windows
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["domain"] == "collections")
        .unwrap()
        .clone()
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
async fn a_switch_after_a_clean_verify_and_a_clean_shadow_window_succeeds_and_a_rebuild_closes_the_gate_again(
) {
    let (app, path) = gated_app_with_collection().await;
    assert!(verify_collections(&app).await);
    let without_shadow = gate(&app).await;
    assert_eq!(without_shadow["gate"]["open"], false);
    assert!(
        without_shadow["gate"]["reason"]
            .as_str()
            .unwrap()
            .contains("cutover shadow collections"),
        "{without_shadow}"
    );
    app.shadow_reads("collections", &path, 3, Some("admin-token"))
        .await;
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

#[tokio::test]
async fn a_row_tampered_in_the_other_model_is_caught_by_the_next_shadow_read_and_the_switch_waits_for_a_clean_window_after_a_repair(
) {
    let (app, path) = gated_app_with_collection().await;
    assert!(verify_collections(&app).await);
    app.shadow_reads("collections", &path, 2, Some("admin-token"))
        .await;
    sqlx::query("UPDATE project_collections SET collection_name = 'tampered'")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let answered = json_with_status(
        app.get(&path)
            .bearer_auth("admin-token")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    assert_eq!(
        answered["collection"]["collection_name"], "gated",
        "the client's answer is the read source's"
    );
    let mut window = Value::Null;
    for _ in 0..100 {
        window = shadow_window(&app).await;
        if window["mismatches"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(window["mismatches"], 1, "{window}");
    assert_eq!(window["reads"], 3);
    let mismatch = &window["recent"][0];
    assert_eq!(
        mismatch["route"],
        "/projects/{project_id}/collections/{collection_id}"
    );
    assert_eq!(mismatch["path"], path);
    assert_eq!(mismatch["served_source"], "legacy");
    assert_eq!(
        mismatch["served"]["body"]["collection"]["collection_name"],
        "gated"
    );
    assert_eq!(
        mismatch["other"]["body"]["collection"]["collection_name"],
        "tampered"
    );
    let metrics = app
        .get("/metrics")
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|line| line
            == "cutover_shadow_mismatches_total{domain=\"collections\",\
                route=\"/projects/{project_id}/collections/{collection_id}\"} 1"),
        "{metrics}"
    );
    let closed = gate(&app).await;
    assert!(
        closed["gate"]["reason"]
            .as_str()
            .unwrap()
            .contains("did not match"),
        "{closed}"
    );
    json_with_status(
        switch(&app, json!({"source": "new"})).await,
        StatusCode::CONFLICT,
    )
    .await;

    let id = path.rsplit('/').next().unwrap();
    json_with_status(
        app.post("/admin/projections/project_collections/repair")
            .bearer_auth("admin-token")
            .json(&json!({"aggregates": [id]}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(verify_collections(&app).await);
    let after_repair = shadow_window(&app).await;
    assert_eq!(
        (&after_repair["reads"], &after_repair["mismatches"]),
        (&json!(0), &json!(0)),
        "a repair starts a new window: {after_repair}"
    );
    json_with_status(
        switch(&app, json!({"source": "new"})).await,
        StatusCode::CONFLICT,
    )
    .await;
    app.shadow_reads("collections", &path, 2, Some("admin-token"))
        .await;
    json_with_status(switch(&app, json!({"source": "new"})).await, StatusCode::OK).await;
    assert_eq!(source(&app).await, "new");
}

#[tokio::test]
async fn bad_input_shadow_settings_out_of_range_or_of_no_domain_are_refused_and_change_nothing() {
    let app = gated_app().await;
    let put = |domain: &str, body: Value| {
        app.put(&format!("/admin/shadow/{domain}"))
            .bearer_auth("admin-token")
            .json(&body)
            .send()
    };

    let cases = [
        (
            put("collections", json!({"fraction": 0})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            put("collections", json!({"fraction": 1.5})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            put("collections", json!({"min_reads": -1})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            put("collections", json!({"fraction": "all"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            put("collections", json!({"extra": 1})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (put("nope", json!({})).await, StatusCode::NOT_FOUND),
    ];

    for (response, status) in cases {
        json_with_status(response.unwrap(), status).await;
    }
    assert_eq!(shadow_window(&app).await["shadow"], Value::Null);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_actions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
}
