//! Shadow reads, the step between verify and the switch: while a domain is in shadow, the old
//! API's GETs are answered from the read source and, for a share of them, also computed from the
//! other model and compared as the client would see them. This module keeps what every instance
//! shares in the database: which domains are in shadow, the reads and mismatches counted per
//! window (a window lasts from one rebuild, repair or retirement of the domain's projections to
//! the next), the latest mismatches with both answers, and what the switch gate asks of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::admin::{Actor, AdminError};

/// Default share of GETs compared while a domain is in shadow: all of them.
pub const DEFAULT_FRACTION: f64 = 1.0;
/// Default number of shadow reads without a mismatch that the switch gate wants.
pub const DEFAULT_MIN_READS: i64 = 1_000;
/// Most mismatches kept per domain (all are counted).
pub const KEPT_MISMATCHES: i64 = 100;
/// Longest body kept of a mismatch's answer, in bytes of JSON; a longer one is kept cut.
pub const KEPT_BODY_BYTES: usize = 16 * 1024;

/// A domain in shadow.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Settings {
    pub fraction: f64,
    pub min_reads: i64,
    pub started_at: DateTime<Utc>,
}

/// A mismatch: the request, and both models' answers as `{"status", "body"}`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Mismatch {
    pub route: String,
    pub path: String,
    pub seen_at: DateTime<Utc>,
    pub served_source: String,
    /// The answer served, `{"status", "body"}`.
    pub served: Value,
    /// The other model's answer, `{"status", "body"}`.
    pub other: Value,
}

/// A domain's shadow state: whether it is in shadow, and its current window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Window {
    pub domain: String,
    /// `None` while the domain is not in shadow.
    pub shadow: Option<Settings>,
    /// The last rebuild, repair or retirement of the domain's projections: the window's start.
    pub since: DateTime<Utc>,
    /// Shadow reads and mismatches since then, over every instance.
    pub reads: i64,
    pub mismatches: i64,
    /// The latest mismatches of the window, newest first.
    pub recent: Vec<Mismatch>,
}

/// Puts `domain` in shadow (or changes its fraction and minimum), recorded with `actor`.
///
/// # Errors
/// `UnknownDomain`, `Invalid` (a fraction outside (0, 1] or a negative minimum), or a database
/// error.
pub async fn start(
    pool: &PgPool,
    domain: &str,
    fraction: f64,
    min_reads: i64,
    actor: &Actor,
) -> Result<Settings, AdminError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(AdminError::Invalid(format!(
            "fraction must be above 0 and at most 1, not {fraction}"
        )));
    }
    if min_reads < 0 {
        return Err(AdminError::Invalid(format!(
            "min_reads must be 0 or more, not {min_reads}"
        )));
    }
    let mut tx = pool.begin().await?;
    known(&mut tx, domain).await?;
    let settings = sqlx::query_as!(
        Settings,
        "INSERT INTO shadow_settings (domain, fraction, min_reads) VALUES ($1, $2, $3)
         ON CONFLICT (domain) DO UPDATE SET fraction = $2, min_reads = $3
         RETURNING fraction, min_reads, started_at",
        domain,
        fraction,
        min_reads
    )
    .fetch_one(&mut *tx)
    .await?;
    record(&mut tx, domain, actor, serde_json::json!(settings)).await?;
    tx.commit().await?;
    Ok(settings)
}

/// Takes `domain` out of shadow, recorded with `actor`; its counted reads stay.
///
/// # Errors
/// `UnknownDomain`, or a database error.
pub async fn stop(pool: &PgPool, domain: &str, actor: &Actor) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    known(&mut tx, domain).await?;
    sqlx::query!("DELETE FROM shadow_settings WHERE domain = $1", domain)
        .execute(&mut *tx)
        .await?;
    record(&mut tx, domain, actor, serde_json::json!(null)).await?;
    tx.commit().await?;
    Ok(())
}

async fn known(conn: &mut PgConnection, domain: &str) -> Result<(), AdminError> {
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM read_sources WHERE domain = $1) AS "exists!""#,
        domain
    )
    .fetch_one(&mut *conn)
    .await?;
    match exists {
        true => Ok(()),
        false => Err(AdminError::UnknownDomain(domain.to_owned())),
    }
}

async fn record(
    conn: &mut PgConnection,
    domain: &str,
    actor: &Actor,
    shadow: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO admin_actions (action, domain, actor, forced, detail)
         VALUES ('shadow', $1, $2, false, $3)",
        domain,
        &actor.0,
        serde_json::json!({ "shadow": shadow })
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every domain's shadow state, by domain.
///
/// # Errors
/// A database error.
pub async fn windows(pool: &PgPool) -> Result<Vec<Window>, sqlx::Error> {
    let domains: Vec<String> =
        sqlx::query_scalar!("SELECT domain FROM read_sources ORDER BY domain")
            .fetch_all(pool)
            .await?;
    let mut all = Vec::with_capacity(domains.len());
    for domain in domains {
        all.push(window(&mut *pool.acquire().await?, &domain).await?);
    }
    Ok(all)
}

/// `domain`'s shadow state.
///
/// # Errors
/// A database error.
pub async fn window(conn: &mut PgConnection, domain: &str) -> Result<Window, sqlx::Error> {
    let since = sqlx::query_scalar!(
        r#"SELECT coalesce(max(changed_at), '-infinity') AS "since!" FROM projections
            WHERE domain = $1"#,
        domain
    )
    .fetch_one(&mut *conn)
    .await?;
    let shadow = sqlx::query_as!(
        Settings,
        "SELECT fraction, min_reads, started_at FROM shadow_settings WHERE domain = $1",
        domain
    )
    .fetch_optional(&mut *conn)
    .await?;
    let counted = sqlx::query!(
        r#"SELECT coalesce(sum(reads), 0)::bigint AS "reads!",
                  coalesce(sum(mismatches), 0)::bigint AS "mismatches!"
             FROM shadow_windows WHERE domain = $1 AND since = $2"#,
        domain,
        since
    )
    .fetch_one(&mut *conn)
    .await?;
    let recent = sqlx::query_as!(
        Mismatch,
        "SELECT route, path, seen_at, served_source, served, other FROM shadow_mismatches
          WHERE domain = $1 AND since = $2 ORDER BY id DESC LIMIT 10",
        domain,
        since
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Window {
        domain: domain.to_owned(),
        shadow,
        since,
        reads: counted.reads,
        mismatches: counted.mismatches,
        recent,
    })
}

/// Why the shadow window of `domain` keeps its switch gate closed, if it does: the domain was
/// never in shadow, too few reads were compared since the last rebuild, repair or retirement of
/// its projections, or one of them did not match.
///
/// # Errors
/// A database error.
pub async fn closes_gate(
    conn: &mut PgConnection,
    domain: &str,
) -> Result<Option<String>, sqlx::Error> {
    let window = window(conn, domain).await?;
    let min_reads = match &window.shadow {
        Some(settings) => settings.min_reads,
        None if window.reads > 0 => DEFAULT_MIN_READS,
        None => {
            return Ok(Some(format!(
                "no shadow reads of {domain} yet: run `cutover shadow {domain}` and let reads \
                 come in"
            )))
        }
    };
    if window.mismatches > 0 {
        return Ok(Some(format!(
            "{} of {} shadow reads of {domain} since {} did not match (see `cutover status`): \
             repair, verify, and shadow again",
            window.mismatches, window.reads, window.since
        )));
    }
    if window.reads < min_reads {
        return Ok(Some(format!(
            "{} of the {min_reads} shadow reads of {domain} wanted since {} so far",
            window.reads, window.since
        )));
    }
    Ok(None)
}

/// Reads and mismatches counted by one instance for one route of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub domain: &'static str,
    pub since: DateTime<Utc>,
    pub route: &'static str,
    pub reads: i64,
    pub mismatches: i64,
}

/// A mismatch to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub domain: &'static str,
    pub since: DateTime<Utc>,
    pub route: &'static str,
    pub path: String,
    pub seen_at: DateTime<Utc>,
    pub served_source: &'static str,
    pub served: Value,
    pub other: Value,
}

/// Adds an instance's counts and mismatches to the shared ones, in one transaction; keeps at
/// most [`KEPT_MISMATCHES`] per domain.
///
/// # Errors
/// A database error.
pub async fn add(pool: &PgPool, counted: &[Counted], seen: &[Seen]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for c in counted {
        sqlx::query!(
            "INSERT INTO shadow_windows (domain, since, route, reads, mismatches, last_read_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (domain, since, route) DO UPDATE
                SET reads = shadow_windows.reads + $4,
                    mismatches = shadow_windows.mismatches + $5, last_read_at = now()",
            c.domain,
            c.since,
            c.route,
            c.reads,
            c.mismatches
        )
        .execute(&mut *tx)
        .await?;
    }
    for s in seen {
        sqlx::query!(
            "INSERT INTO shadow_mismatches
                 (domain, since, route, path, seen_at, served_source, served, other)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            s.domain,
            s.since,
            s.route,
            &s.path,
            s.seen_at,
            s.served_source,
            kept(&s.served),
            kept(&s.other)
        )
        .execute(&mut *tx)
        .await?;
    }
    if !seen.is_empty() {
        sqlx::query!(
            "DELETE FROM shadow_mismatches AS m
              WHERE m.id < (SELECT min(id) FROM (
                               SELECT id FROM shadow_mismatches AS k WHERE k.domain = m.domain
                                ORDER BY id DESC LIMIT $1) AS newest)",
            KEPT_MISMATCHES
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// An answer as kept: whole up to [`KEPT_BODY_BYTES`] of JSON, else its first bytes as text.
fn kept(answer: &Value) -> Value {
    let text = answer.to_string();
    if text.len() <= KEPT_BODY_BYTES {
        return answer.clone();
    }
    let mut end = KEPT_BODY_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    serde_json::json!({ "truncated": true, "bytes": text.len(), "start": &text[..end] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_answer_is_kept_cut_on_a_character_boundary() {
        let long = Value::String("é".repeat(KEPT_BODY_BYTES));
        let cut = kept(&long);
        assert_eq!(cut["truncated"], true);
        assert!(cut["start"]
            .as_str()
            .is_some_and(|s| s.len() <= KEPT_BODY_BYTES));
        let short = serde_json::json!({"a": 1});
        assert_eq!(kept(&short), short);
    }
}
