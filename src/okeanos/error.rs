//! What a failed ~okeanos call was: no answer, an answer we cannot read, or a Synnefo fault;
//! and why a token could not be checked.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// Why a token could not be accepted.
#[derive(Debug, Clone)]
pub enum AuthError {
    /// Identity says the token is invalid, expired or inactive.
    Rejected,
    /// Identity could not give a verdict: unreachable, slow, 5xx or a reply we cannot read.
    Unavailable(OkeanosError),
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Rejected => None,
            AuthError::Unavailable(e) => Some(e),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Rejected => write!(f, "identity: token rejected"),
            AuthError::Unavailable(_) => write!(f, "identity unavailable"),
        }
    }
}

/// A failed ~okeanos call.
#[derive(Debug, Clone)]
pub enum OkeanosError {
    /// No answer: connection refused or reset, timeout, a reply cut short.
    Transport(Arc<ureq::Error>),
    /// An answer that is not what the API documents (not JSON, a field missing).
    Reply {
        what: String,
        source: Option<Arc<serde_json::Error>>,
    },
    /// A Synnefo fault: `{"<name>": {"code", "message", "details"}}`.
    Fault {
        status: u16,
        name: String,
        message: String,
    },
}

impl OkeanosError {
    /// Worth trying again: no answer for a reason that may pass (a timeout, a refused or
    /// reset connection, a name that did not resolve), a garbled reply, a 5xx, 409
    /// buildInProgress or 429. A request this service cannot even make (a bad URL, a TLS
    /// certificate refused) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            OkeanosError::Transport(e) => matches!(
                e.as_ref(),
                ureq::Error::Timeout(_)
                    | ureq::Error::Io(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::HostNotFound
                    | ureq::Error::Protocol(_)
                    | ureq::Error::BodyStalled
            ),
            OkeanosError::Reply { .. } => true,
            OkeanosError::Fault { status, .. } => {
                *status >= 500 || *status == 409 || *status == 429
            }
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            OkeanosError::Fault { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An answer that lacks what the API documents.
    pub fn reply(what: impl Into<String>) -> OkeanosError {
        OkeanosError::Reply {
            what: what.into(),
            source: None,
        }
    }
}

impl std::error::Error for OkeanosError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OkeanosError::Transport(e) => Some(e.as_ref()),
            OkeanosError::Reply { source, .. } => source
                .as_ref()
                .map(|e| e.as_ref() as &(dyn std::error::Error + 'static)),
            OkeanosError::Fault { .. } => None,
        }
    }
}

impl fmt::Display for OkeanosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause is the source: an action's `error` is written with every cause
            // (`report::Report`).
            OkeanosError::Transport(_) => write!(f, "no answer"),
            OkeanosError::Reply { what, .. } => write!(f, "unreadable answer ({what})"),
            OkeanosError::Fault {
                status,
                name,
                message,
            } => write!(f, "{status} {name} ({message})"),
        }
    }
}

/// Reads a Synnefo fault body; anything else is shown by its status and first bytes.
pub(super) fn fault(status: u16, body: &[u8]) -> OkeanosError {
    let parsed = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let (name, inner) = v.as_object()?.iter().next()?;
        let message = inner["message"].as_str().unwrap_or("").to_string();
        Some((name.clone(), message))
    });
    let (name, message) = parsed.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        (reason(status).to_string(), text)
    });
    OkeanosError::Fault {
        status,
        name,
        message,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        409 => "buildInProgress",
        413 => "overLimit",
        503 => "serviceUnavailable",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synnefo_fault_is_read() {
        let e = fault(
            413,
            br#"{"overLimit":{"code":413,"message":"CPU quota exceeded","details":""}}"#,
        );
        assert_eq!(e.to_string(), "413 overLimit (CPU quota exceeded)");
        assert!(!e.is_transient());
    }

    #[test]
    fn other_bodies_are_shown_plainly() {
        let e = fault(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.to_string(), "502 error (<html>Bad Gateway</html>)");
        assert!(e.is_transient());
        assert!(fault(409, b"").is_transient());
        assert!(!fault(404, b"{}").is_transient());
    }

    /// Whether a call is tried again is read from the kind of its failure, not its words.
    #[test]
    fn transport_failures_are_transient_by_kind() {
        let transport = |e: ureq::Error| OkeanosError::Transport(Arc::new(e));
        let timeout = transport(ureq::Error::Timeout(ureq::Timeout::Global));
        assert!(timeout.is_transient());
        assert!(transport(ureq::Error::ConnectionFailed).is_transient());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(transport(ureq::Error::Io(refused)).is_transient());
        assert!(!transport(ureq::Error::BadUri("x".into())).is_transient());
        // The cause stays reachable, typed, for whoever reports it.
        let source = std::error::Error::source(&timeout).unwrap();
        assert!(source.downcast_ref::<ureq::Error>().is_some());
        assert_eq!(timeout.to_string(), "no answer");
    }
}
