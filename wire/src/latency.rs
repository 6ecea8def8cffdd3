//! Latency histogram buckets shared by every daemon's `/metrics`: fixed
//! bounds, so histograms of different cores, nodes and daemons add up
//! bucket by bucket, and fixed `le` labels, so they stay stable across
//! releases.

use std::time::Duration;

/// Upper bounds of the latency buckets in nanoseconds; a last, implicit
/// bucket is `+Inf`. Fixed so that sums across cores and nodes line up.
pub const LATENCY_BUCKETS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// `le` labels of `LATENCY_BUCKETS_NS` in seconds, then `+Inf`. Spelled
/// out because float formatting would print `0.00005` differently per
/// implementation and the labels must stay stable across releases.
pub const LATENCY_BUCKET_LE: [&str; BUCKETS] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "10", "+Inf",
];

/// Number of histogram buckets including `+Inf`.
pub const BUCKETS: usize = LATENCY_BUCKETS_NS.len() + 1;

/// Index of the bucket `latency_ns` falls in: the first bound it does not
/// exceed (Prometheus buckets are `<= le`), or `+Inf`.
pub fn bucket_index(latency_ns: u64) -> usize {
    LATENCY_BUCKETS_NS
        .iter()
        .position(|&bound| latency_ns <= bound)
        .unwrap_or(LATENCY_BUCKETS_NS.len())
}

/// Nanoseconds of `d`, saturating.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_inclusive() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(50_000), 0);
        assert_eq!(bucket_index(50_001), 1);
        assert_eq!(bucket_index(1_000_000), 4);
        assert_eq!(bucket_index(10_000_000_000), BUCKETS - 2);
        assert_eq!(bucket_index(10_000_000_001), BUCKETS - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn le_labels_match_bounds() {
        for (le, ns) in LATENCY_BUCKET_LE.iter().zip(LATENCY_BUCKETS_NS) {
            let secs: f64 = le.parse().unwrap();
            assert!((secs * 1e9 - ns as f64).abs() < 0.5, "{le} vs {ns}");
        }
        assert_eq!(LATENCY_BUCKET_LE[BUCKETS - 1], "+Inf");
        assert!(LATENCY_BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
