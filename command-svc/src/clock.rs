//! The clock, injected: the system clock in production, a hand-moved one in tests.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use domain::Timestamp;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix microseconds.
    fn now_micros(&self) -> i64;

    fn now(&self) -> Timestamp {
        Timestamp(self.now_micros().div_euclid(1000))
    }
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { micros: AtomicI64::new(start.0.saturating_mul(1000)) }
    }

    pub fn advance_secs(&self, secs: u64) {
        let delta = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        self.micros.fetch_add(delta, Ordering::SeqCst);
    }

    pub fn set(&self, to: Timestamp) {
        self.micros.store(to.0.saturating_mul(1000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.micros.load(Ordering::SeqCst)
    }
}
