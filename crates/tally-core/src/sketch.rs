//! Mergeable latency sketches (DDSketch, 1 % relative error): rollups keep one per bucket,
//! and percentiles over any time range come from merging the buckets, never raw rows.
//!
//! Percentiles use the nearest-rank definition: the `q` quantile of `n` observations is the
//! `ceil(q·n)`-th smallest (the first for `q = 0`). The sketch answers with a value within
//! [`RELATIVE_ERROR`] of that observation, clamped to the observed minimum and maximum, so a
//! percentile never leaves the range of what was seen. See `docs/numbers.md`.

use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of every quantile: the answer is within 1 % of a true sample value.
pub const RELATIVE_ERROR: f64 = 0.01;

#[derive(Clone)]
pub struct LatencySketch(DDSketch);

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySketch")
            .field("count", &self.0.count())
            .finish()
    }
}

impl Default for LatencySketch {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid latency sketch: {0}")]
pub struct SketchError(String);

impl LatencySketch {
    pub fn new() -> Self {
        Self(DDSketch::new(Config::new(RELATIVE_ERROR, 2048, 1e-9)))
    }

    /// Adds one observation; negative or non-finite values are ignored.
    pub fn add(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.0.add(ms);
        }
    }

    pub fn merge(&mut self, other: &LatencySketch) -> Result<(), SketchError> {
        self.0
            .merge(&other.0)
            .map_err(|e| SketchError(e.to_string()))
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The nearest-rank `q` quantile (0–1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.0.count() as u64;
        let (min, max) = (self.0.min()?, self.0.max()?);
        if n == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        // 1-based nearest rank; the crate answers the value at 0-based rank
        // `floor(q' · (n − 1))`, so ask for the middle of that rank's interval.
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        if rank == n {
            return Some(max);
        }
        if rank == 1 {
            return Some(min);
        }
        let q_crate = ((rank - 1) as f64 + 0.5) / (n - 1) as f64;
        let v = self.0.quantile(q_crate.min(1.0)).ok().flatten()?;
        Some(v.clamp(min, max))
    }

    /// The largest observation, or `None` when empty.
    pub fn max(&self) -> Option<f64> {
        self.0.max()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_java_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        DDSketch::from_java_bytes(bytes)
            .map(Self)
            .map_err(|e| SketchError(format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    #[test]
    fn quantiles_are_within_the_error_bound_after_merging_and_a_round_trip() {
        // Two buckets with different shapes, merged as a range query would.
        let a: Vec<f64> = (1..=900).map(|i| 100.0 + i as f64).collect(); // 101..1000 ms
        let b: Vec<f64> = (1..=100).map(|i| 2000.0 + 50.0 * i as f64).collect(); // slow tail
        let (mut sa, mut sb) = (LatencySketch::new(), LatencySketch::new());
        a.iter().for_each(|v| sa.add(*v));
        b.iter().for_each(|v| sb.add(*v));
        let mut merged = LatencySketch::from_bytes(&sa.to_bytes()).unwrap();
        merged
            .merge(&LatencySketch::from_bytes(&sb.to_bytes()).unwrap())
            .unwrap();
        let mut all: Vec<f64> = a.into_iter().chain(b).collect();
        all.sort_by(f64::total_cmp);
        assert_eq!(merged.count(), 1000);
        for q in [0.5, 0.95, 0.99] {
            let (got, want) = (merged.quantile(q).unwrap(), exact(&all, q));
            assert!(
                (got - want).abs() <= want * RELATIVE_ERROR * 1.01,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(LatencySketch::new().quantile(0.5), None);
        assert!(LatencySketch::from_bytes(b"garbage").is_err());
    }

    fn sketch_of(values: &[f64]) -> LatencySketch {
        let mut s = LatencySketch::new();
        values.iter().for_each(|v| s.add(*v));
        s
    }

    #[test]
    fn percentiles_of_known_samples_use_the_nearest_rank() {
        // Five calls at 400 ms and one at 5 s: 1 call in 6 is above p83, so p95 and p99
        // are the slow call (the crate's own rank gave 399.5 for both).
        let s = sketch_of(&[400.0, 400.0, 400.0, 400.0, 400.0, 5000.0]);
        assert_eq!(s.quantile(0.95), Some(5000.0));
        assert_eq!(s.quantile(0.99), Some(5000.0));
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 400.0).abs() <= 4.0, "{p50}");
        // 100, 200, …, 1000: p99 is the 10th value, p50 the 5th.
        let s = sketch_of(&(1..=10).map(|i| 100.0 * i as f64).collect::<Vec<_>>());
        assert_eq!(s.quantile(0.99), Some(1000.0));
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 500.0).abs() <= 5.0, "{p50}");
        // One call: every percentile is that call, never above it.
        let s = sketch_of(&[3000.0]);
        for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
            assert_eq!(s.quantile(q), Some(3000.0));
        }
    }

    proptest::proptest! {
        #[test]
        fn percentiles_agree_with_the_exact_nearest_rank(
            // Light values, ties (a small alphabet) and a heavy tail (up to 10^6 ms).
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    0.0f64..2_000.0,
                    proptest::sample::select(vec![0.0, 1.0, 250.0, 400.0, 5_000.0]),
                    proptest::strategy::Strategy::prop_map(0.0f64..6.0, |e| 10f64.powf(e)),
                ],
                1..400,
            ),
            split in 0usize..400,
            q in 0.0f64..=1.0,
        ) {
            // Two buckets merged, as a range query does.
            let split = split.min(values.len());
            let mut merged = sketch_of(&values[..split]);
            merged.merge(&LatencySketch::from_bytes(&sketch_of(&values[split..]).to_bytes()).unwrap()).unwrap();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [q, 0.0, 0.5, 0.95, 0.99, 1.0] {
                let got = merged.quantile(q).unwrap();
                let want = exact(&sorted, q);
                proptest::prop_assert!(got >= sorted[0] && got <= sorted[sorted.len() - 1], "q{q}: {got} outside the observed range");
                proptest::prop_assert!((got - want).abs() <= want * RELATIVE_ERROR + 1e-9, "q{q}: {got} vs exact {want}");
            }
        }
    }

    #[test]
    fn bad_observations_are_ignored() {
        let mut s = LatencySketch::new();
        s.add(f64::NAN);
        s.add(-1.0);
        s.add(0.0);
        assert_eq!(s.count(), 1);
    }
}
