//! The handover (`cutover handover`): moves a followed domain's writes from the old system to
//! Cutover. The old table is made to refuse every write (a trigger that raises, for the old
//! application to see), which waits for the old writes in flight and lets no later one in;
//! the follower then applies everything the old database committed before; every old row is
//! compared with both of Cutover's models, field by field as the old clients read them; and
//! only on a clean comparison are Cutover's commands opened for the domain and the slot
//! dropped. On differences, the old table takes writes again and following goes on: the old
//! system stays the writer, and nothing it writes is lost.

use chrono::{DateTime, Utc};
use cutover_core::import::OldCollectionRow;
use cutover_core::read_source::ReadSource;
use cutover_core::store::EventStore;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::{legacy, FollowError, Follower, Progress};
use crate::collections::{self, LegacyCollection};

/// Most differences listed in a handover's report (all are counted).
pub const MAX_LISTED: usize = 100;

/// Old rows compared at once.
const PAGE: i64 = 2_000;

/// How long making the old table refuse writes waits for the old writes in flight.
const LOCK_TIMEOUT: &str = "60s";

/// A field an old row and Cutover's models disagree on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Difference {
    pub collection_id: Uuid,
    pub field: &'static str,
    /// The old row's value (`null`: no row).
    pub old: Value,
    /// The legacy model's and the new model's (`null`: no row).
    pub legacy: Value,
    pub new: Value,
}

/// What a handover found and did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Handover {
    /// Changes applied while draining the stream.
    pub drained: u64,
    /// Old rows compared with both models.
    pub rows_compared: u64,
    /// Collections Cutover keeps as deleted whose old rows were deleted outright.
    pub deleted_outright: u64,
    pub difference_count: u64,
    /// The first [`MAX_LISTED`] differences.
    pub differences: Vec<Difference>,
    /// Whether the writes moved to Cutover (only with no difference).
    pub handed_over: bool,
}

impl Handover {
    fn add(&mut self, difference: Difference) {
        self.difference_count += 1;
        if self.differences.len() < MAX_LISTED {
            self.differences.push(difference);
        }
    }
}

/// A domain handed over.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HandedOver {
    pub domain: String,
    pub legacy_table: String,
    pub rows_compared: i64,
    pub handed_over_at: DateTime<Utc>,
}

/// Every handover, oldest first.
///
/// # Errors
/// A database error.
pub async fn handovers(pool: &PgPool) -> Result<Vec<HandedOver>, sqlx::Error> {
    sqlx::query_as(
        "SELECT domain, legacy_table, rows_compared, handed_over_at FROM handovers
          ORDER BY handed_over_at",
    )
    .fetch_all(pool)
    .await
}

/// Hands the writes of `follower`'s domain over from the old system to Cutover.
///
/// # Errors
/// `Setup` when the old table cannot be made to refuse writes (with what to do), or a
/// database error; in either case the old system stays the writer.
pub async fn handover(follower: &mut Follower) -> Result<Handover, FollowError> {
    let table = follower.follow.legacy_table.clone();
    refuse_writes(&follower.old, &table).await?;
    let outcome = drain_and_compare(follower).await;
    let report = match outcome {
        Ok(report) if report.difference_count == 0 => report,
        other => {
            // Not handed over: the old application writes again, and is followed.
            allow_writes(&follower.old, &table).await?;
            return other;
        }
    };
    let store = follower.store.clone();
    let mut tx = store.pool().begin().await?;
    sqlx::query(
        "WITH ended AS (DELETE FROM follows WHERE domain = $1 RETURNING domain, legacy_table, lsn)
         INSERT INTO handovers (domain, legacy_table, lsn, rows_compared)
         SELECT domain, legacy_table, lsn, $2 FROM ended",
    )
    .bind(&follower.follow.domain)
    .bind(i64::try_from(report.rows_compared).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Cutover's commands are open from here; the slot is not needed any more.
    super::drop_slot(&follower.old, &follower.follow.slot).await?;
    Ok(Handover {
        handed_over: true,
        ..report
    })
}

async fn drain_and_compare(follower: &mut Follower) -> Result<Handover, FollowError> {
    let Progress { applied, .. } = follower.catch_up().await?;
    let mut report = compare(
        &follower.store,
        &follower.old,
        &follower.follow.legacy_table,
    )
    .await?;
    report.drained = applied;
    Ok(report)
}

/// The old `table` refuses every write from now on, with an error that says where writes go;
/// waits (up to [`LOCK_TIMEOUT`]) for the writes in flight.
async fn refuse_writes(old: &PgPool, table: &str) -> Result<(), FollowError> {
    let mut tx = old.begin().await.map_err(legacy)?;
    let statements = [
        format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
        "CREATE OR REPLACE FUNCTION public.cutover_handed_over() RETURNS trigger
             LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION USING
                 ERRCODE = 'read_only_sql_transaction',
                 MESSAGE = format('%I.%I is written by Cutover since its handover: '
                                  'send this write to Cutover''s API', TG_TABLE_SCHEMA,
                                  TG_TABLE_NAME);
         END $$"
            .to_owned(),
        format!("DROP TRIGGER IF EXISTS cutover_handed_over ON {table}"),
        format!(
            "CREATE TRIGGER cutover_handed_over
                 BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
                 FOR EACH STATEMENT EXECUTE FUNCTION public.cutover_handed_over()"
        ),
    ];
    for statement in &statements {
        if let Err(e) = sqlx::query(statement).execute(&mut *tx).await {
            return Err(match e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                    FollowError::Setup(format!(
                        "the handover makes {table} refuse writes with a trigger, which takes \
                         the table's owner: run it with a --legacy-url of the role that owns \
                         {table} ({})",
                        db.message()
                    ))
                }
                sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                    FollowError::Setup(format!(
                        "a transaction of the old application kept {table} locked for \
                         {LOCK_TIMEOUT}: nothing changed; run the handover again when it ends"
                    ))
                }
                e => legacy(e),
            });
        }
    }
    tx.commit().await.map_err(legacy)
}

/// The old `table` takes writes again (a handover that did not go through).
async fn allow_writes(old: &PgPool, table: &str) -> Result<(), FollowError> {
    sqlx::query(&format!(
        "DROP TRIGGER IF EXISTS cutover_handed_over ON {table}"
    ))
    .execute(old)
    .await
    .map_err(legacy)?;
    Ok(())
}

/// Compares every row of the old `table` with both of Cutover's models, field by field as
/// the old clients read them; then looks for collections Cutover holds that the old table
/// does not.
async fn compare(store: &EventStore, old: &PgPool, table: &str) -> Result<Handover, FollowError> {
    let mut report = Handover::default();
    let mut conn = store.pool().acquire().await?;
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<OldCollectionRow> = sqlx::query_as(&format!(
            "SELECT collection_id, project_id, collection_name, description, is_active,
                    created_at, updated_at
               FROM {table} WHERE collection_id > $1 ORDER BY collection_id LIMIT $2"
        ))
        .bind(after)
        .bind(PAGE)
        .fetch_all(old)
        .await
        .map_err(legacy)?;
        let Some(last) = rows.last() else { break };
        after = last.collection_id;
        let ids: Vec<Uuid> = rows.iter().map(|row| row.collection_id).collect();
        let legacy_rows = collections::answers_by_id(&mut conn, ReadSource::Legacy, &ids).await?;
        let new_rows = collections::answers_by_id(&mut conn, ReadSource::New, &ids).await?;
        for row in &rows {
            report.rows_compared += 1;
            let find = |rows: &[LegacyCollection]| {
                rows.iter()
                    .find(|c| c.collection_id == row.collection_id)
                    .cloned()
            };
            for difference in differences(row, find(&legacy_rows), find(&new_rows)) {
                report.add(difference);
            }
        }
    }
    // Collections Cutover holds that the old table does not: deleted outright there (kept as
    // deleted here), or never there.
    let mut after = Uuid::nil();
    loop {
        let held: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT collection_id, is_active FROM collections
              WHERE collection_id > $1 ORDER BY collection_id LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some((last, _)) = held.last() else { break };
        after = *last;
        let ids: Vec<Uuid> = held.iter().map(|(id, _)| *id).collect();
        let present: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT collection_id FROM {table} WHERE collection_id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(old)
        .await
        .map_err(legacy)?;
        for (id, active) in held {
            if present.contains(&id) {
                continue;
            }
            if active {
                report.add(Difference {
                    collection_id: id,
                    field: "collection_id",
                    old: Value::Null,
                    legacy: json!(id),
                    new: json!(id),
                });
            } else {
                report.deleted_outright += 1;
            }
        }
    }
    Ok(report)
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
        let held = |c: &Option<LegacyCollection>| c.as_ref().map_or(Value::Null, |_| json!(id));
        return vec![Difference {
            collection_id: id,
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
            collection_id: id,
            field,
            old,
            legacy: l,
            new: n,
        })
        .collect()
}
