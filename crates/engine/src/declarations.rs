//! The projectors' declarations against the database: each projection's registry row, and each
//! of its tables (live, when the projection has them, and the rebuild template) column by
//! column, its key and address, and how many other indexes it has. The servers and the CLI check at start that the migrations
//! built what the projectors declare, and refuse to start, naming each difference, when not.

use std::sync::Arc;

use crate::projection::{table_names, Projector};
use crate::rows::{Merge, Returned, Table};
use sqlx::PgPool;

use crate::registry::{projections, ProjectionState};

/// The database differs from the projectors' declarations (or could not be read).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "the read models' tables are not as their projectors declare them (a migration not \
         applied, or a table changed by hand):\n  {}",
        .0.join("\n  ")
    )]
    Differ(Vec<String>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Makes what the projectors' declarations imply beyond the migrations' tables (see
/// [`register`]), then checks that the database is as the projectors declare it.
///
/// # Errors
/// `Differ`, naming each difference, or a database error.
pub async fn check(pool: &PgPool, projectors: &[Arc<dyn Projector>]) -> Result<(), CheckError> {
    register(pool, projectors).await?;
    let found = differences(pool, projectors).await?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(CheckError::Differ(found))
    }
}

/// Makes what a projector's declaration implies and its migration need not write: the
/// registry row of a projection new to the database (retired: nothing maintains it until a
/// rebuild fills it from the log and makes it live), and each table's rebuild template (an
/// empty copy of the live table, with its indexes). Servers starting together take turns.
///
/// # Errors
/// A database error.
pub async fn register(pool: &PgPool, projectors: &[Arc<dyn Projector>]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('cutover:declarations', 0))")
        .execute(&mut *tx)
        .await?;
    for projector in projectors {
        let tables: Vec<&str> = table_names(projector.as_ref()).collect();
        sqlx::query!(
            "INSERT INTO projections (name, domain, shape, tables, state, inline_active)
             VALUES ($1, $2, $3, $4, 'retired', false)
             ON CONFLICT (name) DO NOTHING",
            projector.name(),
            projector.domain().as_str(),
            projector.shape() as _,
            &tables as _
        )
        .execute(&mut *tx)
        .await?;
        for table in tables {
            let missing: bool = sqlx::query_scalar!(
                "SELECT to_regclass('cutover_templates.' || $1) IS NULL
                    AND to_regclass('public.' || $1) IS NOT NULL AS \"missing!\"",
                table
            )
            .fetch_one(&mut *tx)
            .await?;
            if missing {
                sqlx::query(&format!(
                    "CREATE TABLE cutover_templates.{table} (LIKE public.{table} INCLUDING ALL)"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await
}

/// Where the database differs from the projectors' declarations, one sentence each (none when
/// they agree).
///
/// # Errors
/// A database error.
pub async fn differences(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
) -> Result<Vec<String>, sqlx::Error> {
    let registry = projections(pool).await?;
    let mut found = Vec::new();
    for projector in projectors {
        let name = projector.name();
        let declared: Vec<&str> = table_names(projector.as_ref()).collect();
        let Some(row) = registry.iter().find(|p| p.name == name) else {
            found.push(format!(
                "projection {name} has no row in the registry (`projections`): its migration \
                 inserts it"
            ));
            continue;
        };
        if row.tables != declared {
            found.push(format!(
                "the registry lists the tables {:?} for projection {name}, which declares {declared:?}",
                row.tables
            ));
        }
        let (domain, shape) = (projector.domain().as_str(), projector.shape());
        if row.domain != domain || row.shape != shape {
            found.push(format!(
                "the registry has projection {name} as the {} model of {}, which declares the \
                 {} model of {domain}",
                row.shape.as_str(),
                row.domain,
                shape.as_str()
            ));
        }
        for table in projector.tables() {
            // A retired projection's live tables are dropped; a rebuilding one's may be.
            let live = row.state == ProjectionState::Live;
            for schema in ["public", "cutover_templates"] {
                if schema == "public" && !live {
                    continue;
                }
                found.extend(table_differences(pool, schema, table).await?);
            }
        }
    }
    Ok(found)
}

/// Where `schema.table` differs from `table`'s declaration.
async fn table_differences(
    pool: &PgPool,
    schema: &str,
    table: &Table,
) -> Result<Vec<String>, sqlx::Error> {
    let qualified = format!("{schema}.{}", table.name);
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT to_regclass($1) IS NOT NULL AS "exists!""#,
        qualified
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(vec![format!(
            "{qualified} does not exist: a migration creates it"
        )]);
    }
    let mut found = Vec::new();
    let columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), attgenerated <> ''
           FROM pg_attribute
          WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
          ORDER BY attnum",
    )
    .bind(&qualified)
    .fetch_all(pool)
    .await?;
    for column in table.columns {
        let generated = column.merge == Merge::Generated;
        match columns.iter().find(|(name, _, _)| name == column.name) {
            None => found.push(format!(
                "{qualified} has no column {}, which is declared {}",
                column.name, column.sql_type
            )),
            Some((_, sql_type, is_generated)) => {
                if sql_type != column.sql_type {
                    found.push(format!(
                        "{qualified}.{} is {sql_type}, declared {}",
                        column.name, column.sql_type
                    ));
                }
                if *is_generated != generated {
                    found.push(format!(
                        "{qualified}.{} is {}generated, declared {}",
                        column.name,
                        if *is_generated { "" } else { "not " },
                        if generated { "Generated" } else { "written" }
                    ));
                }
            }
        }
    }
    found.extend(undeclared_returned(&qualified, table));
    for (name, sql_type, _) in &columns {
        if !table.columns.iter().any(|c| c.name == name) {
            found.push(format!(
                "{qualified} has a column {name} ({sql_type}) that its projector does not declare"
            ));
        }
    }
    let indexes: Vec<(String, bool, bool, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisprimary, i.indisunique,
                array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                        JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       ORDER BY k.n)
           FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass",
    )
    .bind(&qualified)
    .fetch_all(pool)
    .await?;
    let key: Vec<String> = table.key.iter().map(|c| (*c).to_owned()).collect();
    if !indexes
        .iter()
        .any(|(_, primary, _, columns)| *primary && *columns == key)
    {
        found.push(format!(
            "{qualified}'s primary key is not ({}), as declared",
            table.key.join(", ")
        ));
    }
    let address: Vec<String> = table.address.iter().map(|c| (*c).to_owned()).collect();
    if !indexes
        .iter()
        .any(|(_, _, unique, columns)| *unique && *columns == address)
    {
        found.push(format!(
            "{qualified} has no unique index on ({}), its declared address",
            table.address.join(", ")
        ));
    }
    // By number: a rebuild's tables, made from the templates, have the same indexes under
    // names Postgres gives them.
    let others: Vec<&str> = indexes
        .iter()
        .filter(|(_, primary, _, _)| !primary)
        .map(|(name, _, _, _)| name.as_str())
        .collect();
    if others.len() != table.indexes.len() {
        found.push(format!(
            "{qualified} has {} indexes besides its primary key ({}), declared {} ({})",
            others.len(),
            others.join(", "),
            table.indexes.len(),
            table.indexes.join(", ")
        ));
    }
    Ok(found)
}

/// The columns `table` declares returned (`Returned::Columns`) without declaring them.
fn undeclared_returned(qualified: &str, table: &Table) -> Vec<String> {
    let Returned::Columns(returned) = table.returned else {
        return Vec::new();
    };
    returned
        .iter()
        .filter(|name| table.column(name).is_none())
        .map(|name| {
            format!("{qualified}'s statements would return a column {name} it does not declare")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::Column;

    #[test]
    fn a_column_returned_must_be_declared() {
        static T: Table = Table {
            name: "t",
            columns: &[Column {
                name: "id",
                sql_type: "text",
                merge: Merge::Keep,
            }],
            key: &["id"],
            address: &["id"],
            indexes: &[],
            aggregate: None,
            returned: Returned::Columns(&["id", "gone"]),
        };
        assert_eq!(
            undeclared_returned("public.t", &T),
            vec!["public.t's statements would return a column gone it does not declare"]
        );
    }
}
