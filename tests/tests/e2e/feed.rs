//! The event feed: pages in log order, resumable, never skipping a late commit; and the live
//! SSE stream.

use std::time::Duration;

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::collections::create;

/// One page of the feed: its events and `next`.
async fn page(app: &TestApp, after: i64, limit: i64, filter: &str) -> (Vec<Value>, i64) {
    let page = json_with_status(
        app.get(&format!("/events?after={after}&limit={limit}{filter}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    (
        page["events"].as_array().unwrap().clone(),
        page["next"].as_i64().unwrap(),
    )
}

/// Follows the feed from `after` with pages of `limit` until `expected` events have come.
/// Transactions of other tests in the cluster can hold the safe horizon back for a moment, so
/// an empty page means "look again", as it does for any consumer.
async fn drain(
    app: &TestApp,
    mut after: i64,
    limit: i64,
    filter: &str,
    expected: usize,
) -> (Vec<Value>, i64) {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < expected {
        assert!(tokio::time::Instant::now() < deadline, "the feed stalled");
        let (batch, next) = page(app, after, limit, filter).await;
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        after = next;
        events.extend(batch);
    }
    (events, after)
}

fn positions(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_feed_pages_through_the_log_in_order_and_resumes_from_next() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    for name in ["a", "b", "c", "d", "e"] {
        create(&app, project, name).await;
    }
    app.post("/batches")
        .json(&json!({"batch_id": "b1", "expected_players": ["ann"]}))
        .send()
        .await
        .unwrap();

    let expected = usize::try_from(app.db.event_count().await).unwrap();
    let (events, next) = drain(&app, 0, 2, "", expected).await;

    let in_log_order: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM events ORDER BY transaction_id, position")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(positions(&events), in_log_order);
    assert_eq!(next, *in_log_order.last().unwrap());
    let first = &events[0];
    assert_eq!(first["aggregate_type"], "collection");
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["event_type"], "CollectionCreated");
    assert_eq!(first["event_version"], "2.0");
    assert_eq!(
        first["payload"]["CollectionCreated"]["collection_name"],
        "a"
    );
    assert_eq!(first["metadata"]["command"], "CreateCollection");
    assert!(first["recorded_at"].is_string());
    let (only_batches, _) = drain(&app, 0, 10, "&aggregate_type=prediction_batch", 1).await;
    assert_eq!(only_batches.len(), 1);
    assert_eq!(only_batches[0]["event_type"], "BatchStarted");
}

/// A writer that has taken a position and holds its transaction open: the transaction and the
/// position.
pub async fn hold_a_late_commit(
    app: &TestApp,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, i64) {
    let mut slow = app.db.pool.begin().await.unwrap();
    let late: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('probe', 'slow', 1, 'Probe', '1.0', '{}', '{}') RETURNING position",
    )
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    (slow, late)
}

#[tokio::test]
async fn gap_free_global_order_the_feed_never_skips_an_event_that_commits_late() {
    let app = TestApp::spawn().await;
    create(&app, Uuid::new_v4(), "before").await;
    // A writer takes a position and holds its transaction open ...
    let (slow, late) = hold_a_late_commit(&app).await;
    // ... while another command takes a later position and commits first.
    let early = create(&app, Uuid::new_v4(), "after").await["position"]
        .as_i64()
        .unwrap();
    assert!(early > late, "the later position committed first");

    let (seen_while_open, next) = page(&app, 0, 10, "").await;
    slow.commit().await.unwrap();
    let (seen_after, _) = drain(&app, next, 10, "", 3 - seen_while_open.len()).await;

    assert!(
        !positions(&seen_while_open).contains(&early),
        "a position after an uncommitted one was served before it"
    );
    let all: Vec<i64> = positions(&seen_while_open)
        .into_iter()
        .chain(positions(&seen_after))
        .collect();
    assert!(all.contains(&late), "the late commit was skipped");
    assert!(all.contains(&early));
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn bad_feed_queries_are_400_and_an_unknown_position_404() {
    let app = TestApp::spawn().await;
    create(&app, Uuid::new_v4(), "a").await;

    for query in [
        "after=-1",
        "after=x",
        "limit=0",
        "limit=1001",
        "aggregate_type=",
        "aggregate_type=collection,,batch",
        "aggregate_type=has%20space",
        "colour=red",
    ] {
        json_with_status(
            app.get(&format!("/events?{query}")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    for path in ["/events?after=999", "/events/stream?after=999"] {
        json_with_status(app.get(path).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    }
}

/// Reads SSE messages from `response` until `count` have arrived (or the time runs out),
/// as (id, data) pairs.
async fn read_sse(response: &mut reqwest::Response, count: usize) -> Vec<(i64, Value)> {
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while messages.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("the stream delivered in time")
            .unwrap()
            .expect("the stream stayed open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in message.lines() {
                if let Some(v) = line
                    .strip_prefix("id: ")
                    .or_else(|| line.strip_prefix("id:"))
                {
                    id = v.trim().parse::<i64>().ok();
                }
                if let Some(v) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    data = serde_json::from_str::<Value>(v).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                messages.push((id, data));
            }
        }
    }
    messages
}

#[tokio::test]
async fn the_stream_delivers_an_event_appended_after_the_client_connected() {
    let app = TestApp::spawn().await;
    let first = create(&app, Uuid::new_v4(), "first").await["position"]
        .as_i64()
        .unwrap();
    let mut stream = app
        .get(&format!("/events/stream?after={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = create(&app, Uuid::new_v4(), "second").await["position"]
        .as_i64()
        .unwrap();
    let messages = read_sse(&mut stream, 1).await;

    assert_eq!(messages[0].0, second);
    assert_eq!(messages[0].1["position"], second);
    assert_eq!(
        messages[0].1["payload"]["CollectionCreated"]["collection_name"],
        "second"
    );
}

#[tokio::test]
async fn the_stream_resumes_after_last_event_id() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for name in ["a", "b", "c"] {
        created.push(
            create(&app, Uuid::new_v4(), name).await["position"]
                .as_i64()
                .unwrap(),
        );
    }

    let mut stream = app
        .get("/events/stream?after=0")
        .header("last-event-id", created[0].to_string())
        .send()
        .await
        .unwrap();
    let messages = read_sse(&mut stream, 2).await;

    let ids: Vec<i64> = messages.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, created[1..]);
}
