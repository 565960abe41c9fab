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
        self.check_at(key, quota, self.now())
    }

    fn check_at(&self, key: &str, quota: Quota, now: i64) -> Result<(), Duration> {
        let shard = &self.shards[shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied();
        match ratelimit::check(tat, quota, now) {
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
        assert!(limiter.check_at("a", q, 0).is_ok());
        assert!(limiter.check_at("a", q, 0).is_ok());
        assert_eq!(limiter.check_at("a", q, 0), Err(Duration::from_secs(30)));
        assert!(limiter.check_at("b", q, 0).is_ok());
        assert!(limiter.check_at("a", q, 30_000_000).is_ok());
    }
}
