//! Token → user: reads the token from the request's headers, asks ~okeanos identity, and
//! caches the verdict in memory keyed by the token's SHA-256 (the raw token is never kept as a
//! key, nor logged).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::okeanos::{AuthError, Client, OkeanosError};
use crate::sync::{read, write};

/// How long a rejected token's verdict is kept.
const INVALID_TTL: Duration = Duration::from_secs(30);
/// Most verdicts kept; past that, expired ones are dropped, then the oldest.
const MAX_ENTRIES: usize = 10_000;
/// Longest token accepted; ~okeanos tokens are about 40 characters.
const MAX_TOKEN_LEN: usize = 512;

/// A user, as identity knows them.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    /// Where this user's servers are driven; from the service catalog unless configured.
    pub compute_url: String,
    /// Where this user's floating IPs and networks are made and deleted, from the catalog.
    pub network_url: Option<String>,
    /// Where this user's projects and quotas are read, from the catalog.
    pub account_url: Option<String>,
    /// Where this user's public keys are read, from the catalog.
    pub userdata_url: Option<String>,
}

/// The token a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    None,
    One(&'a str),
    /// Two different tokens: the request is authenticated as neither, whatever their order.
    Conflicting,
}

/// Picks the token out of the three headers the API accepts: `Authorization: Token <t>`,
/// `Authentication: Token <t>` (the seed's curl example) or `X-Auth-Token: <t>`.
/// `headers` yields (name, value) pairs; the scheme word is case-insensitive. Every header
/// is read, so the answer does not depend on their order; an `Authorization` of another
/// scheme carries no token of ours.
pub fn token_from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Token<'a> {
    let mut found = Token::None;
    for (name, value) in headers {
        let token = if name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("authentication")
        {
            match value.trim().split_once(char::is_whitespace) {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("token") => rest.trim(),
                _ => continue,
            }
        } else if name.eq_ignore_ascii_case("x-auth-token") {
            value.trim()
        } else {
            continue;
        };
        found = match found {
            Token::None => Token::One(token),
            Token::One(t) if t == token => Token::One(t),
            _ => return Token::Conflicting,
        };
    }
    found
}

/// A token worth asking identity about: short, printable ASCII, no spaces.
fn plausible(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic())
}

type Key = [u8; 32];

struct Verdict {
    user: Option<Arc<User>>,
    expires: Instant,
}

/// Checks tokens against identity, with a bounded in-memory cache of verdicts. Nearly every
/// check is a cache hit, so the cache is read-locked: hits never wait for each other. A
/// poisoned lock is still used: every write is a single insert or retain.
pub struct Authenticator {
    client: Client,
    astakos_url: String,
    compute_override: Option<String>,
    valid_ttl: Duration,
    cache: RwLock<HashMap<Key, Verdict>>,
}

/// The outcome of a token check, with whether the cache answered (for metrics).
pub struct Checked {
    pub result: Result<Arc<User>, AuthError>,
    pub cached: bool,
}

impl Authenticator {
    pub fn new(
        client: Client,
        astakos_url: &str,
        compute_url: &str,
        valid_ttl: Duration,
    ) -> Authenticator {
        Authenticator {
            client,
            astakos_url: astakos_url.to_string(),
            compute_override: (!compute_url.is_empty()).then(|| compute_url.to_string()),
            valid_ttl,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Who `token` belongs to. `AuthError::Unavailable` is never cached: identity may be back
    /// on the next request.
    pub fn check(&self, token: &str) -> Checked {
        if !plausible(token) {
            return Checked {
                result: Err(AuthError::Rejected),
                cached: false,
            };
        }
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(v) = read(&self.cache).get(&key) {
            if v.expires > now {
                return Checked {
                    result: v.user.clone().ok_or(AuthError::Rejected),
                    cached: true,
                };
            }
        }
        let result = self
            .client
            .authenticate(&self.astakos_url, token)
            .and_then(|identity| {
                let catalog = identity.catalog;
                let compute_url = self
                    .compute_override
                    .clone()
                    .or(catalog.compute)
                    .ok_or_else(|| {
                        AuthError::Unavailable(OkeanosError::reply(
                            "the service catalog has no compute endpoint",
                        ))
                    })?;
                Ok(Arc::new(User {
                    id: identity.user_id,
                    name: identity.name,
                    compute_url,
                    network_url: catalog.network,
                    account_url: catalog.account,
                    userdata_url: catalog.userdata,
                }))
            });
        let verdict = match &result {
            Ok(user) => Some(Verdict {
                user: Some(user.clone()),
                expires: now + self.valid_ttl,
            }),
            Err(AuthError::Rejected) => Some(Verdict {
                user: None,
                expires: now + INVALID_TTL,
            }),
            Err(AuthError::Unavailable(_)) => None,
        };
        if let Some(verdict) = verdict {
            let mut cache = write(&self.cache);
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, v| v.expires > now);
            }
            if cache.len() >= MAX_ENTRIES {
                if let Some(oldest) = cache.iter().min_by_key(|(_, v)| v.expires).map(|(k, _)| *k) {
                    cache.remove(&oldest);
                }
            }
            cache.insert(key, verdict);
        }
        Checked {
            result,
            cached: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)], expected: Option<&str>) {
        let expected = expected.map_or(Token::None, Token::One);
        assert_eq!(
            token_from_headers(headers.iter().copied()),
            expected,
            "{headers:?}"
        );
    }

    #[test]
    fn two_different_tokens_are_neither_whatever_their_order() {
        for headers in [
            [("X-Auth-Token", "b"), ("Authorization", "Token a")],
            [("Authorization", "Token a"), ("X-Auth-Token", "b")],
            [("Authentication", "Token a"), ("Authentication", "Token b")],
        ] {
            assert_eq!(
                token_from_headers(headers.iter().copied()),
                Token::Conflicting,
                "{headers:?}"
            );
        }
        let same = [("X-Auth-Token", "a"), ("Authorization", "Token a")];
        assert_eq!(token_from_headers(same.iter().copied()), Token::One("a"));
        let other_scheme = [("Authorization", "Bearer x"), ("X-Auth-Token", "a")];
        assert_eq!(
            token_from_headers(other_scheme.iter().copied()),
            Token::One("a")
        );
    }

    #[test]
    fn the_three_headers() {
        check(&[("Authorization", "Token abc")], Some("abc"));
        check(&[("authentication", "token   abc ")], Some("abc"));
        check(&[("Authentication", "TOKEN abc")], Some("abc"));
        check(&[("X-Auth-Token", "abc")], Some("abc"));
        check(
            &[("Content-Type", "text/plain"), ("x-auth-token", " abc")],
            Some("abc"),
        );
    }

    #[test]
    fn other_schemes_and_no_header() {
        check(&[("Authorization", "Bearer abc")], None);
        check(&[("Authorization", "Token")], None);
        check(&[("Accept", "*/*")], None);
        check(&[], None);
    }

    #[test]
    fn implausible_tokens() {
        assert!(plausible("tJ3b3f32f23ceuqdoS_TH7m0d6yxmlWL1r2ralKcttY"));
        assert!(!plausible(""));
        assert!(!plausible("a b"));
        assert!(!plausible("a\u{1}b"));
        assert!(!plausible("é"));
        assert!(!plausible(&"a".repeat(513)));
    }
}
