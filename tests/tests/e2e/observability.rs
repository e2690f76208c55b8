//! What operators watch: `/metrics`, the request id every answer carries, the activity history.

use cutover_tests::{json_with_status, AppOptions, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_the_command_path() {
    let app = TestApp::spawn().await;
    let path = format!("/projects/{}/collections", Uuid::new_v4());
    let create = |key: &'static str| {
        app.post(&path)
            .header("idempotency-key", key)
            .json(&json!({"collection_name": "Interviews"}))
    };
    json_with_status(create("k1").send().await.unwrap(), StatusCode::CREATED).await;
    json_with_status(create("k1").send().await.unwrap(), StatusCode::CREATED).await;
    let refused = app
        .post(&path)
        .json(&json!({"collection_name": ""}))
        .send()
        .await
        .unwrap();
    json_with_status(refused, StatusCode::UNPROCESSABLE_ENTITY).await;

    let response = app.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let route = r#"method="POST",route="/projects/{project_id}/collections""#;
    assert_eq!(
        app.metric(&format!(
            "cutover_http_requests_total{{{route},status=\"201\"}}"
        ))
        .await,
        2.0
    );
    assert_eq!(
        app.metric(&format!(
            "cutover_http_requests_total{{{route},status=\"422\"}}"
        ))
        .await,
        1.0
    );
    assert_eq!(
        app.metric(&format!(
            "cutover_http_request_duration_seconds_count{{{route}}}"
        ))
        .await,
        3.0
    );
    assert_eq!(app.metric("cutover_idempotent_replays_total").await, 1.0);
    assert_eq!(
        app.metric("cutover_events_appended_total").await,
        1.0,
        "the replay and the refusal appended nothing"
    );
    assert_eq!(
        app.metric(r#"cutover_projection_lag_events{projection="project_collections"}"#)
            .await,
        0.0,
        "an inline projection is never behind"
    );
    let max = app.metric("cutover_db_pool_max_connections").await;
    let in_use = app
        .metric(r#"cutover_db_pool_connections{state="in_use"}"#)
        .await;
    let idle = app
        .metric(r#"cutover_db_pool_connections{state="idle"}"#)
        .await;
    assert!(
        max >= 1.0 && in_use + idle >= 1.0 && in_use + idle <= max,
        "{in_use} + {idle} of {max}"
    );
}

/// The series of a scrape: every sample line.
async fn series(app: &TestApp, token: &str) -> Vec<String> {
    let text = app
        .get("/metrics")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| Some(line.rsplit_once(' ')?.0.to_owned()))
        .collect()
}

#[tokio::test]
async fn clients_without_a_token_cannot_add_metric_series_with_odd_methods_and_paths() {
    let app = TestApp::spawn_with(AppOptions {
        tokens: Some("read:r-token"),
        ..AppOptions::default()
    })
    .await;
    let odd = |i: usize| {
        let method = reqwest::Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let known = format!("/projects/{}/collections", Uuid::new_v4());
        [
            app.client.request(method.clone(), app.url(&known)),
            app.client
                .request(method, app.url(&format!("/nowhere/{i}"))),
            app.get(&format!("/nowhere/{i}/{}", Uuid::new_v4())),
            app.post(&known)
                .json(&json!({"collection_name": "no token"})),
        ]
    };
    for request in odd(0) {
        request.send().await.unwrap();
    }
    // (The first scrape adds the series of its own route.)
    series(&app, "r-token").await;
    let before = series(&app, "r-token").await;

    for i in 1..=60 {
        for request in odd(i) {
            request.send().await.unwrap();
        }
    }

    let after = series(&app, "r-token").await;
    assert_eq!(before.len(), after.len(), "{after:#?}");
    assert!(
        after.iter().any(|s| s.contains(r#"method="other""#))
            && after.iter().any(|s| s.contains(r#"route="unmatched""#)),
        "unknown methods and paths fall into their fixed buckets: {after:#?}"
    );
    assert_eq!(app.db.event_count().await, 0);
}

#[tokio::test]
async fn metrics_answer_the_prometheus_text_format_when_asked_and_promtool_accepts_it() {
    let app = TestApp::spawn().await;
    json_with_status(
        app.post(&format!("/projects/{}/collections", Uuid::new_v4()))
            .json(&json!({"collection_name": "Interviews"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;

    let response = app
        .get("/metrics")
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .unwrap();

    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# HELP cutover_http_requests_total "),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    let checked = cutover_tests::promtool_check_metrics(&text);
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_keeps_the_clients() {
    let app = TestApp::spawn_with(AppOptions {
        tokens: Some("read:r-token"),
        ..AppOptions::default()
    })
    .await;

    let refused = app.get("/admin/projections").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let made = refused.headers()["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(made).is_ok(), "{made} is not a UUID");

    let missing = app
        .get("/no/such/route")
        .header("x-request-id", "client-chosen-42")
        .bearer_auth("r-token")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["x-request-id"], "client-chosen-42");
}

#[tokio::test]
async fn the_latest_consistency_report_is_kept_and_served() {
    let app = TestApp::spawn().await;
    let none = app.get("/admin/consistency/latest").send().await.unwrap();
    json_with_status(none, StatusCode::NOT_FOUND).await;

    let ran = json_with_status(
        app.get("/admin/consistency").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let latest = json_with_status(
        app.get("/admin/consistency/latest").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(latest["consistent"], true);
    assert_eq!(latest["report"]["rows_compared"], ran["rows_compared"]);
    assert!(latest["checked_at"].is_string());
}

#[tokio::test]
async fn json_logs_carry_each_requests_id() {
    let db = cutover_tests::TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(cutover_tests::binary("cutover-api"))
        .args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut answered = None;
    for _ in 0..300 {
        if let Ok(response) = client
            .get(format!("{base}/health"))
            .header("x-request-id", "trace-me-7")
            .send()
            .await
        {
            answered = Some(response.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answered, Some(StatusCode::OK));
    server.start_kill().unwrap();
    let output = server.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    let line = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["span"]["request_id"] == "trace-me-7")
        .unwrap_or_else(|| panic!("no JSON log line with the request id in:\n{logs}"));
    assert_eq!(line["span"]["path"], "/health");
    assert!(line["fields"]["status"].is_number() || line["fields"]["message"].is_string());
}

#[tokio::test]
async fn the_console_and_docs_pages_need_no_token_but_their_data_does() {
    let app = TestApp::spawn_with(AppOptions {
        tokens: Some("read:r-token"),
        ..AppOptions::default()
    })
    .await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/docs", "text/html"),
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
    ] {
        let response = app.get(path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
    }
    let data = app.get("/admin/projections").send().await.unwrap();
    json_with_status(data, StatusCode::UNAUTHORIZED).await;
    let metrics = app.get("/metrics").send().await.unwrap();
    json_with_status(metrics, StatusCode::UNAUTHORIZED).await;
}
