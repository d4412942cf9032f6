//! [`Report`]: an error with every cause under it, on one line, as every error is logged and
//! as `main` prints the one a command ends with.

use std::fmt;

/// An error and its causes on one line, `outer: inner: innermost`: how every error is
/// logged and how `main` prints the one it ends with.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
