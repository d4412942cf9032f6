//! [`Report`]: an error with every cause under it, on one line, as every error is logged and
//! as `main` prints the one a command ends with.

use std::fmt;

/// An error and its causes on one line, `outer: inner: innermost`: how every error is
/// logged and how `main` prints the one it ends with. Control characters are escaped: a
/// cause may carry text from outside (a cloud's fault message), and a newline in it must not
/// forge a log line.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", escaped(&self.0.to_string()))?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {}", escaped(&e.to_string()))?;
            cause = e.source();
        }
        Ok(())
    }
}

/// Text from outside (a cloud's fault message, say) as it may go into a log line: control
/// characters escaped, so that a newline cannot forge a line of its own.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_escapes_what_its_errors_say() {
        let e = std::io::Error::other("bad\nINFO forged");
        assert_eq!(Report(&e).to_string(), "bad\\nINFO forged");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("plain (text)"), "plain (text)");
        assert_eq!(
            escaped("503 x (bad\nINFO forged line)"),
            "503 x (bad\\nINFO forged line)"
        );
        assert_eq!(escaped("a\u{1b}[31m"), "a\\u{1b}[31m");
    }
}
