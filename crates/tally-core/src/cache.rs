//! A small time-bounded cache for hot-path lookups (API keys, tenants) so that a request
//! does not cost a database read. Entries expire so that changes made by another process or
//! node are seen within the TTL; changes made here invalidate at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: RwLock<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.read().ok()?;
        let (v, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= self.capacity {
                let ttl = self.ttl;
                entries.retain(|_, (_, at)| at.elapsed() < ttl);
                if entries.len() >= self.capacity {
                    entries.clear();
                }
            }
            entries.insert(key, (value, Instant::now()));
        }
    }

    pub fn remove(&self, key: &K) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(key);
        }
    }

    /// Drops every entry matching `pred`.
    pub fn remove_where(&self, pred: impl Fn(&V) -> bool) {
        if let Ok(mut entries) = self.entries.write() {
            entries.retain(|_, (v, _)| !pred(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_bounds_size() {
        let c = TtlCache::new(Duration::from_millis(0), 10);
        c.insert(1, "a");
        assert_eq!(c.get(&1), None);
        let c = TtlCache::new(Duration::from_secs(60), 2);
        c.insert(1, "a");
        c.insert(2, "b");
        c.insert(3, "c");
        assert_eq!(c.get(&3), Some("c"));
        assert!(c.get(&1).is_none() && c.get(&2).is_none());
        c.remove(&3);
        assert_eq!(c.get(&3), None);
    }
}
