//! Read models as data, and the one writer of their rows.
//!
//! Each read-model table is declared once, as a [`Table`]: its columns with their types, its
//! key, and how each column merges when a row is written again. Projectors say what an event
//! does to rows as [`Change`]s — insert a row, upsert it, update some of its columns, delete
//! it — with no IO. [`Changes`] folds the changes of any number of events per row, in memory,
//! and turns them into one set-based statement per table and kind of change: the command path
//! sends them inside the statement that appends the events; a rebuild sends them once per
//! batch of thousands of events.
//!
//! In a command's statement, rows travel as one JSON document per part, read back into the
//! table's own row type by `jsonb_populate_record(set)`, so a part's text depends only on the
//! table, the kind and the columns written. Statements of their own (a rebuild's batches, a
//! repair) send one array of text per column instead, cast to the column's declared type:
//! Postgres then parses no JSON but the values of `jsonb` columns (parsing the rows' JSON took
//! a third of its CPU in a rebuild). Both forms write the same values (see [`as_text`]).

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sqlx::PgConnection;

/// A read-model table.
#[derive(Debug)]
pub struct Table {
    /// Unqualified: the connection's `search_path` picks the live or a rebuild's schema.
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The primary key: the conflict target of inserts and upserts.
    pub key: &'static [&'static str],
    /// The columns by which updates and deletes find a row: the key, or a unique part of it
    /// when events name only that part.
    pub address: &'static [&'static str],
    /// Secondary indexes, by the names the migration gives them (a rebuild's copies have the
    /// same indexes under names Postgres chooses: their number is what is checked).
    pub indexes: &'static [&'static str],
    /// Which aggregate a row is of, in SQL over the row (as `text`, compared with aggregate
    /// ids): a repair clears an aggregate's rows by it. `None` for a table whose rows sum over
    /// many aggregates: its projector's settle statements recompute them instead.
    pub aggregate: Option<&'static str>,
    /// What a command's statement hands back of the rows it writes here, so that an answer is
    /// made from them without a read of its own.
    pub returned: Returned,
}

/// What a command's statement hands back of each row it writes to a table (deletes, and
/// updates that change nothing, write none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Nothing: no answer is made from the table's rows (returning costs the statement a JSON
    /// copy of each row written).
    No,
    /// The whole row, as it now stands.
    Rows,
    /// These columns, as they now stand, except that an update hands back a
    /// [`Merge::Concat`] column as the part it added: for rows that grow with every write
    /// (a batch's map of completions), whose answers take only that part.
    Columns(&'static [&'static str]),
}

/// A column of a read-model table.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    /// Its type, as Postgres's `format_type` spells it.
    pub sql_type: &'static str,
    /// What becomes of it when its row is written again.
    pub merge: Merge,
}

/// How a column's value combines with a later write of the same row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Kept as first written (key columns, creation times).
    Keep,
    /// Replaced by the later value.
    Set,
    /// Summed: integers, or numerics written as decimal text (see [`numeric`]).
    Add,
    /// Appended to (arrays) or merged into (JSON objects, later keys winning).
    Concat,
    /// The greater of the two (timestamps written by [`timestamp`]).
    Greatest,
    /// A JSON document replaced by the later one, which must agree with it on these fields:
    /// two different things must never share the row. A disagreement raises SQLSTATE `CUT01`
    /// (`public.cutover_legacy_id_taken`).
    SameDocument(&'static [&'static str]),
    /// Computed by Postgres (a generated column): never written.
    Generated,
}

/// A projector failed; the transaction it ran in must not commit.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("projector {projector} could not write its read model: {source}")]
    Database {
        projector: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The legacy shape's document id of a subskill is already another subskill's (the old
    /// store's id format maps both to it); `detail` names both.
    #[error("projector {projector} refused to merge two subskills: {detail}")]
    LegacyIdTaken {
        projector: &'static str,
        detail: String,
    },
    #[error("projector {projector}: event at position {position} has a malformed aggregate id")]
    BadAggregateId {
        projector: &'static str,
        position: i64,
    },
    /// A change that does not fit its table's declaration: a bug of the projector.
    #[error("projector {projector} made a change that does not fit its table: {detail}")]
    Shape {
        projector: &'static str,
        detail: String,
    },
    #[error("projector {projector} could not read event at position {position}")]
    Decode {
        projector: &'static str,
        position: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("projector {projector} could not read event at position {position}")]
    Upcast {
        projector: &'static str,
        position: i64,
        #[source]
        source: crate::upcast::UpcastError,
    },
}

/// SQLSTATE of `public.cutover_legacy_id_taken`: a legacy document id already belongs to
/// another subskill.
const LEGACY_ID_TAKEN: &str = "CUT01";

/// Whether `e` is Postgres refusing to give one legacy id to two subskills.
pub fn is_legacy_id_taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(LEGACY_ID_TAKEN))
}

impl ProjectionError {
    /// A database error met while writing `projector`'s rows.
    pub fn of(projector: &'static str, source: sqlx::Error) -> Self {
        match &source {
            sqlx::Error::Database(e) if is_legacy_id_taken(&source) => Self::LegacyIdTaken {
                projector,
                detail: e.message().to_owned(),
            },
            _ => Self::Database { projector, source },
        }
    }
}

impl Table {
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns a writer fills (every one but the generated ones).
    pub fn written(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.merge != Merge::Generated)
    }
}

/// What one change does to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Creates the row; a row already there is left as it is.
    Insert,
    /// Creates the row, or merges the values into the row already there.
    Upsert,
    /// Merges the values into the row found by the table's address, if there is one.
    Update,
    /// Deletes the row found by the table's address.
    Delete,
}

/// One change to one row of a read-model table.
#[derive(Debug, Clone)]
pub struct Change {
    table: &'static Table,
    kind: Kind,
    row: Map<String, Value>,
}

impl Change {
    /// A new row: every written column.
    pub fn insert(table: &'static Table, row: Value) -> Self {
        Self::new(table, Kind::Insert, row)
    }

    /// A row created, or merged into the one there: every written column.
    pub fn upsert(table: &'static Table, row: Value) -> Self {
        Self::new(table, Kind::Upsert, row)
    }

    /// Some columns merged into a row: its address and those columns.
    pub fn update(table: &'static Table, row: Value) -> Self {
        Self::new(table, Kind::Update, row)
    }

    /// A row deleted: its address.
    pub fn delete(table: &'static Table, row: Value) -> Self {
        Self::new(table, Kind::Delete, row)
    }

    fn new(table: &'static Table, kind: Kind, row: Value) -> Self {
        let row = match row {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self { table, kind, row }
    }

    pub fn table(&self) -> &'static Table {
        self.table
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Checks the change against its table's declaration: known columns, none generated, the
    /// address present, and every written column for an insert or upsert.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn check(&self) -> Result<(), String> {
        let table = self.table;
        for name in self.row.keys() {
            match table.column(name) {
                None => return Err(format!("{} has no column {name}", table.name)),
                Some(c) if c.merge == Merge::Generated => {
                    return Err(format!("{}.{name} is generated", table.name))
                }
                Some(_) => {}
            }
        }
        let missing = match self.kind {
            Kind::Insert | Kind::Upsert => table
                .written()
                .map(|c| c.name)
                .find(|c| !self.row.contains_key(*c)),
            Kind::Update | Kind::Delete => table
                .address
                .iter()
                .copied()
                .find(|c| !self.row.contains_key(*c)),
        };
        match missing {
            Some(missing) => Err(format!(
                "a {:?} of {} lacks column {missing}",
                self.kind, table.name
            )),
            None => Ok(()),
        }
    }

    /// The row's address values, as one text (NUL between them; input never holds one).
    fn address(&self) -> String {
        let mut key = String::new();
        for column in self.table.address {
            match self.row.get(*column) {
                Some(Value::String(text)) => key.push_str(text),
                Some(other) => key.push_str(&other.to_string()),
                None => {}
            }
            key.push('\0');
        }
        key
    }
}

/// A timestamp as the writer sends it: RFC 3339 in UTC with microseconds (Postgres's
/// precision), so that two of them compare as text as they do as times.
pub fn timestamp(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// A `double precision` value as Postgres turns it into `numeric` (`value::numeric`: 15
/// significant digits), as decimal text for a numeric column.
pub fn numeric(value: f64) -> Value {
    let text = format!("{value:.14e}");
    let parsed = Decimal::from_scientific(&text).map(|d| d.normalize());
    Value::String(parsed.map_or(text, |d| d.to_string()))
}

/// Changes to read-model rows, folded per row: in rounds, each holding at most one change per
/// row, so that a round's statements touch disjoint rows and may run as one statement. A
/// change that cannot be folded into its row's change (a row deleted and then written again,
/// two documents that disagree) opens the next round.
#[derive(Debug, Default)]
pub struct Changes {
    rounds: Vec<Round>,
    /// The round that holds each row's latest change: (table, address) → (round, index).
    latest: HashMap<(&'static str, String), (usize, usize), foldhash::fast::RandomState>,
}

#[derive(Debug, Default)]
struct Round {
    pending: Vec<Pending>,
}

#[derive(Debug)]
struct Pending {
    projection: &'static str,
    change: Change,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }

    /// Rounds of statements: 1 when every row's changes folded into one.
    pub fn rounds(&self) -> usize {
        self.rounds.len()
    }

    /// Adds `change`, made by projection `projection`, after every change added before.
    pub fn push(&mut self, projection: &'static str, change: Change) {
        let id = (change.table.name, change.address());
        if let Some(&(round, index)) = self.latest.get(&id) {
            let pending = &mut self.rounds[round].pending[index];
            if let Err(refused) = fold(&mut pending.change, change) {
                self.place(id, round + 1, projection, refused);
            }
        } else {
            self.place(id, 0, projection, change);
        }
    }

    fn place(
        &mut self,
        id: (&'static str, String),
        round: usize,
        projection: &'static str,
        change: Change,
    ) {
        if self.rounds.len() <= round {
            self.rounds.resize_with(round + 1, Round::default);
        }
        let pending = &mut self.rounds[round].pending;
        pending.push(Pending { projection, change });
        self.latest.insert(id, (round, pending.len() - 1));
    }

    /// The statements' groups, in order: per round, one per projection, table, kind and set of
    /// columns, inserts first and deletes last.
    fn groups(self) -> Vec<Group> {
        let mut ordered = Vec::new();
        for round in self.rounds {
            let mut groups: Vec<Group> = Vec::new();
            for Pending { projection, change } in round.pending {
                let columns: Vec<&'static str> = change
                    .table
                    .columns
                    .iter()
                    .filter(|c| change.row.contains_key(c.name))
                    .map(|c| c.name)
                    .collect();
                let found = groups.iter_mut().find(|g| {
                    std::ptr::eq(g.table, change.table)
                        && g.kind == change.kind
                        && g.columns == columns
                        && g.projection == projection
                });
                match found {
                    Some(group) => group.rows.push(change.row),
                    None => groups.push(Group {
                        projection,
                        table: change.table,
                        kind: change.kind,
                        columns,
                        rows: vec![change.row],
                    }),
                }
            }
            groups.sort_by_key(|g| g.kind);
            ordered.extend(groups);
        }
        ordered
    }

    /// The statements, in order (see [`Changes::groups`]), as parts of one statement: each
    /// takes its rows as one `jsonb` parameter (an object when there is one row, so that the
    /// planner expects one: an update of one row then finds it by its index), numbered from
    /// `first`.
    pub fn into_statements(self, first: usize) -> Vec<Statement> {
        self.groups()
            .into_iter()
            .enumerate()
            .map(|(n, group)| {
                let source = match group.rows.len() {
                    1 => Source::Object(first + n),
                    _ => Source::Array(first + n),
                };
                let (text, sql) = sql_of(&group, source, true);
                let (refuses, returns) = (group.refuses(), group.returns());
                let rows: Vec<Value> = group.rows.into_iter().map(Value::Object).collect();
                let rows = match <[Value; 1]>::try_from(rows) {
                    Ok([row]) => row,
                    Err(rows) => Value::Array(rows),
                };
                Statement {
                    projection: group.projection,
                    sql,
                    text,
                    refuses,
                    returns,
                    rows,
                }
            })
            .collect()
    }

    /// Sorts each round's changes by table and row, the order in which every transaction of
    /// the command path writes (and locks) rows, so that two writing the same rows (a skill's
    /// analytics, from two students' attempts) wait for each other instead of deadlocking.
    /// Nothing is pushed after it. A rebuild, the only writer of its tables, has no need of it.
    pub fn in_lock_order(mut self) -> Self {
        for round in &mut self.rounds {
            round
                .pending
                .sort_by_cached_key(|p| (p.change.table.name, p.change.address()));
        }
        self.latest.clear();
        self
    }

    /// Whether every change fits one round, so that all statements can be parts of one.
    pub fn single_round(&self) -> bool {
        self.rounds.len() <= 1
    }

    /// The statements to run one after another, their rows turned into columns of text: all
    /// the work of a write that needs no database (a rebuild prepares a batch while the one
    /// before it is written).
    pub fn prepare(self) -> Prepared {
        Prepared {
            statements: self
                .groups()
                .into_iter()
                .map(|mut group| {
                    let (_, sql) = sql_of(&group, Source::Columns, false);
                    let typed: Vec<_> = group.typed_columns().collect();
                    let columns = typed
                        .into_iter()
                        .map(|(name, sql_type)| {
                            group
                                .rows
                                .iter_mut()
                                .map(|row| row.remove(name).and_then(|v| as_text(sql_type, v)))
                                .collect()
                        })
                        .collect();
                    (group.projection, sql, columns)
                })
                .collect(),
        }
    }

    /// Runs the statements one after another on `conn` (a repair).
    ///
    /// # Errors
    /// The first statement that fails, with the projection that made it.
    pub async fn write(self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.prepare().write(conn).await
    }
}

/// A column's values as text, one per row (`None` for SQL `NULL`).
type TextColumn = Vec<Option<String>>;

/// [`Changes`] made ready to write: each statement's projection, text and rows, as one array
/// of text per column (read by the statement with `unnest` and cast to the column's type).
#[derive(Debug)]
pub struct Prepared {
    statements: Vec<(&'static str, Arc<str>, Vec<TextColumn>)>,
}

impl Prepared {
    /// Runs the statements one after another on `conn`.
    ///
    /// # Errors
    /// The first statement that fails, with the projection that made it.
    pub async fn write(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        for (projection, sql, columns) in &self.statements {
            let mut query = sqlx::query(sql.as_ref());
            for column in columns {
                query = query.bind(column);
            }
            query
                .execute(&mut *conn)
                .await
                .map_err(|e| ProjectionError::of(projection, e))?;
        }
        Ok(())
    }
}

/// A JSON value as the text Postgres reads it from in `jsonb_populate_record` (so that both
/// ways of sending rows write the same values): `None` for `null`; a string's contents, but
/// the JSON text for a `jsonb` column; a JSON array as an array literal for an array column;
/// otherwise the value's JSON text (numbers, booleans, documents).
fn as_text(sql_type: &str, value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) if sql_type != "jsonb" => Some(text),
        Value::Array(items) if sql_type.ends_with("[]") => {
            let mut literal = String::new();
            array_literal(&items, &mut literal);
            Some(literal)
        }
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(true) => Some("true".to_owned()),
        Value::Bool(false) => Some("false".to_owned()),
        // Writing JSON to a `String` cannot fail.
        other => serde_json::to_string(&other).ok(),
    }
}

/// Writes `items` as a Postgres array literal: every element quoted (a backslash before `"`
/// and `\`), `NULL` for `null`, nested arrays as sub-arrays.
fn array_literal(items: &[Value], out: &mut String) {
    out.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => array_literal(inner, out),
            Value::String(text) => quoted(text, out),
            other => quoted(&other.to_string(), out),
        }
    }
    out.push('}');
}

fn quoted(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// One set-based statement of a [`Changes`].
#[derive(Debug, Clone)]
pub struct Statement {
    /// The projection whose rows it writes.
    pub projection: &'static str,
    /// One SQL statement (usable as a part of a `WITH`).
    pub sql: Arc<str>,
    /// The number of its text: statements of the same text have the same one.
    pub text: usize,
    /// Whether it may refuse a row whose legacy document id belongs to another one
    /// ([`Merge::SameDocument`], SQLSTATE `CUT01`).
    pub refuses: bool,
    /// Whether, as a part of one statement, it returns each row it wrote as it is after the
    /// write (`written_table`, `written_row`: the table's name and the row as JSON); deletes
    /// and inserts of rows already there return none.
    pub returns: bool,
    /// Its rows: a JSON object (column name to value), or an array of them.
    pub rows: Value,
}

struct Group {
    projection: &'static str,
    table: &'static Table,
    kind: Kind,
    columns: Vec<&'static str>,
    rows: Vec<Map<String, Value>>,
}

/// How a statement takes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    /// One row, as a `jsonb` object: the parameter's number.
    Object(usize),
    /// Rows as a `jsonb` array: the parameter's number.
    Array(usize),
    /// Rows as one `text[]` per column, from `$1`: the cheapest for Postgres to read (no JSON
    /// to parse), for statements of their own.
    Columns,
}

/// What a statement's text depends on: table, kind, columns, how it takes its rows, and
/// whether it returns the rows it wrote.
type SqlKey = (&'static str, Kind, Vec<&'static str>, Source, bool);

/// A statement's text with its number.
type Numbered = (usize, Arc<str>);

/// The text of `group`'s statement and its number, made once per shape and kept (there are a
/// few dozen).
fn sql_of(group: &Group, source: Source, returning: bool) -> (usize, Arc<str>) {
    static MADE: OnceLock<Mutex<HashMap<SqlKey, Numbered>>> = OnceLock::new();
    let key = (
        group.table.name,
        group.kind,
        group.columns.clone(),
        source,
        returning,
    );
    let made = MADE.get_or_init(Mutex::default);
    let mut made = made.lock().unwrap_or_else(PoisonError::into_inner);
    let next = made.len();
    let (number, text) = made
        .entry(key)
        .or_insert_with(|| (next, group.sql(source, returning).into()));
    (*number, Arc::clone(text))
}

impl Group {
    /// Its columns with their declared types (every one is its table's: see
    /// [`Changes::groups`]).
    fn typed_columns(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.columns
            .iter()
            .filter_map(|name| self.table.column(name).map(|c| (c.name, c.sql_type)))
    }

    /// Whether its statement returns the rows it writes: those of a table declared
    /// [`Table::returned`] (deletes, and updates that change nothing, write none).
    fn returns(&self) -> bool {
        self.table.returned != Returned::No
            && match self.kind {
                Kind::Insert | Kind::Upsert => true,
                Kind::Update => !self.merged().is_empty(),
                Kind::Delete => false,
            }
    }

    /// What its statement hands back of each row it writes, in SQL (see [`Returned`]).
    fn returned_row(&self) -> String {
        let Returned::Columns(columns) = self.table.returned else {
            return "to_jsonb(live)".to_owned();
        };
        let fields = columns
            .iter()
            .map(|name| {
                let added = self.kind == Kind::Update
                    && self
                        .table
                        .column(name)
                        .is_some_and(|c| c.merge == Merge::Concat);
                let row = if added { "excluded" } else { "live" };
                format!("'{name}', {row}.{name}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("jsonb_build_object({fields})")
    }

    /// Whether its statement merges a [`Merge::SameDocument`] column, which refuses another
    /// document under the same id.
    fn refuses(&self) -> bool {
        matches!(self.kind, Kind::Upsert | Kind::Update)
            && self.columns.iter().any(|name| {
                self.table
                    .column(name)
                    .is_some_and(|c| matches!(c.merge, Merge::SameDocument(_)))
            })
    }

    /// The `SET` clauses of the columns a write merges (neither key nor address).
    fn merged(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter_map(|name| {
                let column = self.table.column(name)?;
                if self.table.address.contains(name) || self.table.key.contains(name) {
                    return None;
                }
                merge_sql(self.table, column).map(|expr| format!("{name} = {expr}"))
            })
            .collect()
    }

    /// Its statement; `returning`, as a part of one statement that returns the rows written.
    fn sql(&self, source: Source, returning: bool) -> String {
        let table = self.table.name;
        let columns = self.columns.join(", ");
        let source = match source {
            Source::Object(n) => format!("jsonb_populate_record(NULL::{table}, ${n}::jsonb)"),
            Source::Array(n) => format!("jsonb_populate_recordset(NULL::{table}, ${n}::jsonb)"),
            Source::Columns => {
                let typed = self
                    .typed_columns()
                    .map(|(name, sql_type)| format!("{name}::{sql_type} AS {name}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let arrays = (1..=self.columns.len())
                    .map(|n| format!("${n}::text[]"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("(SELECT {typed} FROM unnest({arrays}) AS given({columns}))")
            }
        };
        let key = self.table.key.join(", ");
        let merged = self.merged();
        let returned = if returning && self.returns() {
            format!(
                " RETURNING '{table}'::text AS written_table, {} AS written_row",
                self.returned_row()
            )
        } else {
            String::new()
        };
        let matches = self
            .table
            .address
            .iter()
            .map(|c| format!("live.{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        match self.kind {
            Kind::Insert | Kind::Upsert => {
                let on_conflict = if self.kind == Kind::Insert || merged.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    format!("DO UPDATE SET {}", merged.join(", "))
                };
                format!(
                    "INSERT INTO {table} AS live ({columns}) SELECT {columns} FROM {source} AS given \
                     ON CONFLICT ({key}) {on_conflict}{returned}"
                )
            }
            // Only the address: nothing to change.
            Kind::Update if merged.is_empty() => {
                format!("SELECT FROM {source} AS excluded WHERE false")
            }
            Kind::Update => format!(
                "UPDATE {table} AS live SET {} FROM {source} AS excluded \
                 WHERE {matches}{returned}",
                merged.join(", ")
            ),
            Kind::Delete => {
                format!("DELETE FROM {table} AS live USING {source} AS excluded WHERE {matches}")
            }
        }
    }
}

/// The new value of `column` when its row is written again, in SQL (`live` is the row there,
/// `excluded` the one written); `None` when it keeps its value.
fn merge_sql(table: &Table, column: &Column) -> Option<String> {
    let c = column.name;
    Some(match column.merge {
        Merge::Keep | Merge::Generated => return None,
        Merge::Set => format!("excluded.{c}"),
        Merge::Add => format!("live.{c} + excluded.{c}"),
        Merge::Concat => format!("live.{c} || excluded.{c}"),
        Merge::Greatest => format!("greatest(live.{c}, excluded.{c})"),
        Merge::SameDocument(fields) => {
            let of = |row: &str| {
                fields
                    .iter()
                    .map(|f| format!("{row}.{c} ->> '{f}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let id = table.key.first().copied().unwrap_or(c);
            format!(
                "CASE WHEN ({}) = ({}) THEN excluded.{c} \
                 ELSE public.cutover_legacy_id_taken(live.{id}::text, live.{c}, excluded.{c}) END",
                of("live"),
                of("excluded")
            )
        }
    })
}

/// Folds `later` into `earlier` (both of one row), in place, so that `earlier` has the effect
/// of both; gives `later` back when no single change has it.
fn fold(earlier: &mut Change, later: Change) -> Result<(), Change> {
    match (earlier.kind, later.kind) {
        (_, Kind::Delete) => {
            *earlier = later;
            Ok(())
        }
        (Kind::Insert | Kind::Upsert, Kind::Update | Kind::Upsert)
        | (Kind::Update, Kind::Update) => {
            let table = earlier.table;
            let refused = later.row.iter().any(|(name, after)| {
                match (earlier.row.get(name), table.column(name)) {
                    (Some(before), Some(column)) => !mergeable(column.merge, before, after),
                    _ => false,
                }
            });
            if refused {
                return Err(later);
            }
            for (name, after) in later.row {
                match (earlier.row.get_mut(&name), table.column(&name)) {
                    (Some(before), Some(column)) => merge(column.merge, before, after),
                    _ => {
                        earlier.row.insert(name, after);
                    }
                }
            }
            Ok(())
        }
        _ => Err(later),
    }
}

/// The sum of two decimal texts, if both are decimals and the sum fits.
fn decimal_sum(a: &str, b: &str) -> Option<Decimal> {
    Decimal::from_str(a)
        .ok()?
        .checked_add(Decimal::from_str(b).ok()?)
}

/// The sum of two JSON integers, if it fits.
fn integer_sum(a: &serde_json::Number, b: &serde_json::Number) -> Option<i64> {
    a.as_i64()?.checked_add(b.as_i64()?)
}

/// Whether [`merge`] can merge `after` into `before` as the column's SQL merge would.
fn mergeable(rule: Merge, before: &Value, after: &Value) -> bool {
    match (rule, before, after) {
        (Merge::Keep | Merge::Generated | Merge::Set, _, _) => true,
        (Merge::Add, Value::Number(a), Value::Number(b)) => integer_sum(a, b).is_some(),
        (Merge::Add, Value::String(a), Value::String(b)) => decimal_sum(a, b).is_some(),
        (Merge::Concat, Value::Array(_), Value::Array(_))
        | (Merge::Concat, Value::Object(_), Value::Object(_))
        | (Merge::Greatest, Value::String(_), Value::String(_)) => true,
        (Merge::SameDocument(fields), _, _) => fields.iter().all(|f| before.get(f) == after.get(f)),
        _ => false,
    }
}

/// Merges `after` into `before` in memory, as the column's SQL merge would; only after
/// [`mergeable`] said it can.
fn merge(rule: Merge, before: &mut Value, after: Value) {
    match (rule, before, after) {
        (Merge::Keep | Merge::Generated, _, _) => {}
        (Merge::Add, Value::Number(a), Value::Number(b)) => {
            if let Some(sum) = integer_sum(a, &b) {
                *a = sum.into();
            }
        }
        (Merge::Add, Value::String(a), Value::String(b)) => {
            if let Some(sum) = decimal_sum(a, &b) {
                *a = sum.to_string();
            }
        }
        (Merge::Concat, Value::Array(a), Value::Array(b)) => a.extend(b),
        (Merge::Concat, Value::Object(a), Value::Object(b)) => a.extend(b),
        (Merge::Greatest, Value::String(a), Value::String(b)) => {
            if b > *a {
                *a = b;
            }
        }
        (_, before, after) => *before = after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static T: Table = TABLE;

    const TABLE: Table = Table {
        aggregate: None,
        returned: Returned::No,
        name: "t",
        columns: &[
            Column {
                name: "id",
                sql_type: "text",
                merge: Merge::Keep,
            },
            Column {
                name: "n",
                sql_type: "bigint",
                merge: Merge::Add,
            },
            Column {
                name: "sum",
                sql_type: "numeric",
                merge: Merge::Add,
            },
            Column {
                name: "tags",
                sql_type: "text[]",
                merge: Merge::Concat,
            },
            Column {
                name: "name",
                sql_type: "text",
                merge: Merge::Set,
            },
            Column {
                name: "doc",
                sql_type: "jsonb",
                merge: Merge::SameDocument(&["kind"]),
            },
        ],
        key: &["id"],
        address: &["id"],
        indexes: &[],
    };

    #[test]
    fn changes_of_one_row_fold_into_one() {
        let mut changes = Changes::default();
        changes.push(
            "p",
            Change::insert(
                &T,
                json!({"id": "a", "n": 1, "sum": "0.1", "tags": ["x"], "name": "one", "doc": {"kind": 1}}),
            ),
        );
        changes.push(
            "p",
            Change::update(
                &T,
                json!({"id": "a", "n": 2, "sum": "0.2", "tags": ["y"], "name": "two"}),
            ),
        );
        changes.push("p", Change::update(&T, json!({"id": "b", "n": 5})));
        assert!(changes.single_round());
        let statements = changes.into_statements(1);
        assert_eq!(statements.len(), 2, "one insert, one update");
        assert_eq!(
            statements[0].rows,
            json!({"id": "a", "n": 3, "sum": "0.3", "tags": ["x", "y"], "name": "two", "doc": {"kind": 1}})
        );
        assert!(statements[0].sql.starts_with("INSERT INTO t AS live"));
        assert!(statements[1].sql.contains("n = live.n + excluded.n"));
    }

    #[test]
    fn a_table_returning_columns_hands_back_what_an_update_added_to_a_growing_column() {
        static GROWS: Table = Table {
            returned: Returned::Columns(&["id", "tags", "name"]),
            ..TABLE
        };
        static WHOLE: Table = Table {
            returned: Returned::Rows,
            ..TABLE
        };
        let statement = |change| {
            let mut changes = Changes::default();
            changes.push("p", change);
            changes.into_statements(1).remove(0).sql
        };
        let update = statement(Change::update(
            &GROWS,
            json!({"id": "a", "tags": ["y"], "name": "two"}),
        ));
        assert!(
            update.ends_with(
                "RETURNING 't'::text AS written_table, \
                 jsonb_build_object('id', live.id, 'tags', excluded.tags, 'name', live.name) \
                 AS written_row"
            ),
            "{update}"
        );
        let insert = statement(Change::insert(
            &GROWS,
            json!({"id": "a", "tags": ["x"], "name": "one"}),
        ));
        assert!(
            insert.contains(
                "jsonb_build_object('id', live.id, 'tags', live.tags, 'name', live.name)"
            ),
            "{insert}"
        );
        let whole = statement(Change::insert(&WHOLE, json!({"id": "a"})));
        assert!(whole.ends_with("to_jsonb(live) AS written_row"), "{whole}");
    }

    #[test]
    fn what_cannot_fold_waits_for_the_next_round() {
        let mut changes = Changes::default();
        let doc = |kind: i64| {
            Change::upsert(
                &T,
                json!({"id": "a", "n": 1, "sum": "1", "tags": [], "name": "", "doc": {"kind": kind}}),
            )
        };
        changes.push("p", doc(1));
        changes.push("p", doc(1));
        assert_eq!(changes.rounds(), 1);
        changes.push("p", doc(2));
        assert_eq!(
            changes.rounds(),
            2,
            "documents that disagree are written apart"
        );
        changes.push("p", Change::delete(&T, json!({"id": "a"})));
        changes.push("p", Change::insert(&T, json!({"id": "a"})));
        assert_eq!(changes.rounds(), 3, "a row written after its delete");
    }

    #[test]
    fn values_are_sent_as_text_as_postgres_reads_them_from_json() {
        assert_eq!(as_text("text", json!(null)), None);
        assert_eq!(as_text("text", json!("a")).as_deref(), Some("a"));
        assert_eq!(as_text("jsonb", json!("a")).as_deref(), Some(r#""a""#));
        assert_eq!(as_text("bigint", json!(12)).as_deref(), Some("12"));
        assert_eq!(as_text("boolean", json!(false)).as_deref(), Some("false"));
        assert_eq!(
            as_text("jsonb", json!({"k": [1, "x"]})).as_deref(),
            Some(r#"{"k":[1,"x"]}"#)
        );
        assert_eq!(
            as_text("text[]", json!(["a\"b", "c\\d", "{e,f}", "NULL", null, 3])).as_deref(),
            Some(r#"{"a\"b","c\\d","{e,f}","NULL",NULL,"3"}"#)
        );
        assert_eq!(as_text("text[]", json!([])).as_deref(), Some("{}"));
        assert_eq!(
            as_text("integer[]", json!([[1, 2], [3, 4]])).as_deref(),
            Some(r#"{{"1","2"},{"3","4"}}"#)
        );
    }

    #[test]
    fn numerics_are_sent_as_postgres_converts_doubles() {
        assert_eq!(numeric(7.5), json!("7.5"));
        assert_eq!(numeric(0.1 + 0.2), json!("0.3"));
        assert_eq!(numeric(10.0), json!("10"));
        assert_eq!(numeric(1.0 / 3.0), json!("0.333333333333333"));
    }

    #[test]
    fn a_change_is_checked_against_its_table() {
        assert!(Change::update(&T, json!({"id": "a", "n": 1}))
            .check()
            .is_ok());
        assert!(Change::update(&T, json!({"n": 1})).check().is_err());
        assert!(Change::insert(&T, json!({"id": "a"})).check().is_err());
        assert!(Change::update(&T, json!({"id": "a", "zz": 1}))
            .check()
            .is_err());
    }
}
