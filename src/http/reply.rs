//! What a handler answers: a status, headers and a JSON body, and the one mapping from an
//! API error to its status and the error body every 4xx/5xx carries.

use serde_json::json;

/// The 404 of an instance the caller does not have (missing, or another user's).
pub const INSTANCE_NOT_FOUND: &str = "The specified lambda instance doesn't exist.";

/// A response before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, body: &impl serde::Serialize) -> Reply {
        match serde_json::to_vec(body) {
            Ok(body) => Reply {
                status,
                headers: vec![("Content-Type", "application/json".into())],
                body,
            },
            // Plain data always serializes; if a type ever does not, that is a bug: a 500
            // with a log line, never a 200 with an empty body. (The 500's own body is a
            // `Value` of strings, which cannot fail.)
            Err(e) => {
                log::error!("serializing a {status} reply: {e}");
                ApiError::Internal.reply()
            }
        }
    }

    pub fn text(status: u16, content_type: &str, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Everything a request can be refused for.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400: the request is malformed; the message says how.
    BadRequest(String),
    /// 400: fields of a create refused, each `"<field>: <sentence>"`: one error object each,
    /// whose `detail` is a list, as the original's clients read it (`detail[0]`).
    InvalidFields(Vec<String>),
    /// 401: no token, or identity rejected it.
    Unauthorized,
    /// 404: no such path, or no such instance or action for this user.
    NotFound(String),
    /// 405: the path exists, the method does not; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// 409: the state table refuses the action.
    Conflict(String),
    /// 411: a typed body with neither a Content-Length nor chunked encoding.
    LengthRequired,
    /// 413: the body is larger than `max_body_bytes`.
    PayloadTooLarge(usize),
    /// 415: a body of a type the action call does not read.
    UnsupportedMediaType(String),
    /// 417: an expectation the service cannot meet (`100-continue` over HTTP/1.0).
    ExpectationFailed(String),
    /// 422: an `Idempotency-Key` reused for a different request.
    Unprocessable(String),
    /// 429: the caller has too many of something (Idempotency-Keys) for now.
    TooManyRequests(String),
    /// 429: the client's address sent too many rejected tokens; it may try again in this
    /// many seconds.
    TooManyTokens(u64),
    /// 431: the request's head is larger than the documented limit.
    HeadTooLarge(usize),
    /// 503: identity or the database cannot answer now, or too many connections are open.
    Unavailable(String),
    /// 500: a bug (a handler panicked). Never chosen on purpose.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidFields(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::ExpectationFailed(_) => 417,
            ApiError::Unprocessable(_) => 422,
            ApiError::TooManyRequests(_) | ApiError::TooManyTokens(_) => 429,
            ApiError::HeadTooLarge(_) => 431,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal => 500,
        }
    }

    fn message_and_slug(&self) -> (String, &'static str) {
        match self {
            ApiError::BadRequest(m) => (m.clone(), "bad_request"),
            ApiError::InvalidFields(all) => (all.join(" "), "invalid_field"),
            ApiError::Unauthorized => ("Invalid token".into(), "unauthorized"),
            ApiError::NotFound(m) => (m.clone(), "not_found"),
            ApiError::MethodNotAllowed(allow) => (
                format!("Method not allowed; this path accepts {allow}."),
                "method_not_allowed",
            ),
            ApiError::Conflict(m) => (m.clone(), "conflict"),
            ApiError::LengthRequired => (
                "A request body needs a Content-Length (or chunked encoding).".into(),
                "length_required",
            ),
            ApiError::PayloadTooLarge(max) => (
                format!("The request body is larger than {max} bytes."),
                "payload_too_large",
            ),
            ApiError::UnsupportedMediaType(m) => (m.clone(), "unsupported_media_type"),
            ApiError::ExpectationFailed(m) => (m.clone(), "expectation_failed"),
            ApiError::Unprocessable(m) => (m.clone(), "idempotency_key_reused"),
            ApiError::TooManyRequests(m) => (m.clone(), "too_many_requests"),
            ApiError::TooManyTokens(_) => (
                "Too many invalid tokens from this address; try again later.".into(),
                "too_many_invalid_tokens",
            ),
            ApiError::HeadTooLarge(max) => (
                format!("The request line and headers are larger than {max} bytes."),
                "request_header_fields_too_large",
            ),
            ApiError::Unavailable(m) => (m.clone(), "service_unavailable"),
            ApiError::Internal => ("Internal server error.".into(), "internal_error"),
        }
    }

    /// The error body with the headers that go with some statuses. Each error carries the
    /// documented `message`, `code` and `details`, and the `status` and `detail` the
    /// original service's clients read (its web UI shows `detail` and branches on
    /// `status`).
    pub fn reply(&self) -> Reply {
        let status = self.status();
        if let ApiError::InvalidFields(all) = self {
            let errors: Vec<_> = all
                .iter()
                .map(|m| {
                    json!({"message": m, "code": status, "details": "invalid_field",
                           "status": status, "detail": [m]})
                })
                .collect();
            return Reply::json(status, &json!({ "errors": errors }));
        }
        let (message, details) = self.message_and_slug();
        let reply = Reply::json(
            status,
            &json!({"errors": [{
                "message": message, "code": status, "details": details,
                "status": status, "detail": message,
            }]}),
        );
        match self {
            ApiError::Unauthorized => reply.with_header("WWW-Authenticate", "Token"),
            ApiError::MethodNotAllowed(allow) => reply.with_header("Allow", *allow),
            ApiError::Unavailable(_) => reply.with_header("Retry-After", "5"),
            ApiError::TooManyRequests(_) => reply.with_header("Retry-After", "3600"),
            ApiError::TooManyTokens(secs) => reply.with_header("Retry-After", secs.to_string()),
            _ => reply,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        log::error!("{}", crate::report::Report(&e));
        match e.disk_trouble() {
            Some(why) => ApiError::Unavailable(format!(
                "The service cannot save anything now: {why}. Nothing was accepted; try again \
                 later."
            )),
            None => ApiError::Unavailable(
                "The service's database is unavailable; try again later.".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_cannot_be_serialized_is_a_500() {
        // JSON object keys must be strings: a map keyed by pairs cannot be written.
        let body: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let reply = Reply::json(200, &body);
        assert_eq!(reply.status, 500);
        assert_eq!(reply, ApiError::Internal.reply());
    }

    #[test]
    fn unauthorized_is_the_authentication_page_body() {
        let r = ApiError::Unauthorized.reply();
        assert_eq!(r.status, 401);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"errors":[{"message":"Invalid token","code":401,"details":"unauthorized","status":401,"detail":"Invalid token"}]}"#
        );
        assert_eq!(r.headers[1], ("WWW-Authenticate", "Token".to_string()));
    }

    #[test]
    fn refused_fields_are_one_error_each_with_a_list_for_detail() {
        let r = ApiError::InvalidFields(vec!["a: x.".into(), "b: y.".into()]).reply();
        assert_eq!(r.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["errors"][1],
            json!({"message": "b: y.", "code": 400, "details": "invalid_field",
                   "status": 400, "detail": ["b: y."]})
        );
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let r = ApiError::Unavailable("later".into()).reply();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("5"));
    }
}
