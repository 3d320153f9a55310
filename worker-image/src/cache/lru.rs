//! A weighted LRU index: entries carry a weight (bytes), the least recently used entry is popped
//! first. O(log n) per operation. It only orders entries; the tiers decide when to evict.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub struct Lru<K, V> {
    map: HashMap<K, Slot<V>>,
    order: BTreeMap<u64, K>,
    tick: u64,
    weight: u64,
}

struct Slot<V> {
    value: V,
    tick: u64,
    weight: u64,
}

impl<K: Hash + Eq + Clone, V> Default for Lru<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn new() -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            weight: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Looks up and marks as most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let tick = self.next_tick();
        let slot = self.map.get_mut(key)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, key.clone());
        Some(&slot.value)
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    /// Looks up without changing the order.
    /// Looks `key` up without touching the order; takes a borrowed form of the key (e.g. a
    /// `&str` for `Arc<str>` keys) so a lookup allocates nothing.
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|s| &s.value)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Inserts as most recently used; returns the replaced value.
    pub fn insert(&mut self, key: K, value: V, weight: u64) -> Option<V> {
        let old = self.remove(&key);
        let tick = self.next_tick();
        self.order.insert(tick, key.clone());
        self.weight += weight;
        self.map.insert(
            key,
            Slot {
                value,
                tick,
                weight,
            },
        );
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.map.remove(key)?;
        self.order.remove(&slot.tick);
        self.weight -= slot.weight;
        Some(slot.value)
    }

    /// Removes every entry for which `pred` is true and returns them. O(n): for rare events
    /// (a file changed), not for the request path.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&K, &V) -> bool) -> Vec<(K, V)> {
        let keys: Vec<K> = self
            .map
            .iter()
            .filter(|(k, s)| pred(k, &s.value))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.remove(&k).map(|v| (k, v)))
            .collect()
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V, u64)> {
        let (_, key) = self.order.pop_first()?;
        let slot = self.map.remove(&key)?;
        self.weight -= slot.weight;
        Some((key, slot.value, slot.weight))
    }

    /// Sum of the weights.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_least_recently_used_first_and_get_refreshes() {
        let mut lru = Lru::new();
        lru.insert("a", 1, 10);
        lru.insert("b", 2, 10);
        lru.insert("c", 3, 10);
        assert_eq!(lru.get(&"a"), Some(&1));
        assert_eq!(lru.pop_lru().map(|e| e.0), Some("b"));
        assert_eq!(lru.pop_lru().map(|e| e.0), Some("c"));
        assert_eq!(lru.pop_lru().map(|e| e.0), Some("a"));
        assert!(lru.pop_lru().is_none());
    }

    #[test]
    fn weight_tracks_inserts_replacements_and_removals() {
        let mut lru = Lru::new();
        lru.insert(1, "x", 100);
        lru.insert(2, "y", 50);
        assert_eq!(lru.weight(), 150);
        assert_eq!(lru.insert(1, "z", 30), Some("x"));
        assert_eq!(lru.weight(), 80);
        assert_eq!(lru.remove(&2), Some("y"));
        assert_eq!(lru.weight(), 30);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.peek(&1), Some(&"z"));
    }

    #[test]
    fn remove_where_removes_matching_entries_and_their_weight() {
        let mut lru = Lru::new();
        for i in 0..6u64 {
            lru.insert(i, i * 10, 5);
        }
        let mut gone = lru.remove_where(|k, _| k % 2 == 0);
        gone.sort();
        assert_eq!(gone, vec![(0, 0), (2, 20), (4, 40)]);
        assert_eq!((lru.len(), lru.weight()), (3, 15));
        assert_eq!(lru.pop_lru().map(|e| e.0), Some(1));
    }
}
