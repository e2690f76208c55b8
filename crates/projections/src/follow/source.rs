//! What following needs to know of a domain: its old table, how a row of it is read, what
//! Cutover shows of an aggregate, and the commands that take the aggregate to the state of an
//! old row.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cutover_engine::read_source::{Domain, ReadSource};
use sqlx::{PgConnection, PgPool};

use serde_json::Value as Json;

use super::error::FollowError;
use super::pgoutput::Value;

/// One of the old tables a domain is followed from (schema `public`).
pub struct OldTable {
    pub name: &'static str,
    /// Cutover's legacy model table keyed as the old table, and, in SQL over its row, whether
    /// the old table must still hold the row (a deleted one may have been deleted outright
    /// there).
    pub model_table: &'static str,
    pub must_be_old: &'static str,
}

/// One domain as followed from its old tables. (Its async functions' futures are awaited
/// where they are made, never sent elsewhere, so they need not be `Send`.)
#[allow(async_fn_in_trait)]
pub trait Source: Send + Sync + 'static {
    type Aggregate: Aggregate<Services = ()> + 'static;
    /// A row of an old table as it is there (a column may be NULL where the old table allows
    /// it); kept as JSON with a refusal. The copy selects [`Self::COLUMNS`] and the old
    /// table's name as `old_table`.
    type Row: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + serde::Serialize
        + Clone
        + Send
        + Unpin;
    /// What Cutover shows of a row's aggregate, or of the row itself, that a change is
    /// compared with, beyond the aggregate.
    type Shown: Clone + Send;
    const DOMAIN: Domain;
    /// The old tables, each with the same key column and columns.
    const TABLES: &'static [OldTable];
    /// The tables' key column, and the key's type.
    const KEY: &'static str;
    const KEY_TYPE: &'static str;
    /// The columns of [`Self::Row`], as the copy selects them.
    const COLUMNS: &'static str;
    /// In SQL over an old row, the order the copy applies the rows in.
    const ORDER: &'static str = Self::KEY;

    /// An old row's key in its table.
    fn key(row: &Self::Row) -> String;

    /// The id of the aggregate an old row is of, or why the row names none.
    ///
    /// # Errors
    /// The row does not say its aggregate, said in words.
    fn aggregate_id(row: &Self::Row) -> Result<String, String>;

    /// A command's name, as events' metadata records it.
    fn command_name(command: &<Self::Aggregate as Aggregate>::Command) -> &'static str;

    /// The row of old `table` in the stream's `columns` (by name) and the columns an update
    /// left unchanged (large values the stream does not send again); or why it cannot be read.
    ///
    /// # Errors
    /// A column missing or a value the row cannot hold, said in words.
    fn read(
        table: &'static str,
        columns: &HashMap<&str, &Value>,
    ) -> Result<(Self::Row, Vec<&'static str>), String>;

    /// What Cutover's read source shows for the old rows `keys`, by key (those it shows
    /// nothing for are left out).
    async fn shown(
        conn: &mut PgConnection,
        source: ReadSource,
        keys: &[String],
    ) -> Result<HashMap<String, Self::Shown>, sqlx::Error>;

    /// The commands that take `aggregate` (as `shown`, if Cutover shows it) to the state of
    /// `change`'s row, and how it then shows; or why the domain refuses the change.
    /// `deleted_at`: when the old transaction of a deleting change committed.
    ///
    /// # Errors
    /// Why the domain refuses the change.
    #[allow(clippy::type_complexity)]
    fn decide(
        change: &Change<Self::Row>,
        shown: Option<&Self::Shown>,
        aggregate: &Self::Aggregate,
        deleted_at: Option<DateTime<Utc>>,
    ) -> Result<
        (
            Vec<<Self::Aggregate as Aggregate>::Command>,
            Option<Self::Shown>,
        ),
        String,
    >;

    /// The fields on which old `rows` and Cutover's two models disagree, as the old clients
    /// read them (a handover's comparison).
    async fn compare(
        conn: &mut PgConnection,
        rows: &[Self::Row],
    ) -> Result<Vec<Difference>, sqlx::Error>;

    /// What a handover checks beyond the followed rows (old documents derived from them):
    /// how many old rows it compared, and the differences.
    ///
    /// # Errors
    /// A database error.
    async fn check(
        _conn: &mut PgConnection,
        _old: &PgPool,
    ) -> Result<(u64, Vec<Difference>), FollowError> {
        Ok((0, Vec::new()))
    }
}

/// A field an old row and Cutover's models disagree on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// The old row's key (for a collection or a batch, the aggregate's id).
    pub id: String,
    pub field: String,
    /// The old row's value (`null`: no row).
    pub old: Json,
    /// The legacy model's and the new model's (`null`: no row).
    pub legacy: Json,
    pub new: Json,
}

/// One old row as it now is.
#[derive(Clone)]
pub struct Change<R> {
    pub row: R,
    /// Columns the update left unchanged and the stream does not send again (large values).
    pub unchanged: Vec<&'static str>,
    /// The row was deleted (its key, or its whole old row, is in `row`).
    pub deleted: bool,
}

/// A row image's columns, by name, read as text; remembers the columns an update left
/// unchanged (read as NULL).
pub struct Columns<'a> {
    columns: &'a HashMap<&'a str, &'a Value>,
    pub unchanged: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    pub fn new(columns: &'a HashMap<&'a str, &'a Value>) -> Self {
        Self {
            columns,
            unchanged: Vec::new(),
        }
    }

    /// Column `name`'s text.
    ///
    /// # Errors
    /// The table has no such column.
    pub fn text(&mut self, name: &'static str) -> Result<Option<String>, String> {
        match self.columns.get(name) {
            None => Err(format!("the old table has no column {name}")),
            Some(Value::Null) => Ok(None),
            Some(Value::Unchanged) => {
                self.unchanged.push(name);
                Ok(None)
            }
            Some(Value::Text(text)) => Ok(Some(text.clone())),
        }
    }

    /// Column `name` as a `boolean`.
    ///
    /// # Errors
    /// No such column, or not a boolean.
    pub fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, String> {
        self.text(name)?
            .map(|value| match value.as_str() {
                "t" => Ok(true),
                "f" => Ok(false),
                other => Err(format!("{name} is not a boolean: {other:?}")),
            })
            .transpose()
    }

    /// Column `name` as a `timestamptz`.
    ///
    /// # Errors
    /// No such column, or not a time Cutover can hold.
    pub fn time(&mut self, name: &'static str) -> Result<Option<DateTime<Utc>>, String> {
        self.text(name)?.map(|t| timestamp(name, &t)).transpose()
    }
}

/// How an old row compares with the two models' rows of its aggregate, as the old clients
/// read them (`old`: the old row as the models would show it, every value as Cutover adopts
/// it): one difference of the `key` field when either model lacks the aggregate; otherwise
/// each field of the models' answer whose old value is not both models'.
pub fn differences<M: serde::Serialize>(
    id: &str,
    key: &str,
    old: &impl serde::Serialize,
    legacy: Option<&M>,
    new: Option<&M>,
) -> Vec<Difference> {
    differences_by(id, key, old, legacy, new, |a, b| a == b)
}

/// [`differences`], with `same` saying whether two values of a field agree.
pub fn differences_by<M: serde::Serialize>(
    id: &str,
    key: &str,
    old: &impl serde::Serialize,
    legacy: Option<&M>,
    new: Option<&M>,
    same: impl Fn(&Json, &Json) -> bool,
) -> Vec<Difference> {
    let (Some(legacy), Some(new)) = (legacy, new) else {
        let held = |m: Option<&M>| m.map_or(Json::Null, |_| Json::from(id));
        return vec![Difference {
            id: id.to_owned(),
            field: key.to_owned(),
            old: Json::from(id),
            legacy: held(legacy),
            new: held(new),
        }];
    };
    let json = |value: serde_json::Result<Json>| value.unwrap_or_default();
    let (old, legacy, new) = (
        json(serde_json::to_value(old)),
        json(serde_json::to_value(legacy)),
        json(serde_json::to_value(new)),
    );
    let Json::Object(fields) = &legacy else {
        return Vec::new();
    };
    fields
        .iter()
        .filter_map(|(field, l)| {
            let (o, n) = (&old[field], &new[field]);
            (!same(o, l) || !same(o, n)).then(|| Difference {
                id: id.to_owned(),
                field: field.clone(),
                old: o.clone(),
                legacy: l.clone(),
                new: n.clone(),
            })
        })
        .collect()
}

/// A `timestamptz` as the old database writes it in ISO style in UTC
/// (`2026-12-04 21:37:01.123456+00`).
pub(crate) fn timestamp(name: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{name} is not a time Cutover can hold: {text:?}"))
}
