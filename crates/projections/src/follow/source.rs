//! What following needs to know of a domain: its old table, how a row of it is read, what
//! Cutover shows of an aggregate, and the commands that take the aggregate to the state of an
//! old row.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cutover_core::read_source::{Domain, ReadSource};
use sqlx::PgConnection;

use super::handover::Difference;
use super::pgoutput::Value;

/// One domain as followed from one old table (schema `public`). (Its async functions' futures
/// are awaited where they are made, never sent elsewhere, so they need not be `Send`.)
#[allow(async_fn_in_trait)]
pub trait Source: Send + Sync + 'static {
    type Aggregate: Aggregate<Services = ()> + 'static;
    /// A row of the old table as it is there (a column may be NULL where the old table allows
    /// it); kept as JSON with a refusal.
    type Row: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + serde::Serialize
        + Clone
        + Send
        + Unpin;
    /// What Cutover shows of an aggregate that a change is compared with, beyond the
    /// aggregate itself.
    type Shown: Clone + Send;
    const DOMAIN: Domain;
    /// The old table.
    const TABLE: &'static str;
    /// Its key column (the aggregate's id), and the key's type.
    const KEY: &'static str;
    const KEY_TYPE: &'static str;
    /// The columns of [`Self::Row`], as the copy selects them.
    const COLUMNS: &'static str;

    /// The aggregate id of an old row.
    fn id(row: &Self::Row) -> String;

    /// A command's name, as events' metadata records it.
    fn command_name(command: &<Self::Aggregate as Aggregate>::Command) -> &'static str;

    /// The old row of the stream's `columns` (by name) and the columns an update left unchanged
    /// (large values the stream does not send again); or why it cannot be read.
    ///
    /// # Errors
    /// A column missing or a value the row cannot hold, said in words.
    fn read(columns: &HashMap<&str, &Value>) -> Result<(Self::Row, Vec<&'static str>), String>;

    /// What Cutover's read source shows of the aggregates `ids`, by id (those it does not show
    /// are left out).
    async fn shown(
        conn: &mut PgConnection,
        source: ReadSource,
        ids: &[String],
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

    /// A page of the aggregates Cutover holds (ids after `after`, at most `limit`, by id), each
    /// with whether the old table must still hold it (a deleted one may have been deleted
    /// outright there).
    async fn held(
        conn: &mut PgConnection,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, bool)>, sqlx::Error>;
}

/// One old row as it now is.
pub struct Change<R> {
    pub row: R,
    /// Columns the update left unchanged and the stream does not send again (large values).
    pub unchanged: Vec<&'static str>,
    /// The row was deleted (its key, or its whole old row, is in `row`).
    pub deleted: bool,
}
