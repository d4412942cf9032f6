//! What a handler knows of a request: its [`Head`], and a [`BodySource`] to read once the
//! head has been checked. Also the checks of the body's head and the capped read.

use std::io::Read;
use std::sync::Arc;

use super::body::check_type;
use super::reply::ApiError;
use crate::auth::User;

/// The parts of a request a handler may look at before deciding to read the body.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// Upper-case method.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// The client's address: the peer's, or, behind the front (a peer on loopback or on the
    /// Unix socket), the one the front says in `X-Real-IP`. None when unknown.
    pub client: Option<std::net::IpAddr>,
}

impl Head {
    pub fn new(method: &str, url: &str, headers: Vec<(String, String)>) -> Head {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        Head {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            client: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// `scheme://host` for the links in replies: the `Host` the client used (behind a proxy,
    /// with the scheme it reports), else the address the service listens on.
    pub fn base_url(&self, listen: &str) -> String {
        let host = self
            .header("host")
            .filter(|h| !h.is_empty() && h.len() <= 255)
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or(listen);
        let scheme = match self.header("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        format!("{scheme}://{host}")
    }
}

/// The longest path written to a log line, and the longest method.
pub const MAX_LOGGED: usize = 200;
pub const MAX_LOGGED_METHOD: usize = 16;

/// A value from a request as it may go into a log line: control bytes escaped (a CR or an
/// LF could otherwise forge a line of their own) and long values cut to `max` characters.
pub fn loggable(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max) + 8);
    for (n, c) in value.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Who made a call, by their token.
pub struct Caller<'h> {
    pub user: Arc<User>,
    pub token: &'h str,
}

/// Where the body of a request comes from; read only after the head has been checked
/// (reading is what sends a `100 Continue` to a client that expects one).
pub trait BodySource {
    fn reader(&mut self) -> &mut dyn Read;
}

impl BodySource for std::io::Cursor<Vec<u8>> {
    fn reader(&mut self) -> &mut dyn Read {
        self
    }
}

/// Checks the body's head (type, then length) before anything is read: 415 for a type the
/// call does not read, 400 for a length that is not a number, 413 for one over the cap, 411
/// for a typed body with neither a length nor chunked encoding.
pub fn check_body_head(head: &Head, max: usize) -> Result<(), ApiError> {
    // A body with a Transfer-Encoding is chunked, and declares no length: any other coding,
    // or one beside a Content-Length, was refused with the head (`tiny/`'s framing check).
    let chunked = head.header("transfer-encoding").is_some();
    let length = match head.header("content-length").filter(|_| !chunked) {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Content-Length is not a number.".into()))?,
        ),
    };
    let content_type = head.header("content-type");
    check_type(content_type, chunked || length.unwrap_or(0) > 0)?;
    match length {
        Some(n) if n > max as u64 => Err(ApiError::PayloadTooLarge(max)),
        None if !chunked && content_type.is_some() => Err(ApiError::LengthRequired),
        _ => Ok(()),
    }
}

/// Reads the body, once its head has been checked, through a reader capped one byte past
/// `max` (a chunked body declares no length).
pub fn read_body(body: &mut dyn BodySource, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    body.reader()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::BadRequest(format!("The request body could not be read: {e}.")))?;
    if bytes.len() > max {
        return Err(ApiError::PayloadTooLarge(max));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: Vec<(&str, &str)>) -> Head {
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Head::new("GET", "/p?a=1&b=x%20y", headers)
    }

    #[test]
    fn log_values_cannot_forge_lines() {
        assert_eq!(loggable("/a\r\nGET /b 202", 100), "/a\\r\\nGET /b 202");
        assert_eq!(loggable("x\u{1b}[31m", 100), "x\\u{1b}[31m");
        assert_eq!(loggable(&"a".repeat(10), 4), "aaaa…");
        assert_eq!(loggable("/api/é", 100), "/api/é");
    }

    #[test]
    fn query_parameters() {
        let h = head(vec![]);
        assert_eq!(h.path, "/p");
        assert_eq!(h.query_param("b").as_deref(), Some("x y"));
        assert_eq!(h.query_param("c"), None);
    }

    #[test]
    fn base_url_from_host() {
        assert_eq!(
            head(vec![("Host", "api.example:8080")]).base_url("l"),
            "http://api.example:8080"
        );
        assert_eq!(
            head(vec![("Host", "x"), ("X-Forwarded-Proto", "https")]).base_url("l"),
            "https://x"
        );
        assert_eq!(
            head(vec![("Host", "evil/\"x")]).base_url("127.0.0.1:1"),
            "http://127.0.0.1:1"
        );
        assert_eq!(head(vec![]).base_url("127.0.0.1:1"), "http://127.0.0.1:1");
    }

    #[test]
    fn body_heads() {
        let form = ("Content-Type", "application/x-www-form-urlencoded");
        let status =
            |h: Vec<(&str, &str)>| check_body_head(&head(h), 100).err().map(|e| e.status());
        assert_eq!(status(vec![form, ("Content-Length", "12")]), None);
        assert_eq!(status(vec![form, ("Content-Length", "x")]), Some(400));
        assert_eq!(status(vec![form, ("Content-Length", "101")]), Some(413));
        assert_eq!(status(vec![form]), Some(411));
        assert_eq!(status(vec![form, ("Transfer-Encoding", "chunked")]), None);
        assert_eq!(
            status(vec![
                ("Content-Type", "text/plain"),
                ("Content-Length", "1")
            ]),
            Some(415)
        );
    }
}
