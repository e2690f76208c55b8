//! New read model of collections: table `project_collections`, the project/collection junction
//! with the research links; a deleted collection's row is removed.

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_core::projection::ProjectionError;
use cutover_core::store::StoredEvent;
use serde::Serialize;
use uuid::Uuid;

use crate::{collection_id, CollectionRow, EventProjector, Statement};

/// The projection's name.
pub const NAME: &str = "project_collections";

const INSERT: &str = "\
INSERT INTO project_collections (project_id, collection_id, research_context, tags,
                                 linked_project_question_ids, linked_project_hypothesis_ids,
                                 created_at, updated_at, last_sequence)
VALUES ($1, $2, $3, '{}', '{}', '{}', $4, $4, $5)
ON CONFLICT (project_id, collection_id) DO NOTHING";

/// An imported collection that was deleted in the old system has no row here.
const IMPORT: &str = "\
INSERT INTO project_collections (project_id, collection_id, research_context, tags,
                                 linked_project_question_ids, linked_project_hypothesis_ids,
                                 created_at, updated_at, last_sequence)
SELECT $1, $2, $3, '{}', '{}', '{}', $4, $5, $6
 WHERE $7
ON CONFLICT (project_id, collection_id) DO NOTHING";

const UPDATE_CONTEXT: &str = "\
UPDATE project_collections
   SET research_context = $2, updated_at = $3, last_sequence = $4
 WHERE collection_id = $1 AND last_sequence < $4";

const UPDATE_LINKS: &str = "\
UPDATE project_collections
   SET tags = $2, linked_project_question_ids = $3, linked_project_hypothesis_ids = $4,
       updated_at = $5, last_sequence = $6
 WHERE collection_id = $1 AND last_sequence < $6";

const DELETE: &str = "DELETE FROM project_collections WHERE collection_id = $1";

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

impl EventProjector for ProjectCollections {
    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["project_collections"];
    type Aggregate = Collection;

    fn statement(
        event: &StoredEvent,
        decoded: CollectionEvent,
    ) -> Result<Statement, ProjectionError> {
        let id = collection_id(NAME, event)?;
        Ok(match decoded {
            CollectionEvent::CollectionCreated {
                project_id,
                description,
                ..
            } => sqlx::query(INSERT)
                .bind(project_id)
                .bind(id)
                .bind(description)
                .bind(event.recorded_at)
                .bind(event.sequence),
            CollectionEvent::CollectionUpdated { description, .. } => sqlx::query(UPDATE_CONTEXT)
                .bind(id)
                .bind(description)
                .bind(event.recorded_at)
                .bind(event.sequence),
            CollectionEvent::CollectionResearchLinksSet {
                tags,
                question_ids,
                hypothesis_ids,
            } => sqlx::query(UPDATE_LINKS)
                .bind(id)
                .bind(tags)
                .bind(question_ids)
                .bind(hypothesis_ids)
                .bind(event.recorded_at)
                .bind(event.sequence),
            CollectionEvent::CollectionImported {
                project_id,
                description,
                is_active,
                created_at,
                updated_at,
                ..
            } => sqlx::query(IMPORT)
                .bind(project_id)
                .bind(id)
                // No description in the old row: the new shape has an empty research context.
                .bind(description.unwrap_or_default())
                .bind(created_at)
                .bind(updated_at)
                .bind(event.sequence)
                .bind(is_active),
            CollectionEvent::CollectionDeleted {} => sqlx::query(DELETE).bind(id),
        })
    }
}

/// A row of the new `project_collections` table.
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
