//! Adopting an existing deployment (`cutover import-legacy`): each row of `import_collections`
//! becomes one genesis event (`CollectionImported`) through the normal command path, so both
//! read models get it in the same transaction. The staging table is consumed: a row imported,
//! or whose collection already has a history (left alone: importing twice appends once), is
//! deleted from it; a refused row stays, its `refused` column saying why, so that once fixed the
//! next run imports it.

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

/// A row of the old system's `collections` table; every column but the id may be NULL, as
/// in the old table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct OldCollectionRow {
    pub collection_id: Uuid,
    pub project_id: Option<Uuid>,
    pub collection_name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl OldCollectionRow {
    /// The row's name and description (`None` where NULL) as the domain holds them, or why
    /// the domain refuses them.
    ///
    /// # Errors
    /// The domain's rule the name or description breaks.
    pub fn text(&self) -> Result<(CollectionName, Option<Description>), String> {
        let name = CollectionName::parse(self.collection_name.as_deref().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let description = self
            .description
            .as_deref()
            .map(Description::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok((name, description))
    }

    /// The row's creation and update times as Cutover keeps them: a missing one is the other
    /// one, or `now` when both are missing.
    pub fn times(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let created_at = self.created_at.or(self.updated_at).unwrap_or(now);
        (created_at, self.updated_at.unwrap_or(created_at))
    }
}

/// Importing stopped; rows imported before stay imported, and a re-run continues.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read or update import_collections")]
    Read(#[from] sqlx::Error),
    #[error("cannot import collection {id}")]
    Command {
        id: Uuid,
        #[source]
        source: CommandError<crate::domain::collection::CollectionError>,
    },
}

/// Imports every row of `import_collections`, deleting the rows it imports (or finds already
/// imported) and marking the ones it refuses.
///
/// # Errors
/// See [`ImportError`].
pub async fn import_collections(store: &EventStore) -> Result<Imported, ImportError> {
    let mut outcome = Imported::default();
    let mut after = Uuid::nil();
    let imported_at = Utc::now();
    loop {
        let rows: Vec<OldCollectionRow> = sqlx::query_as(
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
        after = last.collection_id;
        let (mut consumed, refused_before) =
            (Vec::with_capacity(rows.len()), outcome.refused.len());
        for row in rows {
            let id = row.collection_id;
            let command = match adopt(&row, imported_at) {
                Ok(command) => command,
                Err(reason) => {
                    outcome.refused.push((id, reason));
                    continue;
                }
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
            consumed.push(id);
        }
        settle(store, &consumed, &outcome.refused[refused_before..]).await?;
    }
}

/// Deletes the staging rows of `consumed` (their collections have their genesis events, so a
/// run that stopped before this finds them already imported and deletes them then), and records
/// why each of `refused` was refused.
async fn settle(
    store: &EventStore,
    consumed: &[Uuid],
    refused: &[(Uuid, String)],
) -> Result<(), sqlx::Error> {
    let (ids, reasons): (Vec<Uuid>, Vec<&str>) = refused
        .iter()
        .map(|(id, reason)| (*id, reason.as_str()))
        .unzip();
    sqlx::query(
        "WITH consumed AS (DELETE FROM import_collections WHERE collection_id = ANY($1))
         UPDATE import_collections AS staged SET refused = r.reason
           FROM unnest($2::uuid[], $3::text[]) AS r (id, reason)
          WHERE staged.collection_id = r.id",
    )
    .bind(consumed)
    .bind(ids)
    .bind(reasons)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The command that adopts an old row, or why the row is refused. NULLs map as the old
/// system read them: no description stays no description (`null` in the event and the legacy
/// row, empty in the new shape), no `is_active` flag is an active collection, and a missing
/// timestamp is the other one, or `now` when both are missing.
///
/// # Errors
/// Why the row is refused: no project, or a name or description the domain refuses.
pub fn adopt(row: &OldCollectionRow, now: DateTime<Utc>) -> Result<CollectionCommand, String> {
    let project_id = row.project_id.ok_or("project_id is NULL")?;
    let (name, description) = row.text()?;
    let (created_at, updated_at) = row.times(now);
    Ok(CollectionCommand::ImportCollection {
        project_id,
        name,
        description,
        is_active: row.is_active.unwrap_or(true),
        created_at,
        updated_at,
    })
}
