//! The event log's layout: postgres-es's table, plus position, transaction id and time.

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::EventStore as _;
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_tests::{json_with_status, TestApp};
use postgres_es::PostgresEventRepository;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::collections::{collection_path, create};

#[tokio::test]
async fn postgres_es_reads_the_log_that_cutover_writes() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let id = created["collection"]["collection_id"].as_str().unwrap();
    json_with_status(
        app.delete(&collection_path(project, &created))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let store: PersistedEventStore<PostgresEventRepository, Collection> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(app.db.pool.clone()));

    let envelopes = store.load_events(id).await.unwrap();

    let events: Vec<CollectionEvent> = envelopes.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(
        events,
        vec![
            CollectionEvent::CollectionCreated {
                project_id: project,
                collection_name: "Interviews".into(),
                description: "what we learned".into(),
            },
            CollectionEvent::CollectionDeleted { updated_at: None },
        ]
    );
    assert_eq!(envelopes[1].sequence, 2);
}

#[tokio::test]
async fn each_event_records_its_position_transaction_and_command() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let clock = "SELECT clock_timestamp()::text";
    let before: String = sqlx::query_scalar(clock)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let first = create(&app, project, "a").await;
    let second = create(&app, project, "b").await;
    let after: String = sqlx::query_scalar(clock)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    let rows: Vec<(i64, String, String, serde_json::Value, bool)> = sqlx::query_as(
        "SELECT position, transaction_id::text, event_type, metadata,
                recorded_at BETWEEN $1::timestamptz AND $2::timestamptz
                AND recorded_at >= max(recorded_at) OVER (ORDER BY position
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
           FROM events ORDER BY transaction_id, position",
    )
    .bind(before)
    .bind(after)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();

    assert_eq!(rows.len(), 2);
    assert_eq!(first["position"], rows[0].0);
    assert_eq!(second["position"], rows[1].0);
    assert_ne!(rows[0].1, rows[1].1, "each command is its own transaction");
    assert_eq!(rows[0].2, "CollectionCreated");
    assert_eq!(rows[0].3, json!({"command": "CreateCollection"}));
    assert!(
        rows[0].4 && rows[1].4,
        "recorded while its command ran, in log order"
    );
}
