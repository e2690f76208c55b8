//! Legacy read model of collections: table `collections`, one row per collection, soft delete
//! (`is_active = false`). The shape the old system had.

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_core::projection::ProjectionError;
use cutover_core::store::StoredEvent;
use serde::Serialize;
use uuid::Uuid;

use crate::{collection_id, CollectionRow, EventProjector, Statement};

/// The projection's name.
pub const NAME: &str = "collections";

const INSERT: &str = "\
INSERT INTO collections (collection_id, project_id, collection_name, description, is_active,
                         created_at, updated_at, last_sequence)
VALUES ($1, $2, $3, $4, true, $5, $5, $6)
ON CONFLICT (collection_id) DO NOTHING";

const IMPORT: &str = "\
INSERT INTO collections (collection_id, project_id, collection_name, description, is_active,
                         created_at, updated_at, last_sequence)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (collection_id) DO NOTHING";

const UPDATE: &str = "\
UPDATE collections
   SET collection_name = $2, description = $3, updated_at = $4, last_sequence = $5
 WHERE collection_id = $1 AND last_sequence < $5";

const TOUCH: &str = "\
UPDATE collections SET updated_at = $2, last_sequence = $3
 WHERE collection_id = $1 AND last_sequence < $3";

const SOFT_DELETE: &str = "\
UPDATE collections SET is_active = false, updated_at = $2, last_sequence = $3
 WHERE collection_id = $1 AND last_sequence < $3";

const SELECT_ONE: &str = "\
SELECT collection_id, project_id, collection_name, description, is_active, created_at,
       updated_at, last_sequence
  FROM collections
 WHERE project_id = $1 AND collection_id = $2";

const SELECT_PAGE: &str = "\
SELECT collection_id, project_id, collection_name, description, is_active, created_at,
       updated_at, last_sequence
  FROM collections
 WHERE project_id = $1 AND is_active AND collection_id > $2
 ORDER BY collection_id
 LIMIT $3";

/// Projector of the legacy `collections` table.
pub struct LegacyCollections;

impl EventProjector for LegacyCollections {
    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["collections"];
    type Aggregate = Collection;

    fn statement(
        event: &StoredEvent,
        decoded: CollectionEvent,
    ) -> Result<Statement, ProjectionError> {
        let id = collection_id(NAME, event)?;
        Ok(match decoded {
            CollectionEvent::CollectionCreated {
                project_id,
                collection_name,
                description,
            } => sqlx::query(INSERT)
                .bind(id)
                .bind(project_id)
                .bind(collection_name)
                .bind(description)
                .bind(event.recorded_at)
                .bind(event.sequence),
            CollectionEvent::CollectionUpdated {
                collection_name,
                description,
            } => sqlx::query(UPDATE)
                .bind(id)
                .bind(collection_name)
                .bind(description)
                .bind(event.recorded_at)
                .bind(event.sequence),
            CollectionEvent::CollectionResearchLinksSet { .. } => sqlx::query(TOUCH)
                .bind(id)
                .bind(event.recorded_at)
                .bind(event.sequence),
            CollectionEvent::CollectionImported {
                project_id,
                name,
                description,
                is_active,
                created_at,
                updated_at,
            } => sqlx::query(IMPORT)
                .bind(id)
                .bind(project_id)
                .bind(name)
                .bind(description)
                .bind(is_active)
                .bind(created_at)
                .bind(updated_at)
                .bind(event.sequence),
            CollectionEvent::CollectionDeleted {} => sqlx::query(SOFT_DELETE)
                .bind(id)
                .bind(event.recorded_at)
                .bind(event.sequence),
        })
    }
}

/// A row of the legacy `collections` table.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct LegacyCollection {
    pub collection_id: Uuid,
    pub project_id: Uuid,
    pub collection_name: String,
    /// NULL only for a collection imported from an old row whose description was NULL.
    pub description: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub last_sequence: i64,
}

impl CollectionRow for LegacyCollection {
    const SELECT_ONE: &'static str = SELECT_ONE;
    const SELECT_PAGE: &'static str = SELECT_PAGE;
}
