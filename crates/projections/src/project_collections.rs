//! New read model of collections: table `project_collections`, the project/collection junction
//! with the research links; a deleted collection's row is removed.

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_core::projection::ProjectionError;
use cutover_core::rows::{timestamp, Change, Table};
use cutover_core::store::StoredEvent;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{collection_id, column, CollectionRow, Fold};

/// The projection's name.
pub const NAME: &str = "project_collections";

/// The new `project_collections` table.
pub static TABLE: Table = Table {
    name: "project_collections",
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
    ],
    key: &["project_id", "collection_id"],
    // Events after the first name the collection only; its id is unique on its own.
    address: &["collection_id"],
    indexes: &["project_collections_collection_id_key"],
};

static TABLES: [&Table; 1] = [&TABLE];

const SELECT_ONE: &str = "\
SELECT project_id, collection_id, research_context, tags, linked_project_question_ids,
       linked_project_hypothesis_ids, created_at, updated_at, last_sequence
  FROM project_collections
 WHERE project_id = $1 AND collection_id = $2";

const SELECT_PAGE: &str = "\
SELECT project_id, collection_id, research_context, tags, linked_project_question_ids,
       linked_project_hypothesis_ids, created_at, updated_at, last_sequence
  FROM project_collections
 WHERE project_id = $1 AND collection_id > $2
 ORDER BY collection_id
 LIMIT $3";

/// Projector of the new `project_collections` table.
pub struct ProjectCollections;

impl Fold for ProjectCollections {
    const NAME: &'static str = NAME;
    type Aggregate = Collection;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn project(
        event: &StoredEvent,
        decoded: CollectionEvent,
    ) -> Result<Vec<Change>, ProjectionError> {
        let id = collection_id(NAME, event)?;
        let at = timestamp(event.recorded_at);
        let sequence = event.sequence;
        let row = |project_id: Uuid, context: &str, created: Value, updated: Value| {
            Change::insert(
                &TABLE,
                json!({
                    "project_id": project_id, "collection_id": id, "research_context": context,
                    "tags": [], "linked_project_question_ids": [],
                    "linked_project_hypothesis_ids": [], "created_at": created,
                    "updated_at": updated, "last_sequence": sequence,
                }),
            )
        };
        Ok(match decoded {
            CollectionEvent::CollectionCreated {
                project_id,
                description,
                ..
            } => vec![row(project_id, &description, at.clone(), at)],
            // An inactive old row was deleted in the old system: the new model never lists it.
            CollectionEvent::CollectionImported {
                project_id,
                description,
                is_active,
                created_at,
                updated_at,
                ..
            } => match is_active {
                true => vec![row(
                    project_id,
                    description.as_deref().unwrap_or_default(),
                    timestamp(created_at),
                    timestamp(updated_at),
                )],
                false => Vec::new(),
            },
            CollectionEvent::CollectionUpdated { description, .. } => vec![Change::update(
                &TABLE,
                json!({
                    "collection_id": id, "research_context": description, "updated_at": at,
                    "last_sequence": sequence,
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
            CollectionEvent::CollectionDeleted {} => {
                vec![Change::delete(&TABLE, json!({"collection_id": id}))]
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
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

impl CollectionRow for ProjectCollection {
    const SELECT_ONE: &'static str = SELECT_ONE;
    const SELECT_PAGE: &'static str = SELECT_PAGE;
}
