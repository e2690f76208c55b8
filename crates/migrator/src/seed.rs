//! `cutover seed --events N`: writes a realistic synthetic history quickly, for benchmarks and
//! demos — collections that are created, renamed, linked and sometimes deleted; prediction
//! batches whose players complete; students' attempts and reviews. Events are made with the
//! domain's own types (the competency numbers by the domain's formula) and appended in large
//! multi-row inserts under the append lock, bypassing the inline projectors: each insert
//! counts, in the same transaction, the events every projection has not seen (its lag until a
//! rebuild swaps fresh tables in), and the read models are then rebuilt from the log.

use anyhow::Context as _;
use cqrs_es::{Aggregate, DomainEvent};
use cutover_core::domain::batch::{BatchEvent, PredictionBatch};
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_core::domain::competency::{
    Competency, CompetencyEvent, StudentSubskill, SubskillKey, MAX_SCORE,
};
use cutover_engine::locks::APPEND_LOCK;
use cutover_engine::projection::Projector;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// Events per insert transaction.
const CHUNK: usize = 5_000;

/// A small deterministic generator (xorshift64*): the same seed gives the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One event ready to insert.
struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
}

fn rows<A: Aggregate>(aggregate_id: &str, events: Vec<A::Event>) -> anyhow::Result<Vec<Row>> {
    events
        .into_iter()
        .zip(1_i64..)
        .map(|(event, sequence)| {
            Ok(Row {
                aggregate_type: A::TYPE,
                aggregate_id: aggregate_id.to_owned(),
                sequence,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_value(&event)?,
            })
        })
        .collect()
}

const WORDS: &[&str] = &[
    "onboarding",
    "pricing",
    "churn",
    "interviews",
    "survey",
    "usability",
    "retention",
    "checkout",
    "search",
    "mobile",
    "billing",
    "reports",
    "support",
    "trial",
    "growth",
];

fn phrase(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[usize::try_from(rng.below(WORDS.len() as u64)).unwrap_or(0)])
        .collect::<Vec<_>>()
        .join(" ")
}

fn collection_history(rng: &mut Rng) -> anyhow::Result<Vec<Row>> {
    let id = Uuid::new_v4().to_string();
    let project_id = Uuid::from_u128(u128::from(rng.below(500)));
    let mut events = vec![CollectionEvent::CollectionCreated {
        project_id,
        collection_name: phrase(rng, 2),
        description: phrase(rng, 12),
    }];
    for _ in 0..rng.below(3) {
        events.push(CollectionEvent::CollectionUpdated {
            collection_name: phrase(rng, 3),
            description: Some(phrase(rng, 14)),
            updated_at: None,
        });
    }
    events.push(CollectionEvent::CollectionResearchLinksSet {
        tags: (0..1 + rng.below(4)).map(|_| phrase(rng, 1)).collect(),
        question_ids: (0..rng.below(3)).map(|_| Uuid::new_v4()).collect(),
        hypothesis_ids: (0..rng.below(2)).map(|_| Uuid::new_v4()).collect(),
    });
    if rng.below(10) == 0 {
        events.push(CollectionEvent::CollectionDeleted { updated_at: None });
    }
    rows::<Collection>(&id, events)
}

fn batch_history(rng: &mut Rng, tag: &str, n: u64) -> anyhow::Result<Vec<Row>> {
    let id = format!("seed-{tag}-{n}");
    let players: Vec<String> = (0..10 + rng.below(30))
        .map(|p| format!("player-{p}"))
        .collect();
    let finishing = rng.below(4) != 0;
    let completing = if finishing {
        players.len()
    } else {
        usize::try_from(rng.below(players.len() as u64)).unwrap_or(0)
    };
    let mut events = vec![BatchEvent::BatchStarted {
        expected_player_lookups: players.clone(),
        updated_at: None,
    }];
    let mut total = 0_u64;
    for player in players.iter().take(completing) {
        let count = u32::try_from(rng.below(50)).unwrap_or(0);
        total += u64::from(count);
        events.push(BatchEvent::PlayerCompleted {
            player_lookup: player.clone(),
            predictions_count: count,
            updated_at: None,
        });
    }
    if finishing {
        events.push(BatchEvent::BatchCompleted {
            completed_count: u32::try_from(players.len()).unwrap_or(u32::MAX),
            total_predictions: total,
            updated_at: None,
        });
    }
    rows::<PredictionBatch>(&id, events)
}

fn competency_history(rng: &mut Rng, student_base: i64, n: u64) -> anyhow::Result<Vec<Row>> {
    let key = SubskillKey::parse(
        student_base + i64::try_from(n / 4).unwrap_or(0),
        ["math", "reading", "science"][usize::try_from(rng.below(3)).unwrap_or(0)],
        &format!("skill-{}", rng.below(20)),
        &format!("sub-{}", n % 4),
    )?;
    let mut events = Vec::new();
    let (mut attempts, mut sum) = (0_u32, 0.0_f64);
    for _ in 0..3 + rng.below(12) {
        if rng.below(5) == 0 {
            let score = f64::from(u32::try_from(rng.below(101)).unwrap_or(0)) / 10.0;
            events.push(CompetencyEvent::ReviewRecorded {
                key: key.clone(),
                review_id: Uuid::new_v4(),
                problem_id: format!("problem-{}", rng.below(1000)),
                full_review: json!({
                    "observation": {"text": phrase(rng, 6)},
                    "analysis": {"text": phrase(rng, 6)},
                    "evaluation": {"score": score},
                    "feedback": {"text": phrase(rng, 6)},
                }),
                score,
                at: None,
            });
        } else {
            let score = f64::from(u32::try_from(rng.below(101)).unwrap_or(0)) / 10.0;
            attempts += 1;
            sum += score;
            events.push(CompetencyEvent::AttemptRecorded {
                key: key.clone(),
                attempt_id: Uuid::new_v4(),
                score,
                analysis: phrase(rng, 8),
                feedback: phrase(rng, 6),
                max_score: MAX_SCORE,
                competency: Competency::derive(attempts, sum),
                at: None,
            });
        }
    }
    rows::<StudentSubskill>(&key.aggregate_id(), events)
}

/// Appends about `target` events (whole histories, so a little more) and returns how many.
///
/// # Errors
/// A database error; what was inserted before it stays.
pub async fn seed(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    target: u64,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let run = Uuid::new_v4().simple().to_string();
    let tag = &run[..8];
    let student_base = i64::try_from(u64::from(u32::from_str_radix(&run[..7], 16)?) * 1000)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut written = 0_u64;
    let mut pending: Vec<Row> = Vec::with_capacity(CHUNK + 64);
    let mut n = 0_u64;
    while written + pending.len() as u64 <= target {
        n += 1;
        let history = match n % 3 {
            0 => collection_history(&mut rng)?,
            1 => batch_history(&mut rng, tag, n)?,
            _ => competency_history(&mut rng, student_base, n)?,
        };
        pending.extend(history);
        if pending.len() >= CHUNK {
            written += insert(pool, projectors, &mut pending).await?;
            on_progress(written);
        }
    }
    written += insert(pool, projectors, &mut pending).await?;
    on_progress(written);
    Ok(written)
}

async fn insert(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    rows: &mut Vec<Row>,
) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let count = rows.len() as u64;
    let (names, unseen): (Vec<&str>, Vec<i64>) = projectors
        .iter()
        .map(|p| {
            let types = p.aggregate_types();
            let n = rows
                .iter()
                .filter(|row| types.contains(&row.aggregate_type))
                .count();
            (p.name(), i64::try_from(n).unwrap_or(i64::MAX))
        })
        .unzip();
    let mut types = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut sequences = Vec::with_capacity(rows.len());
    let mut event_types = Vec::with_capacity(rows.len());
    let mut event_versions = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    for row in rows.drain(..) {
        types.push(row.aggregate_type);
        ids.push(row.aggregate_id);
        sequences.push(row.sequence);
        event_types.push(row.event_type);
        event_versions.push(row.event_version);
        payloads.push(row.payload);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "SELECT pg_advisory_xact_lock_shared({APPEND_LOCK})"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT t, i, s, e, v, p, '{\"command\": \"Seed\"}'
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[])
             AS r(t, i, s, e, v, p)",
        &types as _,
        &ids,
        &sequences,
        &event_types,
        &event_versions,
        &payloads
    )
    .execute(&mut *tx)
    .await
    .context("inserting seed events")?;
    sqlx::query!(
        "UPDATE projections SET unprojected = unprojected + u.n
           FROM unnest($1::text[], $2::bigint[]) AS u(name, n)
          WHERE projections.name = u.name AND u.n > 0",
        &names as _,
        &unseen
    )
    .execute(&mut *tx)
    .await
    .context("counting the events the read models have not seen")?;
    tx.commit().await?;
    Ok(count)
}
