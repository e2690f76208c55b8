//! Several servers in one URL, in libpq's multi-host form
//! (`postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`), and a pool that
//! follows the primary among them.
//!
//! sqlx connects to the one server a URL names, so Cutover picks the server itself: at start,
//! the first of the URL's servers that takes writes (with `target_session_attrs=read-write`) or
//! that answers (without); then, every second, it checks that server again and, when it no
//! longer does (it died, or a failover demoted it), moves the pool's new connections to the one
//! that now does. Connections to the old server fail as they are used and are not kept.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};

/// How often the server a pool connects to is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one check of one server may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The servers a URL names, each as a URL of its own, in the URL's order; and whether the
/// server used must take writes (`target_session_attrs=read-write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    pub urls: Vec<String>,
    pub read_write: bool,
}

impl Servers {
    /// Whether the URL named anything but one server to use as it is.
    pub fn need_following(&self) -> bool {
        self.urls.len() > 1 || self.read_write
    }
}

/// The servers `url` names. A URL with one host is returned as it is (bar
/// `target_session_attrs`, which sqlx does not know).
///
/// # Errors
/// An empty host in the list, or a `target_session_attrs` other than `read-write` or `any`.
pub fn parse(url: &str) -> Result<Servers, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Servers {
            urls: vec![url.to_owned()],
            read_write: false,
        });
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    // One server (an empty host too: a socket named by `?host=`) is the URL as it is.
    let hosts: Vec<&str> = if hosts.contains(',') {
        hosts.split(',').collect()
    } else {
        vec![hosts]
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut read_write = false;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", "read-write")) => read_write = true,
            Some(("target_session_attrs", "any")) => read_write = false,
            Some(("target_session_attrs", other)) => {
                return Err(format!(
                    "target_session_attrs={other} is not supported: use read-write (the \
                     primary) or any"
                ))
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let several = hosts.len() > 1;
    let urls = hosts
        .iter()
        .map(|host| {
            if several && host.is_empty() {
                Err(format!(
                    "the URL's host list {authority:?} has an empty host"
                ))
            } else {
                Ok(format!("{scheme}://{user}{host}{path}{query}"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Servers { urls, read_write })
}

/// Whether the server `options` reach answers within [`CHECK_TIMEOUT`] and, when `read_write`,
/// takes writes (not a standby, nor a primary still read-only after its promotion).
pub async fn usable(options: &PgConnectOptions, read_write: bool) -> bool {
    let check = async {
        let mut conn = PgConnection::connect_with(options).await?;
        let writable = !read_write || takes_writes(&mut conn).await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(writable)
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, check).await,
        Ok(Ok(true))
    )
}

/// Whether the server of `conn` takes writes now.
///
/// # Errors
/// A database error.
pub async fn takes_writes(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let read_only = sqlx::query_scalar!("SHOW transaction_read_only")
        .fetch_one(conn)
        .await?;
    Ok(read_only.as_deref() == Some("off"))
}

/// The first of `candidates` that is [`usable`].
pub async fn find(candidates: &[PgConnectOptions], read_write: bool) -> Option<usize> {
    for (index, options) in candidates.iter().enumerate() {
        if usable(options, read_write).await {
            return Some(index);
        }
    }
    None
}

/// Keeps `pool`, which connects to `candidates[current]`, on a [`usable`] server of
/// `candidates` until the pool is closed.
pub fn follow(pool: PgPool, candidates: Vec<PgConnectOptions>, read_write: bool, current: usize) {
    tokio::spawn(async move {
        let mut current = current;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if pool.is_closed() {
                return;
            }
            let Some(options) = candidates.get(current) else {
                return;
            };
            if usable(options, read_write).await {
                continue;
            }
            match find(&candidates, read_write).await {
                Some(found) if found != current => {
                    tracing::warn!(
                        from = current,
                        to = found,
                        "the database server in use no longer takes writes: new connections \
                         go to the one that does"
                    );
                    if let Some(options) = candidates.get(found) {
                        pool.set_connect_options(options.clone());
                    }
                    current = found;
                }
                Some(_) => {}
                None => tracing::warn!("no database server of the URL takes writes yet"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_is_one_url_per_host_with_the_rest_kept() {
        let servers = parse(
            "postgres://u:p@h1:5433,h2:5434/db?sslmode=disable&target_session_attrs=read-write",
        );

        assert_eq!(
            servers,
            Ok(Servers {
                urls: vec![
                    "postgres://u:p@h1:5433/db?sslmode=disable".to_owned(),
                    "postgres://u:p@h2:5434/db?sslmode=disable".to_owned(),
                ],
                read_write: true,
            })
        );
    }

    #[test]
    fn a_url_of_one_host_stays_as_it_is() {
        let url = "postgres://cutover@127.0.0.1:5432/cutover?host=/tmp/x";

        let servers = parse(url);

        assert_eq!(
            servers,
            Ok(Servers {
                urls: vec![url.to_owned()],
                read_write: false,
            })
        );
        assert!(!parse(url).is_ok_and(|s| s.need_following()));
        let socket = "postgres:///cutover?host=/var/run/postgresql";
        assert_eq!(parse(socket).map(|s| s.urls), Ok(vec![socket.to_owned()]));
    }

    #[test]
    fn bad_input_an_empty_host_or_an_unknown_session_kind_is_refused() {
        assert!(parse("postgres://h1:1,,h2:2/db").is_err());
        assert!(parse("postgres://h1:1,h2:2/db?target_session_attrs=standby").is_err());
    }
}
