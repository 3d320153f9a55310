//! The page store: pages of under-storage files in two tiers, MEM (pages live in the registered
//! buffer pool, so a hit is served without a copy) and SSD (`disk`), each with a quota and LRU
//! eviction. A miss fills from the UFS once however many readers wait for it (single flight),
//! lands in MEM and is written through to SSD in the background; an SSD hit is promoted to MEM.
//!
//! It owns which bytes are cached and where; it does not know about requests, transports or
//! placement (the server and the client do).

pub mod disk;
pub mod lru;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::OnceCell;

use crate::ufs::{UfsError, UnderStorage};
use disk::{DiskTier, PageFileError, ScanReport};
use lru::Lru;

/// A page: `index` counts pages of `page_size` bytes from the start of the file at `path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub path: Arc<str>,
    pub index: u64,
}

impl PageKey {
    pub fn new(path: &str, index: u64) -> Self {
        PageKey {
            path: Arc::from(path),
            index,
        }
    }
}

/// A writable page buffer; `freeze` turns it into the immutable page.
pub trait PageBufMut: Send + 'static {
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn freeze(self: Box<Self>, len: usize) -> Bytes;
}

/// Where page buffers come from: the registered buffer pool in the worker, the heap in tests.
pub trait PageAllocator: Send + Sync + 'static {
    /// A buffer of at least `size` bytes, or `None` when exhausted (the store then uses the heap).
    fn alloc(&self, size: usize) -> Option<Box<dyn PageBufMut>>;
}

struct HeapBuf(Vec<u8>);

impl PageBufMut for HeapBuf {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn freeze(self: Box<Self>, len: usize) -> Bytes {
        let mut v = self.0;
        v.truncate(len);
        Bytes::from(v)
    }
}

/// Plain heap allocation.
pub struct HeapAllocator;

impl PageAllocator for HeapAllocator {
    fn alloc(&self, size: usize) -> Option<Box<dyn PageBufMut>> {
        Some(Box::new(HeapBuf(vec![0u8; size])))
    }
}

/// Counters the metrics endpoint and the tests read.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits_mem: AtomicU64,
    pub hits_ssd: AtomicU64,
    pub misses: AtomicU64,
    pub evictions_mem: AtomicU64,
    pub evictions_ssd: AtomicU64,
    pub torn_dropped: AtomicU64,
    pub ssd_writes: AtomicU64,
    pub ssd_write_errors: AtomicU64,
    pub ssd_writes_skipped: AtomicU64,
    pub pool_fallbacks: AtomicU64,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum CacheError {
    #[error(transparent)]
    Ufs(#[from] UfsError),
    #[error("cache internal error: {0}")]
    Internal(String),
}

/// Page store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub page_size: u64,
    pub mem_quota: u64,
    pub ssd: Option<crate::config::SsdTier>,
}

type Flight = Arc<OnceCell<Result<Bytes, CacheError>>>;

/// Gauges of the tiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierUse {
    pub mem_pages: u64,
    pub mem_bytes: u64,
    pub mem_quota: u64,
    pub ssd_pages: u64,
    pub ssd_bytes: u64,
    pub ssd_quota: u64,
    pub ssd_pending_writes: u64,
}

pub struct PageStore {
    page_size: u64,
    mem_quota: u64,
    mem: Mutex<Lru<PageKey, Bytes>>,
    disk: Option<Arc<DiskTier>>,
    ufs: Arc<dyn UnderStorage>,
    alloc: Arc<dyn PageAllocator>,
    inflight: Mutex<HashMap<PageKey, Flight>>,
    writes: Option<tokio::sync::mpsc::Sender<(PageKey, Bytes)>>,
    pending_writes: Arc<AtomicU64>,
    pub counters: Arc<CacheCounters>,
}

/// How many pages may wait for the SSD writer before new ones are skipped (not cached on disk).
const WRITE_QUEUE: usize = 1024;

impl PageStore {
    /// Opens the store; scans the SSD tier (warm restart). Call inside a tokio runtime.
    pub async fn open(
        cfg: StoreConfig,
        ufs: Arc<dyn UnderStorage>,
        alloc: Arc<dyn PageAllocator>,
    ) -> std::io::Result<(Arc<PageStore>, Option<ScanReport>)> {
        let counters = Arc::new(CacheCounters::default());
        let pending_writes = Arc::new(AtomicU64::new(0));
        let (disk, report) = match &cfg.ssd {
            None => (None, None),
            Some(t) => {
                let t = t.clone();
                let (tier, report) =
                    tokio::task::spawn_blocking(move || DiskTier::open(&t.dir, t.quota))
                        .await
                        .map_err(std::io::Error::other)??;
                counters
                    .torn_dropped
                    .fetch_add(report.dropped, Ordering::Relaxed);
                (Some(Arc::new(tier)), Some(report))
            }
        };
        let writes = disk.as_ref().map(|tier| {
            let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
            tokio::spawn(ssd_writer(
                tier.clone(),
                rx,
                counters.clone(),
                pending_writes.clone(),
            ));
            tx
        });
        Ok((
            Arc::new(PageStore {
                page_size: cfg.page_size,
                mem_quota: cfg.mem_quota,
                mem: Mutex::new(Lru::new()),
                disk,
                ufs,
                alloc,
                inflight: Mutex::new(HashMap::new()),
                writes,
                pending_writes,
                counters,
            }),
            report,
        ))
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    pub fn ufs(&self) -> &Arc<dyn UnderStorage> {
        &self.ufs
    }

    fn mem_lock(&self) -> std::sync::MutexGuard<'_, Lru<PageKey, Bytes>> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `len` bytes of `path` (normalised) at `offset`; short at EOF.
    pub async fn read(&self, path: &str, offset: u64, len: u32) -> Result<Bytes, CacheError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let ps = self.page_size;
        let end = offset.saturating_add(u64::from(len));
        let first = offset / ps;
        let last = (end - 1) / ps;
        if first == last {
            let page = self.page(path, first).await?;
            let start = (offset - first * ps) as usize;
            if start >= page.len() {
                return Ok(Bytes::new());
            }
            let stop = ((end - first * ps) as usize).min(page.len());
            return Ok(page.slice(start..stop));
        }
        let pages =
            futures::future::try_join_all((first..=last).map(|i| self.page(path, i))).await?;
        let mut out = BytesMut::with_capacity(len as usize);
        for (i, page) in (first..=last).zip(pages) {
            let base = i * ps;
            let start = offset.saturating_sub(base) as usize;
            let stop = ((end - base) as usize).min(page.len());
            if start < stop {
                out.extend_from_slice(&page[start..stop]);
            }
            if (page.len() as u64) < ps {
                break; // EOF
            }
        }
        Ok(out.freeze())
    }

    /// One page (shorter than the page size at EOF, empty past it).
    pub async fn page(&self, path: &str, index: u64) -> Result<Bytes, CacheError> {
        let key = PageKey::new(path, index);
        if let Some(b) = self.mem_lock().get(&key) {
            self.counters.hits_mem.fetch_add(1, Ordering::Relaxed);
            return Ok(b.clone());
        }
        let flight: Flight = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let res = flight.get_or_init(|| self.fill(key.clone())).await.clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&key);
            }
        }
        res
    }

    async fn fill(&self, key: PageKey) -> Result<Bytes, CacheError> {
        if let Some(b) = self.mem_lock().get(&key) {
            self.counters.hits_mem.fetch_add(1, Ordering::Relaxed);
            return Ok(b.clone());
        }
        let ps = self.page_size as usize;
        if let Some(disk) = &self.disk
            && disk.touch(&key)
        {
            let mut buf = self.buffer(ps);
            let tier = disk.clone();
            let k = key.clone();
            let (buf, res) = tokio::task::spawn_blocking(move || {
                let r = tier.read_into(&k, buf.as_mut_slice());
                (buf, r)
            })
            .await
            .map_err(|e| CacheError::Internal(e.to_string()))?;
            match res {
                Ok(n) => {
                    self.counters.hits_ssd.fetch_add(1, Ordering::Relaxed);
                    let page = buf.freeze(n);
                    self.insert_mem(key, page.clone());
                    return Ok(page);
                }
                Err(PageFileError::Torn(_)) => {
                    self.counters.torn_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(PageFileError::Missing) => {}
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let mut buf = self.buffer(ps);
        let ufs = self.ufs.clone();
        let path = key.path.clone();
        let offset = key.index * self.page_size;
        let (buf, res) = tokio::task::spawn_blocking(move || {
            let r = ufs.read_at_blocking(&path, offset, buf.as_mut_slice());
            (buf, r)
        })
        .await
        .map_err(|e| CacheError::Internal(e.to_string()))?;
        let n = res?;
        let page = buf.freeze(n);
        if n > 0 {
            self.insert_mem(key.clone(), page.clone());
            self.write_through(key, page.clone());
        }
        Ok(page)
    }

    fn buffer(&self, size: usize) -> Box<dyn PageBufMut> {
        match self.alloc.alloc(size) {
            Some(b) => b,
            None => {
                self.counters.pool_fallbacks.fetch_add(1, Ordering::Relaxed);
                Box::new(HeapBuf(vec![0u8; size]))
            }
        }
    }

    fn insert_mem(&self, key: PageKey, page: Bytes) {
        if self.mem_quota < self.page_size {
            return;
        }
        let mut mem = self.mem_lock();
        mem.insert(key, page, self.page_size);
        while mem.weight() > self.mem_quota {
            if mem.pop_lru().is_none() {
                break;
            }
            self.counters.evictions_mem.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_through(&self, key: PageKey, page: Bytes) {
        let Some(tx) = &self.writes else { return };
        self.pending_writes.fetch_add(1, Ordering::SeqCst);
        if tx.try_send((key, page)).is_err() {
            self.pending_writes.fetch_sub(1, Ordering::SeqCst);
            self.counters
                .ssd_writes_skipped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every queued SSD write is on disk (tests, graceful shutdown).
    pub async fn flush(&self) {
        while self.pending_writes.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn tier_use(&self) -> TierUse {
        let (mem_pages, mem_bytes) = {
            let m = self.mem_lock();
            (m.len() as u64, m.weight())
        };
        let (ssd_pages, ssd_bytes, ssd_quota) = match &self.disk {
            Some(d) => (d.pages(), d.used_bytes(), d.quota()),
            None => (0, 0, 0),
        };
        TierUse {
            mem_pages,
            mem_bytes,
            mem_quota: self.mem_quota,
            ssd_pages,
            ssd_bytes,
            ssd_quota,
            ssd_pending_writes: self.pending_writes.load(Ordering::SeqCst),
        }
    }
}

async fn ssd_writer(
    tier: Arc<DiskTier>,
    mut rx: tokio::sync::mpsc::Receiver<(PageKey, Bytes)>,
    counters: Arc<CacheCounters>,
    pending: Arc<AtomicU64>,
) {
    while let Some((key, page)) = rx.recv().await {
        let t = tier.clone();
        let k = key.clone();
        let res = tokio::task::spawn_blocking(move || {
            if t.contains(&k) {
                return Ok(0);
            }
            t.write(&k, &page)
        })
        .await;
        match res {
            Ok(Ok(evicted)) => {
                counters.ssd_writes.fetch_add(1, Ordering::Relaxed);
                counters.evictions_ssd.fetch_add(evicted, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters.ssd_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %key.path, page = key.index, error = %e, "cannot write page to the SSD tier");
            }
            Err(e) => {
                counters.ssd_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "SSD writer task failed");
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ufs::LocalUfs;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn store(
        dir: &std::path::Path,
        mem_quota: u64,
        ssd_quota: Option<u64>,
    ) -> Arc<PageStore> {
        let ufs = LocalUfs::new(&dir.join("ufs")).expect("ufs");
        let cfg = StoreConfig {
            page_size: 4096,
            mem_quota,
            ssd: ssd_quota.map(|q| crate::config::SsdTier {
                dir: dir.join("ssd"),
                quota: q,
            }),
        };
        PageStore::open(cfg, ufs, Arc::new(HeapAllocator))
            .await
            .expect("open")
            .0
    }

    fn setup(n: usize) -> (tempfile::TempDir, Vec<u8>) {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("ufs")).expect("mkdir");
        let bytes = data(n);
        std::fs::write(d.path().join("ufs/f.bin"), &bytes).expect("write");
        (d, bytes)
    }

    fn ufs_reads(s: &PageStore) -> u64 {
        s.ufs().counters().reads.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn ranges_across_page_boundaries_match_the_file() {
        let (d, bytes) = setup(4096 * 5 + 123);
        let s = store(d.path(), 1 << 20, None).await;
        for (off, len) in [
            (0u64, 10u32),
            (4090, 20),
            (4096, 4096),
            (100, 4096 * 3),
            (20000, 1000),
            (4096 * 5 + 100, 100),
            (1 << 20, 10),
        ] {
            let got = s.read("f.bin", off, len).await.expect("read");
            let start = (off as usize).min(bytes.len());
            let stop = (off as usize + len as usize).min(bytes.len());
            assert_eq!(&got[..], &bytes[start..stop], "range {off}+{len}");
        }
    }

    #[tokio::test]
    async fn hot_read_does_not_touch_the_ufs() {
        let (d, _) = setup(4096 * 2);
        let s = store(d.path(), 1 << 20, None).await;
        s.read("f.bin", 0, 8192).await.expect("cold");
        let cold = ufs_reads(&s);
        assert_eq!(cold, 2);
        s.read("f.bin", 10, 8000).await.expect("hot");
        assert_eq!(ufs_reads(&s), cold);
        assert_eq!(s.counters.hits_mem.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn hundred_readers_of_a_cold_page_cause_one_ufs_read() {
        let (d, bytes) = setup(4096);
        let s = store(d.path(), 1 << 20, None).await;
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.read("f.bin", 0, 4096).await })
            })
            .collect();
        for t in tasks {
            let got = t.await.expect("join").expect("read");
            assert_eq!(&got[..], &bytes[..]);
        }
        assert_eq!(ufs_reads(&s), 1);
    }

    #[tokio::test]
    async fn mem_tier_evicts_lru_pages_under_its_quota() {
        let (d, _) = setup(4096 * 4);
        let s = store(d.path(), 4096 * 2, None).await;
        for i in 0..4 {
            s.read("f.bin", i * 4096, 1).await.expect("read");
        }
        assert_eq!(s.tier_use().mem_pages, 2);
        assert_eq!(s.counters.evictions_mem.load(Ordering::Relaxed), 2);
        let before = ufs_reads(&s);
        s.read("f.bin", 3 * 4096, 1).await.expect("hot");
        assert_eq!(ufs_reads(&s), before, "most recent page still cached");
        s.read("f.bin", 0, 1).await.expect("evicted");
        assert_eq!(ufs_reads(&s), before + 1, "oldest page was evicted");
    }

    #[tokio::test]
    async fn ssd_hit_is_promoted_to_mem_and_survives_reopen() {
        let (d, bytes) = setup(4096 * 3);
        {
            let s = store(d.path(), 1 << 20, Some(1 << 20)).await;
            s.read("f.bin", 0, 4096 * 3).await.expect("cold");
            s.flush().await;
            assert_eq!(s.tier_use().ssd_pages, 3);
        }
        let s = store(d.path(), 1 << 20, Some(1 << 20)).await;
        let got = s.read("f.bin", 100, 4096 * 2).await.expect("warm");
        assert_eq!(&got[..], &bytes[100..100 + 8192]);
        assert_eq!(ufs_reads(&s), 0, "served from disk after restart");
        assert_eq!(s.counters.hits_ssd.load(Ordering::Relaxed), 3);
        s.read("f.bin", 0, 4096).await.expect("promoted");
        assert_eq!(s.counters.hits_mem.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn torn_page_is_refetched_from_ufs_not_served() {
        let (d, bytes) = setup(4096);
        {
            let s = store(d.path(), 0, Some(1 << 20)).await;
            s.read("f.bin", 0, 4096).await.expect("cold");
            s.flush().await;
        }
        // Corrupt the data of the page file in place (same length: passes the scan).
        let tier = DiskTier::open(&d.path().join("ssd"), 1 << 20)
            .expect("open")
            .0;
        let file = tier.file_for(&PageKey::new("f.bin", 0));
        drop(tier);
        let mut raw = std::fs::read(&file).expect("read");
        let n = raw.len();
        raw[n - 1] ^= 0xff;
        std::fs::write(&file, raw).expect("write");
        let s = store(d.path(), 0, Some(1 << 20)).await;
        let got = s.read("f.bin", 0, 4096).await.expect("read");
        assert_eq!(&got[..], &bytes[..]);
        assert_eq!(ufs_reads(&s), 1);
        assert_eq!(s.counters.torn_dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn missing_file_is_not_found() {
        let (d, _) = setup(10);
        let s = store(d.path(), 1 << 20, None).await;
        assert!(matches!(
            s.read("nope", 0, 10).await,
            Err(CacheError::Ufs(UfsError::NotFound { .. }))
        ));
    }
}
