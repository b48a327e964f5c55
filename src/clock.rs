//! Processing time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marks the start of the process (the first call wins).
pub fn mark_start() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// Time since [`mark_start`] (zero if it was never called).
pub fn since_start() -> std::time::Duration {
    STARTED.get().map(|s| s.elapsed()).unwrap_or_default()
}

/// Processing time as the runtime reads it, injected so that tests need not wait for it: the
/// wall clock, a clock a test moves by hand, or the wall clock sped up (timers run faster by the
/// same factor, as in Quickwit's `Universe::with_accelerated_time`).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    Wall,
    /// Stands still until [`Clock::advance`].
    Manual(std::sync::Arc<std::sync::atomic::AtomicI64>),
    /// `factor` milliseconds pass for every real one, from `origin_ms` at `origin`.
    Accelerated {
        origin: std::time::Instant,
        origin_ms: i64,
        factor: u32,
    },
}

impl Clock {
    /// A clock that reads `start_ms` until moved.
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(start_ms)))
    }

    /// The wall clock, `factor` times faster from now on.
    pub fn accelerated(factor: u32) -> Clock {
        Clock::Accelerated {
            origin: std::time::Instant::now(),
            origin_ms: now_ms(),
            factor: factor.max(1),
        }
    }

    /// Epoch milliseconds.
    #[inline]
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::Wall => now_ms(),
            Clock::Manual(ms) => ms.load(std::sync::atomic::Ordering::Relaxed),
            Clock::Accelerated {
                origin,
                origin_ms,
                factor,
            } => origin_ms.saturating_add((origin.elapsed().as_millis() as i64).saturating_mul(i64::from(*factor))),
        }
    }

    /// Moves a manual clock forward (other clocks move by themselves: nothing happens).
    pub fn advance(&self, ms: i64) {
        if let Clock::Manual(now) = self {
            now.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The real time between two runs of a timer meant to run every `every` of this clock's
    /// time (at least a millisecond). A manual clock jumps when a test moves it, so its timers
    /// look every 10 ms at most.
    pub fn timer_period(&self, every: std::time::Duration) -> std::time::Duration {
        match self {
            Clock::Accelerated { factor, .. } => (every / *factor).max(std::time::Duration::from_millis(1)),
            Clock::Manual(_) => every.min(std::time::Duration::from_millis(10)),
            Clock::Wall => every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_an_accelerated_one_runs_faster() {
        let manual = Clock::manual(1_000);
        assert_eq!(manual.now_ms(), 1_000);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(manual.now_ms(), 1_000);
        manual.clone().advance(250);
        assert_eq!(manual.now_ms(), 1_250, "clones share the time");

        let fast = Clock::accelerated(1_000);
        let start = fast.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(fast.now_ms() - start >= 20_000, "20 ms real are at least 20 s");
        assert_eq!(
            fast.timer_period(std::time::Duration::from_secs(10)),
            std::time::Duration::from_millis(10)
        );
        assert_eq!(
            Clock::Wall.timer_period(std::time::Duration::from_secs(10)),
            std::time::Duration::from_secs(10)
        );
    }
}

/// Stamps each decoded reading with its arrival time ([`crate::operators::Reading::arrival`]),
/// the time plume decides it at (`runtime.clock`):
///
/// - processing clock: the payload's declared arrival time (`decode.arrival`) or the source's
///   time when it was read;
/// - event clock: the fleet's clock, the latest arrival time (declared, or the event time when
///   none is declared) of every reading stamped so far. It only moves forward, and only readings
///   move it, so a replay of the same input at any speed stamps the same times.
///
/// One per router (one per shard): each shard's clock follows the readings of its own devices,
/// in input order.
#[derive(Debug, Clone, Copy)]
pub struct ArrivalStamp {
    event_clock: bool,
    /// Event clock: the latest arrival seen.
    fleet_ms: i64,
}

impl ArrivalStamp {
    /// `event_clock`: `runtime.clock: event`.
    pub fn new(event_clock: bool) -> Self {
        ArrivalStamp {
            event_clock,
            fleet_ms: i64::MIN,
        }
    }

    /// The arrival time of a reading taken at `ts`, with the payload's declared arrival time if
    /// any, read from a source whose time was `source_ms`.
    #[inline]
    pub fn stamp(&mut self, ts: i64, declared: Option<i64>, source_ms: i64) -> i64 {
        if self.event_clock {
            self.fleet_ms = self.fleet_ms.max(declared.unwrap_or(ts));
            self.fleet_ms
        } else {
            declared.unwrap_or(source_ms)
        }
    }

    /// Event clock: the fleet's clock now (`None` before the first reading, or with the
    /// processing clock).
    pub fn fleet_ms(&self) -> Option<i64> {
        (self.event_clock && self.fleet_ms != i64::MIN).then_some(self.fleet_ms)
    }
}

#[cfg(test)]
mod arrival_tests {
    use super::ArrivalStamp;

    #[test]
    fn the_event_clock_only_moves_forward_and_prefers_the_declared_arrival() {
        let mut s = ArrivalStamp::new(true);
        assert_eq!(s.fleet_ms(), None);
        assert_eq!(s.stamp(1_000, None, 99_999), 1_000);
        // an older reading (backfill) arrives at the fleet's clock, not at its own time
        assert_eq!(s.stamp(500, None, 99_999), 1_000);
        // a declared arrival moves the clock; a device clock far ahead does not
        assert_eq!(s.stamp(900, Some(2_000), 99_999), 2_000);
        assert_eq!(s.stamp(1_000_000, Some(2_100), 99_999), 2_100);
        assert_eq!(s.fleet_ms(), Some(2_100));
    }

    #[test]
    fn the_processing_clock_stamps_the_source_time_or_the_declared_arrival() {
        let mut s = ArrivalStamp::new(false);
        assert_eq!(s.stamp(1_000, None, 5_000), 5_000);
        assert_eq!(s.stamp(1_000, Some(1_200), 5_000), 1_200);
        assert_eq!(s.fleet_ms(), None);
    }
}
