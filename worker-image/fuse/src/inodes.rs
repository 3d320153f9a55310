//! Inode numbers for under-storage paths. A path's number is a hash of the path, so it is the
//! same for every lookup and across restarts of the client (tools that compare `st_ino` keep
//! working); collisions probe to the next free number. Entries live while the kernel holds a
//! lookup reference (`forget` drops them). This module knows nothing about files' contents.

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
struct Node {
    path: Arc<str>,
    lookups: u64,
}

#[derive(Debug, Default)]
struct Table {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<Arc<str>, u64>,
}

#[derive(Debug)]
pub struct InodeTable {
    inner: Mutex<Table>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms (std's hasher is not).
fn path_hash(path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Candidate numbers for a path: the hash, then the next ones; never 0 (invalid) or 1 (root).
fn candidates(path: &str) -> impl Iterator<Item = u64> {
    let start = path_hash(path);
    (0u64..)
        .map(move |i| start.wrapping_add(i))
        .filter(|n| *n > ROOT_INO)
}

impl InodeTable {
    pub fn new() -> Self {
        let root: Arc<str> = Arc::from("");
        let mut t = Table::default();
        t.by_ino.insert(
            ROOT_INO,
            Node {
                path: root.clone(),
                lookups: 1,
            },
        );
        t.by_path.insert(root, ROOT_INO);
        Self {
            inner: Mutex::new(t),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the maps inconsistent (each update is a
        // pair of inserts/removes), so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self, ino: u64) -> Option<Arc<str>> {
        self.lock().by_ino.get(&ino).map(|n| n.path.clone())
    }

    /// The number a lookup of `path` answers; takes one kernel reference.
    pub fn lookup(&self, path: &str) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_path.get(path) {
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = candidates(path)
            .find(|c| !t.by_ino.contains_key(c))
            .unwrap_or(u64::MAX);
        let path: Arc<str> = Arc::from(path);
        t.by_ino.insert(
            ino,
            Node {
                path: path.clone(),
                lookups: 1,
            },
        );
        t.by_path.insert(path, ino);
        ino
    }

    /// Takes over a previous client's numbers (FUSE takeover): each `(ino, path, lookups)`
    /// keeps its number and the kernel's references to it.
    pub fn restore<'a>(&self, entries: impl IntoIterator<Item = (u64, &'a str, u64)>) {
        let mut t = self.lock();
        for (ino, path, lookups) in entries {
            if ino <= ROOT_INO || lookups == 0 {
                continue;
            }
            let path: Arc<str> = Arc::from(path);
            if let Some(old) = t.by_ino.insert(
                ino,
                Node {
                    path: path.clone(),
                    lookups,
                },
            ) {
                t.by_path.remove(&old.path);
            }
            t.by_path.insert(path, ino);
        }
    }

    /// The number `readdir` reports for `path` without taking a reference.
    pub fn peek(&self, path: &str) -> u64 {
        let t = self.lock();
        if let Some(&ino) = t.by_path.get(path) {
            return ino;
        }
        candidates(path)
            .find(|c| !t.by_ino.contains_key(c))
            .unwrap_or(u64::MAX)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let gone = match t.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone && let Some(node) = t.by_ino.remove(&ino) {
            t.by_path.remove(&node.path);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        false // the root is always there
    }
}

/// `parent/name` in source form (no leading `/`, root is `""`).
pub fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_path_gets_the_same_number_across_tables_and_forgets() {
        let a = InodeTable::new();
        let b = InodeTable::new();
        let n = a.lookup("dir/file");
        assert_eq!(n, b.lookup("dir/file"));
        assert_eq!(a.peek("dir/file"), n);
        a.forget(n, 1);
        assert_eq!(a.path(n), None);
        assert_eq!(a.lookup("dir/file"), n);
        assert_eq!(a.path(n).as_deref(), Some("dir/file"));
    }

    #[test]
    fn references_are_counted_and_the_root_is_never_forgotten() {
        let t = InodeTable::new();
        let n = t.lookup("x");
        t.lookup("x");
        t.forget(n, 1);
        assert!(t.path(n).is_some());
        t.forget(n, 1);
        assert!(t.path(n).is_none());
        t.forget(ROOT_INO, 100);
        assert_eq!(t.path(ROOT_INO).as_deref(), Some(""));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_collision_probes_to_a_free_number() {
        let t = InodeTable::new();
        let n = t.lookup("a");
        // Occupy the hash slot of "b" with a fake entry to force a collision.
        {
            let mut g = t.lock();
            let hb = candidates("b").next().unwrap();
            let node = g.by_ino.remove(&n).unwrap();
            g.by_path.insert(node.path.clone(), hb);
            g.by_ino.insert(hb, node);
        }
        let nb = t.lookup("b");
        assert_ne!(nb, t.peek("a"));
        assert_eq!(t.path(nb).as_deref(), Some("b"));
    }

    #[test]
    fn restored_numbers_and_references_are_kept() {
        let t = InodeTable::new();
        t.restore([(77, "moved/by/collision", 2), (1, "not-root", 5)]);
        assert_eq!(t.path(77).as_deref(), Some("moved/by/collision"));
        assert_eq!(t.lookup("moved/by/collision"), 77);
        assert_eq!(t.path(ROOT_INO).as_deref(), Some(""));
        t.forget(77, 2);
        assert!(t.path(77).is_some(), "one reference left");
        t.forget(77, 1);
        assert!(t.path(77).is_none());
    }

    #[test]
    fn child_paths_have_no_leading_slash() {
        assert_eq!(child_path("", "a"), "a");
        assert_eq!(child_path("a", "b"), "a/b");
    }
}
