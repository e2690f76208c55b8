//! Stored events outlive the code: version-1 payloads, as an older release wrote them, load,
//! project, rebuild, verify and appear in the feed in the current shape.

use cutover_engine::verify::verify;
use cutover_projections::inline_projectors;
use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// One event as an older release appended it (one transaction of its own).
async fn append_v1(app: &TestApp, aggregate: (&str, &str), event_type: &str, payload: Value) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ($1, $2, 1, $3, '1.0', $4, '{\"command\": \"from an older release\"}')",
    )
    .bind(aggregate.0)
    .bind(aggregate.1)
    .bind(event_type)
    .bind(json!({ event_type: payload }))
    .execute(&app.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn version_1_events_load_project_rebuild_verify_and_feed_in_the_current_shape() {
    let app = TestApp::spawn().await;
    let (project, collection) = (Uuid::new_v4(), Uuid::new_v4());
    append_v1(
        &app,
        ("collection", &collection.to_string()),
        "CollectionCreated",
        json!({"project_id": project, "name": "Written by 0.1", "description": "old"}),
    )
    .await;
    append_v1(
        &app,
        ("prediction_batch", "week-1"),
        "BatchStarted",
        json!({"expected_players": ["ann", "bob"]}),
    )
    .await;
    append_v1(
        &app,
        ("student_subskill", "7_math_fractions_adding"),
        "AttemptRecorded",
        json!({
            "key": {"student_id": 7, "subject": "math", "skill_id": "fractions",
                    "subskill_id": "adding"},
            "attempt_id": Uuid::new_v4(), "score": 8.0, "analysis": "", "feedback": "",
            "competency": {"current_score": 5.0 * (1.0 - (1.0_f64 / 15.0).sqrt())
                               + 8.0 * (1.0_f64 / 15.0).sqrt(),
                           "credibility": (1.0_f64 / 15.0).sqrt(), "total_attempts": 1}
        }),
    )
    .await;

    // Projected: a rebuild reads them in the current shape.
    cutover_tests::rebuild(&app.db.pool, &["all"])
        .await
        .unwrap();
    let legacy = json_with_status(
        app.get(&format!("/projects/{project}/collections/{collection}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(legacy["collection"]["collection_name"], "Written by 0.1");

    // Loaded: commands on each aggregate decide on the upcast history.
    let renamed = json_with_status(
        app.put(&format!("/projects/{project}/collections/{collection}"))
            .json(&json!({"collection_name": "Renamed by now"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(renamed["version"], 2);
    json_with_status(
        app.post("/batches/week-1/completions")
            .json(&json!({"player_lookup": "bob", "predictions_count": 3}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let unknown = app
        .post("/batches/week-1/completions")
        .json(&json!({"player_lookup": "cy", "predictions_count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "the expected players of the version-1 start are known"
    );
    let second = json_with_status(
        app.post("/students/7/attempts")
            .json(
                &json!({"subject": "math", "skill_id": "fractions", "subskill_id": "adding",
                          "score": 6, "analysis": "", "feedback": ""}),
            )
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(second["competency"]["doc"]["total_attempts"], 2);

    let report = verify(&app.db.pool, &inline_projectors(), None)
        .await
        .unwrap();
    assert!(report.consistent(), "{report:?}");

    // The feed serves the current shape and says so.
    let page = json_with_status(
        app.get("/events?after=0&limit=10").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let events = page["events"].as_array().unwrap();
    let created = &events[0];
    assert_eq!(created["event_version"], "2.0");
    assert_eq!(
        created["payload"]["CollectionCreated"]["collection_name"],
        "Written by 0.1"
    );
    assert!(created["payload"]["CollectionCreated"]
        .get("name")
        .is_none());
    assert_eq!(events[1]["event_version"], "2.0");
    assert_eq!(
        events[1]["payload"]["BatchStarted"]["expected_player_lookups"],
        json!(["ann", "bob"])
    );
    assert_eq!(events[2]["event_version"], "2.0");
    assert_eq!(events[2]["payload"]["AttemptRecorded"]["max_score"], 10.0);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT event_version FROM events ORDER BY position LIMIT 3")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        ["1.0", "1.0", "1.0"],
        "stored events are never rewritten"
    );
}

#[tokio::test]
async fn an_old_payload_no_upcaster_can_read_is_a_500_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (project, collection) = (Uuid::new_v4(), Uuid::new_v4());
    append_v1(
        &app,
        ("collection", &collection.to_string()),
        "CollectionCreated",
        json!({"project_id": project, "title": "no name field"}),
    )
    .await;

    let response = app
        .put(&format!("/projects/{project}/collections/{collection}"))
        .json(&json!({"collection_name": "x"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.db.event_count().await, 1);
}
