//! Property: whatever commands run, replaying the log rebuilds exactly the rows that inline
//! projection produced (guarantee 6), in both shapes of every domain.

use cutover_core::domain::batch::{BatchCommand, Completion, ExpectedPlayers, PredictionBatch};
use cutover_core::domain::collection::{
    Collection, CollectionCommand, CollectionName, Description, ResearchLinks,
};
use cutover_core::domain::competency::{Attempt, CompetencyCommand, StudentSubskill, SubskillKey};
use cutover_core::store::{CommandError, EventStore};
use cutover_engine::verify::verify;
use cutover_projections::inline_projectors;
use cutover_tests::TestDb;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Create {
        collection: u8,
        name: String,
    },
    Update {
        collection: u8,
        description: String,
    },
    Link {
        collection: u8,
        tags: Vec<String>,
    },
    Delete {
        collection: u8,
    },
    Start {
        batch: u8,
        players: u8,
    },
    Complete {
        batch: u8,
        player: u8,
        count: u16,
    },
    Bulk {
        batch: u8,
        players: Vec<(u8, u16)>,
    },
    Attempt {
        student: u8,
        subskill: u8,
        score: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let word = "[a-z]{1,8}";
    prop_oneof![
        (0..4_u8, word).prop_map(|(collection, name)| Op::Create { collection, name }),
        (0..4_u8, word).prop_map(|(collection, description)| Op::Update {
            collection,
            description
        }),
        (0..4_u8, prop::collection::vec(word, 0..4))
            .prop_map(|(collection, tags)| Op::Link { collection, tags }),
        (0..4_u8).prop_map(|collection| Op::Delete { collection }),
        (0..2_u8, 1..6_u8).prop_map(|(batch, players)| Op::Start { batch, players }),
        (0..2_u8, 0..6_u8, 0..20_u16).prop_map(|(batch, player, count)| Op::Complete {
            batch,
            player,
            count
        }),
        (0..2_u8, prop::collection::vec((0..6_u8, 0..20_u16), 1..5))
            .prop_map(|(batch, players)| Op::Bulk { batch, players }),
        (0..3_u8, 0..2_u8, 0..=100_u8).prop_map(|(student, subskill, score)| Op::Attempt {
            student,
            subskill,
            score
        }),
    ]
}

/// Runs `op`; a command the domain refuses is fine (it appends nothing).
async fn run(store: &EventStore, collections: &[Uuid], op: Op) {
    let project = Uuid::from_u128(7);
    let meta = json!({});
    let refused_or_done = |result: Result<(), String>| {
        if let Err(e) = result {
            assert!(e.starts_with("refused"), "{e}");
        }
    };
    fn outcome<E: std::error::Error>(
        r: Result<cutover_core::store::Committed, CommandError<E>>,
    ) -> Result<(), String> {
        match r {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(e)) => Err(format!("refused: {e}")),
            Err(e) => Err(format!("failed: {e}")),
        }
    }
    let name = |raw: &str| CollectionName::parse(raw).expect("a valid name");
    match op {
        Op::Create {
            collection,
            name: n,
        } => {
            let command = CollectionCommand::CreateCollection {
                project_id: project,
                name: name(&n),
                description: Description::default(),
            };
            let id = collections[usize::from(collection)].to_string();
            refused_or_done(outcome(
                store
                    .execute::<Collection>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Update {
            collection,
            description,
        } => {
            let command = CollectionCommand::UpdateCollection {
                project_id: project,
                name: name("renamed"),
                description: Some(Description::parse(&description).expect("a valid description")),
                updated_at: None,
            };
            let id = collections[usize::from(collection)].to_string();
            refused_or_done(outcome(
                store
                    .execute::<Collection>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Link { collection, tags } => {
            let links = ResearchLinks::parse(&tags, &[], &[]).expect("valid links");
            let command = CollectionCommand::SetResearchLinks {
                project_id: project,
                links,
            };
            let id = collections[usize::from(collection)].to_string();
            refused_or_done(outcome(
                store
                    .execute::<Collection>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Delete { collection } => {
            let command = CollectionCommand::DeleteCollection {
                project_id: project,
                updated_at: None,
            };
            let id = collections[usize::from(collection)].to_string();
            refused_or_done(outcome(
                store
                    .execute::<Collection>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Start { batch, players } => {
            let players: Vec<String> = (0..players).map(|p| format!("p{p}")).collect();
            let command = BatchCommand::StartBatch {
                expected_players: ExpectedPlayers::parse(&players).expect("valid players"),
                updated_at: None,
            };
            let id = format!("b{batch}");
            refused_or_done(outcome(
                store
                    .execute::<PredictionBatch>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Complete {
            batch,
            player,
            count,
        } => {
            let completion =
                Completion::parse(&format!("p{player}"), i64::from(count)).expect("valid");
            let id = format!("b{batch}");
            let command = BatchCommand::RecordCompletion(completion);
            refused_or_done(outcome(
                store
                    .execute::<PredictionBatch>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Bulk { batch, players } => {
            let completions = players
                .iter()
                .map(|(p, c)| Completion::parse(&format!("p{p}"), i64::from(*c)).expect("valid"))
                .collect();
            let id = format!("b{batch}");
            let command = BatchCommand::RecordCompletions(completions);
            refused_or_done(outcome(
                store
                    .execute::<PredictionBatch>(&id, command, &(), None, &meta)
                    .await,
            ));
        }
        Op::Attempt {
            student,
            subskill,
            score,
        } => {
            let key = SubskillKey::parse(
                i64::from(student) + 1,
                "math",
                "fractions",
                &format!("s{subskill}"),
            )
            .expect("a valid key");
            let attempt =
                Attempt::parse(Uuid::new_v4(), f64::from(score) / 10.0, "", "").expect("valid");
            let command = CompetencyCommand::RecordAttempt {
                key: key.clone(),
                attempt,
            };
            refused_or_done(outcome(
                store
                    .execute::<StudentSubskill>(&key.aggregate_id(), command, &(), None, &meta)
                    .await,
            ));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rebuild_equals_live_for_any_sequence_of_commands(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let db = TestDb::new().await;
            let store = db.store();
            let collections: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
            for op in ops {
                run(&store, &collections, op).await;
            }
            let report = verify(&db.pool, &inline_projectors(), None).await.expect("verify");
            assert!(report.consistent(), "{:?}", &report.differences[..report.differences.len().min(3)]);
            db.pool.close().await;
        });
    }
}
