//! Partial repair: rebuilds the rows of some aggregates in a live projection, in place, without
//! a full rebuild — after verify found a drift (a row changed by hand, a projector bug fixed).
//!
//! In one transaction that holds the locks of those aggregates (so their commands wait, and
//! commands on every other aggregate go on), it deletes the projection's rows of the
//! aggregates (each table declares which aggregate a row is of: `Table::aggregate`), replays
//! their events through the projector's own code, and settles the rows that sum over many
//! aggregates (`skill_analytics`) with the projector's settle statements. It then marks the
//! projection changed, which closes the domain's switch gate until the next verify.

use std::sync::Arc;

use crate::locks::{aggregate_lock_key, APPEND_LOCK};
use crate::log;
use crate::projection::{project_all, Projector};
use serde::Serialize;
use sqlx::PgPool;

use crate::admin::AdminError;
use crate::registry::{projections, ProjectionState};

/// Most aggregates one repair takes.
pub const MAX_AGGREGATES: usize = 1_000;

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Repaired {
    pub projections: Vec<String>,
    pub aggregate_type: String,
    pub aggregates: Vec<String>,
    /// Events replayed (each through every repaired projection).
    pub events_replayed: usize,
}

/// Repairs the rows of `aggregate_ids` in the live projections `names` (all of one aggregate
/// type), in one transaction.
///
/// # Errors
/// `Invalid` (no aggregate, too many, projections of different aggregate types),
/// `UnknownProjection`, `NotFound` (an aggregate with no events), `Refused` (a projection that
/// is retired or being rebuilt), a projector's error, or a database error; nothing is changed
/// then.
pub async fn repair(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    names: &[String],
    aggregate_ids: &[String],
) -> Result<Repaired, AdminError> {
    if names.is_empty() || aggregate_ids.is_empty() {
        return Err(AdminError::Invalid(
            "name at least one projection and one aggregate".to_owned(),
        ));
    }
    if aggregate_ids.len() > MAX_AGGREGATES {
        return Err(AdminError::Invalid(format!(
            "{} aggregates given; a repair takes at most {MAX_AGGREGATES}",
            aggregate_ids.len()
        )));
    }
    let mut chosen = Vec::with_capacity(names.len());
    for name in names {
        chosen.push(
            projectors
                .iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| AdminError::UnknownProjection(name.clone()))?,
        );
    }
    let aggregate_type = chosen[0].aggregate_types()[0];
    if chosen
        .iter()
        .any(|p| p.aggregate_types() != [aggregate_type])
    {
        return Err(AdminError::Invalid(
            "the projections of one repair must read the same aggregate type".to_owned(),
        ));
    }
    let mut ids = aggregate_ids.to_vec();
    ids.sort();
    ids.dedup();

    let mut tx = pool.begin().await?;
    // Appends to these aggregates wait (their commands hold the same locks); a swap or a
    // retirement waits for the shared append lock; every other aggregate goes on.
    sqlx::query(&format!(
        "SELECT pg_advisory_xact_lock_shared({APPEND_LOCK})"
    ))
    .execute(&mut *tx)
    .await?;
    for id in &ids {
        sqlx::query!(
            "SELECT pg_advisory_xact_lock($1)",
            aggregate_lock_key(aggregate_type, id)
        )
        .execute(&mut *tx)
        .await?;
    }
    // Commands alone in one statement take neither lock: they wait for the repair at `events`.
    sqlx::Executor::execute(&mut *tx, crate::locks::LOCK_EVENTS).await?;
    let registry = projections(&mut *tx).await?;
    for projector in &chosen {
        let live = registry.iter().any(|r| {
            r.name == projector.name() && r.inline_active && r.state == ProjectionState::Live
        });
        if !live {
            return Err(AdminError::Refused(format!(
                "projection {} is not live (retired, or being rebuilt): rebuild it instead",
                projector.name()
            )));
        }
    }
    let events = log::aggregate_events(&mut *tx, aggregate_type, &ids).await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !events.iter().any(|e| &e.aggregate_id == *id))
    {
        return Err(AdminError::NotFound(format!(
            "no events of {aggregate_type} {missing:?}"
        )));
    }
    for projector in &chosen {
        for statement in clear(projector.as_ref()) {
            sqlx::query(&statement).bind(&ids).execute(&mut *tx).await?;
        }
        project_all(std::slice::from_ref(*projector), &events)?
            .write(&mut tx)
            .await?;
        for statement in projector.settle() {
            sqlx::query(statement).bind(&ids).execute(&mut *tx).await?;
        }
    }
    let repaired: Vec<String> = chosen.iter().map(|p| p.name().to_owned()).collect();
    sqlx::query!(
        "UPDATE projections SET changed_at = now() WHERE name = ANY($1)",
        &repaired
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Repaired {
        projections: repaired,
        aggregate_type: aggregate_type.to_owned(),
        aggregates: ids,
        events_replayed: events.len(),
    })
}

/// The statements that delete `projector`'s rows of the aggregates `$1` (`text[]`): one per
/// table whose rows are each of one aggregate.
fn clear(projector: &dyn Projector) -> Vec<String> {
    projector
        .tables()
        .iter()
        .filter_map(|table| {
            let aggregate = table.aggregate?;
            Some(format!(
                "DELETE FROM {} WHERE {aggregate} = ANY($1)",
                table.name
            ))
        })
        .collect()
}

/// The command that repairs `aggregate` in `projections`.
pub fn command(projections: &[&str], aggregate: &str) -> String {
    format!(
        "cutover repair {} --aggregate '{}'",
        projections.join(" "),
        aggregate.replace('\'', "'\\''")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repair_command_quotes_its_aggregate() {
        assert_eq!(
            command(&["a", "b"], "it's"),
            "cutover repair a b --aggregate 'it'\\''s'"
        );
    }
}
