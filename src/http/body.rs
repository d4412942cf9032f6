//! Reads the `action` field of the action call's body, whichever of the three encodings the
//! client used: `application/x-www-form-urlencoded`, `multipart/form-data` (what
//! `curl -F action=start` sends) or `application/json`.

use serde_json::Value;

use super::reply::ApiError;

const SUPPORTED: &str = "Send the action as application/x-www-form-urlencoded, \
                         multipart/form-data or application/json.";

/// Checks, before a byte of the body is read, that its declared type is one the call reads:
/// 415 for another type (or for a body declared without a type), 400 for a multipart type
/// without a usable boundary.
pub fn check_type(content_type: Option<&str>, declares_body: bool) -> Result<(), ApiError> {
    let Some(content_type) = content_type else {
        return if declares_body {
            Err(ApiError::UnsupportedMediaType(format!(
                "The request body has no Content-Type. {SUPPORTED}"
            )))
        } else {
            Ok(())
        };
    };
    let (media, params) = split_content_type(content_type);
    match media.as_str() {
        "application/x-www-form-urlencoded" | "application/json" => Ok(()),
        "multipart/form-data" => boundary(&params).map(|_| ()),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not supported. {SUPPORTED}"
        ))),
    }
}

fn boundary(params: &[(String, String)]) -> Result<&str, ApiError> {
    params
        .iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v.as_str())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| malformed("multipart/form-data without a valid boundary parameter"))
}

/// The `action` field, `None` when the body has none. A body that cannot be parsed as the
/// type it claims is a 400; a type the call does not read is a 415.
pub fn action_field(content_type: Option<&str>, body: &[u8]) -> Result<Option<String>, ApiError> {
    let Some(content_type) = content_type else {
        return if body.iter().all(u8::is_ascii_whitespace) {
            Ok(None)
        } else {
            Err(ApiError::UnsupportedMediaType(format!(
                "The request body has no Content-Type. {SUPPORTED}"
            )))
        };
    };
    let (media, params) = split_content_type(content_type);
    match media.as_str() {
        "application/x-www-form-urlencoded" => {
            let mut values = form_urlencoded::parse(body).filter(|(k, _)| k == "action");
            let first = values.next().map(|(_, v)| v.into_owned());
            if values.next().is_some() {
                return Err(twice("action"));
            }
            Ok(first)
        }
        "multipart/form-data" => multipart_field(body, boundary(&params)?, "action"),
        "application/json" => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            let fields: Actions = serde_json::from_slice(body)
                .map_err(|e| malformed(&format!("the JSON body does not parse: {e}")))?;
            match fields.0.as_slice() {
                [] => Ok(None),
                // A non-string action is present but wrong: it gets the action error, not a
                // parse error.
                [one] => Ok(Some(one.as_str().unwrap_or_default().to_string())),
                _ => Err(twice("action")),
            }
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not supported. {SUPPORTED}"
        ))),
    }
}

/// Every `action` value of a JSON object, in order: serde_json's own map keeps only the
/// last of a duplicated key, where form and multipart parsers would take the first.
struct Actions(Vec<Value>);

impl<'de> serde::Deserialize<'de> for Actions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Actions, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Actions;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "the JSON body must be an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Actions, M::Error> {
                let mut actions = Vec::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "action" {
                        actions.push(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Actions(actions))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn malformed(why: &str) -> ApiError {
    ApiError::BadRequest(format!("Malformed request body: {why}."))
}

/// `type/subtype; k=v; k="v"` → (lower-case media type, [(lower-case key, value)]).
fn split_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    (media, params)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of form field `name` in a multipart body (RFC 7578), or `None` if no part has
/// that name; 400 if two parts have it. Files are never read: the call takes one short text
/// field. Linear in the body's size: each part is found by one search for the next
/// delimiter, and its head is looked for within the part only.
fn multipart_field(body: &[u8], boundary: &str, name: &str) -> Result<Option<String>, ApiError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // A delimiter after the first starts a line.
    let next_delimiter = [b"\n", delimiter].concat();
    let start =
        find(body, delimiter).ok_or_else(|| malformed("the multipart boundary never occurs"))?;
    let mut rest = &body[start + delimiter.len()..];
    let mut found = None;
    loop {
        if rest.starts_with(b"--") {
            return Ok(found);
        }
        // Transport padding, then the line break that ends the delimiter line.
        let line_end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| malformed("a multipart part is cut short"))?;
        if !rest[..line_end]
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r'))
        {
            return Err(malformed("garbage after a multipart boundary"));
        }
        rest = &rest[line_end + 1..];
        let end = find(rest, &next_delimiter)
            .ok_or_else(|| malformed("a multipart part is not closed"))?;
        // The part, without the line break that belongs to the next delimiter.
        let part = &rest[..end];
        let part = part.strip_suffix(b"\r").unwrap_or(part);
        rest = &rest[end + next_delimiter.len()..];
        let (head_len, sep) = match (find(part, b"\r\n\r\n"), find(part, b"\n\n")) {
            (Some(a), Some(b)) if b < a => (b, 2),
            (Some(a), _) => (a, 4),
            (None, Some(b)) => (b, 2),
            (None, None) => return Err(malformed("a multipart part has no end of headers")),
        };
        let head = std::str::from_utf8(&part[..head_len])
            .map_err(|_| malformed("multipart part headers are not UTF-8"))?;
        if part_name(head).as_deref() == Some(name) {
            if found.is_some() {
                return Err(twice(name));
            }
            let value = std::str::from_utf8(&part[head_len + sep..])
                .map_err(|_| malformed("the multipart field is not UTF-8"))?;
            found = Some(value.to_string());
        }
    }
}

/// A field given twice: whichever a parser took, another would take the other.
fn twice(name: &str) -> ApiError {
    ApiError::BadRequest(format!("The request gives `{name}` more than once."))
}

/// The `name` parameter of a part's `Content-Disposition: form-data; name="..."` header.
fn part_name(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (header, value) = line.split_once(':')?;
        if !header.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        let (_, params) = split_content_type(value);
        params
            .into_iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(content_type: Option<&str>, body: &str, expected: Result<Option<&str>, u16>) {
        let got = action_field(content_type, body.as_bytes());
        let got = got.as_ref().map(|o| o.as_deref()).map_err(|e| e.status());
        assert_eq!(got, expected, "{content_type:?} {body:?}");
    }

    /// The body `curl -F action=start` sends, byte for byte.
    const CURL: &str = "--------------------------d74496d66958873e\r\n\
        Content-Disposition: form-data; name=\"action\"\r\n\r\n\
        start\r\n\
        --------------------------d74496d66958873e--\r\n";
    const CURL_TYPE: &str =
        "multipart/form-data; boundary=------------------------d74496d66958873e";

    #[test]
    fn curl_multipart() {
        check(Some(CURL_TYPE), CURL, Ok(Some("start")));
    }

    #[test]
    fn multipart_with_other_fields_and_quoted_boundary() {
        let body =
            "preamble\r\n--xyz\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n\
                    --xyz\r\nContent-Disposition: form-data; name=action\r\n\
                    Content-Type: text/plain\r\n\r\nstop\r\n--xyz--";
        check(
            Some("Multipart/Form-Data; boundary=\"xyz\""),
            body,
            Ok(Some("stop")),
        );
        let none =
            "--xyz\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--xyz--\r\n";
        check(Some("multipart/form-data; boundary=xyz"), none, Ok(None));
    }

    #[test]
    fn multipart_with_bare_line_feeds() {
        let body = "--b\nContent-Disposition: form-data; name=\"action\"\n\nstart\n--b--\n";
        check(
            Some("multipart/form-data; boundary=b"),
            body,
            Ok(Some("start")),
        );
    }

    #[test]
    fn malformed_multipart() {
        let t = Some("multipart/form-data; boundary=b");
        check(t, "no boundary here", Err(400));
        check(
            t,
            "--b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nstart",
            Err(400),
        );
        check(
            t,
            "--b\r\nContent-Disposition: form-data; name=\"action\"",
            Err(400),
        );
        check(t, "--bgarbage\r\n\r\n\r\n--b--", Err(400));
        check(Some("multipart/form-data"), CURL, Err(400));
        check(Some("multipart/form-data; boundary="), CURL, Err(400));
    }

    #[test]
    fn urlencoded() {
        let t = Some("application/x-www-form-urlencoded");
        check(t, "action=start", Ok(Some("start")));
        check(t, "x=1&action=st%6Fp", Ok(Some("stop")));
        check(t, "x=1", Ok(None));
        check(t, "", Ok(None));
        check(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            "action=start",
            Ok(Some("start")),
        );
    }

    #[test]
    fn json() {
        let t = Some("application/json");
        check(t, r#"{"action":"start"}"#, Ok(Some("start")));
        check(t, r#"{"action":3}"#, Ok(Some("")));
        check(t, r#"{"other":1}"#, Ok(None));
        check(t, "", Ok(None));
        check(t, "[1]", Err(400));
        check(t, "{", Err(400));
        check(
            Some("application/json; charset=utf-8"),
            r#"{"action":"stop"}"#,
            Ok(Some("stop")),
        );
    }

    #[test]
    fn types_are_checked_before_reading() {
        assert!(check_type(Some(CURL_TYPE), true).is_ok());
        assert!(check_type(Some("application/json; charset=utf-8"), true).is_ok());
        assert!(check_type(None, false).is_ok());
        assert_eq!(check_type(None, true).unwrap_err().status(), 415);
        assert_eq!(
            check_type(Some("text/plain"), false).unwrap_err().status(),
            415
        );
        assert_eq!(
            check_type(Some("multipart/form-data"), true)
                .unwrap_err()
                .status(),
            400
        );
    }

    /// Random bytes and mangled bodies, from a fixed seed: always an answer, never a panic.
    #[test]
    fn mangled_bodies_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let types = [
            Some(CURL_TYPE),
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
            None,
        ];
        for i in 0..20_000 {
            let mut body = CURL.as_bytes().to_vec();
            if i % 3 == 0 {
                body = br#"{"action":"start"}"#.to_vec();
            }
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 => body.insert(at, next() as u8),
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    _ => body.truncate(at),
                }
            }
            let t = types[(next() % types.len() as u64) as usize];
            if let Err(e) = action_field(t, &body) {
                assert!(matches!(e.status(), 400 | 415), "{e:?}");
            }
        }
    }

    #[test]
    fn an_action_given_twice_is_400_in_every_encoding() {
        let form = Some("application/x-www-form-urlencoded");
        check(form, "action=start&action=stop", Err(400));
        check(
            Some("application/json"),
            r#"{"action":"start","action":"stop"}"#,
            Err(400),
        );
        let parts = "--b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nstart\r\n\
                     --b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nstop\r\n--b--\r\n";
        check(Some("multipart/form-data; boundary=b"), parts, Err(400));
    }

    /// Many tiny parts are parsed in one pass: each part's head was once looked for in the
    /// whole rest of the body (a thousand parts within 8 KiB took 40 ms). Here 20 000 parts
    /// (1 MB) take milliseconds in one pass, and seconds the old way: the bound is generous.
    #[test]
    fn many_parts_are_parsed_in_one_pass() {
        let part = "--b\nContent-Disposition: form-data; name=\"x\"\n\ny\n";
        let last = "--b\nContent-Disposition: form-data; name=\"action\"\n\nstart\n--b--";
        let body = format!("{}{last}", part.repeat(20_000));
        let started = std::time::Instant::now();
        let got = multipart_field(body.as_bytes(), "b", "action").unwrap();
        assert_eq!(got.as_deref(), Some("start"));
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn other_types() {
        check(Some("text/plain"), "action=start", Err(415));
        check(None, "action=start", Err(415));
        check(None, "", Ok(None));
    }
}
