//! [`Histogram`]: durations in fixed buckets, observed per batch, checkpoint or delivery (never
//! per reading), read by `/metrics` and the OTLP exporter alike.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the duration buckets: 1 ms to about 33 s, doubling.
pub const DURATION_BOUNDS: [f64; 16] = {
    let mut bounds = [0.0; 16];
    let mut i = 0;
    let mut b = 0.001;
    while i < 16 {
        bounds[i] = b;
        b *= 2.0;
        i += 1;
    }
    bounds
};

/// A histogram of durations in seconds. Each observation is two relaxed atomic additions.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, and one more for what is above the last.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

/// What a histogram holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    pub sum: f64,
    pub count: u64,
    /// The upper bounds (without the last, infinite one).
    pub bounds: Vec<f64>,
    /// The count of each bucket (not cumulative): `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::durations()
    }
}

impl Histogram {
    /// Buckets from 1 ms to about 33 s.
    pub fn durations() -> Self {
        Histogram {
            bounds: &DURATION_BOUNDS,
            counts: (0..=DURATION_BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let bucket = self.bounds.partition_point(|b| *b < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn read(&self) -> HistogramValue {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        HistogramValue {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: counts.iter().sum(),
            bounds: self.bounds.to_vec(),
            counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets() {
        let h = Histogram::durations();
        h.observe(0.0005); // below the first bound
        h.observe(0.001); // on the first bound (le)
        h.observe(0.003);
        h.observe(1000.0); // above the last
        let v = h.read();
        assert_eq!(v.count, 4);
        assert_eq!(v.counts.len(), v.bounds.len() + 1);
        assert_eq!(v.counts[0], 2);
        assert_eq!(v.counts[2], 1, "0.003 is in (0.002, 0.004]");
        assert_eq!(*v.counts.last().unwrap(), 1);
        assert!((v.sum - 1000.0045).abs() < 1e-6, "{}", v.sum);
        assert!((DURATION_BOUNDS[15] - 32.768).abs() < 1e-9);
    }
}
