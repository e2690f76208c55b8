//! Adopting an existing deployment (`cutover import-legacy`): adopts an existing deployment's legacy rows. Each row of
//! `import_collections` becomes one genesis event (`CollectionImported`) through the normal
//! command path, so both read models get it in the same transaction. A collection that already
//! has a history is left alone: a second run appends nothing.

use crate::domain::collection::{Collection, CollectionCommand, CollectionName, Description};
use crate::store::{CommandError, EventStore};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

/// Rows read per query.
const PAGE: i64 = 1_000;

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub appended: u64,
    pub already_present: u64,
    /// Rows refused, with why.
    pub refused: Vec<(Uuid, String)>,
}

type Row = (
    Uuid,
    Uuid,
    String,
    String,
    bool,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Importing stopped; rows imported before stay imported, and a re-run continues.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read import_collections")]
    Read(#[from] sqlx::Error),
    #[error("cannot import collection {id}")]
    Command {
        id: Uuid,
        #[source]
        source: CommandError<crate::domain::collection::CollectionError>,
    },
}

/// Imports every row of `import_collections`.
///
/// # Errors
/// See [`ImportError`].
pub async fn import_collections(store: &EventStore) -> Result<Imported, ImportError> {
    let mut outcome = Imported::default();
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT collection_id, project_id, collection_name, description, is_active,
                    created_at, updated_at
               FROM import_collections
              WHERE collection_id > $1
              ORDER BY collection_id
              LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(store.pool())
        .await?;
        let Some(last) = rows.last() else {
            return Ok(outcome);
        };
        after = last.0;
        for (id, project_id, name, description, is_active, created_at, updated_at) in rows {
            let parsed = CollectionName::parse(&name)
                .and_then(|name| Ok((name, Description::parse(&description)?)));
            let (name, description) = match parsed {
                Ok(valid) => valid,
                Err(e) => {
                    outcome.refused.push((id, e.to_string()));
                    continue;
                }
            };
            let command = CollectionCommand::ImportCollection {
                project_id,
                name,
                description,
                is_active,
                created_at,
                updated_at,
            };
            let metadata = json!({ "command": command.name() });
            let committed = store
                .execute::<Collection>(&id.to_string(), command, &(), None, &metadata)
                .await;
            let committed = committed.map_err(|source| ImportError::Command { id, source })?;
            if committed.events.is_empty() {
                outcome.already_present += 1;
            } else {
                outcome.appended += 1;
            }
        }
    }
}
