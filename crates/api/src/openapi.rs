//! The OpenAPI 3.1 description of every route, served at `/openapi.json`.
//!
//! utoipa generates it from the handlers' annotations and their request types ([`ApiDoc`]);
//! [`description`] then adds what utoipa's attributes cannot take from the code: the bounds
//! the server enforces, read from the domain's and the routes' constants ([`rules`]), so the
//! numbers are never typed twice, and the links between operations ([`LINKS`]), one table.

use std::sync::LazyLock;

use axum::response::IntoResponse as _;
use axum::routing::get;
use axum::Router;
use cutover_core::domain::{self, batch, collection, competency};
use cutover_engine::read_source::{Domain, ReadSource};
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, Problem};
use crate::routes::{admin, batches, collections, competencies, events, health};
use crate::state::AppState;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "A token with scope read (GET routes, watching /admin), write \
                             (commands) or admin (/admin actions and verification). Needed \
                             only when the server has tokens configured.",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// What utoipa generates from the annotations; [`description`] is the whole description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cutover",
        description = "Ledger-first data-model migrations: commands append events and update the legacy and the new read model in one transaction."
    ),
    servers((url = "/", description = "the server that serves this description")),
    paths(
        health::health,
        collections::create, collections::fetch, collections::update, collections::set_links,
        collections::delete, collections::list, collections::fetch_new, collections::list_new,
        batches::start, batches::fetch, batches::record, batches::record_bulk,
        batches::list_completions, batches::fetch_new, batches::list_completions_new,
        competencies::record_attempt, competencies::record_review, competencies::list,
        competencies::fetch, competencies::fetch_new, competencies::list_new,
        competencies::analytics,
        events::page, events::live,
        admin::list, admin::status, admin::start_rebuild, admin::retire, admin::repair_aggregates, admin::job, admin::cancel_job,
        admin::read_sources, admin::set_read_source, admin::switch_gate, admin::shadow_windows, admin::follows,
        admin::start_follow, admin::stop_follow, admin::hand_over,
        admin::start_shadow, admin::stop_shadow, admin::consistency,
        admin::latest_consistency, crate::routes::metrics::activity, crate::routes::metrics::scrape
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Where a rule applies.
#[derive(Debug, Clone, Copy)]
enum At {
    /// A schema, by its JSON pointer below `/components/schemas`.
    Schema(&'static str),
    /// The schema of one operation's parameter: (operationId, parameter name).
    Param(&'static str, &'static str),
    /// The schema of every parameter of this name, in every operation that has it.
    Every(&'static str),
}

/// Every bound the server enforces that utoipa's attributes cannot take from a constant: the
/// JSON Schema keywords each place gets, from the constants the server checks.
fn rules() -> Vec<(At, Value)> {
    use At::{Every, Param, Schema};
    let key_part =
        json!({"minLength": 1, "maxLength": competency::MAX_KEY_CHARS, "pattern": no_nul()});
    let text = json!({"maxLength": competency::MAX_TEXT_CHARS, "pattern": no_nul()});
    let score = json!({"minimum": 0, "maximum": competency::MAX_SCORE});
    let batch_id = json!({
        "minLength": 1,
        "maxLength": batch::MAX_ID_CHARS,
        "pattern": format!("^[A-Za-z0-9_.:-]{{1,{}}}$", batch::MAX_ID_CHARS),
    });
    let player = json!({"minLength": 1, "maxLength": batch::MAX_ID_CHARS, "pattern": no_nul()});
    let page = |default: i64, max: i64| json!({"minimum": 1, "maximum": max, "default": default});
    let offset = json!({"minimum": 0, "maximum": competencies::MAX_OFFSET, "default": 0});
    let position = json!({"minimum": 0, "maximum": i64::MAX});
    let aggregate_types = json!({"pattern": format!(
        "^[A-Za-z0-9_]{{1,{chars}}}(,[A-Za-z0-9_]{{1,{chars}}}){{0,{more}}}$",
        chars = events::MAX_AGGREGATE_TYPE_CHARS,
        more = events::MAX_AGGREGATE_TYPES - 1,
    )});
    let projections: Vec<&str> = cutover_projections::inline_projectors()
        .iter()
        .map(|p| p.name())
        .collect();
    let rebuildable: Vec<&str> = projections.iter().copied().chain(["all"]).collect();
    let free_form = json!({
        "propertyNames": {"pattern": no_nul()},
        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
    });
    let sources = read_sources();
    vec![
        // Collections.
        (
            Schema("CollectionBody/properties/collection_name"),
            json!({"minLength": 1, "maxLength": collection::MAX_NAME_CHARS, "pattern": not_blank()}),
        ),
        (
            Schema("CollectionBody/properties/description"),
            json!({"maxLength": collection::MAX_DESCRIPTION_CHARS, "pattern": no_nul()}),
        ),
        (
            Schema("LinksBody/properties/tags"),
            json!({"maxItems": collection::MAX_TAGS}),
        ),
        (
            Schema("LinksBody/properties/tags/items"),
            json!({"minLength": 1, "maxLength": collection::MAX_TAG_CHARS, "pattern": not_blank()}),
        ),
        (
            Schema("LinksBody/properties/question_ids"),
            json!({"maxItems": collection::MAX_LINKED_IDS}),
        ),
        (
            Schema("LinksBody/properties/hypothesis_ids"),
            json!({"maxItems": collection::MAX_LINKED_IDS}),
        ),
        (
            Param("listCollections", "limit"),
            page(collections::DEFAULT_PAGE, collections::MAX_PAGE),
        ),
        (
            Param("listCollectionsNewShape", "limit"),
            page(collections::DEFAULT_PAGE, collections::MAX_PAGE),
        ),
        // Batches.
        (Schema("StartBody/properties/batch_id"), batch_id.clone()),
        (
            Schema("StartBody/properties/expected_players"),
            json!({"minItems": 1, "maxItems": batch::MAX_PLAYERS, "uniqueItems": true}),
        ),
        (
            Schema("StartBody/properties/expected_players/items"),
            player.clone(),
        ),
        (Schema("CompletionBody/properties/player_lookup"), player),
        (
            Schema("CompletionBody/properties/predictions_count"),
            json!({"minimum": 0, "maximum": batch::MAX_PREDICTIONS}),
        ),
        (
            Schema("BulkBody/properties/completions"),
            json!({"minItems": 1, "maxItems": batch::MAX_PLAYERS}),
        ),
        (Every("batch_id"), batch_id),
        (
            Param("listCompletions", "limit"),
            page(batches::DEFAULT_PAGE, batches::MAX_PAGE),
        ),
        (
            Param("listCompletions", "after"),
            json!({"pattern": no_nul()}),
        ),
        (
            Param("listCompletionsNewShape", "limit"),
            page(batches::DEFAULT_PAGE, batches::MAX_PAGE),
        ),
        (
            Param("listCompletionsNewShape", "after"),
            json!({"pattern": no_nul()}),
        ),
        // Competencies.
        (Schema("AttemptBody/properties/subject"), key_part.clone()),
        (Schema("AttemptBody/properties/skill_id"), key_part.clone()),
        (
            Schema("AttemptBody/properties/subskill_id"),
            key_part.clone(),
        ),
        (Schema("AttemptBody/properties/score"), score.clone()),
        (Schema("AttemptBody/properties/analysis"), text.clone()),
        (Schema("AttemptBody/properties/feedback"), text),
        (Schema("ReviewBody/properties/subject"), key_part.clone()),
        (Schema("ReviewBody/properties/skill_id"), key_part.clone()),
        (
            Schema("ReviewBody/properties/subskill_id"),
            key_part.clone(),
        ),
        (Schema("ReviewBody/properties/problem_id"), key_part.clone()),
        (Schema("ReviewBody/properties/score"), score.clone()),
        (Schema("Evaluation/properties/score"), score),
        (Schema("Evaluation"), free_form.clone()),
        (
            Schema("FullReview/properties/observation"),
            free_form.clone(),
        ),
        (Schema("FullReview/properties/analysis"), free_form.clone()),
        (Schema("FullReview/properties/feedback"), free_form),
        (
            Every("student_id"),
            json!({"minimum": 1, "maximum": i64::MAX}),
        ),
        (Param("getCompetency", "subject"), key_part.clone()),
        (Param("getCompetency", "skill_id"), key_part.clone()),
        (Param("getCompetency", "subskill_id"), key_part.clone()),
        (Param("getCompetencyNewShape", "subject"), key_part.clone()),
        (Param("getCompetencyNewShape", "skill_id"), key_part.clone()),
        (Param("getCompetencyNewShape", "subskill_id"), key_part),
        (
            Param("getSkillAnalytics", "subject"),
            json!({"pattern": no_nul()}),
        ),
        (
            Param("listCompetencies", "limit"),
            page(competencies::DEFAULT_PAGE, competencies::MAX_PAGE),
        ),
        (Param("listCompetencies", "offset"), offset.clone()),
        (
            Param("listCompetenciesNewShape", "limit"),
            page(competencies::DEFAULT_PAGE, competencies::MAX_PAGE),
        ),
        (Param("listCompetenciesNewShape", "offset"), offset.clone()),
        (
            Param("getSkillAnalytics", "limit"),
            page(competencies::DEFAULT_PAGE, competencies::MAX_PAGE),
        ),
        (Param("getSkillAnalytics", "offset"), offset),
        // The event feed.
        (
            Param("listEvents", "after"),
            json!({"minimum": 0, "maximum": i64::MAX, "default": 0}),
        ),
        (
            Param("listEvents", "limit"),
            page(events::DEFAULT_PAGE, events::MAX_PAGE),
        ),
        (Every("aggregate_type"), aggregate_types),
        (Param("streamEvents", "after"), position.clone()),
        (Param("streamEvents", "Last-Event-ID"), position),
        // Admin.
        (Param("getProjection", "name"), json!({"enum": projections})),
        (
            Param("retireProjection", "name"),
            json!({"enum": projections}),
        ),
        (Param("startRebuild", "name"), json!({"enum": rebuildable})),
        (
            Param("repairProjection", "name"),
            json!({"enum": projections}),
        ),
        (
            Schema("RepairBody/properties/aggregates"),
            json!({"minItems": 1, "maxItems": cutover_engine::repair::MAX_AGGREGATES}),
        ),
        (
            Schema("RepairBody/properties/aggregates/items"),
            json!({"pattern": no_nul()}),
        ),
        (Param("getSwitchGate", "domain"), json!({"enum": domains()})),
        (Param("setReadSource", "domain"), json!({"enum": domains()})),
        (
            Param("verifyConsistency", "domain"),
            json!({"enum": domains()}),
        ),
        (
            Schema("ReadSourceBody/properties/source"),
            json!({"enum": sources}),
        ),
        // Answers.
        (Schema("ReadSourceName"), json!({"enum": sources})),
        // Headers.
        (
            Every("If-Match"),
            json!({"pattern": r#"^(\*|(W/)?("[0-9]{1,18}(-.*)?"|[0-9]{1,18}(-.*)?))$"#}),
        ),
        (
            Every("Idempotency-Key"),
            json!({"minLength": 1, "maxLength": crate::extract::MAX_KEY_CHARS, "pattern": "^[!-~]+$"}),
        ),
    ]
}

/// A link from one operation's answer to the next request: the target operation and where
/// its parameters (and, merged into a generated body, its body fields) come from.
struct Link {
    from: &'static str,
    status: &'static str,
    to: &'static str,
    parameters: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
}

const fn link(
    from: &'static str,
    status: &'static str,
    to: &'static str,
    parameters: &'static [(&'static str, &'static str)],
) -> Link {
    Link {
        from,
        status,
        to,
        parameters,
        body: None,
    }
}

/// The collection a create made (its row is the answer's).
const CREATED: &[(&str, &str)] = &[
    ("project_id", "$request.path.project_id"),
    ("collection_id", "$response.body#/collection/collection_id"),
];
/// The same, demanding the version the answer shows.
const CREATED_AT_VERSION: &[(&str, &str)] = &[
    ("project_id", "$request.path.project_id"),
    ("collection_id", "$response.body#/collection/collection_id"),
    ("If-Match", "$response.header.ETag"),
];
/// The collection a request named (after a delete the answer's row may be `null`).
const COLLECTION: &[(&str, &str)] = &[
    ("project_id", "$request.path.project_id"),
    ("collection_id", "$request.path.collection_id"),
];
/// The same, demanding the version the answer shows.
const COLLECTION_AT_VERSION: &[(&str, &str)] = &[
    ("project_id", "$request.path.project_id"),
    ("collection_id", "$request.path.collection_id"),
    ("If-Match", "$response.header.ETag"),
];
/// The batch a start created, and the batch a completion went to.
const STARTED_BATCH: &[(&str, &str)] = &[("batch_id", "$request.body#/batch_id")];
const BATCH: &[(&str, &str)] = &[("batch_id", "$request.path.batch_id")];
/// The competency an attempt led to.
const COMPETENCY: &[(&str, &str)] = &[
    ("student_id", "$request.path.student_id"),
    ("subject", "$request.body#/subject"),
    ("skill_id", "$request.body#/skill_id"),
    ("subskill_id", "$request.body#/subskill_id"),
];
const STUDENT: &[(&str, &str)] = &[("student_id", "$request.path.student_id")];

/// Every link between operations: where one answer gives the next request's parameters.
const LINKS: &[Link] = &[
    link("createCollection", "201", "getCollection", CREATED),
    link(
        "createCollection",
        "201",
        "updateCollection",
        CREATED_AT_VERSION,
    ),
    link(
        "createCollection",
        "201",
        "setCollectionLinks",
        CREATED_AT_VERSION,
    ),
    link(
        "createCollection",
        "201",
        "deleteCollection",
        CREATED_AT_VERSION,
    ),
    link(
        "getCollection",
        "200",
        "updateCollection",
        COLLECTION_AT_VERSION,
    ),
    link(
        "getCollection",
        "200",
        "setCollectionLinks",
        COLLECTION_AT_VERSION,
    ),
    link(
        "getCollection",
        "200",
        "deleteCollection",
        COLLECTION_AT_VERSION,
    ),
    link("updateCollection", "200", "getCollection", COLLECTION),
    link(
        "updateCollection",
        "200",
        "setCollectionLinks",
        COLLECTION_AT_VERSION,
    ),
    link(
        "updateCollection",
        "200",
        "deleteCollection",
        COLLECTION_AT_VERSION,
    ),
    link("setCollectionLinks", "200", "getCollection", COLLECTION),
    link(
        "setCollectionLinks",
        "200",
        "updateCollection",
        COLLECTION_AT_VERSION,
    ),
    link(
        "setCollectionLinks",
        "200",
        "deleteCollection",
        COLLECTION_AT_VERSION,
    ),
    link("deleteCollection", "200", "getCollection", COLLECTION),
    link("createCollection", "201", "getCollectionNewShape", CREATED),
    link("startBatch", "201", "getBatchNewShape", STARTED_BATCH),
    link("recordCompletion", "201", "listCompletionsNewShape", BATCH),
    link("recordAttempt", "201", "getCompetencyNewShape", COMPETENCY),
    link("startBatch", "201", "getBatch", STARTED_BATCH),
    link("startBatch", "201", "listCompletions", STARTED_BATCH),
    Link {
        body: Some(r#"{"player_lookup": "$request.body#/expected_players/0"}"#),
        ..link("startBatch", "201", "recordCompletion", STARTED_BATCH)
    },
    link("recordCompletion", "201", "getBatch", BATCH),
    link("recordCompletion", "201", "listCompletions", BATCH),
    // The same completion again: a redelivery, answered 200 with nothing counted twice.
    Link {
        body: Some(r#""$request.body""#),
        ..link("recordCompletion", "201", "recordCompletion", BATCH)
    },
    link("recordCompletions", "201", "getBatch", BATCH),
    link("recordCompletions", "201", "listCompletions", BATCH),
    link("recordAttempt", "201", "getCompetency", COMPETENCY),
    link("recordAttempt", "201", "listCompetencies", STUDENT),
    link("recordReview", "201", "getCompetency", COMPETENCY),
    link(
        "listEvents",
        "200",
        "listEvents",
        &[("after", "$response.body#/next")],
    ),
    link(
        "startRebuild",
        "202",
        "getJob",
        &[("id", "$response.body#/job_id")],
    ),
];

/// The read sources' names.
fn read_sources() -> Vec<&'static str> {
    // A new read source must be added here: the match fails to compile until it is.
    let all = [ReadSource::Legacy, ReadSource::New];
    for source in all {
        match source {
            ReadSource::Legacy | ReadSource::New => {}
        }
    }
    all.map(ReadSource::as_str).to_vec()
}

/// The domains that have two read-model shapes.
fn domains() -> Vec<&'static str> {
    // A new domain must be added here: the match fails to compile until it is.
    let all = [Domain::Collections, Domain::Batches, Domain::Competencies];
    for domain in all {
        match domain {
            Domain::Collections | Domain::Batches | Domain::Competencies => {}
        }
    }
    all.map(Domain::as_str).to_vec()
}

/// The largest magnitude of a number inside a free-form JSON object (the domain's bound).
const LARGEST_NUMBER: f64 = cutover_core::domain::competency::MAX_REVIEW_NUMBER;

/// Any JSON value whose strings and keys hold no NUL character: what a `jsonb` column stores.
fn json_value() -> Value {
    let itself = json!({"$ref": "#/components/schemas/JsonValue"});
    json!({
        "description": format!(
            "Any JSON value, but no string in it, value or key, may hold a NUL character \
             (U+0000), which the database cannot store, and no number may be larger in \
             magnitude than {LARGEST_NUMBER:e}."
        ),
        "anyOf": [
            {"type": ["null", "boolean"]},
            // Nearer the largest double, some numbers are stored but cannot be read back.
            {"type": "number", "minimum": -LARGEST_NUMBER, "maximum": LARGEST_NUMBER},
            {"type": "string", "pattern": no_nul()},
            {"type": "array", "items": itself},
            {"type": "object", "propertyNames": {"pattern": no_nul()}, "additionalProperties": itself},
        ],
    })
}

/// No NUL character (U+0000), which Postgres can store neither in `text` nor in `jsonb`.
fn no_nul() -> &'static str {
    r"^[^\u0000]*$"
}

/// No NUL character, and at least one visible one: what remains once the server trims the
/// value is not empty and not made only of characters drawn as nothing
/// (`cutover_core::domain::text::is_invisible`). The pattern spells the Basic Multilingual Plane's
/// invisible characters; the few above it (tag characters, shorthand format controls) the server
/// refuses as well, and the field's description says so.
fn not_blank() -> String {
    format!(r"^[^\u0000]*[^\u0000{}][^\u0000]*$", invisible_class())
}

/// The invisible characters of the Basic Multilingual Plane, as the inside of a
/// regular-expression class of `\uXXXX` ranges.
fn invisible_class() -> String {
    let invisible: Vec<u32> = (0..=0xFFFF_u32)
        .filter(|c| char::from_u32(*c).is_some_and(domain::text::is_invisible))
        .collect();
    let mut class = String::new();
    let mut i = 0;
    while i < invisible.len() {
        let start = invisible[i];
        let mut end = start;
        while i + 1 < invisible.len() && invisible[i + 1] == end + 1 {
            i += 1;
            end = invisible[i];
        }
        class.push_str(&format!(r"\u{start:04x}"));
        if end > start {
            class.push_str(&format!(r"-\u{end:04x}"));
        }
        i += 1;
    }
    class
}

/// The whole description, as `/openapi.json` serves it.
///
/// # Errors
/// A rule or a link that names a schema, an operation or a parameter the generated
/// description does not have (a mistake in this module, which its tests catch).
pub fn description() -> Result<Value, String> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())
        .map_err(|e| format!("serializing the generated description: {e}"))?;
    doc.pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("the description has no schemas")?
        .insert("JsonValue".to_owned(), json_value());
    for (at, keywords) in rules() {
        let targets = schemas_at(&mut doc, at)?;
        for target in targets {
            merge(target, &keywords)?;
        }
    }
    for link in LINKS {
        add_link(&mut doc, link)?;
    }
    name_alias(&mut doc)?;
    Ok(doc)
}

/// The collection body's two forms: the name as `collection_name`, or as the old API's `name`
/// (the `serde` alias of `CollectionBody`), one or the other, never both nor neither (422).
/// Each form is a schema of its own, the same but for that property's name, and the body is
/// one of them.
fn name_alias(doc: &mut Value) -> Result<(), String> {
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("the description has no schemas")?;
    let named = schemas
        .remove("CollectionBody")
        .ok_or("the description has no CollectionBody")?;
    let mut aliased = named.clone();
    let properties = aliased
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .ok_or("CollectionBody has no properties")?;
    let name = properties
        .remove("collection_name")
        .ok_or("CollectionBody has no collection_name")?;
    properties.insert("name".to_owned(), name);
    aliased["required"] = json!(["name"]);
    let description = named.get("description").cloned().unwrap_or(Value::Null);
    schemas.insert("CollectionBodyWithCollectionName".to_owned(), named);
    schemas.insert("CollectionBodyWithName".to_owned(), aliased);
    schemas.insert(
        "CollectionBody".to_owned(),
        json!({
            "description": description,
            "oneOf": [
                {"$ref": "#/components/schemas/CollectionBodyWithCollectionName"},
                {"$ref": "#/components/schemas/CollectionBodyWithName"},
            ],
        }),
    );
    Ok(())
}

/// The schemas a rule applies to.
fn schemas_at(doc: &mut Value, at: At) -> Result<Vec<&mut Value>, String> {
    let found: Vec<&mut Value> = match at {
        At::Schema(pointer) => doc
            .pointer_mut(&format!("/components/schemas/{pointer}"))
            .into_iter()
            .collect(),
        At::Param(operation_id, name) => operations(doc)
            .filter(|op| op["operationId"] == operation_id)
            .flat_map(|op| parameter_schemas(op, name))
            .collect(),
        At::Every(name) => operations(doc)
            .flat_map(|op| parameter_schemas(op, name))
            .collect(),
    };
    if found.is_empty() {
        return Err(format!("the description has nothing at {at:?}"));
    }
    Ok(found)
}

/// Every operation of the description.
fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
}

/// The schema of the operation's parameter `name`, if it has one.
fn parameter_schemas<'a>(operation: &'a mut Value, name: &str) -> Vec<&'a mut Value> {
    operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flat_map(|parameters| parameters.iter_mut())
        .filter(|parameter| parameter["name"] == name)
        .filter_map(|parameter| parameter.get_mut("schema"))
        .collect()
}

/// Sets each of `keywords` on the schema `target`.
fn merge(target: &mut Value, keywords: &Value) -> Result<(), String> {
    let (Some(target), Some(keywords)) = (target.as_object_mut(), keywords.as_object()) else {
        return Err(format!(
            "a rule's target or keywords are not objects: {keywords}"
        ));
    };
    for (keyword, value) in keywords {
        target.insert(keyword.clone(), value.clone());
    }
    Ok(())
}

fn add_link(doc: &mut Value, link: &Link) -> Result<(), String> {
    if !operations(doc).any(|op| op["operationId"] == link.to) {
        return Err(format!("a link goes to {}, which is no operation", link.to));
    }
    let response = operations(doc)
        .find(|op| op["operationId"] == link.from)
        .and_then(|op| op.pointer_mut(&format!("/responses/{}", link.status)))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{} has no {} answer to link from", link.from, link.status))?;
    let parameters: Map<String, Value> = link
        .parameters
        .iter()
        .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
        .collect();
    let mut definition = json!({"operationId": link.to, "parameters": parameters});
    if let Some(body) = link.body {
        let body: Value = serde_json::from_str(body)
            .map_err(|e| format!("the body of the link to {}: {e}", link.to))?;
        definition["requestBody"] = body;
    }
    let links = response
        .entry("links")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| format!("the links of {} are not an object", link.from))?;
    links.insert(link.to.to_owned(), definition);
    Ok(())
}

/// The description, made once.
static DESCRIPTION: LazyLock<Result<Value, String>> = LazyLock::new(description);

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|| async {
            match &*DESCRIPTION {
                Ok(doc) => axum::Json(doc.clone()).into_response(),
                Err(e) => {
                    ApiError::Internal(anyhow::anyhow!("the API description: {e}")).into_response()
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_and_link_finds_its_place() {
        let doc = description().unwrap();
        assert!(doc["paths"].is_object());
    }

    #[test]
    fn the_invisible_class_is_what_the_server_refuses() {
        let class = invisible_class();
        // Controls and white space, U+0000–U+0020 and U+007F–U+00A0, then the soft hyphen.
        assert!(
            class.starts_with(r"\u0000-\u0020\u007f-\u00a0\u00ad"),
            "{class}"
        );
        assert!(class.contains(r"\u2000-\u200f"), "{class}");
        assert!(class.contains(r"\u3000"), "{class}");
        assert!(class.contains(r"\ufeff"), "{class}");
    }
}
