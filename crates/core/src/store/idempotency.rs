//! Idempotency keys: a request repeated with its key gets the first answer, and nothing runs
//! again.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgConnection;

use super::error::CommandError;

/// A client's `Idempotency-Key` and what identifies its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// A digest of the request (method, path, body): the same key with another request is
    /// refused.
    pub fingerprint: String,
    /// How long the key is remembered.
    pub ttl: Duration,
}

/// A response as it was first sent, kept under its idempotency key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// Takes `key` for this command, or finds it taken: `Some(response)` when the same request
/// was answered before. A key taken by a transaction still running is waited for. An expired
/// key is taken afresh.
///
/// # Errors
/// `KeyReused` when the key came with another request; a database error.
pub(super) async fn claim_key<E: std::error::Error + 'static>(
    conn: &mut PgConnection,
    key: &Idempotency,
) -> Result<Option<StoredResponse>, CommandError<E>> {
    let ttl_secs = key.ttl.as_secs_f64();
    let claimed = sqlx::query_scalar!(
        "INSERT INTO idempotency_keys (key, fingerprint, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, expires_at = EXCLUDED.expires_at,
                response = NULL, created_at = now()
          WHERE idempotency_keys.expires_at <= now()
         RETURNING true",
        key.key,
        key.fingerprint,
        ttl_secs
    )
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        return Ok(None);
    }
    let taken = sqlx::query!(
        r#"SELECT fingerprint, response AS "response: sqlx::types::Json<StoredResponse>"
             FROM idempotency_keys WHERE key = $1"#,
        key.key
    )
    .fetch_one(&mut *conn)
    .await?;
    if taken.fingerprint != key.fingerprint {
        return Err(CommandError::KeyReused);
    }
    match taken.response {
        Some(stored) => Ok(Some(stored.0)),
        // Taken by a command that committed no response: cannot happen through this store,
        // whose key rows and responses commit together.
        None => Err(CommandError::Broken(format!(
            "Idempotency-Key {:?} is taken but holds no answer",
            key.key
        ))),
    }
}
