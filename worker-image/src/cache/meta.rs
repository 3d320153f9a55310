//! The metadata cache: the last stat of each under-storage path and when it was taken, so reads
//! do not stat the under-storage every time (`rcache.user.file.metadata.sync.interval`). It owns
//! how long a stat result is trusted and the file version derived from (size, mtime); it drops
//! no pages itself: `record` tells the store when a file's version changed.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rcache_transport::FileStat;

use super::lru::Lru;
use crate::config::SyncInterval;
use crate::hash::hash_parts;
use crate::ufs::UfsError;

/// Paths remembered at most; the least recently stat'ed are forgotten first (a forgotten path
/// is stat'ed again on its next read, and a change seen then drops old pages lazily).
pub const MAX_ENTRIES: usize = 100_000;

/// The version of an under-storage file: a hash of its size and mtime. Pages belong to one
/// version; a page of another version is never served.
pub fn version_of(stat: &FileStat) -> u64 {
    hash_parts(&[&stat.size.to_le_bytes(), &stat.mtime_ns.to_le_bytes()])
}

struct Entry {
    /// The last result: a stat, or a "not found"-like error.
    stat: Result<FileStat, UfsError>,
    at: Instant,
    /// The version of the file last seen at this path (kept across a "not found").
    last_version: Option<u64>,
}

/// Stat results by path, trusted for the sync interval.
pub struct MetaCache {
    interval: SyncInterval,
    entries: Mutex<Lru<Arc<str>, Entry>>,
}

/// Whether a stat error says something about the path (cached like a stat) rather than about
/// the under-storage (never cached).
fn is_negative(e: &UfsError) -> bool {
    matches!(
        e,
        UfsError::NotFound { .. } | UfsError::NotADirectory { .. }
    )
}

impl MetaCache {
    pub fn new(interval: SyncInterval) -> Self {
        MetaCache {
            interval,
            entries: Mutex::new(Lru::new()),
        }
    }

    pub fn interval(&self) -> SyncInterval {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<Arc<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached result for `path` when it is still within the sync interval.
    pub fn fresh(&self, path: &str) -> Option<Result<FileStat, UfsError>> {
        // `peek`: a lookup does not reorder; paths are forgotten in the order they were stat'ed.
        let entries = self.lock();
        let e = entries.peek(path)?;
        let trusted = match (self.interval, &e.stat) {
            (SyncInterval::Always, _) => false,
            (SyncInterval::Every(d), _) => e.at.elapsed() < d,
            (SyncInterval::Never, Ok(_)) => true,
            // A file may appear at any time: "not found" is never trusted forever.
            (SyncInterval::Never, Err(_)) => false,
        };
        trusted.then(|| e.stat.clone())
    }

    /// Records a stat result taken now. Returns the previous version of the file when this
    /// result shows another version (the file changed: its old pages are stale). Errors about
    /// the under-storage itself (I/O, refused) are not recorded.
    pub fn record(&self, path: &str, stat: &Result<FileStat, UfsError>) -> Option<u64> {
        if let Err(e) = stat
            && !is_negative(e)
        {
            return None;
        }
        let key: Arc<str> = Arc::from(path);
        let mut entries = self.lock();
        let previous = entries.peek(path).and_then(|e| e.last_version);
        let now = match stat {
            Ok(s) if !s.is_dir => Some(version_of(s)),
            _ => None,
        };
        entries.insert(
            key,
            Entry {
                stat: stat.clone(),
                at: Instant::now(),
                last_version: now.or(previous),
            },
            1,
        );
        while entries.len() > MAX_ENTRIES {
            if entries.pop_lru().is_none() {
                break;
            }
        }
        match (previous, now) {
            (Some(old), Some(new)) if old != new => Some(old),
            _ => None,
        }
    }

    /// Forgets `path`: its next read stats the under-storage again.
    pub fn forget(&self, path: &str) {
        self.lock().remove(path);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stat(size: u64, mtime_ns: i64) -> Result<FileStat, UfsError> {
        Ok(FileStat {
            size,
            is_dir: false,
            mode: 0o100644,
            mtime_ns,
        })
    }

    fn not_found() -> Result<FileStat, UfsError> {
        Err(UfsError::NotFound { path: "f".into() })
    }

    #[test]
    fn version_changes_with_size_or_mtime() {
        let v = |s: u64, m: i64| version_of(&stat(s, m).expect("ok"));
        assert_eq!(v(10, 5), v(10, 5));
        assert_ne!(v(10, 5), v(11, 5));
        assert_ne!(v(10, 5), v(10, 6));
    }

    #[test]
    fn interval_zero_trusts_nothing_and_never_trusts_a_file_forever() {
        let m = MetaCache::new(SyncInterval::Always);
        m.record("f", &stat(1, 1));
        assert!(m.fresh("f").is_none());
        let m = MetaCache::new(SyncInterval::Never);
        m.record("f", &stat(1, 1));
        assert_eq!(m.fresh("f"), Some(stat(1, 1)));
        assert!(m.fresh("g").is_none(), "never seen");
    }

    #[test]
    fn not_found_is_trusted_no_longer_than_the_interval_and_never_forever() {
        let m = MetaCache::new(SyncInterval::Never);
        m.record("f", &not_found());
        assert!(m.fresh("f").is_none(), "-1 still re-checks a missing file");
        let m = MetaCache::new(SyncInterval::Every(Duration::from_secs(3600)));
        m.record("f", &not_found());
        assert_eq!(m.fresh("f"), Some(not_found()));
        let m = MetaCache::new(SyncInterval::Every(Duration::from_millis(1)));
        m.record("f", &not_found());
        std::thread::sleep(Duration::from_millis(5));
        assert!(m.fresh("f").is_none(), "expired");
    }

    #[test]
    fn io_errors_are_not_cached() {
        let m = MetaCache::new(SyncInterval::Never);
        let io = Err(UfsError::Io {
            path: "f".into(),
            reason: "EIO".into(),
        });
        assert_eq!(m.record("f", &io), None);
        assert!(m.is_empty());
    }

    #[test]
    fn record_reports_the_old_version_when_the_file_changed() {
        let m = MetaCache::new(SyncInterval::Always);
        assert_eq!(m.record("f", &stat(10, 1)), None, "first sight");
        assert_eq!(m.record("f", &stat(10, 1)), None, "unchanged");
        let old = version_of(&stat(10, 1).expect("ok"));
        assert_eq!(m.record("f", &stat(12, 2)), Some(old));
        // Deleted and re-created with other content: still a change of the last version.
        let old = version_of(&stat(12, 2).expect("ok"));
        assert_eq!(m.record("f", &not_found()), None);
        assert_eq!(m.record("f", &stat(3, 3)), Some(old));
    }

    #[test]
    fn least_recently_statted_paths_are_forgotten_beyond_the_cap() {
        let m = MetaCache::new(SyncInterval::Never);
        for i in 0..MAX_ENTRIES + 10 {
            m.record(&format!("f{i}"), &stat(1, 1));
        }
        assert_eq!(m.len(), MAX_ENTRIES);
        assert!(m.fresh("f0").is_none());
        assert!(m.fresh(&format!("f{}", MAX_ENTRIES + 9)).is_some());
    }
}
