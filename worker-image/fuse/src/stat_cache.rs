//! The bounded cache of stat results (`rcache.fuse.open.read.status.cache.*`): lookups, getattr
//! and open of a path seen recently answer without a metadata round trip to the workers.
//! Entries expire after [`STAT_CACHE_TTL`]; when full the oldest entry goes. Disabled, it
//! stores nothing. It caches metadata only, never data.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcache_transport::protocol::FileStat;

/// How long a cached stat stays valid: the under-storage is expected to change rarely while
/// mounted, and a minute bounds how stale a listing can look.
pub const STAT_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Arc<str>, (FileStat, Instant, u64)>,
    /// Insertion order (path, generation); stale generations are skipped on eviction.
    order: VecDeque<(Arc<str>, u64)>,
    generation: u64,
}

#[derive(Debug)]
pub struct StatCache {
    enabled: bool,
    max: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl StatCache {
    pub fn new(enabled: bool, max: usize, ttl: Duration) -> Self {
        Self {
            enabled: enabled && max > 0,
            max,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache stores anything (enabled with a non-zero size).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn get(&self, path: &str) -> Option<FileStat> {
        if !self.enabled {
            return None;
        }
        let mut g = self.lock();
        match g.map.get(path) {
            Some((st, at, _)) if at.elapsed() < self.ttl => Some(st.clone()),
            Some(_) => {
                g.map.remove(path);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, path: &str, stat: &FileStat) {
        if !self.enabled {
            return;
        }
        let mut g = self.lock();
        g.generation += 1;
        let generation = g.generation;
        let key: Arc<str> = Arc::from(path);
        g.map
            .insert(key.clone(), (stat.clone(), Instant::now(), generation));
        g.order.push_back((key, generation));
        while g.map.len() > self.max {
            let Some((old, old_gen)) = g.order.pop_front() else {
                break;
            };
            if g.map.get(&old).is_some_and(|e| e.2 == old_gen) {
                g.map.remove(&old);
            }
        }
        // Re-inserted paths leave stale order entries behind; compact when they pile up.
        if g.order.len() > 2 * self.max.max(16) {
            let Inner { map, order, .. } = &mut *g;
            order.retain(|(p, gen_)| map.get(p).is_some_and(|e| e.2 == *gen_));
        }
    }

    /// Forgets `path` (its file changed): the next lookup asks the source.
    pub fn remove(&self, path: &str) {
        if self.enabled {
            self.lock().map.remove(path);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(size: u64) -> FileStat {
        FileStat {
            size,
            ..FileStat::default()
        }
    }

    #[test]
    fn a_disabled_cache_stores_nothing() {
        let c = StatCache::new(false, 10, STAT_CACHE_TTL);
        c.put("a", &st(1));
        assert_eq!(c.get("a"), None);
        assert!(c.is_empty());
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let c = StatCache::new(true, 2, STAT_CACHE_TTL);
        c.put("a", &st(1));
        c.put("b", &st(2));
        c.put("a", &st(3));
        c.put("c", &st(4));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b"), None, "b is the oldest live entry");
        assert_eq!(c.get("a").map(|s| s.size), Some(3));
        assert_eq!(c.get("c").map(|s| s.size), Some(4));
        for i in 0..1000 {
            c.put(&format!("p{i}"), &st(i));
        }
        assert_eq!(c.len(), 2);
        assert!(c.lock().order.len() <= 2 * 16 + 1);
    }

    #[test]
    fn a_removed_path_is_asked_again() {
        let c = StatCache::new(true, 10, STAT_CACHE_TTL);
        c.put("a", &st(1));
        c.put("b", &st(2));
        c.remove("a");
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b").map(|s| s.size), Some(2));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = StatCache::new(true, 10, Duration::ZERO);
        c.put("a", &st(1));
        assert_eq!(c.get("a"), None);
    }
}
