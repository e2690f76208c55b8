//! What a body must be to be read: exactly the documented media type, and names and tags with
//! something visible in them.

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::collections::{collection_path, create};

#[tokio::test]
async fn bad_input_a_body_that_is_not_exactly_application_json_is_415_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let list = format!("/projects/{}/collections", Uuid::new_v4());
    let post = |content_type: &'static str| {
        app.post(&list)
            .header("content-type", content_type)
            .body(json!({"collection_name": "typed"}).to_string())
            .send()
    };

    for refused in [
        "application/problem+json",
        "application/json-patch+json",
        "text/plain",
        "application/json; charset=latin1",
        "application/json; charset=utf-8; version=2",
    ] {
        let before = app.db.event_count().await;
        let response = post(refused).await.unwrap();
        let problem = json_with_status(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        assert_eq!(problem["type"], "/problems/unsupported-media-type");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("application/json") && detail.contains("charset=utf-8"),
            "{refused}: the answer says what is accepted: {detail}"
        );
        assert_eq!(app.db.event_count().await, before, "{refused} appended");
    }
    for accepted in [
        "application/json",
        "APPLICATION/JSON",
        "Application/JSON; Charset=UTF-8",
        "application/json;charset=\"utf-8\"",
    ] {
        json_with_status(post(accepted).await.unwrap(), StatusCode::CREATED).await;
    }
}

#[tokio::test]
async fn bad_input_a_name_or_tag_of_only_invisible_characters_is_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let path = collection_path(project, &create(&app, project, "Interviews").await);
    let list = format!("/projects/{project}/collections");
    let invisible = "\u{200b}";

    let cases = [
        (
            app.post(&list).json(&json!({"collection_name": invisible})),
            "collection_name",
        ),
        (
            app.put(&path)
                .json(&json!({"collection_name": " \u{200d}\u{feff} "})),
            "collection_name",
        ),
        (
            app.put(&format!("{path}/links"))
                .json(&json!({"tags": ["ok", "\u{2060}"]})),
            "tags",
        ),
    ];
    let before = app.db.event_count().await;
    for (request, field) in cases {
        let problem = json_with_status(
            request.send().await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["field"], field, "{problem}");
    }
    assert_eq!(app.db.event_count().await, before, "bad input appended");
}
