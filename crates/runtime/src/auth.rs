//! Bearer tokens and their scopes, as the operator configures them.
//!
//! Two sources, which may be combined: `CUTOVER_TOKENS`, a comma-separated list of
//! `scope:token` entries (for example `admin:s3cret,read:r3ad`), and `CUTOVER_TOKENS_FILE`, a
//! file with one `scope sha256-hex-of-the-token` per line (`#` starts a comment), so the
//! tokens themselves need not be stored. Scopes nest: `admin` may do everything `write` may,
//! and `write` everything `read` may. Only SHA-256 digests are kept in memory, presented
//! tokens are compared in constant time, and tokens are never logged.

use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read routes: GETs of read models and the event feed.
    Read,
    /// Commands.
    Write,
    /// `/admin` routes and the CLI's destructive commands.
    Admin,
}

impl Scope {
    fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// The token configuration is malformed; the message says where.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("CUTOVER_TOKENS entry {0}: expected scope:token with scope read, write or admin")]
    Entry(usize),
    #[error("{file} line {line}: expected `scope sha256-hex` with scope read, write or admin")]
    Line { file: String, line: usize },
    #[error("cannot read the tokens file {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// The configured tokens, as digests.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Scope)>,
}

impl Tokens {
    /// Loads tokens from the environment variable's value and the file; `None` when neither
    /// configures any token.
    ///
    /// # Errors
    /// A malformed entry or line, or an unreadable file.
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<Option<Self>, TokenConfigError> {
        let mut tokens = Self::default();
        if let Some(env) = env {
            for (index, entry) in env.split(',').map(str::trim).enumerate() {
                if entry.is_empty() {
                    continue;
                }
                let (scope, token) = entry
                    .split_once(':')
                    .and_then(|(scope, token)| Some((Scope::parse(scope)?, token)))
                    .filter(|(_, token)| !token.is_empty())
                    .ok_or(TokenConfigError::Entry(index + 1))?;
                tokens.entries.push((digest(token), scope));
            }
        }
        if let Some(file) = file {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|source| TokenConfigError::Read {
                file: name.clone(),
                source,
            })?;
            for (index, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if line.is_empty() {
                    continue;
                }
                let bad = || TokenConfigError::Line {
                    file: name.clone(),
                    line: index + 1,
                };
                let mut parts = line.split_whitespace();
                let scope = parts.next().and_then(Scope::parse).ok_or_else(bad)?;
                let hash = parts.next().and_then(parse_hex).ok_or_else(bad)?;
                if parts.next().is_some() {
                    return Err(bad());
                }
                tokens.entries.push((hash, scope));
            }
        }
        Ok((!tokens.entries.is_empty()).then_some(tokens))
    }

    /// The scope of `presented`, or `None` for a token that is not configured. Every
    /// configured digest is compared, in constant time, whatever matches.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let wanted = digest(presented);
        let mut found = None;
        for (hash, scope) in &self.entries {
            let difference = hash
                .iter()
                .zip(wanted.iter())
                .fold(0_u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = found.max(Some(*scope));
            }
        }
        found
    }
}

/// The SHA-256 of a token, as a tokens file lists it (lowercase hex).
pub fn token_hash(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_the_environment_have_their_scopes() {
        let tokens = Tokens::load(Some("admin:a1, read:r1,write:w1"), None)
            .unwrap()
            .unwrap();

        assert_eq!(tokens.scope_of("a1"), Some(Scope::Admin));
        assert_eq!(tokens.scope_of("w1"), Some(Scope::Write));
        assert_eq!(tokens.scope_of("r1"), Some(Scope::Read));
        assert_eq!(tokens.scope_of("r2"), None);
        assert_eq!(tokens.scope_of(""), None);
    }

    #[test]
    fn a_tokens_file_lists_hashes_with_comments() {
        let file = std::env::temp_dir().join(format!("cutover-tokens-{}", std::process::id()));
        std::fs::write(
            &file,
            format!(
                "# operators\nadmin {}  # ops\n\nread {}\n",
                token_hash("ops-token"),
                token_hash("bi-token")
            ),
        )
        .unwrap();

        let tokens = Tokens::load(None, Some(&file)).unwrap().unwrap();
        std::fs::remove_file(&file).unwrap();

        assert_eq!(tokens.scope_of("ops-token"), Some(Scope::Admin));
        assert_eq!(tokens.scope_of("bi-token"), Some(Scope::Read));
    }

    #[test]
    fn no_configuration_means_no_tokens_and_bad_entries_are_refused() {
        assert!(Tokens::load(None, None).unwrap().is_none());
        assert!(Tokens::load(Some(" "), None).unwrap().is_none());
        assert!(matches!(
            Tokens::load(Some("admin:a,root:b"), None),
            Err(TokenConfigError::Entry(2))
        ));
        assert!(matches!(
            Tokens::load(Some("read:"), None),
            Err(TokenConfigError::Entry(1))
        ));
    }
}
