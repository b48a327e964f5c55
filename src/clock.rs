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
