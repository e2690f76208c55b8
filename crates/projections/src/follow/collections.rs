//! The collections domain as followed: the old `collections` table's rows, what Cutover shows
//! of a collection (its read source's row), and the commands that take a collection to the
//! state of an old row.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionCommand};
use cutover_core::import::{adopt, OldCollectionRow};
use cutover_engine::read_source::{Domain, ReadSource};
use sqlx::PgConnection;
use uuid::Uuid;

use super::pgoutput::Value;
use super::source::{self, Change, Columns, Difference, OldTable, Source};
use crate::collections::{self, LegacyCollection};

/// The collections domain, followed from the old `collections` table.
pub struct Collections;

impl Source for Collections {
    type Aggregate = Collection;
    type Row = OldCollectionRow;
    type Shown = Shown;
    const DOMAIN: Domain = Domain::Collections;
    const TABLES: &'static [OldTable] = &[OldTable {
        name: "collections",
        model_table: "collections",
        must_be_old: "is_active",
    }];
    const KEY: &'static str = "collection_id";
    const KEY_TYPE: &'static str = "uuid";
    const COLUMNS: &'static str =
        "collection_id, project_id, collection_name, description, is_active, created_at, updated_at";

    fn key(row: &Self::Row) -> String {
        row.collection_id.to_string()
    }

    fn aggregate_id(row: &Self::Row) -> Result<String, String> {
        Ok(Self::key(row))
    }

    fn command_name(command: &CollectionCommand) -> &'static str {
        command.name()
    }

    fn read(
        _table: &'static str,
        columns: &HashMap<&str, &Value>,
    ) -> Result<(Self::Row, Vec<&'static str>), String> {
        read_row(columns)
    }

    async fn shown(
        conn: &mut PgConnection,
        source: ReadSource,
        ids: &[String],
    ) -> Result<HashMap<String, Self::Shown>, sqlx::Error> {
        let ids: Vec<Uuid> = ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        Ok(collections::answers_by_id(conn, source, &ids)
            .await?
            .into_iter()
            .map(|c| (c.collection_id.to_string(), Shown::from(c)))
            .collect())
    }

    async fn compare(
        conn: &mut PgConnection,
        rows: &[Self::Row],
    ) -> Result<Vec<Difference>, sqlx::Error> {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.collection_id).collect();
        let legacy_rows = collections::answers_by_id(conn, ReadSource::Legacy, &ids).await?;
        let new_rows = collections::answers_by_id(conn, ReadSource::New, &ids).await?;
        let find = |rows: &[LegacyCollection], id: Uuid| {
            rows.iter().find(|c| c.collection_id == id).cloned()
        };
        Ok(rows
            .iter()
            .flat_map(|row| {
                let id = row.collection_id;
                let (legacy, new) = (find(&legacy_rows, id), find(&new_rows, id));
                differences(row, legacy.as_ref(), new.as_ref())
            })
            .collect())
    }

    fn decide(
        change: &Change<Self::Row>,
        shown: Option<&Self::Shown>,
        _aggregate: &Self::Aggregate,
        deleted_at: Option<DateTime<Utc>>,
    ) -> Result<(Vec<CollectionCommand>, Option<Self::Shown>), String> {
        decide(change, shown, deleted_at)
    }
}

/// A collection as Cutover shows it: what a change of the old row is compared with.
#[derive(Debug, Clone)]
pub struct Shown {
    project_id: Uuid,
    name: String,
    description: Option<String>,
    is_active: bool,
    updated_at: DateTime<Utc>,
}

impl From<LegacyCollection> for Shown {
    fn from(c: LegacyCollection) -> Self {
        Self {
            project_id: c.project_id,
            name: c.collection_name,
            description: c.description,
            is_active: c.is_active,
            updated_at: c.updated_at,
        }
    }
}

/// The commands that take the collection to the state of `change`'s row from `current` (as
/// Cutover shows it, if it has it), and how it then shows (`None`: not held); or why the
/// domain refuses the change. A change keeps the old row's times: an update or a soft delete
/// its `updated_at`, a row deleted outright the time its old transaction committed
/// (`deleted_at`).
fn decide(
    change: &Change<OldCollectionRow>,
    current: Option<&Shown>,
    deleted_at: Option<DateTime<Utc>>,
) -> Result<(Vec<CollectionCommand>, Option<Shown>), String> {
    let mut row = change.row.clone();
    let Some(project_id) = row.project_id else {
        return Err(if change.deleted {
            "a delete that does not say the row's project: set REPLICA IDENTITY FULL on \
             the old table"
                .into()
        } else {
            "project_id is NULL".into()
        });
    };
    // A collection Cutover holds in another project is, for this row, one it does not hold.
    let Some(current) = current.filter(|c| c.project_id == project_id || !change.deleted) else {
        if change.deleted {
            // Deleted before Cutover saw it, or never imported: nothing to take away.
            return Ok((Vec::new(), None));
        }
        if !change.unchanged.is_empty() {
            return Err(format!(
                "the update left {} unchanged, and Cutover does not hold the collection \
                 to know {}",
                change.unchanged.join(", "),
                if change.unchanged.len() == 1 {
                    "it"
                } else {
                    "them"
                }
            ));
        }
        let now = Utc::now();
        let command = adopt(&row, now)?;
        let (name, description) = row.text()?;
        let shown = Shown {
            project_id,
            name: name.as_str().to_owned(),
            description: description.map(|d| d.as_str().to_owned()),
            is_active: row.is_active.unwrap_or(true),
            updated_at: row.times(now).1,
        };
        return Ok((vec![command], Some(shown)));
    };
    if current.project_id != project_id {
        return Err(format!(
            "collection {} is in another project in Cutover: a collection cannot move",
            row.collection_id
        ));
    }
    if change.deleted {
        let gone = current
            .is_active
            .then_some(CollectionCommand::DeleteCollection {
                project_id,
                updated_at: deleted_at,
            });
        let shown = Shown {
            is_active: false,
            updated_at: deleted_at.unwrap_or(current.updated_at),
            ..current.clone()
        };
        return Ok((gone.into_iter().collect(), Some(shown)));
    }
    for column in &change.unchanged {
        match *column {
            "collection_name" => row.collection_name = Some(current.name.clone()),
            "description" => row.description.clone_from(&current.description),
            "updated_at" => row.updated_at = Some(current.updated_at),
            _ => {}
        }
    }
    converge(&row, current)
}

/// The commands that take `current` to the state of `row`, and how it then shows; or why the
/// domain refuses it.
fn converge(
    row: &OldCollectionRow,
    current: &Shown,
) -> Result<(Vec<CollectionCommand>, Option<Shown>), String> {
    let project_id = current.project_id;
    let (name, description) = row.text()?;
    let active = row.is_active.unwrap_or(true);
    // A NULL time is not compared: the read models cannot show it.
    let updated_at = row.updated_at;
    let shown = Shown {
        project_id,
        name: name.as_str().to_owned(),
        description: description.as_ref().map(|d| d.as_str().to_owned()),
        is_active: active,
        updated_at: updated_at.unwrap_or_else(Utc::now),
    };
    let mut commands = Vec::new();
    let changed = shown.name != current.name
        || shown.description != current.description
        || updated_at.is_some_and(|at| at != current.updated_at);
    if changed && !current.is_active {
        return Err("a deleted collection changed: Cutover's deleted collections do not".into());
    }
    match (current.is_active, active) {
        (true, false) => {
            if shown.name != current.name || shown.description != current.description {
                commands.push(CollectionCommand::UpdateCollection {
                    project_id,
                    name,
                    description,
                    updated_at,
                });
            }
            commands.push(CollectionCommand::DeleteCollection {
                project_id,
                updated_at,
            });
        }
        (false, true) => {
            return Err(
                "a deleted collection became active again: Cutover's collections are not restored"
                    .into(),
            )
        }
        _ if changed => commands.push(CollectionCommand::UpdateCollection {
            project_id,
            name,
            description,
            updated_at,
        }),
        _ => {}
    }
    Ok((commands, Some(shown)))
}

/// The old row of the stream's `columns`, and the columns it left unchanged; or why it cannot
/// be read.
fn read_row(
    columns: &HashMap<&str, &Value>,
) -> Result<(OldCollectionRow, Vec<&'static str>), String> {
    let mut columns = Columns::new(columns);
    let uuid = |name: &str, value: &str| {
        Uuid::parse_str(value).map_err(|_| format!("{name} is not a UUID: {value:?}"))
    };
    let id = columns
        .text("collection_id")?
        .ok_or("collection_id is NULL")?;
    let row = OldCollectionRow {
        collection_id: uuid("collection_id", &id)?,
        project_id: columns
            .text("project_id")?
            .map(|p| uuid("project_id", &p))
            .transpose()?,
        collection_name: columns.text("collection_name")?,
        description: columns.text("description")?,
        is_active: columns.boolean("is_active")?,
        created_at: columns.time("created_at")?,
        updated_at: columns.time("updated_at")?,
    };
    Ok((row, columns.unchanged))
}

/// The fields on which an old row and the models' rows disagree (a row either model lacks is
/// one difference, of `collection_id`). NULL flags and times, which the models cannot hold,
/// compare as Cutover adopts them (active; the other time; both NULL: not compared).
fn differences(
    row: &OldCollectionRow,
    legacy: Option<&LegacyCollection>,
    new: Option<&LegacyCollection>,
) -> Vec<Difference> {
    let times = (row.created_at.is_some() || row.updated_at.is_some())
        .then(|| row.times(DateTime::<Utc>::UNIX_EPOCH));
    let adopted = OldCollectionRow {
        is_active: Some(row.is_active.unwrap_or(true)),
        created_at: times
            .map(|(created, _)| created)
            .or(legacy.map(|c| c.created_at)),
        updated_at: times
            .map(|(_, updated)| updated)
            .or(legacy.map(|c| c.updated_at)),
        ..row.clone()
    };
    source::differences(
        &row.collection_id.to_string(),
        "collection_id",
        &adopted,
        legacy,
        new,
    )
}
