//! The cutover nobody sees: a route's answer is the contract of the client who called it. The
//! old API's routes answer the same bodies (but for `read_source`) whether the legacy or the new
//! model serves them, and after the legacy projections are retired; every command answers with
//! the same representation as the GET of what it wrote.

use std::collections::BTreeMap;

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const DOMAINS: [&str; 3] = ["collections", "batches", "competencies"];
const LEGACY_PROJECTIONS: [&str; 3] = ["collections", "batch_state", "legacy_competencies"];

/// An answer as a client compares it: the status and the body without `read_source`.
async fn read(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).send().await.unwrap();
    let status = response.status().as_u16();
    let mut body: Value = response.json().await.unwrap();
    if let Some(body) = body.as_object_mut() {
        body.remove("read_source");
    }
    (status, body)
}

async fn read_all(app: &TestApp, paths: &[String]) -> BTreeMap<String, (u16, Value)> {
    let mut answers = BTreeMap::new();
    for path in paths {
        answers.insert(path.clone(), read(app, path).await);
    }
    answers
}

/// What a client's code sees of an answer: its fields and their types, not their values.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| (name.clone(), shape(value)))
            .collect(),
        Value::Array(items) => json!([items.first().map(shape)]),
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
    }
}

/// Sends a command and checks that its answer shows what the GET of `resource` shows then
/// (`key` names what it wrote, `None` when that GET shows it otherwise); returns the answer
/// without `read_source`.
async fn command(
    app: &TestApp,
    request: reqwest::RequestBuilder,
    status: StatusCode,
    resource: &str,
    key: Option<&str>,
) -> Value {
    let mut answer = json_with_status(request.send().await.unwrap(), status).await;
    let (read_status, read) = read(app, resource).await;
    if read_status == 200 {
        if let Some(key) = key {
            assert_eq!(
                answer[key], read[key],
                "{resource}: the answer is its GET's"
            );
            assert_eq!(answer["version"], read["version"], "{resource}");
        }
    } else {
        assert_eq!(
            read_status, 410,
            "{resource}: only a deleted collection reads otherwise"
        );
    }
    if let Some(body) = answer.as_object_mut() {
        body.remove("read_source");
    }
    answer
}

/// Creates a collection and checks that the answer shows what its GET shows; returns its path.
async fn create(app: &TestApp, list: &str, body: Value) -> String {
    let created = app.post(list).json(&body).send().await.unwrap();
    let created = json_with_status(created, StatusCode::CREATED).await;
    let id = created["collection"]["collection_id"].as_str().unwrap();
    let path = format!("{list}/{id}");
    let (status, read) = read(app, &path).await;
    assert_eq!(status, 200);
    assert_eq!(created["collection"], read["collection"], "{path}");
    assert_eq!(created["version"], read["version"], "{path}");
    path
}

/// Every command of every domain, as an old client sends them; returns the GET paths of what
/// it wrote and the shapes of the commands' answers. `tag` and `student` keep what one run
/// writes apart from another's.
async fn old_client_flow(app: &TestApp, tag: &str, student: i64) -> (Vec<String>, Vec<Value>) {
    let mut shapes = Vec::new();
    let project = Uuid::new_v4();
    let list = format!("/projects/{project}/collections");
    let one = create(
        app,
        &list,
        json!({"collection_name": "Interview notes", "description": "Round one"}),
    )
    .await;
    shapes.push(shape(
        &command(
            app,
            app.put(&one)
                .json(&json!({"collection_name": "Renamed", "description": null})),
            StatusCode::OK,
            &one,
            Some("collection"),
        )
        .await,
    ));
    shapes.push(shape(
        &command(
            app,
            app.put(&format!("{one}/links"))
                .json(&json!({"tags": ["ux"], "question_ids": [Uuid::new_v4()]})),
            StatusCode::OK,
            &one,
            Some("collection"),
        )
        .await,
    ));
    // The README's refusals: a stale If-Match and a broken rule, answered alike from either
    // model and changing nothing.
    let stale = app
        .put(&one)
        .header("if-match", "\"1\"")
        .json(&json!({"collection_name": "Stale"}))
        .send()
        .await
        .unwrap();
    json_with_status(stale, StatusCode::PRECONDITION_FAILED).await;
    let broken = app.post(&list).json(&json!({"collection_name": "  "}));
    json_with_status(
        broken.send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let gone = create(app, &list, json!({"name": "Short-lived"})).await;
    shapes.push(shape(
        &command(app, app.delete(&gone), StatusCode::OK, &gone, None).await,
    ));

    let batch = format!("/batches/{tag}-b");
    shapes.push(shape(&command(
        app,
        app.post("/batches").json(
            &json!({"batch_id": format!("{tag}-b"), "expected_players": ["zed", "amy", "bo", "cy"]}),
        ),
        StatusCode::CREATED,
        &batch,
        Some("batch"),
    )
    .await));
    let completions = format!("{batch}/completions");
    for status in [StatusCode::CREATED, StatusCode::OK] {
        let answer = command(
            app,
            app.post(&completions)
                .json(&json!({"player_lookup": "zed", "predictions_count": 4})),
            status,
            &batch,
            None,
        )
        .await;
        let (_, listed) = read(app, &completions).await;
        assert_eq!(
            json!([answer["completion"]]),
            listed["items"],
            "a completion answers with what it wrote, as its list shows it"
        );
        shapes.push(shape(&answer));
    }
    let bulk = command(
        app,
        app.post(&format!("{completions}/bulk"))
            .json(&json!({"completions": [
                {"player_lookup": "cy", "predictions_count": 0},
                {"player_lookup": "amy", "predictions_count": 2},
                {"player_lookup": "bo", "predictions_count": 9},
            ]})),
        StatusCode::CREATED,
        &batch,
        None,
    )
    .await;
    let (_, listed) = read(app, &format!("{completions}?limit=3")).await;
    assert_eq!(
        bulk["completions"], listed["items"],
        "amy, bo and cy, by lookup"
    );
    shapes.push(shape(&bulk));

    let competency = format!("/students/{student}/competencies/math/{tag}/adding");
    for score in [8.0, 6.5] {
        shapes.push(shape(
            &command(
                app,
                app.post(&format!("/students/{student}/attempts"))
                    .json(&json!({
                        "subject": "math", "skill_id": tag, "subskill_id": "adding", "score": score,
                        "analysis": "carried the one", "feedback": "good"
                    })),
                StatusCode::CREATED,
                &competency,
                Some("competency"),
            )
            .await,
        ));
    }
    shapes.push(shape(&command(
        app,
        app.post(&format!("/students/{student}/reviews"))
            .json(&json!({
                "subject": "math", "skill_id": tag, "subskill_id": "adding", "problem_id": "p-1",
                "full_review": {"observation": {}, "analysis": {}, "evaluation": {"score": 7},
                                "feedback": {}},
                "score": 7
            })),
        StatusCode::CREATED,
        &competency,
        None,
    )
    .await));

    let paths = vec![
        one,
        gone,
        list.clone(),
        format!("{list}?limit=1"),
        batch,
        completions.clone(),
        format!("{completions}?limit=2&after=amy"),
        competency,
        format!("/students/{student}/competencies"),
    ];
    (paths, shapes)
}

async fn switch_all(app: &TestApp, source: &str) {
    for domain in DOMAINS {
        app.set_read_source(domain, source).await;
    }
}

#[tokio::test]
async fn every_old_route_answers_the_same_from_legacy_from_new_and_with_legacy_retired() {
    let app = TestApp::spawn().await;
    let (mut paths, legacy_shapes) = old_client_flow(&app, "one", 41).await;
    let legacy = read_all(&app, &paths).await;

    switch_all(&app, "new").await;
    let new = read_all(&app, &paths).await;
    assert_eq!(new, legacy, "the switch changes no answer");
    let (more, new_shapes) = old_client_flow(&app, "two", 42).await;
    assert_eq!(
        new_shapes, legacy_shapes,
        "commands answer the same fields from either model"
    );
    paths.extend(more);
    let new = read_all(&app, &paths).await;
    switch_all(&app, "legacy").await;
    assert_eq!(
        read_all(&app, &paths).await,
        new,
        "what was written under the new source reads the same from the legacy model"
    );

    switch_all(&app, "new").await;
    for projection in LEGACY_PROJECTIONS {
        json_with_status(
            app.post(&format!("/admin/projections/{projection}/retire"))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
    }
    assert_eq!(
        read_all(&app, &paths).await,
        new,
        "retiring the legacy projections changes no answer"
    );
    let (_, retired_shapes) = old_client_flow(&app, "three", 43).await;
    assert_eq!(retired_shapes, legacy_shapes);
}

#[tokio::test]
async fn the_new_shape_is_served_from_the_new_model_on_the_v2_routes_whatever_the_source() {
    let app = TestApp::spawn().await;
    let (paths, _) = old_client_flow(&app, "v2", 44).await;
    let project_list = &paths[2];
    let new_paths = [
        format!("/v2{}", paths[0]),
        format!("/v2{project_list}"),
        format!("/v2{}", paths[4]),
        format!("/v2{}", paths[5]),
        format!("/v2{}", paths[7]),
        format!("/v2{}", paths[8]),
    ];

    let under_legacy = read_all(&app, &new_paths).await;
    switch_all(&app, "new").await;
    let under_new = read_all(&app, &new_paths).await;

    assert_eq!(under_legacy, under_new);
    let collection = &under_new[&new_paths[0]].1["collection"];
    assert_eq!(collection["research_context"], "");
    assert_eq!(collection["tags"], json!(["ux"]));
    assert!(collection.get("collection_name").is_none(), "{collection}");
    let (status, gone) = read(&app, &format!("/v2{}", paths[1])).await;
    assert_eq!(
        status, 404,
        "the new shape lists no deleted collection: {gone}"
    );
    let batch = &under_new[&new_paths[2]].1["batch"];
    assert_eq!(
        (&batch["expected_count"], &batch["completed_count"]),
        (&json!(4), &json!(4))
    );
    let completions = &under_new[&new_paths[3]].1["items"];
    assert!(completions[0]["completed_at"].is_string(), "{completions}");
    let competency = &under_new[&new_paths[4]].1["competency"];
    assert_eq!(competency["total_attempts"], 2);
    assert!(competency.get("doc").is_none(), "{competency}");
}

#[tokio::test]
async fn a_v2_route_of_a_retired_new_projection_is_409_naming_it() {
    let app = TestApp::spawn().await;
    let (paths, _) = old_client_flow(&app, "gone", 45).await;
    json_with_status(
        app.post("/admin/projections/batch_completions/retire")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    let answer = json_with_status(
        app.get(&format!("/v2{}", paths[4])).send().await.unwrap(),
        StatusCode::CONFLICT,
    )
    .await;

    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("batch_completions"),
        "{answer}"
    );
    let (status, _) = read(&app, &paths[4]).await;
    assert_eq!(
        status, 200,
        "the old route still answers from the legacy model"
    );
}
