//! The keyed rate limiter: one GCRA state (`tally_core::ratelimit`) per key, in memory, for
//! every limit tally enforces (login attempts per account and per client IP here; per key,
//! tenant and model later). Keys are namespaced strings (`"login-ip:203.0.113.9"`), so one
//! limiter serves every use without them colliding. A shared backend (Redis) can replace
//! the map behind `check` for several nodes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ratelimit::{self, Quota};

/// Past this many keys, keys back at a full burst are dropped before adding one.
const MAX_KEYS: usize = 100_000;
const SHARDS: usize = 16;

pub struct RateLimiter {
    epoch: Instant,
    shards: Vec<Mutex<HashMap<String, i64>>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn now(&self) -> i64 {
        self.epoch.elapsed().as_micros() as i64
    }

    /// Counts one request for `key`; `Err(wait)` when it is over `quota`.
    pub fn check(&self, key: &str, quota: Quota) -> Result<(), Duration> {
        self.check_at(key, quota, self.now(), 1)
    }

    /// Counts `n` units (tokens, say) for `key`; `Err(wait)` when they are over `quota`.
    pub fn check_n(&self, key: &str, quota: Quota, n: u64) -> Result<(), Duration> {
        self.check_at(key, quota, self.now(), n)
    }

    /// Adds `n` units to `key` whatever it holds: usage learnt after the fact.
    pub fn charge(&self, key: &str, quota: Quota, n: u64) {
        let now = self.now();
        let shard = &self.shards[shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied();
        map.insert(key.to_owned(), ratelimit::charge(tat, quota, now, n));
    }

    /// Takes `n` units back from `key`: a call charged with an upper bound of what it used.
    pub fn refund(&self, key: &str, quota: Quota, n: u64) {
        let now = self.now();
        let shard = &self.shards[shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = ratelimit::refund(map.get(key).copied(), quota, now, n) {
            map.insert(key.to_owned(), tat);
        }
    }

    /// When `key` could take one more unit under `quota` and how many it has left now:
    /// `(remaining, reset)`, for `x-ratelimit-*` headers.
    pub fn remaining(&self, key: &str, quota: Quota) -> (u64, Duration) {
        let now = self.now();
        let shard = &self.shards[shard_of(key)];
        let map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let interval = (quota.period_micros / i64::from(quota.burst.max(1))).max(1);
        let used = ((tat - now) + interval - 1) / interval;
        let remaining = i64::from(quota.burst).saturating_sub(used).max(0) as u64;
        (remaining, Duration::from_micros((tat - now).max(0) as u64))
    }

    fn check_at(&self, key: &str, quota: Quota, now: i64, n: u64) -> Result<(), Duration> {
        let shard = &self.shards[shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied();
        match ratelimit::check_n(tat, quota, now, n) {
            Ok(next) => {
                if tat.is_none() && map.len() >= MAX_KEYS / SHARDS {
                    map.retain(|_, t| !ratelimit::is_idle(*t, now));
                }
                map.insert(key.to_owned(), next);
                Ok(())
            }
            Err(wait) => Err(Duration::from_micros(wait.max(0) as u64)),
        }
    }
}

fn shard_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_limited_independently() {
        let limiter = RateLimiter::new();
        let q = Quota::per_minute(2);
        assert!(limiter.check_at("a", q, 0, 1).is_ok());
        assert!(limiter.check_at("a", q, 0, 1).is_ok());
        assert_eq!(limiter.check_at("a", q, 0, 1), Err(Duration::from_secs(30)));
        assert!(limiter.check_at("b", q, 0, 1).is_ok());
        assert!(limiter.check_at("a", q, 30_000_000, 1).is_ok());
    }
}
