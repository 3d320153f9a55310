//! Warm-up and residency of a byte range (the wire protocol's `Load`): which pages of a range
//! the tiers hold, and filling the missing ones from the under-storage without sending them.
//! A warm-up fill is counted in `load_fills`, not as a miss, so the hit ratio tells what
//! readers saw.

use std::collections::HashSet;
use std::sync::Arc;

use rcache_transport::{FileVersion, LoadCounts};

use super::meta::version_of;
use super::{CacheError, PageKey, PageStore};
use crate::ufs::UfsError;

/// Most pages one `Load` may cover; a longer range is refused so one request stays short.
pub const MAX_LOAD_PAGES: u64 = 64;

impl PageStore {
    /// Whether a tier holds the page of `version` (no LRU touch, no hit counted).
    fn resident(&self, key: &PageKey, version: u64) -> bool {
        let in_mem = self
            .mem_lock()
            .peek(key)
            .is_some_and(|p| p.file_version == version);
        in_mem || self.disk.as_ref().is_some_and(|d| d.holds(key, version))
    }

    /// Counts the pages of `[offset, offset + len)` of `path` (normalised) the tiers hold and,
    /// with `fill`, fills the others from the UFS. With `expect`, the file must be at that
    /// version (checked against the UFS when the metadata says otherwise), else `Stale`.
    pub async fn load_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        fill: bool,
        expect: Option<FileVersion>,
    ) -> Result<LoadCounts, CacheError> {
        let mut stat = self.stat(path).await?;
        if let Some(v) = expect
            && (stat.is_dir || FileVersion::of(&stat) != v)
        {
            // A version check against the UFS itself: `Stale` when the file really changed.
            self.read_at_version(path, v, 0, 0).await?;
            stat = self.stat(path).await?;
        }
        if stat.is_dir {
            return Err(UfsError::IsADirectory { path: path.into() }.into());
        }
        let ps = self.page_size;
        let end = offset.saturating_add(len).min(stat.size);
        if offset >= end {
            return Ok(LoadCounts::default());
        }
        let (first, last) = (offset / ps, (end - 1) / ps);
        if last - first + 1 > MAX_LOAD_PAGES {
            return Err(CacheError::Internal(format!(
                "a load of {len} bytes covers {} pages, more than {MAX_LOAD_PAGES}; split it",
                last - first + 1
            )));
        }
        let version = version_of(&stat);
        let in_range = |i: u64| (end.min((i + 1) * ps)) - offset.max(i * ps);
        let mut counts = LoadCounts {
            pages: last - first + 1,
            ..LoadCounts::default()
        };
        let mut missing = Vec::new();
        for i in first..=last {
            if self.resident(&PageKey::new(path, i), version) {
                counts.resident += 1;
                counts.bytes += in_range(i);
                counts.resident_bytes += in_range(i);
            } else {
                missing.push(i);
            }
        }
        if fill && !missing.is_empty() {
            futures::future::try_join_all(
                missing
                    .iter()
                    .map(|&i| self.page_for(path, i, version, true)),
            )
            .await?;
            counts.filled = missing.len() as u64;
            counts.bytes += missing.iter().map(|&i| in_range(i)).sum::<u64>();
        }
        Ok(counts)
    }

    /// How many distinct files the tiers hold pages of.
    pub fn files_cached(&self) -> u64 {
        let mut paths: HashSet<Arc<str>> = self.mem_lock().keys().map(|k| k.path.clone()).collect();
        if let Some(d) = &self.disk {
            paths.extend(d.paths());
        }
        paths.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::cache::{HeapAllocator, StoreConfig};
    use crate::config::SyncInterval;
    use crate::ufs::LocalUfs;

    async fn store(root: &std::path::Path, mem_quota: u64) -> Arc<PageStore> {
        let ufs = LocalUfs::new(root).unwrap();
        PageStore::open(
            StoreConfig {
                page_size: 4096,
                mem_quota,
                ssd: None,
                metadata_sync: SyncInterval::Every(std::time::Duration::from_secs(60)),
            },
            ufs,
            Arc::new(HeapAllocator),
        )
        .await
        .unwrap()
        .0
    }

    #[tokio::test]
    async fn a_load_fills_missing_pages_without_counting_misses_and_a_second_finds_them_resident() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 10_000]).unwrap();
        let s = store(dir.path(), 1 << 20).await;
        let first = s.load_range("f", 0, 1 << 20, true, None).await.unwrap();
        assert_eq!(
            first,
            LoadCounts {
                pages: 3,
                resident: 0,
                filled: 3,
                bytes: 10_000,
                resident_bytes: 0
            }
        );
        assert_eq!(s.counters.misses.load(Ordering::Relaxed), 0);
        assert_eq!(s.counters.load_fills.load(Ordering::Relaxed), 3);
        let ufs_bytes = s.ufs().counters().bytes.load(Ordering::Relaxed);
        let again = s.load_range("f", 0, 1 << 20, true, None).await.unwrap();
        assert_eq!((again.resident, again.filled, again.bytes), (3, 0, 10_000));
        assert_eq!(s.ufs().counters().bytes.load(Ordering::Relaxed), ufs_bytes);
        s.read("f", 0, 10_000).await.unwrap();
        assert_eq!(s.counters.misses.load(Ordering::Relaxed), 0);
        assert_eq!(s.files_cached(), 1);
    }

    #[tokio::test]
    async fn a_check_without_fill_counts_only_and_evicted_pages_show_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 4096 * 4]).unwrap();
        // Room for two pages only.
        let s = store(dir.path(), 2 * 4096).await;
        let check = s.load_range("f", 0, 4096 * 4, false, None).await.unwrap();
        assert_eq!((check.pages, check.resident, check.filled), (4, 0, 0));
        s.load_range("f", 0, 4096 * 4, true, None).await.unwrap();
        let after = s.load_range("f", 0, 4096 * 4, false, None).await.unwrap();
        assert_eq!((after.resident, after.bytes), (2, 2 * 4096));
    }

    #[tokio::test]
    async fn a_range_past_eof_loads_nothing_and_a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        let s = store(dir.path(), 1 << 20).await;
        let c = s.load_range("f", 4096, 4096, true, None).await.unwrap();
        assert_eq!(c, LoadCounts::default());
        let e = s.load_range("nope", 0, 1, true, None).await.unwrap_err();
        assert!(
            matches!(e, CacheError::Ufs(UfsError::NotFound { .. })),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_load_pinned_to_an_old_version_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        let s = store(dir.path(), 1 << 20).await;
        let old = FileVersion {
            size: 2,
            mtime_ns: 1,
        };
        let e = s.load_range("f", 0, 3, true, Some(old)).await.unwrap_err();
        assert!(matches!(e, CacheError::Stale { .. }), "{e}");
    }
}
