//! A shutdown signal every thread can wait on: triggering it wakes all sleepers at once.

use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};

/// Triggered once; never reset. Dropping the only sender disconnects every receiver, which
/// is what wakes them.
pub struct Shutdown {
    trigger: Mutex<Option<Sender<()>>>,
    signal: Receiver<()>,
    /// Why the service asked to be started again, if it did.
    restart: Mutex<Option<String>>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        let (tx, rx) = bounded(0);
        Shutdown {
            trigger: Mutex::new(Some(tx)),
            signal: rx,
            restart: Mutex::new(None),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        lock(&self.trigger).take();
    }

    /// Stops the service as [`Shutdown::trigger`] does, saying that it should be started
    /// again (by its supervisor) and why. The first reason is kept.
    pub fn restart(&self, why: String) {
        lock(&self.restart).get_or_insert(why);
        self.trigger();
    }

    /// Why a restart was asked for, if one was.
    pub fn restart_reason(&self) -> Option<String> {
        lock(&self.restart).clone()
    }

    pub fn is_triggered(&self) -> bool {
        matches!(self.signal.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps for `d`, or less if shutdown is triggered meanwhile; true if it was.
    pub fn sleep(&self, d: Duration) -> bool {
        matches!(
            self.signal.recv_timeout(d),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// For `select!`: becomes ready (disconnected) when shutdown is triggered.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn trigger_wakes_a_sleeper() {
        let s = Arc::new(Shutdown::default());
        assert!(!s.is_triggered());
        assert!(!s.sleep(Duration::from_millis(1)));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(60)));
        let started = Instant::now();
        s.trigger();
        assert!(t.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(s.is_triggered());
    }
}
