//! Every read-model table is declared once, in its projector (`cutover_core::rows::Table`):
//! the migrations' tables, their rebuild templates and the registry's rows must agree with the
//! declarations, column by column, or this fails.

use cutover_core::projection::table_names;
use cutover_core::rows::Merge;
use cutover_projections::inline_projectors;
use cutover_tests::TestDb;

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
