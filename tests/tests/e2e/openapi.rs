//! The OpenAPI description as `/openapi.json` serves it: operations a generator can name,
//! links that lead somewhere, and bounds that are the server's own.

use std::collections::BTreeSet;

use cutover_core::domain::{batch, collection, competency};
use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use uuid::Uuid;

async fn description(app: &TestApp) -> Value {
    json_with_status(
        app.get("/openapi.json").send().await.unwrap(),
        StatusCode::OK,
    )
    .await
}

/// Every operation of the description: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            all.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    all
}

fn operation<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .find(|op| op["operationId"] == id)
        .unwrap_or_else(|| panic!("no operation {id}"))
}

/// The schema of `operation`'s parameter `name`.
fn parameter<'a>(doc: &'a Value, operation_id: &str, name: &str) -> &'a Value {
    operation(doc, operation_id)["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{operation_id} has no parameter {name}"))
}

fn schema<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    doc.pointer(&format!("/components/schemas/{pointer}"))
        .unwrap_or_else(|| panic!("no schema at {pointer}"))
}

async fn status_of(app: &TestApp, url: String) -> StatusCode {
    app.get(&url).send().await.unwrap().status()
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{value} is not a count"))
}

#[tokio::test]
async fn every_operation_has_an_operation_id_of_its_own() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;

    let mut ids = BTreeSet::new();
    for (path, method, operation) in operations(&doc) {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(
            id.len() > 4 && id.chars().all(|c| c.is_ascii_alphabetic()),
            "{method} {path}: {id} is not a descriptive camelCase name"
        );
        assert!(ids.insert(id.to_owned()), "{id} names two operations");
    }

    let expected: BTreeSet<String> = [
        "getHealth",
        "createCollection",
        "getCollection",
        "updateCollection",
        "setCollectionLinks",
        "deleteCollection",
        "listCollections",
        "startBatch",
        "getBatch",
        "recordCompletion",
        "recordCompletions",
        "listCompletions",
        "recordAttempt",
        "recordReview",
        "listCompetencies",
        "getCompetency",
        "getSkillAnalytics",
        "listEvents",
        "streamEvents",
        "listProjections",
        "getProjection",
        "startRebuild",
        "retireProjection",
        "getJob",
        "listReadSources",
        "setReadSource",
        "listShadowWindows",
        "startShadowReads",
        "stopShadowReads",
        "getCollectionNewShape",
        "listCollectionsNewShape",
        "getBatchNewShape",
        "listCompletionsNewShape",
        "getCompetencyNewShape",
        "listCompetenciesNewShape",
        "verifyConsistency",
        "getLatestConsistency",
        "getActivity",
        "getMetrics",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let missing: Vec<&String> = expected.difference(&ids).collect();
    assert!(missing.is_empty(), "no operation is named {missing:?}");
}

#[tokio::test]
async fn every_link_leads_to_an_operation_that_takes_the_parameters_it_sets() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;

    let mut links = 0;
    for (path, method, source) in operations(&doc) {
        for (status, response) in source["responses"].as_object().unwrap() {
            let Some(found) = response["links"].as_object() else {
                continue;
            };
            for (name, link) in found {
                links += 1;
                let target = operation(&doc, link["operationId"].as_str().unwrap());
                let taken: Vec<&Value> = target["parameters"]
                    .as_array()
                    .map(|p| p.iter().map(|p| &p["name"]).collect())
                    .unwrap_or_default();
                for (parameter, expression) in link["parameters"].as_object().unwrap() {
                    assert!(
                        taken.iter().any(|t| *t == parameter),
                        "{method} {path} {status} → {name}: the target has no {parameter}"
                    );
                    let expression = expression.as_str().unwrap();
                    assert!(expression.starts_with('$'), "{expression}");
                }
            }
        }
    }
    assert!(links >= 20, "only {links} links");
    let created = &operation(&doc, "createCollection")["responses"]["201"]["links"];
    for target in [
        "getCollection",
        "updateCollection",
        "setCollectionLinks",
        "deleteCollection",
    ] {
        assert_eq!(
            created[target]["parameters"]["collection_id"],
            "$response.body#/collection/collection_id"
        );
        assert_eq!(
            created[target]["parameters"]["project_id"],
            "$request.path.project_id"
        );
    }
    let page = &operation(&doc, "listEvents")["responses"]["200"]["links"]["listEvents"];
    assert_eq!(page["parameters"]["after"], "$response.body#/next");
}

#[tokio::test]
async fn the_described_bounds_of_the_bodies_are_the_domains_constants() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;

    for name in [
        "CollectionBodyWithCollectionName/properties/collection_name",
        "CollectionBodyWithName/properties/name",
    ] {
        let name = schema(&doc, name);
        assert_eq!(
            number(&name["maxLength"]),
            collection::MAX_NAME_CHARS as u64
        );
        assert_eq!(number(&name["minLength"]), 1);
        assert!(name["description"].as_str().unwrap().contains("`name`"));
    }
    let description = schema(
        &doc,
        "CollectionBodyWithCollectionName/properties/description",
    );
    assert_eq!(
        number(&description["maxLength"]),
        collection::MAX_DESCRIPTION_CHARS as u64
    );
    assert_eq!(description["type"], serde_json::json!(["string", "null"]));
    let tags = schema(&doc, "LinksBody/properties/tags");
    assert_eq!(number(&tags["maxItems"]), collection::MAX_TAGS as u64);
    assert_eq!(
        number(&tags["items"]["maxLength"]),
        collection::MAX_TAG_CHARS as u64
    );
    assert_eq!(number(&tags["items"]["minLength"]), 1);
    for ids in ["question_ids", "hypothesis_ids"] {
        assert_eq!(
            number(&schema(&doc, &format!("LinksBody/properties/{ids}"))["maxItems"]),
            collection::MAX_LINKED_IDS as u64
        );
    }

    let players = schema(&doc, "StartBody/properties/expected_players");
    assert_eq!(number(&players["maxItems"]), batch::MAX_PLAYERS as u64);
    assert_eq!(players["uniqueItems"], true);
    assert_eq!(
        number(&players["items"]["maxLength"]),
        batch::MAX_ID_CHARS as u64
    );
    assert_eq!(
        number(&schema(&doc, "CompletionBody/properties/predictions_count")["maximum"]),
        u64::from(batch::MAX_PREDICTIONS)
    );
    assert_eq!(
        number(&schema(&doc, "BulkBody/properties/completions")["maxItems"]),
        batch::MAX_PLAYERS as u64
    );

    for key in ["subject", "skill_id", "subskill_id"] {
        for body in ["AttemptBody", "ReviewBody"] {
            assert_eq!(
                number(&schema(&doc, &format!("{body}/properties/{key}"))["maxLength"]),
                competency::MAX_KEY_CHARS as u64
            );
        }
        assert_eq!(
            number(&parameter(&doc, "getCompetency", key)["maxLength"]),
            competency::MAX_KEY_CHARS as u64
        );
    }
    assert_eq!(
        number(&schema(&doc, "AttemptBody/properties/analysis")["maxLength"]),
        competency::MAX_TEXT_CHARS as u64
    );
    for score in [
        "AttemptBody/properties/score",
        "ReviewBody/properties/score",
        "Evaluation/properties/score",
    ] {
        assert_eq!(
            schema(&doc, score)["maximum"].as_f64(),
            Some(competency::MAX_SCORE)
        );
    }
    let review = schema(&doc, "FullReview");
    for part in ["observation", "analysis", "evaluation", "feedback"] {
        assert!(
            review["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == part),
            "{part}"
        );
    }
    assert_eq!(
        schema(&doc, "Evaluation")["required"],
        serde_json::json!(["score"])
    );
    assert_eq!(
        schema(&doc, "ReadSourceBody/properties/source")["enum"],
        serde_json::json!(["legacy", "new"])
    );
}

#[tokio::test]
async fn the_described_header_rules_are_the_servers() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let key = parameter(&doc, "createCollection", "Idempotency-Key");
    let project = Uuid::new_v4();
    let create = |key: String| {
        app.post(&format!("/projects/{project}/collections"))
            .header("idempotency-key", key)
            .json(&serde_json::json!({"collection_name": "x"}))
            .send()
    };

    let longest = usize::try_from(number(&key["maxLength"])).unwrap();
    assert_eq!(
        create("k".repeat(longest)).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        create("k".repeat(longest + 1)).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    let if_match = parameter(&doc, "updateCollection", "If-Match")["pattern"]
        .as_str()
        .unwrap();
    assert!(if_match.contains(r#"""#), "{if_match}");

    let digits = cutover_api::reads::MIN_POSITION_DIGITS;
    let min_position = &parameter(&doc, "listEvents", "Cutover-Min-Position");
    assert_eq!(
        min_position["pattern"],
        format!("^[1-9][0-9]{{0,{}}}$", digits - 1)
    );
    let read = |position: String| {
        app.get("/events")
            .header("cutover-min-position", position)
            .send()
    };
    // The longest allowed is well-formed (no event has it: a 412); one digit more is a 400.
    assert_eq!(
        read(format!("1{}", "0".repeat(digits - 1)))
            .await
            .unwrap()
            .status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        read(format!("1{}", "0".repeat(digits)))
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_described_query_bounds_are_the_servers() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let project = Uuid::new_v4();
    let pages = [
        (
            "listCollections",
            format!("/projects/{project}/collections"),
        ),
        ("listCompletions", "/batches/b/completions".to_owned()),
        ("listCompetencies", "/students/1/competencies".to_owned()),
        ("getSkillAnalytics", "/analytics/skills".to_owned()),
        ("listEvents", "/events".to_owned()),
    ];

    for (id, path) in pages {
        let limit = parameter(&doc, id, "limit");
        let largest = number(&limit["maximum"]);
        assert_eq!(number(&limit["minimum"]), 1);
        assert!(number(&limit["default"]) <= largest);
        let status = |query: String| status_of(&app, format!("{path}?{query}"));
        assert_ne!(
            status(format!("limit={largest}")).await,
            StatusCode::BAD_REQUEST,
            "{id}"
        );
        assert_eq!(
            status(format!("limit={}", largest + 1)).await,
            StatusCode::BAD_REQUEST,
            "{id}"
        );
        assert_eq!(
            status("limit=0".to_owned()).await,
            StatusCode::BAD_REQUEST,
            "{id}"
        );
        if id == "listCompetencies" || id == "getSkillAnalytics" {
            let offset = number(&parameter(&doc, id, "offset")["maximum"]);
            assert_eq!(
                status(format!("offset={offset}")).await,
                StatusCode::OK,
                "{id}"
            );
            assert_eq!(
                status(format!("offset={}", offset + 1)).await,
                StatusCode::BAD_REQUEST,
                "{id}"
            );
        }
    }
}

#[tokio::test]
async fn the_described_aggregate_type_filter_is_the_servers() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let pattern = parameter(&doc, "listEvents", "aggregate_type")["pattern"]
        .as_str()
        .unwrap()
        .to_owned();
    // ^[A-Za-z0-9_]{1,<chars>}(,[A-Za-z0-9_]{1,<chars>}){0,<more>}$
    let bounds: Vec<usize> = pattern
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (chars, types) = (bounds[3], bounds[9] + 1);
    assert_eq!(
        bounds,
        [0, 9, 1, chars, 0, 9, 1, chars, 0, types - 1],
        "{pattern}"
    );
    let status = |filter: String| status_of(&app, format!("/events?aggregate_type={filter}"));

    assert_eq!(status("a".repeat(chars)).await, StatusCode::OK);
    assert_eq!(status("a".repeat(chars + 1)).await, StatusCode::BAD_REQUEST);
    assert_eq!(status(vec!["a"; types].join(",")).await, StatusCode::OK);
    assert_eq!(
        status(vec!["a"; types + 1].join(",")).await,
        StatusCode::BAD_REQUEST
    );
}

/// The names of a schema's required properties.
fn required(doc: &Value, name: &str) -> BTreeSet<String> {
    schema(doc, name)["required"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} requires nothing"))
        .iter()
        .map(|field| field.as_str().unwrap().to_owned())
        .collect()
}

/// The schema an operation's answer of `status` refers to.
fn answer_schema<'a>(doc: &'a Value, operation_id: &str, status: &str) -> &'a str {
    operation(doc, operation_id)["responses"][status]["content"]["application/json"]["schema"]
        ["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("{operation_id}'s {status} names no schema"))
        .trim_start_matches("#/components/schemas/")
}

/// `schema`, or the schema its `$ref` names.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(name) => schema(doc, name.trim_start_matches("#/components/schemas/")),
        None => node,
    }
}

/// The properties whose values are free-form JSON objects by design, described in words: an
/// event's payload and metadata (their shape is the event type's), and a review's parts as
/// the reviewer wrote them.
const FREE_FORM: [&str; 3] = ["payload", "metadata", "full_review"];

/// Panics, naming `at`, where `schema` (or a schema inside it) is an object whose fields are
/// not described: `{"type": "object"}` with no properties.
fn assert_fields_described(doc: &Value, schema: &Value, at: &str) {
    let schema = resolve(doc, schema);
    let is_object = schema["type"] == "object"
        || schema["type"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "object"));
    let properties = schema["properties"].as_object();
    // A map's values: a schema that says something (not `{}` nor `true`).
    let values = &schema["additionalProperties"];
    let map = values.as_object().is_some_and(|v| !v.is_empty());
    if is_object {
        assert!(
            properties.is_some_and(|p| !p.is_empty()) || map,
            "{at}: an object whose fields are not described: {schema}"
        );
    }
    if map {
        assert_fields_described(doc, values, &format!("{at}{{}}"));
    }
    for (name, property) in properties.into_iter().flatten() {
        if !FREE_FORM.contains(&name.as_str()) {
            assert_fields_described(doc, property, &format!("{at}.{name}"));
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for branch in schema[key].as_array().into_iter().flatten() {
            assert_fields_described(doc, branch, at);
        }
    }
    if schema["items"].is_object() {
        assert_fields_described(doc, &schema["items"], &format!("{at}[]"));
    }
}

/// Panics, naming `at`, where `value` (an answer) has a field `schema` does not describe, or
/// lacks one it requires.
fn assert_described(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(branches) = schema["oneOf"].as_array() {
        // An optional row: `null`, or the row.
        let branch = branches
            .iter()
            .find(|b| (b["type"] == "null") == value.is_null())
            .unwrap_or_else(|| panic!("{at}: {value} fits no branch of {schema}"));
        return assert_described(doc, branch, value, at);
    }
    match value {
        Value::Object(fields) => {
            // The schema and the parts it is made of (`allOf`, as a flattened field makes).
            let parts: Vec<&Value> = std::iter::once(schema)
                .chain(schema["allOf"].as_array().into_iter().flatten())
                .map(|part| resolve(doc, part))
                .collect();
            let properties: Map<String, Value> = parts
                .iter()
                .filter_map(|part| part["properties"].as_object())
                .flatten()
                .map(|(name, property)| (name.clone(), property.clone()))
                .collect();
            if properties.is_empty() {
                return;
            }
            for (name, field) in fields {
                let described = properties
                    .get(name)
                    .unwrap_or_else(|| panic!("{at}.{name} is answered but not described"));
                if !FREE_FORM.contains(&name.as_str()) {
                    assert_described(doc, described, field, &format!("{at}.{name}"));
                }
            }
            let required = parts
                .iter()
                .filter_map(|part| part["required"].as_array())
                .flatten();
            for name in required {
                let name = name.as_str().unwrap();
                assert!(
                    fields.contains_key(name),
                    "{at}.{name} is required but not answered"
                );
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_described(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_answer_describes_its_fields() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let mut answers = 0;
    for (path, method, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            for (media, content) in response["content"].as_object().into_iter().flatten() {
                if status.starts_with('2') && media.contains("json") {
                    answers += 1;
                    let at = format!("{method} {path} {status}");
                    assert_fields_described(&doc, &content["schema"], &at);
                }
            }
        }
    }
    assert!(answers >= 40, "only {answers} answers");
}

/// Panics where an answer, `(operationId, status, body)`, is not as its operation describes it.
fn assert_answers_described(doc: &Value, answers: &[(&str, &str, Value)]) {
    for (operation_id, status, answer) in answers {
        let described = &operation(doc, operation_id)["responses"][status]["content"]
            ["application/json"]["schema"];
        assert!(
            described.is_object(),
            "{operation_id} {status} has no JSON answer"
        );
        assert_described(doc, described, answer, &format!("{operation_id} {status}"));
    }
}

/// The JSON answer of `request`, which must be `status`.
async fn answer(request: reqwest::RequestBuilder, status: StatusCode) -> Value {
    json_with_status(request.send().await.unwrap(), status).await
}

#[tokio::test]
async fn the_readmes_answers_have_the_described_fields_and_no_others() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let project = Uuid::new_v4();
    let collections = format!("/projects/{project}/collections");
    let student = 1 + i64::from(Uuid::new_v4().as_fields().1);
    let batch = format!("b-{project}");
    let completions = format!("/batches/{batch}/completions");
    let (created, ok) = (StatusCode::CREATED, StatusCode::OK);

    let body = json!({"collection_name": "Interview notes", "description": "Round one"});
    let first = answer(app.post(&collections).json(&body), created).await;
    let id = first["collection"]["collection_id"].as_str().unwrap();
    let one = format!("{collections}/{id}");
    let links = json!({"tags": ["ux"], "question_ids": [], "hypothesis_ids": []});
    let started = json!({"batch_id": batch, "expected_players": ["ann", "bob"]});
    let completion = json!({"player_lookup": "ann", "predictions_count": 12});
    let bulk = json!({"completions": [{"player_lookup": "bob", "predictions_count": 3}]});
    let subskill = json!({"subject": "math", "skill_id": "fractions", "subskill_id": "adding"});
    let mut attempt = subskill.clone();
    attempt["score"] = json!(8);
    let mut review = subskill;
    review["problem_id"] = json!("p1");
    review["score"] = json!(7);
    review["full_review"] =
        json!({"observation": {}, "analysis": {}, "evaluation": {"score": 7}, "feedback": {}});
    let student_path = format!("/students/{student}");
    // (operationId, status, the answer): the commands in the README's order, then the reads.
    let mut answers = vec![("createCollection", "201", first.clone())];
    for (operation_id, request, status) in [
        (
            "updateCollection",
            app.put(&one).json(&json!({"name": "Renamed"})),
            ok,
        ),
        (
            "setCollectionLinks",
            app.put(&format!("{one}/links")).json(&links),
            ok,
        ),
        ("startBatch", app.post("/batches").json(&started), created),
        (
            "recordCompletion",
            app.post(&completions).json(&completion),
            created,
        ),
        (
            "recordCompletions",
            app.post(&format!("{completions}/bulk")).json(&bulk),
            created,
        ),
        (
            "recordAttempt",
            app.post(&format!("{student_path}/attempts")).json(&attempt),
            created,
        ),
        (
            "recordReview",
            app.post(&format!("{student_path}/reviews")).json(&review),
            created,
        ),
    ] {
        let code = if status == created { "201" } else { "200" };
        answers.push((operation_id, code, answer(request, status).await));
    }
    let competency = format!("{student_path}/competencies/math/fractions/adding");
    for (operation_id, path) in [
        ("getCollection", one.clone()),
        ("listCollections", collections.clone()),
        ("getCollectionNewShape", format!("/v2{one}")),
        ("listCollectionsNewShape", format!("/v2{collections}")),
        ("getBatch", format!("/batches/{batch}")),
        ("getBatchNewShape", format!("/v2/batches/{batch}")),
        ("listCompletions", completions.clone()),
        ("listCompletionsNewShape", format!("/v2{completions}")),
        ("getCompetency", competency.clone()),
        ("getCompetencyNewShape", format!("/v2{competency}")),
        ("listCompetencies", format!("{student_path}/competencies")),
        (
            "listCompetenciesNewShape",
            format!("/v2{student_path}/competencies"),
        ),
        (
            "getSkillAnalytics",
            "/analytics/skills?subject=math".to_owned(),
        ),
        ("listEvents", "/events?after=0&limit=5".to_owned()),
        ("getHealth", "/health".to_owned()),
    ] {
        answers.push((operation_id, "200", answer(app.get(&path), ok).await));
    }
    answers.push((
        "deleteCollection",
        "200",
        answer(app.delete(&one), ok).await,
    ));

    assert_answers_described(&doc, &answers);
}

#[tokio::test]
async fn the_admin_answers_have_the_described_fields_and_no_others() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let ok = StatusCode::OK;
    let body = json!({"collection_name": "Interview notes"});
    let collections = format!("/projects/{}/collections", Uuid::new_v4());
    let created = answer(app.post(&collections).json(&body), StatusCode::CREATED).await;
    let collection = json!([created["collection"]["collection_id"]]);
    let started = answer(
        app.post("/admin/projections/project_collections/rebuild"),
        StatusCode::ACCEPTED,
    )
    .await;
    let job = format!("/admin/jobs/{}", started["job_id"].as_str().unwrap());
    // The rebuild of one collection's event ends at once; its job then says so.
    let mut finished = answer(app.get(&job), ok).await;
    for _ in 0..100 {
        if finished["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        finished = answer(app.get(&job), ok).await;
    }
    let shadow = json!({"fraction": 1.0, "min_reads": 0});
    let mut answers = vec![
        ("startRebuild", "202", started),
        ("getJob", "200", finished),
        (
            "startShadowReads",
            "200",
            answer(app.put("/admin/shadow/collections").json(&shadow), ok).await,
        ),
    ];
    for (operation_id, path) in [
        ("listProjections", "/admin/projections"),
        ("getProjection", "/admin/projections/project_collections"),
        ("listReadSources", "/admin/read-sources"),
        ("getSwitchGate", "/admin/read-sources/collections/gate"),
        ("listShadowWindows", "/admin/shadow"),
        ("verifyConsistency", "/admin/consistency?domain=collections"),
        ("getLatestConsistency", "/admin/consistency/latest"),
        ("getActivity", "/admin/activity"),
    ] {
        answers.push((operation_id, "200", answer(app.get(path), ok).await));
    }
    let switch = json!({"source": "new", "force": true});
    for (operation_id, request) in [
        (
            "setReadSource",
            app.put("/admin/read-sources/collections").json(&switch),
        ),
        ("stopShadowReads", app.delete("/admin/shadow/collections")),
        (
            "repairProjection",
            app.post("/admin/projections/project_collections/repair")
                .json(&json!({"aggregates": collection})),
        ),
        (
            "retireProjection",
            app.post("/admin/projections/collections/retire"),
        ),
    ] {
        answers.push((operation_id, "200", answer(request, ok).await));
    }

    assert_answers_described(&doc, &answers);
}

#[tokio::test]
async fn the_described_answers_have_the_real_fields() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    let fields = |names: &[&str]| -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    };

    let collection = answer_schema(&doc, "getCollection", "200");
    assert_eq!(collection, "CollectionDocument");
    assert_eq!(
        required(&doc, collection),
        fields(&["read_source", "version", "collection"])
    );
    assert_eq!(
        required(&doc, "LegacyCollection"),
        fields(&[
            "collection_id",
            "project_id",
            "collection_name",
            "description",
            "is_active",
            "created_at",
            "updated_at",
        ])
    );
    let page = answer_schema(&doc, "listCollections", "200");
    assert_eq!(
        schema(&doc, &format!("{page}/properties/items/items"))["$ref"],
        "#/components/schemas/LegacyCollection"
    );
    assert!(required(&doc, "ProjectCollection").contains("research_context"));

    assert_eq!(answer_schema(&doc, "startBatch", "201"), "BatchDocument");
    assert_eq!(
        required(&doc, "BatchState"),
        fields(&[
            "batch_id",
            "expected_players",
            "completed_players",
            "predictions_by_player",
            "total_predictions",
            "is_complete",
            "updated_at",
        ])
    );
    let completion = answer_schema(&doc, "recordCompletion", "201");
    assert!(required(&doc, completion).contains("completion"));
    assert_eq!(
        required(&doc, "CompletionRow"),
        fields(&["player_lookup", "predictions_count"])
    );
    assert_eq!(
        required(&doc, "LegacyCompetency"),
        fields(&["id", "student_id", "doc"])
    );
    assert_eq!(
        schema(&doc, "CompetencyDoc/allOf/0")["$ref"],
        "#/components/schemas/SubskillKey"
    );
    assert!(required(&doc, "CompetencyDoc/allOf/1").contains("current_score"));
    let attempt = answer_schema(&doc, "recordAttempt", "201");
    assert!(required(&doc, attempt).is_superset(&fields(&["attempt", "competency"])));
    let competency = answer_schema(&doc, "getCompetencyNewShape", "200");
    assert_eq!(
        schema(&doc, &format!("{competency}/properties/competency"))["$ref"],
        "#/components/schemas/StudentCompetency"
    );

    // The old API's `name` is one form of the collection body, `collection_name` the other.
    let forms: Vec<&str> = schema(&doc, "CollectionBody")["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|form| form["$ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        forms,
        [
            "#/components/schemas/CollectionBodyWithCollectionName",
            "#/components/schemas/CollectionBodyWithName",
        ]
    );
    assert_eq!(required(&doc, "CollectionBodyWithName"), fields(&["name"]));
}

/// Every string of the description under a key `description` or `summary`.
fn prose(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match field {
                    Value::String(text) if key == "description" || key == "summary" => {
                        found.push(text.clone());
                    }
                    _ => prose(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| prose(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn every_operation_has_a_summary_and_lists_the_statuses_it_can_answer() {
    let app = TestApp::spawn().await;
    let doc = description(&app).await;
    for (path, method, operation) in operations(&doc) {
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has no summary"
        );
        if method != "get" {
            continue;
        }
        let listed = |status: &str| !operation["responses"][status].is_null();
        // No GET takes a body or an If-Match.
        for status in ["413", "415"] {
            assert!(!listed(status), "GET {path} lists {status}");
        }
        // 410: a deleted collection, which only the old API's GET shows as such.
        assert_eq!(
            listed("410"),
            operation["operationId"] == "getCollection",
            "GET {path}: 410"
        );
        // 409: a read of the new model while its projection is retired; a verification whose
        // fresh rebuild meets two subskills sharing an old id.
        let new_model = path.starts_with("/v2/") || path == "/analytics/skills";
        assert_eq!(
            listed("409"),
            new_model || path == "/admin/consistency",
            "GET {path}: 409"
        );
        // 412: Cutover-Min-Position naming a position no event has.
        let takes_position = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "Cutover-Min-Position");
        assert_eq!(listed("412"), takes_position, "GET {path}: 412");
    }
    let mut texts = Vec::new();
    prose(&doc, &mut texts);
    assert!(texts.len() > 100, "only {} texts", texts.len());
    for text in texts {
        assert!(!text.contains("::"), "prose shows a Rust path: {text}");
    }
}
