//! New read model of collections: table `project_collections`, the project/collection junction
//! with the research links. It also holds what the old answers show (the name, the description
//! as the old row had it, whether the collection is active), so that it can serve the old
//! clients alone: a deleted collection keeps its row with `is_active = false`, and the new
//! shape's readers list only active rows.

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_engine::compare::Comparison;
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{timestamp, Change, Returned, Table};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::collections::CollectionQueries;
use std::sync::Arc;

use cutover_engine::projection::Projector;

use crate::fold::{collection_id, column, Fold};

/// The projection's name.
pub const NAME: &str = "project_collections";

/// The new `project_collections` table.
pub static TABLE: Table = Table {
    name: "project_collections",
    aggregate: Some("collection_id::text"),
    returned: Returned::Rows,
    columns: &[
        column!("project_id", "uuid", Keep),
        column!("collection_id", "uuid", Keep),
        column!("research_context", "text", Set),
        column!("tags", "text[]", Set),
        column!("linked_project_question_ids", "uuid[]", Set),
        column!("linked_project_hypothesis_ids", "uuid[]", Set),
        column!("created_at", "timestamp with time zone", Keep),
        column!("updated_at", "timestamp with time zone", Set),
        column!("last_sequence", "bigint", Set),
        column!("collection_name", "text", Set),
        column!("description", "text", Set),
        column!("is_active", "boolean", Set),
    ],
    key: &["project_id", "collection_id"],
    // Events after the first name the collection only; its id is unique on its own.
    address: &["collection_id"],
    indexes: &["project_collections_collection_id_key"],
};

static TABLES: [&Table; 1] = [&TABLE];

/// What the old answers show, in both models.
static COMPARED: [Comparison; 1] = [Comparison {
    legacy: &crate::collections::TABLE,
    legacy_rows: None,
    new: &TABLE,
    key: &[("collection_id", "(l).collection_id", "(n).collection_id")],
    joined: 1,
    fields: &[
        ("project_id", "(l).project_id", "(n).project_id"),
        (
            "collection_name",
            "(l).collection_name",
            "(n).collection_name",
        ),
        ("description", "(l).description", "(n).description"),
        // an imported NULL description is an empty research context
        (
            "description/research_context",
            "coalesce((l).description, '')",
            "(n).research_context",
        ),
        ("is_active", "(l).is_active", "(n).is_active"),
        ("created_at", "(l).created_at", "(n).created_at"),
        ("updated_at", "(l).updated_at", "(n).updated_at"),
        ("last_sequence", "(l).last_sequence", "(n).last_sequence"),
    ],
}];

/// The new shape's queries: active collections only.
pub static NEW_SHAPE: CollectionQueries = CollectionQueries {
    table: TABLE.name,
    one: "\
SELECT project_id, collection_id, research_context, tags, linked_project_question_ids,
       linked_project_hypothesis_ids, created_at, updated_at, last_sequence
  FROM project_collections
 WHERE project_id = $1 AND collection_id = $2 AND is_active",
    page: "\
SELECT project_id, collection_id, research_context, tags, linked_project_question_ids,
       linked_project_hypothesis_ids, created_at, updated_at, last_sequence
  FROM project_collections
 WHERE project_id = $1 AND collection_id > $2 AND is_active
 ORDER BY collection_id
 LIMIT $3",
};

/// Projector of the new `project_collections` table.
pub struct ProjectCollections;

/// This read model's projector, maintained inline: the crate's build script finds it by this
/// function and lists it in [`crate::inline_projectors`].
pub fn projector() -> Arc<dyn Projector> {
    crate::fold::inline(ProjectCollections)
}

impl Fold for ProjectCollections {
    const NAME: &'static str = NAME;
    const DOMAIN: Domain = Domain::Collections;
    const SHAPE: ReadSource = ReadSource::New;
    type Aggregate = Collection;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn compared() -> &'static [Comparison] {
        &COMPARED
    }

    fn project(
        event: &StoredEvent,
        decoded: CollectionEvent,
    ) -> Result<Vec<Change>, ProjectionError> {
        let id = collection_id(NAME, event)?;
        let at = timestamp(event.recorded_at);
        let sequence = event.sequence;
        let row = |project_id: Uuid,
                   name: &str,
                   description: Option<&str>,
                   active: bool,
                   created: Value,
                   updated: Value| {
            Change::insert(
                &TABLE,
                json!({
                    "project_id": project_id, "collection_id": id,
                    "research_context": description.unwrap_or_default(),
                    "tags": [], "linked_project_question_ids": [],
                    "linked_project_hypothesis_ids": [], "created_at": created,
                    "updated_at": updated, "last_sequence": sequence,
                    "collection_name": name, "description": description, "is_active": active,
                }),
            )
        };
        Ok(match decoded {
            CollectionEvent::CollectionCreated {
                project_id,
                collection_name,
                description,
            } => vec![row(
                project_id,
                &collection_name,
                Some(&description),
                true,
                at.clone(),
                at,
            )],
            CollectionEvent::CollectionImported {
                project_id,
                name,
                description,
                is_active,
                created_at,
                updated_at,
            } => vec![row(
                project_id,
                &name,
                description.as_deref(),
                is_active,
                timestamp(created_at),
                timestamp(updated_at),
            )],
            CollectionEvent::CollectionUpdated {
                collection_name,
                description,
                updated_at,
            } => vec![Change::update(
                &TABLE,
                json!({
                    "collection_id": id,
                    "research_context": description.as_deref().unwrap_or_default(),
                    "collection_name": collection_name, "description": description,
                    "updated_at": updated_at.map_or(at, timestamp), "last_sequence": sequence,
                }),
            )],
            CollectionEvent::CollectionResearchLinksSet {
                tags,
                question_ids,
                hypothesis_ids,
            } => vec![Change::update(
                &TABLE,
                json!({
                    "collection_id": id, "tags": tags,
                    "linked_project_question_ids": question_ids,
                    "linked_project_hypothesis_ids": hypothesis_ids, "updated_at": at,
                    "last_sequence": sequence,
                }),
            )],
            CollectionEvent::CollectionDeleted { updated_at } => vec![Change::update(
                &TABLE,
                json!({
                    "collection_id": id, "is_active": false,
                    "updated_at": updated_at.map_or(at, timestamp), "last_sequence": sequence,
                }),
            )],
        })
    }
}

/// A collection in the new shape: the project/collection junction with its research links.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProjectCollection {
    pub project_id: Uuid,
    pub collection_id: Uuid,
    pub research_context: String,
    pub tags: Vec<String>,
    pub linked_project_question_ids: Vec<Uuid>,
    pub linked_project_hypothesis_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub last_sequence: i64,
}
