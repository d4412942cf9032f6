//! The Retry-After estimate: how long actions take from acceptance to their end, as the
//! workers see them end; the HTTP side reads it to tell a client when to ask again.

use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// How long actions take, from acceptance to their end: what `Retry-After` tells a client
/// following one. A moving average of the recent ones.
#[derive(Default)]
pub struct Eta {
    average_ms: Mutex<Option<f64>>,
}

/// What `Retry-After` says while there is no history to go by.
const DEFAULT_ETA: Duration = Duration::from_secs(5);

impl Eta {
    /// An action ended `took` after it was accepted.
    pub fn record(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let mut avg = lock(&self.average_ms);
        *avg = Some(avg.map_or(ms, |a| 0.8 * a + 0.2 * ms));
    }

    /// Seconds a client should wait before asking again about an action accepted `age` ago:
    /// what recent actions took, less its age, from 1 to 30.
    pub fn retry_after(&self, age: Duration) -> u64 {
        let eta =
            lock(&self.average_ms).map_or(DEFAULT_ETA, |ms| Duration::from_secs_f64(ms / 1000.0));
        eta.saturating_sub(age)
            .as_secs_f64()
            .ceil()
            .clamp(1.0, 30.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_recent_actions() {
        let eta = Eta::default();
        assert_eq!(eta.retry_after(Duration::ZERO), 5);
        eta.record(Duration::from_secs(12));
        assert_eq!(eta.retry_after(Duration::ZERO), 12);
        assert_eq!(eta.retry_after(Duration::from_secs(4)), 8);
        assert_eq!(eta.retry_after(Duration::from_secs(60)), 1);
        eta.record(Duration::from_secs(3600));
        assert_eq!(eta.retry_after(Duration::ZERO), 30);
    }
}
