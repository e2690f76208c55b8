//! Every read-model table is declared once, in its projector (`cutover_core::rows::Table`):
//! the migrations' tables, their rebuild templates and the registry's rows must agree with the
//! declarations, column by column, or this fails. Likewise the states the registry stores
//! (Rust enums) and the CHECK constraints of their columns.

use cutover_core::projection::table_names;
use cutover_core::read_source::ReadSource;
use cutover_core::rows::Merge;
use cutover_projections::inline_projectors;
use cutover_projections::rebuild::Purpose;
use cutover_projections::registry::{JobStatus, ProjectionState};
use cutover_tests::TestDb;
use sqlx::Postgres;

/// A table's columns as Postgres has them: (name, type, generated), by name.
async fn columns(db: &TestDb, table: &str) -> Vec<(String, String, bool)> {
    let mut columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), attgenerated <> ''
           FROM pg_attribute
          WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
    )
    .bind(table)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("the columns of {table}: {e}"));
    columns.sort();
    columns
}

/// The columns of each unique index of `table` (the primary key first), and the names of its
/// other indexes.
async fn indexes(db: &TestDb, table: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let rows: Vec<(String, bool, bool, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisprimary, i.indisunique,
                array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                        JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       ORDER BY k.n)
           FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass
          ORDER BY NOT i.indisprimary, c.relname",
    )
    .bind(table)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("the indexes of {table}: {e}"));
    let unique = rows.iter().filter(|r| r.2).map(|r| r.3.clone()).collect();
    let others = rows.iter().filter(|r| !r.1).map(|r| r.0.clone()).collect();
    (unique, others)
}

#[tokio::test]
async fn every_table_and_registry_row_matches_its_projectors_declaration() {
    let db = TestDb::new().await;
    for projector in inline_projectors() {
        let registered: Vec<String> =
            sqlx::query_scalar("SELECT tables FROM projections WHERE name = $1")
                .bind(projector.name())
                .fetch_one(&db.pool)
                .await
                .unwrap_or_else(|e| panic!("the registry row of {}: {e}", projector.name()));
        let declared: Vec<&str> = table_names(projector.as_ref()).collect();
        assert_eq!(
            registered,
            declared,
            "the registry's tables of {}",
            projector.name()
        );

        for table in projector.tables() {
            let mut expected: Vec<(String, String, bool)> = table
                .columns
                .iter()
                .map(|c| {
                    let generated = c.merge == Merge::Generated;
                    (c.name.to_owned(), c.sql_type.to_owned(), generated)
                })
                .collect();
            expected.sort();
            for schema in ["public", "cutover_templates"] {
                let qualified = format!("{schema}.{}", table.name);
                assert_eq!(columns(&db, &qualified).await, expected, "{qualified}");
                let (unique, others) = indexes(&db, &qualified).await;
                assert_eq!(
                    unique.first().map(Vec::as_slice),
                    Some(
                        &table
                            .key
                            .iter()
                            .map(|c| (*c).to_owned())
                            .collect::<Vec<_>>()[..]
                    ),
                    "{qualified}: the key"
                );
                let address: Vec<String> = table.address.iter().map(|c| (*c).to_owned()).collect();
                assert!(
                    unique.contains(&address),
                    "{qualified}: the address is not unique"
                );
                if schema == "public" {
                    let declared: Vec<String> =
                        table.indexes.iter().map(|i| (*i).to_owned()).collect();
                    let mut found = others.clone();
                    found.sort();
                    let mut declared_sorted = declared.clone();
                    declared_sorted.sort();
                    assert_eq!(found, declared_sorted, "{qualified}: the indexes");
                }
            }
        }
    }
    db.pool.close().await;
}

/// The values the CHECK constraint `constraint` allows, sorted.
async fn allowed(db: &TestDb, constraint: &str) -> Vec<String> {
    let mut values: Vec<String> = sqlx::query_scalar(
        "SELECT (regexp_matches(pg_get_constraintdef(oid), '''([a-z_]+)''', 'g'))[1]
           FROM pg_constraint WHERE conname = $1",
    )
    .bind(constraint)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("the values of {constraint}: {e}"));
    values.sort();
    values
}

/// `variants` are stored as the values `constraint` allows, every one of them, and answered
/// in JSON with the same spelling; each stored value reads back as its variant.
async fn mirrors<T>(db: &TestDb, constraint: &str, variants: &[T])
where
    T: for<'q> sqlx::Encode<'q, Postgres>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + serde::Serialize
        + PartialEq
        + std::fmt::Debug
        + Copy
        + Send
        + Sync
        + Unpin,
{
    let mut stored = Vec::new();
    for variant in variants {
        let spelled: String = sqlx::query_scalar("SELECT $1")
            .bind(*variant)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(variant).unwrap(),
            spelled.as_str(),
            "{variant:?}: the answers' spelling"
        );
        let read: T = sqlx::query_scalar("SELECT $1::text")
            .bind(&spelled)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(read, *variant);
        stored.push(spelled);
    }
    stored.sort();
    assert_eq!(stored, allowed(db, constraint).await, "{constraint}");
}

#[tokio::test]
async fn every_stored_state_is_an_enum_that_mirrors_its_check_constraint() {
    use JobStatus::{Cancelled, Failed, Running, Succeeded};
    use ProjectionState::{Live, Rebuilding, Retired};
    let db = TestDb::new().await;
    mirrors(&db, "projections_state_check", &[Live, Rebuilding, Retired]).await;
    let shapes = [ReadSource::Legacy, ReadSource::New];
    mirrors(&db, "projections_shape_check", &shapes).await;
    mirrors(&db, "read_sources_source_check", &shapes).await;
    let statuses = [Running, Succeeded, Failed, Cancelled];
    mirrors(&db, "rebuild_jobs_status_check", &statuses).await;
    let purposes = [Purpose::Rebuild, Purpose::Verify];
    mirrors(&db, "rebuild_jobs_purpose_check", &purposes).await;
    db.pool.close().await;
}
