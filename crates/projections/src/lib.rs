//! The projectors: each owns its read-model tables and builds them from stored events, inline
//! in the command's transaction and, with the same code, when a projection is rebuilt.
//!
//! Each module declares its tables once (`cutover_engine::rows::Table`) and maps events to row
//! changes, with no IO; the one writer in `cutover_engine::rows` turns them into SQL with
//! unqualified table names, so the connection's `search_path` decides which schema (live or
//! shadow) receives the rows. The queries that read the rows live beside the declarations.

use std::sync::Arc;

use cutover_engine::projection::Projector;

use fold::Folded;

pub mod batch_completions;
pub mod batch_state;
pub mod batches;
pub mod collections;
mod fold;
pub mod follow;
pub mod legacy_competencies;
pub mod project_collections;
pub mod student_competencies;

/// Every inline projector, in the order they run inside a command's transaction.
pub fn inline_projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(Folded(collections::LegacyCollections)),
        Arc::new(Folded(project_collections::ProjectCollections)),
        Arc::new(Folded(batch_state::LegacyBatchState)),
        Arc::new(Folded(batch_completions::BatchCompletions)),
        Arc::new(Folded(legacy_competencies::LegacyCompetencies)),
        Arc::new(Folded(student_competencies::StudentCompetencies)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

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
