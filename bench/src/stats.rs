//! Pure arithmetic over measurements: latency quantiles and commit-order violations.

/// Latency quantiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Quantiles of `micros` (latencies in microseconds); `None` when empty.
    pub fn from_micros(mut micros: Vec<i64>) -> Option<Self> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let q = |p: f64| {
            let rank = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            micros[rank - 1] as f64 / 1000.0
        };
        Some(Self {
            samples: micros.len(),
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: *micros.last().expect("not empty") as f64 / 1000.0,
        })
    }
}

/// How many events reached Kafka after an event that committed later than they did.
///
/// `commit_positions` are the events' positions in commit order, listed in the order
/// Kafka holds them. In commit order the list is increasing; every event that arrives
/// below the highest position seen so far was overtaken by a later commit.
pub fn order_violations(commit_positions: &[u64]) -> usize {
    let mut highest = None;
    let mut violations = 0;
    for &p in commit_positions {
        match highest {
            Some(h) if p < h => violations += 1,
            _ => highest = Some(p),
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let l = Latency::from_micros((1..=100).map(|i| i * 1000).collect()).unwrap();
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p95, 95.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        let one = Latency::from_micros(vec![2500]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (2.5, 2.5, 2.5));
        assert!(Latency::from_micros(vec![]).is_none());
    }

    #[test]
    fn commit_order_is_no_violation() {
        assert_eq!(order_violations(&[0, 1, 2, 3]), 0);
        assert_eq!(order_violations(&[]), 0);
    }

    #[test]
    fn each_pair_published_in_begin_order_is_one_violation() {
        // Commit order per pair: T2 (even) then T1 (odd); a poller sorting by
        // created_at publishes T1 first.
        assert_eq!(order_violations(&[1, 0, 3, 2, 5, 4]), 3);
        assert_eq!(order_violations(&[0, 1, 3, 2, 4, 5]), 1);
    }
}
