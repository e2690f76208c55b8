//! The projectors: each owns its read-model tables and builds them from stored events, inline
//! in the command's transaction and, with the same code, when a projection is rebuilt.
//!
//! Each module declares its tables once (`cutover_engine::rows::Table`) and maps events to row
//! changes, with no IO; the one writer in `cutover_engine::rows` turns them into SQL with
//! unqualified table names, so the connection's `search_path` decides which schema (live or
//! shadow) receives the rows. The queries that read the rows live beside the declarations.

use std::sync::Arc;

use cutover_engine::projection::Projector;

pub mod batches;
mod fold;
pub mod follow;

// The projector modules (`collections`, `project_collections`, `batch_state`,
// `batch_completions`, `legacy_competencies`, `student_competencies`, and any other file of
// `src/` with a `projector()`), declared by the build script (`build.rs`).
include!(concat!(env!("OUT_DIR"), "/projectors.rs"));

/// Every inline projector: by domain, the legacy shape's before the new one's, then by name
/// (the order of the registry's listings and of a `rebuild --all`).
pub fn inline_projectors() -> Vec<Arc<dyn Projector>> {
    let mut all = found();
    all.sort_by_key(|p| (p.domain(), p.shape(), p.name()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projector_file_is_found_and_the_projectors_come_by_domain_and_shape() {
        let names: Vec<&str> = inline_projectors().iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "collections",
                "project_collections",
                "batch_state",
                "batch_completions",
                "legacy_competencies",
                "student_competencies"
            ]
        );
    }

    #[test]
    fn a_repair_clears_or_settles_each_table_of_every_inline_projector() {
        for projector in inline_projectors() {
            for table in projector.tables() {
                let settled = projector
                    .settle()
                    .iter()
                    .any(|s| s.contains(&format!("INSERT INTO {} ", table.name)));
                assert!(
                    table.aggregate.is_some() || settled,
                    "{}: {} is not repaired",
                    projector.name(),
                    table.name
                );
            }
        }
    }
}
