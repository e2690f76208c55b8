//! The OpenAPI 3.1 description of every route, served at `/openapi.json`.
//!
//! utoipa generates it from the handlers' annotations and their request types ([`ApiDoc`]),
//! whose fields and parameters name the bounds the server enforces ([`crate::bounds`], from the
//! constants it checks); [`description`] then writes each bound in place and adds the links
//! between operations ([`LINKS`]), one table.

use std::sync::LazyLock;

use axum::response::IntoResponse as _;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::bounds;
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
            {"type": "string", "pattern": bounds::no_nul()},
            {"type": "array", "items": itself},
            {"type": "object", "propertyNames": {"pattern": bounds::no_nul()}, "additionalProperties": itself},
        ],
    })
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
    inline_bounds(&mut doc)?;
    for link in LINKS {
        add_link(&mut doc, link)?;
    }
    name_alias(&mut doc)?;
    Ok(doc)
}

/// Writes each bound ([`crate::bounds`]) in place of every reference to it, with the
/// referring schema's own keywords (its description), and drops the bounds from the
/// components.
///
/// # Errors
/// A description without components.
fn inline_bounds(doc: &mut Value) -> Result<(), String> {
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or("the description has no schemas")?;
    let mut inlined = Map::new();
    schemas.retain(|name, schema| {
        if let Some(carried) = schema.get(bounds::COMPONENT).cloned() {
            *schema = carried;
        }
        match schema.get(bounds::INLINE) {
            Some(bound) => {
                inlined.insert(format!("#/components/schemas/{name}"), bound.clone());
                false
            }
            None => true,
        }
    });
    replace_references(doc, &inlined);
    Ok(())
}

/// Replaces, everywhere in `node`, a reference to one of `inlined` by its schema, and a
/// bound utoipa wrote in place (a parameter's) by the schema it carries.
fn replace_references(node: &mut Value, inlined: &Map<String, Value>) {
    match node {
        Value::Object(object) => {
            let bound = match object.remove(bounds::INLINE) {
                Some(carried) => Some(carried),
                None => object
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|target| inlined.get(target))
                    .cloned(),
            };
            if let Some(Value::Object(bound)) = bound {
                object.remove("$ref");
                for (keyword, value) in bound {
                    object.entry(keyword).or_insert(value);
                }
            }
            for value in object.values_mut() {
                replace_references(value, inlined);
            }
        }
        Value::Array(items) => {
            for item in items {
                replace_references(item, inlined);
            }
        }
        _ => {}
    }
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

/// Every operation of the description.
fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
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
    fn every_bound_and_link_finds_its_place() {
        let doc = description().unwrap();
        std::fs::write(
            "/tmp/doc_after.json",
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
        assert!(doc["paths"].is_object());
    }
}
