//! `cutover`: the operator's command line — schema, projections (status, rebuild, verify,
//! retire), read sources, adopting legacy rows, and synthetic history for benchmarks.

mod seed;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use cutover_core::store::EventStore;
use cutover_engine::read_source::ReadSource;
use cutover_engine::rebuild::{self, Progress, SwapArgs};
use cutover_engine::registry::JobState;
use cutover_engine::registry::Purpose;
use cutover_engine::{registry, repair, shadow, verify};
use cutover_projections::{follow, inline_projectors};
use cutover_runtime::auth::{Scope, Tokens};
use cutover_runtime::database::{self, Database, DatabaseArgs};
use cutover_runtime::telemetry::{self, LogFormat};
use indicatif::{ProgressBar, ProgressStyle};

/// `println!`, but a reader that has gone away (`cutover status | head -1`) is no error: what
/// it would have read is dropped and the command goes on to end as usual. Any other failure to
/// write is the command's error.
macro_rules! out {
    () => {
        line(format_args!(""))
    };
    ($($arg:tt)*) => {
        line(format_args!($($arg)*))
    };
}

/// Writes one line of output; see [`out!`].
fn line(text: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}

/// Cutover's operator CLI. Acts on the same registry as every server instance.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,

    /// The admin token that every command changing Cutover's data or its read models needs
    /// when tokens are configured (CUTOVER_TOKENS / CUTOVER_TOKENS_FILE, as for the server).
    #[arg(long, env = "CUTOVER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// Configured tokens, as for the server: comma-separated `scope:token` entries.
    #[arg(long, env = "CUTOVER_TOKENS", hide_env_values = true, global = true)]
    tokens: Option<String>,

    /// A file of configured tokens, as for the server.
    #[arg(long, env = "CUTOVER_TOKENS_FILE", global = true)]
    tokens_file: Option<std::path::PathBuf>,

    /// Log line format (logs go to stderr; filter with RUST_LOG).
    #[arg(
        long,
        env = "CUTOVER_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the schema migrations (the server also applies them at start).
    Migrate,
    /// Print the URL of the database the server and these commands use (DATABASE_URL, or the
    /// private cluster's socket), starting nothing: `psql "$(cutover database-url)"` opens it
    /// while the private cluster runs (while the server does).
    DatabaseUrl,
    /// Every projection's state, version, last position, lag, latest rebuild job (running,
    /// interrupted, or how it ended) and row counts; each domain's read source; the
    /// interrupted rebuilds, with the command that resumes each.
    Status,
    /// Rebuild projections from the log while commands keep being accepted, then swap the
    /// rebuilt tables in. Brings a retired projection back.
    Rebuild {
        /// Projection names (see `cutover status`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        projections: Vec<String>,
        /// Rebuild every projection in one pass over the log.
        #[arg(long)]
        all: bool,
        /// Cancel the running (or interrupted) rebuild of these projections instead: it stops
        /// at its next batch and its tables are dropped.
        #[arg(long, conflicts_with = "dry_run")]
        cancel: bool,
        /// Print what the rebuild would do (events, tables and rows, expected duration at the
        /// rate of the last rebuilds) and do nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        swap: SwapArgs,
    },
    /// Compare, on 100% of rows, each domain's legacy and new read models, and each live
    /// projection with a fresh rebuild. Exits with status 1 when anything differs.
    Verify {
        /// collections, batches or competencies; all when omitted.
        domain: Option<String>,
    },
    /// Rebuild, in place, the rows of some aggregates in live projections (after verify found
    /// a drift), in one transaction that holds off commands on those aggregates only. Verify
    /// prints the command for each difference it finds.
    Repair {
        /// The projections to repair (of one aggregate type).
        #[arg(required = true)]
        projections: Vec<String>,
        /// An aggregate id whose rows to rebuild (repeat for more).
        #[arg(long = "aggregate", required = true)]
        aggregates: Vec<String>,
    },
    /// Switch what a domain's GET routes read, at once, on every instance; the answers do not
    /// change. Refused until a clean consistency report of the domain (`cutover verify
    /// <domain>`) was taken after the last rebuild, repair or retirement of its projections,
    /// and enough shadow reads since then matched (`cutover shadow <domain>`).
    ReadSource {
        /// collections, batches or competencies.
        domain: String,
        source: SourceArg,
        /// Switch even though the gate is closed (recorded in the activity history).
        #[arg(long)]
        force: bool,
    },
    /// Put a domain in shadow: its GETs are answered from the read source as before and, for
    /// the fraction given, also computed from the other model and compared as the client would
    /// see them. The switch gate wants `--min-reads` of them with no mismatch since the last
    /// rebuild, repair or retirement of the domain's projections. `cutover status` shows them.
    Shadow {
        /// collections, batches or competencies.
        domain: String,
        /// The share of GETs compared, above 0 and at most 1.
        #[arg(long, default_value_t = shadow::DEFAULT_FRACTION)]
        fraction: f64,
        /// Shadow reads with no mismatch the switch gate wants.
        #[arg(long, default_value_t = shadow::DEFAULT_MIN_READS)]
        min_reads: i64,
        /// Take the domain out of shadow instead (the reads counted stay).
        #[arg(long, conflicts_with_all = ["fraction", "min_reads"])]
        off: bool,
    },
    /// Stop maintaining a projection and drop its tables (refused while it is its domain's
    /// read source). `cutover rebuild` brings it back.
    Retire { projection: String },
    /// Append one genesis event per row of `import_collections` (legacy rows of an existing
    /// deployment), deleting each row imported (a row whose collection already has a history
    /// appends nothing and is deleted too). A refused row stays, its `refused` column saying
    /// why; fix it (or delete it) and run again. Exits with status 1 when a row was refused.
    ImportLegacy,
    /// Follow the old system's tables while its application still writes them: copy their
    /// rows, then apply every insert, update and delete as the domain's events, through
    /// logical replication from the old database (a publication of its tables, a replication
    /// slot this command makes). Runs until stopped (Ctrl-C), or with `--until-caught-up`
    /// until nothing more waits. Stopped at any moment, it resumes where it stood when run
    /// again. The collections, the batches and the competencies (attempts and reviews) can be
    /// followed.
    Follow {
        /// The old database (another server, or another database on this one).
        #[arg(long, env = "CUTOVER_LEGACY_URL")]
        legacy_url: String,
        /// The publication of the old tables on the old database.
        #[arg(long, default_value = follow::DEFAULT_PUBLICATION)]
        publication: String,
        /// Stop once everything the old database had committed is applied.
        #[arg(long)]
        until_caught_up: bool,
        /// Most changes applied in one transaction here.
        #[arg(long, default_value_t = follow::DEFAULT_BATCH,
              value_parser = clap::value_parser!(u16).range(1..=10_000))]
        batch: u16,
        /// Stop following instead: remove the slot from the old database (which then keeps no
        /// more WAL for it) and what Cutover recorded of it.
        #[arg(long, conflicts_with = "until_caught_up")]
        drop: bool,
        /// The domains to follow (collections, batches, competencies).
        #[arg(default_value = "collections")]
        domains: Vec<String>,
    },
    /// Move a followed domain's writes from the old system to Cutover: make the old table
    /// refuse writes (a trigger; the URL's role must own the table), apply everything the old
    /// database committed before, compare every old row with both of Cutover's models, and
    /// only with no difference open Cutover's commands for the domain and drop the slot. With
    /// differences, the old table takes writes again, following goes on, and the exit status
    /// is 1.
    Handover {
        /// The old database, as the role that owns the followed tables.
        #[arg(long, env = "CUTOVER_LEGACY_URL")]
        legacy_url: String,
        /// The domains to hand over (collections, batches, competencies).
        #[arg(default_value = "collections")]
        domains: Vec<String>,
    },
    /// Write a synthetic history of about N events, then rebuild every projection from it.
    Seed {
        /// How many events to write.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Leave the read models as they are: they lack the new events until a rebuild, and
        /// `cutover status` counts them as each projection's lag meanwhile.
        #[arg(long)]
        no_rebuild: bool,
        #[command(flatten)]
        swap: SwapArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SourceArg {
    Legacy,
    New,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, DEFAULT_LOG_FILTER);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Warnings, and where the private cluster is (with the psql command that opens it).
const DEFAULT_LOG_FILTER: &str = "warn,sqlx::query=error,cutover_runtime::local_postgres=info";

const AFTER_HELP: &str = "\
Environment:
  RUST_LOG        Log filter (default: warn,sqlx::query=error,cutover_runtime::local_postgres=info),
                  e.g. RUST_LOG=info
  Every flag above can also be set by the environment variable shown beside it.
  Without DATABASE_URL the CLI uses the same private cluster as `cutover-api` (--data-dir),
  starting it (and stopping it on exit) if it is not running.

`cutover <command> --help` explains each command. A migration step by step:
docs/operations.md.";

/// Refuses a destructive command without an admin token, when tokens are configured.
fn check_token(cli: &Cli) -> anyhow::Result<()> {
    let destructive = matches!(
        cli.command,
        Command::Rebuild { .. }
            | Command::Retire { .. }
            | Command::ReadSource { .. }
            | Command::Shadow { .. }
            | Command::Repair { .. }
            | Command::ImportLegacy
            | Command::Follow { .. }
            | Command::Handover { .. }
            | Command::Seed { .. }
    );
    let Some(tokens) = Tokens::load(cli.tokens.as_deref(), cli.tokens_file.as_deref())
        .context("reading the tokens")?
    else {
        return Ok(());
    };
    if !destructive {
        return Ok(());
    }
    let scope = cli.token.as_deref().and_then(|t| tokens.scope_of(t));
    if scope != Some(Scope::Admin) {
        anyhow::bail!("this command needs an admin token: pass --token or set CUTOVER_TOKEN");
    }
    Ok(())
}

/// Who runs this command, as the activity history records it.
fn cli_actor() -> cutover_engine::admin::Actor {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    cutover_engine::admin::Actor(format!("cli:{user}"))
}

/// A domain's shadow window, as `status` prints it.
fn print_shadow(window: &shadow::Window) -> std::io::Result<()> {
    let state = match &window.shadow {
        Some(s) => format!(
            "in shadow ({:.0}% of GETs, the gate wants {} reads)",
            s.fraction * 100.0,
            s.min_reads
        ),
        None => "not in shadow".to_owned(),
    };
    out!(
        "shadow of {}: {state}; {} reads, {} mismatches since {}",
        window.domain,
        window.reads,
        window.mismatches,
        window.since
    )?;
    for m in &window.recent {
        out!(
            "  mismatch at {} on {} ({}, served from {}): served {} / other {}",
            m.seen_at,
            m.path,
            m.route,
            m.served_source,
            m.served,
            m.other
        )?;
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    check_token(&cli)?;
    if matches!(cli.command, Command::DatabaseUrl) {
        out!(
            "{}",
            database::database_url(&cli.database).context("locating the database")?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let database = Database::open(&cli.database)
        .await
        .context("opening the database")?;
    let result =
        match cutover_engine::declarations::check(&database.session, &inline_projectors()).await {
            Ok(()) => command(&database, cli.command).await,
            Err(e) => Err(anyhow::Error::from(e).context("checking the read models' tables")),
        };
    database.close().await.context("closing the database")?;
    result
}

async fn command(database: &Database, command: Command) -> anyhow::Result<ExitCode> {
    // The session connection: a rebuild holds its projections' locks for its whole run, which a
    // transaction pooler would not keep.
    let pool = &database.session;
    let projectors = inline_projectors();
    match command {
        // Answered by `run` without opening the database.
        Command::DatabaseUrl => {}
        Command::Migrate => {
            let applied = cutover_runtime::database::MIGRATOR.iter().count();
            out!("schema is up to date ({applied} migrations)")?;
        }
        Command::Status => {
            out!(
                "{:<22} {:<13} {:<7} {:<11} {:>8} {:>12} {:>8}  {:<11}  rows",
                "projection",
                "domain",
                "shape",
                "state",
                "version",
                "position",
                "lag",
                "rebuild"
            )?;
            for projection in registry::projections(pool).await? {
                let status = registry::status(pool, &projectors, &projection.name).await?;
                let rows = status
                    .rows
                    .iter()
                    .map(|(table, n)| format!("{table}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                out!(
                    "{:<22} {:<13} {:<7} {:<11} {:>8} {:>12} {:>8}  {:<11}  {}",
                    projection.name,
                    projection.domain,
                    projection.shape.as_str(),
                    projection.state,
                    projection.version,
                    status.last_position.map_or("-".into(), |p| p.to_string()),
                    status.lag.map_or("-".into(), |l| l.to_string()),
                    status
                        .latest_job
                        .map_or("-".into(), |job| job.status.to_string()),
                    if rows.is_empty() { "-".into() } else { rows }
                )?;
            }
            out!()?;
            for (domain, source) in registry::read_sources(pool).await? {
                out!("read source of {domain}: {}", source.as_str())?;
            }
            for window in shadow::windows(pool).await? {
                print_shadow(&window)?;
            }
            for handed in follow::handover::handovers(pool).await? {
                out!(
                    "{} was handed over from the old {} at {} ({} old rows compared, no difference)",
                    handed.domain, handed.legacy_table, handed.handed_over_at, handed.rows_compared
                )?;
            }
            for followed in follow::follows(pool).await? {
                out!(
                    "following {} from the old {} (slot {}): at {}; {} changes applied, {} refused; \
                     {} bytes of WAL behind{} (as of {})",
                    followed.domain,
                    followed.legacy_table,
                    followed.slot,
                    followed.lsn,
                    followed.changes_applied,
                    followed.changes_refused,
                    followed.lag_bytes,
                    followed.waiting_since.map_or(String::new(), |since| format!(
                        ", changes waiting since {since}"
                    )),
                    followed.updated_at
                )?;
                if let Some(p99) = follow::Follow::lag_quantile(&followed.lag_histogram, 0.99) {
                    out!(
                        "  99% of the changes streamed were applied within {} of their old commit",
                        if p99.is_finite() {
                            format!("{p99} s")
                        } else {
                            "more than a minute".into()
                        }
                    )?;
                }
                if followed.changes_refused > 0 {
                    out!("  the refused changes, with why: SELECT * FROM follow_refusals WHERE domain = '{}'", followed.domain)?;
                }
                if let (Some(error), Some(at)) = (&followed.last_error, followed.last_error_at) {
                    out!("  the follower failed at {at} (it tries again): {error}")?;
                }
                if followed.stopped(chrono::Utc::now()) {
                    out!(
                        "  warning: no follower has run since {}: the old database keeps its WAL \
                         for slot {} meanwhile; run `cutover follow` again, or stop following with \
                         `cutover follow --drop`",
                        followed.updated_at,
                        followed.slot
                    )?;
                }
            }
            let interrupted = registry::unfinished_jobs(pool)
                .await?
                .into_iter()
                .filter(|job| {
                    job.purpose == Purpose::Rebuild && job.status == JobState::Interrupted
                });
            for job in interrupted {
                out!(
                    "interrupted: rebuild job {} of {} at {} of {} events; resume it with `cutover rebuild {}` (or cancel it with --cancel)",
                    job.id,
                    job.projections.join(", "),
                    job.events_done,
                    job.events_total,
                    job.projections.join(" ")
                )?;
            }
            if let Some(b) = cutover_engine::log::horizon_blocker(pool).await? {
                out!(
                    "the log's horizon is held back by pid {} (application {:?}, its transaction open {:.0} s): {}",
                    b.pid, b.application, b.age_seconds, b.query
                )?;
            }
        }
        Command::Rebuild {
            projections,
            all,
            cancel,
            dry_run,
            swap,
        } => {
            let names = if all {
                vec!["all".to_owned()]
            } else {
                projections
            };
            let selected = rebuild::select(&projectors, &names)?;
            let selected_names: Vec<String> =
                selected.iter().map(|p| p.name().to_owned()).collect();
            if cancel {
                let Some(job) = registry::running_job_of(pool, &selected_names).await? else {
                    anyhow::bail!("no rebuild of {} is running", selected_names.join(", "));
                };
                let cancelled = rebuild::cancel(pool, job).await?;
                out!(
                    "cancelled rebuild job {job} of {}: it stops at its next batch and its tables are dropped",
                    cancelled.join(", ")
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            if dry_run {
                let plan = rebuild::dry_run(pool, &selected).await?;
                out!(
                    "a rebuild of {} would replay {} events into:",
                    selected_names.join(", "),
                    plan.events
                )?;
                for (table, rows) in &plan.tables {
                    out!("  {table}: {rows} rows now")?;
                }
                match (plan.recent_rate, plan.expected()) {
                    (Some(rate), Some(expected)) => out!(
                        "expected: about {:.0} s at {rate:.0} events/s (the last rebuilds' rate)",
                        expected.as_secs_f64()
                    )?,
                    _ => out!("expected: unknown (no rebuild has finished here yet)")?,
                }
                return Ok(ExitCode::SUCCESS);
            }
            let job = rebuild::Job::start(pool, selected, Purpose::Rebuild).await?;
            let label: Vec<&str> = job.projectors().iter().map(|p| p.name()).collect();
            let label = label.join(", ");
            let mut reporter = Reporter::new(&format!("rebuild {label}"));
            let outcome = job.run(swap, |p| reporter.update(p)).await?;
            reporter.finish();
            let rate = outcome.replayed as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
            if let Some(position) = outcome.resumed_from {
                out!(
                    "resumed interrupted rebuild job {} from its checkpoint at position {position}",
                    outcome.job_id
                )?;
            }
            out!(
                "rebuilt {label}: {} events replayed in {:.1} s ({rate:.0} events/s; {} in all); appends held back {:.1} ms at the swap; reached position {}",
                outcome.replayed,
                outcome.elapsed.as_secs_f64(),
                outcome.events,
                outcome.swap_hold.as_secs_f64() * 1000.0,
                outcome.position
            )?;
        }
        Command::Verify { domain } => {
            let report = verify::verify(pool, &projectors, domain.as_deref()).await?;
            for skipped in &report.skipped {
                out!("skipped: {skipped}")?;
            }
            for d in &report.differences {
                out!(
                    "DIFFERENCE {} {} {} key={} field={}: {} vs {}",
                    d.check,
                    d.projection,
                    d.table,
                    d.key,
                    d.field,
                    d.left,
                    d.right
                )?;
                if let Some(repair) = &d.repair {
                    out!("  repair: {repair}")?;
                }
            }
            if report.difference_count > report.differences.len() {
                out!(
                    "... and {} more",
                    report.difference_count - report.differences.len()
                )?;
            }
            out!(
                "verified {}: {} rows compared, {} differences",
                report.domains.join(", "),
                report.rows_compared,
                report.difference_count
            )?;
            if !report.consistent() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Repair {
            projections,
            aggregates,
        } => {
            let repaired = repair::repair(pool, &projectors, &projections, &aggregates).await?;
            out!(
                "repaired {} for {} {} aggregate(s): {} events replayed",
                repaired.projections.join(", "),
                repaired.aggregates.len(),
                repaired.aggregate_type,
                repaired.events_replayed
            )?;
        }
        Command::ReadSource {
            domain,
            source,
            force,
        } => {
            let source = match source {
                SourceArg::Legacy => ReadSource::Legacy,
                SourceArg::New => ReadSource::New,
            };
            let gate =
                registry::set_read_source(pool, &domain, source, force, &cli_actor()).await?;
            if !gate.open {
                out!("forced past the gate ({}); recorded", gate.reason)?;
            }
            out!("{domain} now reads from {}", source.as_str())?;
        }
        Command::Shadow {
            domain,
            fraction,
            min_reads,
            off,
        } => {
            if off {
                shadow::stop(pool, &domain, &cli_actor()).await?;
                out!("{domain} is out of shadow; the reads it counted stay")?;
            } else {
                let settings =
                    shadow::start(pool, &domain, fraction, min_reads, &cli_actor()).await?;
                out!(
                    "{domain} is in shadow: {:.0}% of its GETs are also read from the other \
                     model and compared; the switch gate wants {} of them with no mismatch",
                    settings.fraction * 100.0,
                    settings.min_reads
                )?;
            }
        }
        Command::Retire { projection } => {
            registry::retire(pool, &projection).await?;
            out!(
                "{projection} is retired: its tables are dropped and commands no longer update it"
            )?;
        }
        Command::ImportLegacy => {
            let store = EventStore::new(pool.clone(), projectors, 5);
            let imported = cutover_core::import::import_collections(&store).await?;
            for (id, reason) in &imported.refused {
                out!("refused {id}: {reason}")?;
            }
            out!(
                "imported {} collections; {} already had a history; {} refused",
                imported.appended,
                imported.already_present,
                imported.refused.len()
            )?;
            if !imported.refused.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Follow {
            legacy_url,
            publication,
            until_caught_up,
            batch,
            drop,
            domains,
        } => {
            let follow::OldSystem { store, old } = follow::OldSystem::open(pool, &legacy_url)?;
            if drop {
                for domain in &domains {
                    if follow::drop_follow(&store, &old, domain).await? {
                        out!("stopped following {domain}; its slot is removed")?;
                    } else {
                        out!("{domain} was not followed")?;
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut followers = Vec::new();
            for domain in &domains {
                followers.push(
                    follow::Follower::start(store.clone(), old.clone(), domain, &publication)
                        .await?
                        .with_batch(usize::from(batch)),
                );
            }
            follow::keep_following(
                &store,
                &old,
                follow::Domains::These(followers),
                until_caught_up,
                cutover_runtime::signals::stop_requested(),
                |follow, progress| -> anyhow::Result<()> {
                    out!(
                        "{}: copied {} rows, applied {} changes, refused {}; at {}",
                        follow.domain,
                        progress.copied,
                        progress.applied,
                        progress.refused,
                        follow.lsn
                    )?;
                    Ok(())
                },
            )
            .await?;
        }
        Command::Handover {
            legacy_url,
            domains,
        } => {
            let follow::OldSystem { store, old } = follow::OldSystem::open(pool, &legacy_url)?;
            let followed = follow::follows(pool).await?;
            let mut refused = false;
            for domain in &domains {
                let Some(follow) = followed.iter().find(|f| &f.domain == domain) else {
                    out!("{domain} is not followed: there is nothing to hand over")?;
                    refused = true;
                    continue;
                };
                let mut follower =
                    follow::Follower::take_up(store.clone(), old.clone(), domain).await?;
                let report = follower.handover().await?;
                for d in &report.differences {
                    out!(
                        "{domain} {}: {} is {} in the old table, {} in the legacy model, {} in the new",
                        d.id, d.field, d.old, d.legacy, d.new
                    )?;
                }
                out!(
                    "{domain}: {} changes drained, {} old rows compared, {} differences, {} \
                     collections deleted outright in the old table (kept as deleted)",
                    report.drained,
                    report.rows_compared,
                    report.difference_count,
                    report.deleted_outright
                )?;
                if report.handed_over {
                    out!(
                        "{domain} is handed over: the old {} refuses writes, and Cutover's \
                         commands write the domain",
                        follow.legacy_table
                    )?;
                } else {
                    out!(
                        "{domain} is not handed over: the old {} takes writes again and is still \
                         followed; mend the differences (in the old table) and run the handover again",
                        follow.legacy_table
                    )?;
                    refused = true;
                }
            }
            if refused {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Seed {
            events,
            no_rebuild,
            swap,
        } => {
            let started = Instant::now();
            let mut bar = Reporter::new("seed");
            let written = seed::seed(pool, &projectors, events, |n| bar.report(n, events)).await?;
            bar.finish();
            let secs = started.elapsed().as_secs_f64();
            out!(
                "seeded {written} events in {secs:.1} s ({:.0} events/s)",
                written as f64 / secs.max(1e-9)
            )?;
            if !no_rebuild {
                let job = rebuild::Job::start(pool, projectors, Purpose::Rebuild).await?;
                let mut reporter = Reporter::new("rebuild all");
                let outcome = job.run(swap, |p| reporter.update(p)).await?;
                reporter.finish();
                out!(
                    "rebuilt every projection: {} events in {:.1} s ({:.0} events/s); appends held back {:.1} ms at the swap",
                    outcome.events,
                    outcome.elapsed.as_secs_f64(),
                    outcome.events as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
                    outcome.swap_hold.as_secs_f64() * 1000.0
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress: a bar on a terminal, a plain line every few seconds otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    label: String,
    started: Instant,
    last_line: Instant,
}

impl Reporter {
    fn new(label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, ETA {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            bar
        });
        Self {
            bar,
            label: label.to_owned(),
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, progress: Progress) {
        let done = u64::try_from(progress.events_done).unwrap_or(0);
        let total = u64::try_from(progress.events_total.max(progress.events_done)).unwrap_or(0);
        self.report(done, total);
    }

    fn report(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(done));
            bar.set_position(done);
        } else if self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!("{}: {done}/{total} events ({rate:.0} events/s)", self.label);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
