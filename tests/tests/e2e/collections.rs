//! The collection routes and every error path; bad input never appends an event.

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

pub async fn create(app: &TestApp, project: Uuid, name: &str) -> Value {
    let response = app
        .post(&format!("/projects/{project}/collections"))
        .json(&json!({"collection_name": name, "description": "what we learned"}))
        .send()
        .await
        .unwrap();
    json_with_status(response, StatusCode::CREATED).await
}

pub fn collection_path(project: Uuid, created: &Value) -> String {
    format!(
        "/projects/{project}/collections/{}",
        created["collection"]["collection_id"].as_str().unwrap()
    )
}

#[tokio::test]
async fn creating_a_collection_answers_201_with_the_legacy_row_read_back() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();

    let response = app
        .post(&format!("/projects/{project}/collections"))
        .json(&json!({"collection_name": "  Interviews  ", "description": "round one"}))
        .send()
        .await
        .unwrap();

    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body = json_with_status(response, StatusCode::CREATED).await;
    assert_eq!(body["read_source"], "legacy");
    assert_eq!(body["version"], 1);
    assert!(body["position"].as_i64().unwrap() > 0);
    let row = &body["collection"];
    assert_eq!(row["collection_name"], "Interviews");
    assert_eq!(row["description"], "round one");
    assert_eq!(row["project_id"], project.to_string());
    assert_eq!(row["is_active"], true);
    assert_eq!(location, collection_path(project, &body));
}

#[tokio::test]
async fn updating_renames_the_collection_and_bumps_the_version() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;

    let response = app
        .put(&collection_path(project, &created))
        .json(&json!({"collection_name": "Field notes", "description": "round two"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["etag"], "\"2\"");
    let body = json_with_status(response, StatusCode::OK).await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["collection"]["collection_name"], "Field notes");
    assert_eq!(body["collection"]["description"], "round two");
}

#[tokio::test]
async fn research_links_show_in_the_new_read_model() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let question = Uuid::new_v4();
    let path = collection_path(project, &created);

    let response = app
        .put(&format!("{path}/links"))
        .json(&json!({"tags": ["ux", " ux ", "pricing"], "question_ids": [question]}))
        .send()
        .await
        .unwrap();
    json_with_status(response, StatusCode::OK).await;
    let body = json_with_status(
        app.get(&format!("/v2{path}")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;

    assert_eq!(body["read_source"], "new");
    assert_eq!(body["version"], 2);
    let row = &body["collection"];
    assert_eq!(row["tags"], json!(["ux", "pricing"]));
    assert_eq!(row["linked_project_question_ids"], json!([question]));
    assert_eq!(row["linked_project_hypothesis_ids"], json!([]));
    assert_eq!(row["research_context"], "what we learned");
}

#[tokio::test]
async fn a_deleted_collection_is_gone_from_either_model_and_absent_from_the_new_shape() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);

    let deleted = json_with_status(app.delete(&path).send().await.unwrap(), StatusCode::OK).await;

    assert_eq!(deleted["version"], 2);
    assert_eq!(deleted["collection"]["is_active"], false);
    json_with_status(app.get(&path).send().await.unwrap(), StatusCode::GONE).await;
    json_with_status(
        app.get(&format!("/v2{path}")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    app.set_read_source("collections", "new").await;
    json_with_status(app.get(&path).send().await.unwrap(), StatusCode::GONE).await;
}

#[tokio::test]
async fn a_deleted_collection_refuses_update_links_and_a_second_delete_with_410() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);
    json_with_status(app.delete(&path).send().await.unwrap(), StatusCode::OK).await;
    let before = app.db.event_count().await;

    let update = app
        .put(&path)
        .json(&json!({"collection_name": "x"}))
        .send()
        .await
        .unwrap();
    let links = app
        .put(&format!("{path}/links"))
        .json(&json!({"tags": ["a"]}))
        .send()
        .await
        .unwrap();
    let again = app.delete(&path).send().await.unwrap();

    json_with_status(update, StatusCode::GONE).await;
    json_with_status(links, StatusCode::GONE).await;
    json_with_status(again, StatusCode::GONE).await;
    assert_eq!(app.db.event_count().await, before);
}

#[tokio::test]
async fn listing_pages_through_active_collections_in_id_order() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let created = create(&app, project, name).await;
        ids.push(
            created["collection"]["collection_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    create(&app, Uuid::new_v4(), "another project").await;
    let removed = format!("/projects/{project}/collections/{}", ids[1]);
    json_with_status(app.delete(&removed).send().await.unwrap(), StatusCode::OK).await;
    let base = format!("/projects/{project}/collections");

    let first = json_with_status(
        app.get(&format!("{base}?limit=2")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let next = first["next"].as_str().unwrap().to_owned();
    let second = json_with_status(
        app.get(&format!("{base}?limit=2&after={next}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    let seen: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|item| item["collection_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        seen,
        vec![ids[0].as_str(), ids[2].as_str(), ids[3].as_str()]
    );
    assert_eq!(second["next"], Value::Null);
}

#[tokio::test]
async fn listing_reads_the_new_model_when_it_is_the_read_source() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    create(&app, project, "a").await;
    app.set_read_source("collections", "new").await;

    let page = json_with_status(
        app.get(&format!("/projects/{project}/collections"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    assert_eq!(page["read_source"], "new");
    assert_eq!(page["items"][0]["collection_name"], "a");
    assert_eq!(page["items"][0]["description"], "what we learned");
    let new_shape = json_with_status(
        app.get(&format!("/v2/projects/{project}/collections"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(new_shape["items"][0]["research_context"], "what we learned");
}

#[tokio::test]
async fn a_collection_is_not_found_through_another_project() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let id = created["collection"]["collection_id"].as_str().unwrap();
    let elsewhere = format!("/projects/{}/collections/{id}", Uuid::new_v4());
    let before = app.db.event_count().await;

    let get = app.get(&elsewhere).send().await.unwrap();
    let update = app
        .put(&elsewhere)
        .json(&json!({"collection_name": "x"}))
        .send()
        .await
        .unwrap();

    json_with_status(get, StatusCode::NOT_FOUND).await;
    json_with_status(update, StatusCode::NOT_FOUND).await;
    assert_eq!(app.db.event_count().await, before);
}

#[tokio::test]
async fn unknown_collections_are_404_for_reads_and_commands() {
    let app = TestApp::spawn().await;
    let path = format!(
        "/projects/{}/collections/{}",
        Uuid::new_v4(),
        Uuid::new_v4()
    );

    json_with_status(app.get(&path).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    json_with_status(
        app.delete(&path).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(app.db.event_count().await, 0);
}

/// Sends `request` and asserts the status, a problem+json body and an unchanged log.
async fn refused(app: &TestApp, request: reqwest::RequestBuilder, status: StatusCode) -> Value {
    let before = app.db.event_count().await;
    let body = json_with_status(request.send().await.unwrap(), status).await;
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(
        app.db.event_count().await,
        before,
        "bad input appended events"
    );
    body
}

#[tokio::test]
async fn bad_input_malformed_requests_are_400_and_append_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);
    let list = format!("/projects/{project}/collections");

    let syntax = app
        .post(&list)
        .header("content-type", "application/json")
        .body("{\"name\": ");
    refused(&app, syntax, StatusCode::BAD_REQUEST).await;
    let bad_project = app
        .post("/projects/not-a-uuid/collections")
        .json(&json!({"collection_name": "x"}));
    refused(&app, bad_project, StatusCode::BAD_REQUEST).await;
    let bad_id = app.get(&format!("/projects/{project}/collections/42"));
    refused(&app, bad_id, StatusCode::BAD_REQUEST).await;
    let bad_if_match = app
        .put(&path)
        .header("if-match", "soon")
        .json(&json!({"collection_name": "x"}));
    refused(&app, bad_if_match, StatusCode::BAD_REQUEST).await;
    refused(
        &app,
        app.get(&format!("{list}?limit=0")),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &app,
        app.get(&format!("{list}?limit=201")),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &app,
        app.get(&format!("{list}?limit=many")),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &app,
        app.get(&format!("{list}?after=zzz")),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let no_content_type = app.post(&list).body("{\"name\": \"x\"}");
    refused(&app, no_content_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn bad_input_broken_rules_are_422_naming_the_field_and_append_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Interviews").await;
    let path = collection_path(project, &created);
    let list = format!("/projects/{project}/collections");

    let cases = [
        (
            app.post(&list).json(&json!({"collection_name": "   "})),
            Some("collection_name"),
        ),
        (
            app.post(&list)
                .json(&json!({"collection_name": "x".repeat(201)})),
            Some("collection_name"),
        ),
        (
            app.post(&list)
                .json(&json!({"collection_name": "x", "description": "d".repeat(10_001)})),
            Some("description"),
        ),
        (
            app.post(&list).json(&json!({"description": "no name"})),
            None,
        ),
        (app.post(&list).json(&json!({"collection_name": 7})), None),
        (
            app.post(&list)
                .json(&json!({"collection_name": "x", "colour": "red"})),
            None,
        ),
        (
            app.put(&path).json(&json!({"collection_name": ""})),
            Some("collection_name"),
        ),
        (
            app.put(&format!("{path}/links"))
                .json(&json!({"tags": (0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()})),
            Some("tags"),
        ),
        (
            app.put(&format!("{path}/links"))
                .json(&json!({"tags": ["x".repeat(65)]})),
            Some("tags"),
        ),
        (
            app.put(&format!("{path}/links"))
                .json(&json!({"question_ids": ["not-a-uuid"]})),
            None,
        ),
    ];
    for (request, field) in cases {
        let body = refused(&app, request, StatusCode::UNPROCESSABLE_ENTITY).await;
        if let Some(field) = field {
            assert_eq!(body["field"], field, "{body}");
        }
    }
}

#[tokio::test]
async fn bad_input_a_three_megabyte_body_is_413_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let huge = json!({"collection_name": "x", "description": "d".repeat(3 * 1024 * 1024)});

    let request = app
        .post(&format!("/projects/{project}/collections"))
        .json(&huge);

    refused(&app, request, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn a_poller_gets_304_until_what_the_answer_shows_changes_including_a_read_source_switch() {
    let app = TestApp::spawn().await;
    let project = Uuid::new_v4();
    let created = create(&app, project, "Polled").await;
    let id = created["collection"]["collection_id"].as_str().unwrap();
    let path = format!("/projects/{project}/collections/{id}");
    let list = format!("/projects/{project}/collections");
    let tag_of =
        |response: &reqwest::Response| response.headers()["etag"].to_str().unwrap().to_owned();
    let app = &app;
    let poll = |path: String, tag: String| async move {
        app.get(&path)
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap()
    };

    let first = app.get(&path).send().await.unwrap();
    let tag = tag_of(&first);
    assert!(tag.starts_with("\"1-"), "{tag}");
    let unchanged = poll(path.clone(), tag.clone()).await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(tag_of(&unchanged), tag);
    assert!(unchanged.bytes().await.unwrap().is_empty());
    let page = app.get(&list).send().await.unwrap();
    let page_tag = tag_of(&page);
    assert_eq!(
        poll(list.clone(), format!("W/{page_tag}")).await.status(),
        StatusCode::NOT_MODIFIED
    );

    // The GET's tag is accepted by If-Match as its version.
    let renamed = app
        .put(&path)
        .header("if-match", &tag)
        .json(&json!({"collection_name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let changed = poll(path.clone(), tag.clone()).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let renamed_tag = tag_of(&changed);
    assert!(renamed_tag.starts_with("\"2-"), "{renamed_tag}");
    assert_eq!(poll(list.clone(), page_tag).await.status(), StatusCode::OK);

    app.set_read_source("collections", "new").await;
    let switched = poll(path.clone(), renamed_tag.clone()).await;
    assert_eq!(
        switched.status(),
        StatusCode::OK,
        "same version, other shape"
    );
    assert_ne!(tag_of(&switched), renamed_tag);
    assert!(tag_of(&switched).starts_with("\"2-"));
}
