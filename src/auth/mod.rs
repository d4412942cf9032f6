//! Token → user: reads the token from the request's headers, asks ~okeanos identity, and
//! caches the verdict in memory keyed by the token's SHA-256 (the raw token is never kept as a
//! key, nor logged). The calls to identity go through `guard.rs`.

mod guard;

use std::collections::HashMap;
use std::net::IpAddr;
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
    guard: guard::Guard<Key, Asked>,
    /// How long a request waits for another's identity call on the same token.
    patience: Duration,
}

/// Why a request is not let in.
#[derive(Debug, Clone)]
pub enum Refused {
    /// Identity says the token is invalid, expired or inactive: 401.
    Rejected,
    /// Identity could not give a verdict: 503.
    Unavailable(OkeanosError),
    /// As many identity calls as allowed are under way: 503 at once.
    Busy,
    /// The client's address kept sending rejected tokens: 429 for this long.
    Blocked(Duration),
}

impl From<AuthError> for Refused {
    fn from(e: AuthError) -> Refused {
        match e {
            AuthError::Rejected => Refused::Rejected,
            AuthError::Unavailable(e) => Refused::Unavailable(e),
        }
    }
}

/// The outcome of a token check, with whether the cache answered (for metrics).
pub struct Checked {
    pub result: Result<Arc<User>, Refused>,
    pub cached: bool,
}

/// What an identity call for one token came to, as its waiters share it.
type Asked = Result<Arc<User>, AuthError>;

/// Lands a leader's outcome however it leaves (a panic included), so that its followers and
/// later requests for the token never wait on a call nobody makes.
struct Landing<'g> {
    guard: &'g guard::Guard<Key, Asked>,
    key: Key,
    flight: Arc<guard::Flight<Asked>>,
    outcome: Option<Asked>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| {
            Err(AuthError::Unavailable(OkeanosError::reply(
                "the identity check was abandoned",
            )))
        });
        self.guard.land(&self.key, &self.flight, outcome);
        self.guard.leave();
    }
}

impl Authenticator {
    /// `calls` identity calls (or waits for one) at once at most; `timeout` is one call's.
    pub fn new(
        client: Client,
        astakos_url: &str,
        compute_url: &str,
        valid_ttl: Duration,
        (calls, timeout): (usize, Duration),
    ) -> Authenticator {
        Authenticator {
            client,
            astakos_url: astakos_url.to_string(),
            compute_override: (!compute_url.is_empty()).then(|| compute_url.to_string()),
            valid_ttl,
            cache: RwLock::new(HashMap::new()),
            guard: guard::Guard::new(calls),
            patience: timeout + Duration::from_secs(1),
        }
    }

    /// Who `token` belongs to, for a request from `client` (its address, if known). A
    /// verdict identity could not give is never cached: identity may be back on the next
    /// request.
    pub fn check(&self, token: &str, client: Option<IpAddr>) -> Checked {
        let refused = |r: Refused| Checked {
            result: Err(r),
            cached: false,
        };
        if !plausible(token) {
            self.guard.strike(client);
            return refused(Refused::Rejected);
        }
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(v) = read(&self.cache).get(&key) {
            if v.expires > now {
                if v.user.is_none() {
                    self.guard.strike(client);
                }
                return Checked {
                    result: v.user.clone().ok_or(Refused::Rejected),
                    cached: true,
                };
            }
        }
        if let Some(left) = self.guard.blocked(client) {
            return refused(Refused::Blocked(left));
        }
        let result = match self.guard.turn(&key) {
            guard::Turn::Busy => return refused(Refused::Busy),
            guard::Turn::Follow(flight) => {
                let outcome = flight.wait(self.patience);
                self.guard.leave();
                outcome.unwrap_or_else(|| {
                    Err(AuthError::Unavailable(OkeanosError::reply(
                        "the identity check of the same token took too long",
                    )))
                })
            }
            guard::Turn::Lead(flight) => {
                let mut landing = Landing {
                    guard: &self.guard,
                    key,
                    flight,
                    outcome: None,
                };
                let outcome = self.ask(token);
                self.remember(key, &outcome, now);
                landing.outcome = Some(outcome.clone());
                outcome
            }
        };
        if matches!(result, Err(AuthError::Rejected)) {
            self.guard.strike(client);
        }
        Checked {
            result: result.map_err(Refused::from),
            cached: false,
        }
    }

    /// Asks identity who `token` belongs to.
    fn ask(&self, token: &str) -> Asked {
        let identity = self.client.authenticate(&self.astakos_url, token)?;
        let catalog = identity.catalog;
        let compute_url = (self.compute_override.clone())
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
    }

    /// Caches identity's verdict on `key`, if it gave one.
    fn remember(&self, key: Key, outcome: &Asked, now: Instant) {
        let verdict = match outcome {
            Ok(user) => Verdict {
                user: Some(user.clone()),
                expires: now + self.valid_ttl,
            },
            Err(AuthError::Rejected) => Verdict {
                user: None,
                expires: now + INVALID_TTL,
            },
            Err(AuthError::Unavailable(_)) => return,
        };
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
