//! The handover (`cutover handover`): moves a followed domain's writes from the old system to
//! Cutover. The old table is made to refuse every write (a trigger that raises, for the old
//! application to see), which waits for the old writes in flight and lets no later one in;
//! the follower then applies everything the old database committed before; every old row is
//! compared with both of Cutover's models, field by field as the old clients read them; and
//! only on a clean comparison are Cutover's commands opened for the domain and the slot
//! dropped. On differences, the old table takes writes again and following goes on: the old
//! system stays the writer, and nothing it writes is lost.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cutover_core::store::EventStore;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use super::error::{legacy, FollowError};
use super::follower::{drop_slot, DomainFollower};
use super::follows::Progress;
use super::source::{Difference, OldTable, Source};

/// Most differences listed in a handover's report (all are counted).
pub const MAX_LISTED: usize = 100;

/// Old rows compared at once.
const PAGE: i64 = 2_000;

/// How long making the old table refuse writes waits for the old writes in flight.
const LOCK_TIMEOUT: &str = "60s";

/// What a handover found and did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
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
pub(super) async fn handover<S: Source>(
    follower: &mut DomainFollower<S>,
) -> Result<Handover, FollowError>
where
    <S::Aggregate as Aggregate>::Error: Send + Sync,
{
    let tables: Vec<&str> = S::TABLES.iter().map(|table| table.name).collect();
    refuse_writes(&follower.old, &tables).await?;
    let outcome = drain_and_compare(follower).await;
    let report = match outcome {
        Ok(report) if report.difference_count == 0 => report,
        other => {
            // Not handed over: the old application writes again, and is followed.
            allow_writes(&follower.old, &tables).await?;
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
    drop_slot(&follower.old, &follower.follow.slot).await?;
    Ok(Handover {
        handed_over: true,
        ..report
    })
}

async fn drain_and_compare<S: Source>(
    follower: &mut DomainFollower<S>,
) -> Result<Handover, FollowError>
where
    <S::Aggregate as Aggregate>::Error: Send + Sync,
{
    let Progress { applied, .. } = follower.apply_all().await?;
    let mut report = compare::<S>(&follower.store, &follower.old).await?;
    report.drained = applied;
    Ok(report)
}

/// The old `tables` refuse every write from now on, with an error that says where writes go;
/// waits (up to [`LOCK_TIMEOUT`]) for the writes in flight.
async fn refuse_writes(old: &PgPool, tables: &[&str]) -> Result<(), FollowError> {
    let mut tx = old.begin().await.map_err(legacy)?;
    let mut statements = vec![
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
    ];
    for table in tables {
        statements.push(format!(
            "DROP TRIGGER IF EXISTS cutover_handed_over ON public.{table}"
        ));
        statements.push(format!(
            "CREATE TRIGGER cutover_handed_over
                 BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.{table}
                 FOR EACH STATEMENT EXECUTE FUNCTION public.cutover_handed_over()"
        ));
    }
    let table = tables.join(", ");
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

/// The old `tables` take writes again (a handover that did not go through).
async fn allow_writes(old: &PgPool, tables: &[&str]) -> Result<(), FollowError> {
    for table in tables {
        sqlx::query(&format!(
            "DROP TRIGGER IF EXISTS cutover_handed_over ON public.{table}"
        ))
        .execute(old)
        .await
        .map_err(legacy)?;
    }
    Ok(())
}

/// Compares every row of the old tables with both of Cutover's models, field by field as the
/// old clients read them; then looks for rows Cutover holds that the old tables do not; then
/// checks what the domain derives from them.
async fn compare<S: Source>(store: &EventStore, old: &PgPool) -> Result<Handover, FollowError> {
    let mut report = Handover::default();
    let mut conn = store.pool().acquire().await?;
    for table in S::TABLES {
        let mut after: Option<String> = None;
        loop {
            let rows: Vec<S::Row> = sqlx::query_as(&format!(
                "SELECT $3::text AS old_table, {columns} FROM public.{table}
                  WHERE $1::text IS NULL OR {key} > $1::{key_type}
                  ORDER BY {key} LIMIT $2",
                columns = S::COLUMNS,
                table = table.name,
                key = S::KEY,
                key_type = S::KEY_TYPE,
            ))
            .bind(&after)
            .bind(PAGE)
            .bind(table.name)
            .fetch_all(old)
            .await
            .map_err(legacy)?;
            let Some(last) = rows.last() else { break };
            after = Some(S::key(last));
            report.rows_compared += rows.len() as u64;
            for difference in S::compare(&mut conn, &rows).await? {
                report.add(difference);
            }
        }
        held_but_absent::<S>(&mut conn, old, table, &mut report).await?;
    }
    let (checked, differences) = S::check(&mut conn, old).await?;
    report.rows_compared += checked;
    for difference in differences {
        report.add(difference);
    }
    Ok(report)
}

/// Rows Cutover holds that the old `table` does not: deleted outright there (kept as deleted
/// here), or never there.
async fn held_but_absent<S: Source>(
    conn: &mut PgConnection,
    old: &PgPool,
    table: &OldTable,
    report: &mut Handover,
) -> Result<(), FollowError> {
    let mut after: Option<String> = None;
    loop {
        let held: Vec<(String, bool)> = sqlx::query_as(&format!(
            "SELECT {key}::text, {live} FROM {model}
              WHERE $1::text IS NULL OR {key} > $1::{key_type}
              ORDER BY {key} LIMIT $2",
            key = S::KEY,
            key_type = S::KEY_TYPE,
            live = table.must_be_old,
            model = table.model_table,
        ))
        .bind(&after)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some((last, _)) = held.last() else { break };
        after = Some(last.clone());
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let present: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT {key}::text FROM public.{table} WHERE {key} = ANY($1::{key_type}[])",
            key = S::KEY,
            key_type = S::KEY_TYPE,
            table = table.name,
        ))
        .bind(&ids)
        .fetch_all(old)
        .await
        .map_err(legacy)?;
        for (id, live) in held {
            if present.contains(&id) {
                continue;
            }
            if live {
                report.add(Difference {
                    field: S::KEY.to_owned(),
                    old: Value::Null,
                    legacy: json!(id),
                    new: json!(id),
                    id,
                });
            } else {
                report.deleted_outright += 1;
            }
        }
    }
    Ok(())
}
