//! Which read model a domain's GET routes serve: the legacy shape or the new one.
//!
//! The choice lives in the database (table `read_sources`), so every server instance sees a
//! switch at once and nothing needs a restart.

use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

/// A domain's read source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSource {
    Legacy,
    New,
}

impl ReadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::New => "new",
        }
    }
}

/// The domains that have two read-model shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Collections,
    Batches,
    Competencies,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Collections => "collections",
            Self::Batches => "batches",
            Self::Competencies => "competencies",
        }
    }
}

/// The read source stored in the database has a value this build does not know.
#[derive(Debug, thiserror::Error)]
pub enum ReadSourceError {
    #[error("read source of {domain} is {value:?}, expected legacy or new")]
    Unknown { domain: &'static str, value: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The current read source of `domain`; legacy when none was ever set.
///
/// # Errors
/// A database error, or a stored value other than `legacy`/`new`.
pub async fn current<'e>(
    executor: impl PgExecutor<'e>,
    domain: Domain,
) -> Result<ReadSource, ReadSourceError> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT source FROM read_sources WHERE domain = $1")
            .bind(domain.as_str())
            .fetch_optional(executor)
            .await?;
    parse(domain, value.as_deref())
}

/// A stored read source: legacy when none was ever set.
fn parse(domain: Domain, value: Option<&str>) -> Result<ReadSource, ReadSourceError> {
    match value {
        None | Some("legacy") => Ok(ReadSource::Legacy),
        Some("new") => Ok(ReadSource::New),
        Some(other) => Err(ReadSourceError::Unknown {
            domain: domain.as_str(),
            value: other.to_owned(),
        }),
    }
}

/// Every domain's read source as a command read it, under its locks (see
/// [`crate::store::Committed`]), so that its answer needs no query of its own for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSources {
    /// `(domain, source)` as stored.
    pub stored: Vec<(String, String)>,
}

impl ReadSources {
    /// The read source of `domain`.
    ///
    /// # Errors
    /// A stored value other than `legacy`/`new`.
    pub fn of(&self, domain: Domain) -> Result<ReadSource, ReadSourceError> {
        let value = self
            .stored
            .iter()
            .find(|(name, _)| name == domain.as_str())
            .map(|(_, source)| source.as_str());
        parse(domain, value)
    }
}
