-- `cutover import-legacy` consumes its staging table: a row whose collection has its genesis
-- event is deleted once imported (or found already imported), and a refused row stays, with
-- why, for the operator to fix (or delete) before the next run.
ALTER TABLE import_collections ADD COLUMN refused text;
COMMENT ON COLUMN import_collections.refused IS
    'why the last `cutover import-legacy` refused the row (NULL: not refused yet)';
