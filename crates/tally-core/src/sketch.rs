//! Mergeable latency sketches (DDSketch, 1 % relative error): rollups keep one per bucket,
//! and percentiles over any time range come from merging the buckets, never raw rows.

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

    /// The `q` quantile (0–1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()
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

    #[test]
    fn bad_observations_are_ignored() {
        let mut s = LatencySketch::new();
        s.add(f64::NAN);
        s.add(-1.0);
        s.add(0.0);
        assert_eq!(s.count(), 1);
    }
}
