//! The collections domain as followed: the old `collections` table's rows, what Cutover shows
//! of a collection (its read source's row), and the commands that take a collection to the
//! state of an old row.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionCommand};
use cutover_core::import::{adopt, OldCollectionRow};
use cutover_core::read_source::{Domain, ReadSource};
use sqlx::PgConnection;
use uuid::Uuid;

use serde_json::{json, Value as Json};

use super::handover::Difference;
use super::pgoutput::Value;
use super::source::{Change, Source};
use super::timestamp;
use crate::collections::{self, LegacyCollection};

/// The collections domain, followed from the old `collections` table.
pub struct Collections;

impl Source for Collections {
    type Aggregate = Collection;
    type Row = OldCollectionRow;
    type Shown = Shown;
    const DOMAIN: Domain = Domain::Collections;
    const TABLE: &'static str = "collections";
    const KEY: &'static str = "collection_id";
    const KEY_TYPE: &'static str = "uuid";
    const COLUMNS: &'static str =
        "collection_id, project_id, collection_name, description, is_active, created_at, updated_at";

    fn id(row: &Self::Row) -> String {
        row.collection_id.to_string()
    }

    fn command_name(command: &CollectionCommand) -> &'static str {
        command.name()
    }

    fn read(columns: &HashMap<&str, &Value>) -> Result<(Self::Row, Vec<&'static str>), String> {
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
                differences(row, find(&legacy_rows, id), find(&new_rows, id))
            })
            .collect())
    }

    async fn held(
        conn: &mut PgConnection,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, bool)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT collection_id::text, is_active FROM collections
              WHERE $1::text IS NULL OR collection_id > $1::uuid
              ORDER BY collection_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await
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
    let mut unchanged = Vec::new();
    let mut text = |name: &'static str| -> Result<Option<String>, String> {
        match columns.get(name) {
            None => Err(format!("the old table has no column {name}")),
            Some(Value::Null) => Ok(None),
            Some(Value::Unchanged) => {
                unchanged.push(name);
                Ok(None)
            }
            Some(Value::Text(text)) => Ok(Some(text.clone())),
        }
    };
    let id = text("collection_id")?.ok_or("collection_id is NULL")?;
    let project_id = text("project_id")?;
    let collection_name = text("collection_name")?;
    let description = text("description")?;
    let is_active = text("is_active")?;
    let created_at = text("created_at")?;
    let updated_at = text("updated_at")?;
    let uuid = |name: &str, value: &str| {
        Uuid::parse_str(value).map_err(|_| format!("{name} is not a UUID: {value:?}"))
    };
    let row = OldCollectionRow {
        collection_id: uuid("collection_id", &id)?,
        project_id: project_id.map(|p| uuid("project_id", &p)).transpose()?,
        collection_name,
        description,
        is_active: is_active
            .map(|value| match value.as_str() {
                "t" => Ok(true),
                "f" => Ok(false),
                other => Err(format!("is_active is not a boolean: {other:?}")),
            })
            .transpose()?,
        created_at: created_at
            .map(|t| timestamp("created_at", &t))
            .transpose()?,
        updated_at: updated_at
            .map(|t| timestamp("updated_at", &t))
            .transpose()?,
    };
    Ok((row, unchanged))
}

/// The fields on which an old row and the models' rows disagree (a row either model lacks is
/// one difference, of `collection_id`). NULL flags and times, which the models cannot hold,
/// compare as Cutover adopts them (active; the other time; both NULL: not compared).
fn differences(
    row: &OldCollectionRow,
    legacy: Option<LegacyCollection>,
    new: Option<LegacyCollection>,
) -> Vec<Difference> {
    let id = row.collection_id;
    let (Some(legacy), Some(new)) = (&legacy, &new) else {
        let held = |c: &Option<LegacyCollection>| c.as_ref().map_or(Json::Null, |_| json!(id));
        return vec![Difference {
            id: id.to_string(),
            field: "collection_id",
            old: json!(id),
            legacy: held(&legacy),
            new: held(&new),
        }];
    };
    let times = (row.created_at.is_some() || row.updated_at.is_some())
        .then(|| row.times(DateTime::<Utc>::UNIX_EPOCH));
    let fields = |c: &LegacyCollection| {
        [
            ("project_id", json!(c.project_id)),
            ("collection_name", json!(c.collection_name)),
            ("description", json!(c.description)),
            ("is_active", json!(c.is_active)),
            ("created_at", json!(c.created_at)),
            ("updated_at", json!(c.updated_at)),
        ]
    };
    let expected = [
        json!(row.project_id),
        json!(row.collection_name),
        json!(row.description),
        json!(row.is_active.unwrap_or(true)),
        times.map_or(json!(legacy.created_at), |(created, _)| json!(created)),
        times.map_or(json!(legacy.updated_at), |(_, updated)| json!(updated)),
    ];
    fields(legacy)
        .into_iter()
        .zip(fields(new))
        .zip(expected)
        .filter(|(((_, l), (_, n)), old)| old != l || old != n)
        .map(|(((field, l), (_, n)), old)| Difference {
            id: id.to_string(),
            field,
            old,
            legacy: l,
            new: n,
        })
        .collect()
}
