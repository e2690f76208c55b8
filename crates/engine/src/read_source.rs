//! Which read model a domain's GET routes serve: the legacy shape or the new one.
//!
//! The choice lives in the database (table `read_sources`), so every server instance sees a
//! switch at once and nothing needs a restart.

use serde::{Deserialize, Serialize};

/// A domain's read source: one of its two shapes, which is also what a projection's `shape`
/// names (`projections.shape`, `read_sources.source`: the CHECK constraints of both).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
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

    /// The domain's other model.
    pub fn other(self) -> Self {
        match self {
            Self::Legacy => Self::New,
            Self::New => Self::Legacy,
        }
    }
}

/// The domains that have two read-model shapes (ordered as declared: collections, batches,
/// competencies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// A stored read source: legacy when none was ever set.
///
/// # Errors
/// A stored value other than `legacy`/`new`.
pub fn parse(domain: Domain, value: Option<&str>) -> Result<ReadSource, ReadSourceError> {
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
