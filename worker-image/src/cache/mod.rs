//! The page store: pages of under-storage files in two tiers, MEM (pages live in the registered
//! buffer pool, so a hit is served without a copy) and SSD (`disk`), each with a quota and LRU
//! eviction. A miss fills from the UFS once however many readers wait for it (single flight),
//! lands in MEM and is written through to SSD in the background; an SSD hit is promoted to MEM.
//! Both tiers count the bytes a page holds: a file's last page moves into a buffer of about its
//! size (a piece of a pool chunk, still registered memory), and on disk a page file is its
//! header and its data, so a 64 KiB file costs 64 KiB of quota, not a page.
//!
//! Pages belong to one version (size, mtime) of their file (`meta`): a read asks the metadata
//! cache for the current version (statting the UFS when the sync interval has passed) and is
//! served only pages of that version. A fill checks the version of the file it actually read
//! and, if the file changed meanwhile, restarts the read with the new version, so one read never
//! mixes two versions. Pages of an old version are dropped when the new one is first seen
//! (lazily, when a slot is looked up, for pages found on disk after a restart).
//!
//! It owns which bytes are cached and where; it does not know about requests, transports or
//! placement (the server and the client do).

pub mod disk;
pub mod lru;
pub mod meta;
pub mod warm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::OnceCell;

use crate::config::SyncInterval;
use crate::ufs::{UfsError, UnderStorage};
use disk::{DiskTier, Lookup, PageFileError, ScanReport};
use lru::Lru;
use meta::{MetaCache, version_of};
use rcache_transport::{DirEntry, FileStat, FileVersion};

/// A page slot: `index` counts pages of `page_size` bytes from the start of the file at `path`.
/// A slot holds the page of one version of the file at a time.
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
    /// The bytes the buffer holds (what a page in it is charged).
    fn capacity(&self) -> usize;
    fn freeze(self: Box<Self>, len: usize) -> Bytes;
}

/// Where page buffers come from: the registered buffer pool in the worker, the heap in tests.
pub trait PageAllocator: Send + Sync + 'static {
    /// A buffer of at least `size` bytes, or `None` when exhausted (the store then uses the heap).
    /// A small `size` (a file's last page) gets a small buffer, so it holds about what it stores.
    fn alloc(&self, size: usize) -> Option<Box<dyn PageBufMut>>;
}

struct HeapBuf(Vec<u8>);

impl PageBufMut for HeapBuf {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn capacity(&self) -> usize {
        self.0.len()
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
    /// Pages dropped because the under-storage file changed (or, on disk, had no version).
    pub stale_dropped: AtomicU64,
    pub ssd_writes: AtomicU64,
    pub ssd_write_errors: AtomicU64,
    pub ssd_writes_skipped: AtomicU64,
    pub pool_fallbacks: AtomicU64,
    /// Pages filled from the UFS by warm-up (`Load`), not by a reader: not counted as misses.
    pub load_fills: AtomicU64,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum CacheError {
    #[error(transparent)]
    Ufs(#[from] UfsError),
    #[error("cache internal error: {0}")]
    Internal(String),
    /// The file changed while being read, every time it was tried.
    #[error("{path}: the under-storage file kept changing while being read; retry later")]
    Changed { path: String },
    /// A read pinned to a version found the file at another one (or gone).
    #[error("{}", stale_message(path, expected, found))]
    Stale {
        path: String,
        expected: FileVersion,
        /// The file's version now; `None` when it no longer exists (or is a directory).
        found: Option<FileVersion>,
    },
}

fn stale_message(path: &str, expected: &FileVersion, found: &Option<FileVersion>) -> String {
    match found {
        Some(f) => format!(
            "{path} changed since it was opened: size {} -> {}, mtime_ns {} -> {}; reopen it",
            expected.size, f.size, expected.mtime_ns, f.mtime_ns
        ),
        None => format!(
            "{path} is gone since it was opened (size {}, mtime_ns {}); reopen it",
            expected.size, expected.mtime_ns
        ),
    }
}

/// Page store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub page_size: u64,
    pub mem_quota: u64,
    pub ssd: Option<crate::config::SsdTier>,
    /// `rcache.user.file.metadata.sync.interval`.
    pub metadata_sync: SyncInterval,
}

type Flight = Arc<OnceCell<Result<Bytes, CacheError>>>;

/// A page in the MEM tier and the file version it belongs to.
#[derive(Clone)]
struct MemPage {
    file_version: u64,
    data: Bytes,
}

/// A filled page and the bytes its buffer holds (its charge against the MEM quota).
struct Sealed {
    data: Bytes,
    held: u64,
}

/// How often a read restarts because the file changed under it before it gives up.
const READ_ATTEMPTS: usize = 3;

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
    mem: Mutex<Lru<PageKey, MemPage>>,
    disk: Option<Arc<DiskTier>>,
    ufs: Arc<dyn UnderStorage>,
    meta: MetaCache,
    alloc: Arc<dyn PageAllocator>,
    inflight: Mutex<HashMap<(PageKey, u64), Flight>>,
    writes: Option<tokio::sync::mpsc::Sender<(PageKey, u64, Bytes)>>,
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
                counters
                    .stale_dropped
                    .fetch_add(report.stale, Ordering::Relaxed);
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
                meta: MetaCache::new(cfg.metadata_sync),
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

    fn mem_lock(&self) -> std::sync::MutexGuard<'_, Lru<PageKey, MemPage>> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stat of `path` (normalised) from the metadata cache, asking the UFS when the sync
    /// interval has passed. Seeing a new version of a file drops the pages of the old one.
    pub async fn stat(&self, path: &str) -> Result<FileStat, UfsError> {
        if let Some(res) = self.meta.fresh(path) {
            return res;
        }
        let res = self.ufs.stat(path).await;
        self.observe(path, &res).await;
        res
    }

    /// Lists a directory from the UFS; what it says about each file updates the metadata cache,
    /// so a listing and the reads that follow agree on the files' versions.
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, UfsError> {
        let res = self.ufs.list(path).await;
        if let Ok(entries) = &res {
            for e in entries.iter().filter(|e| !e.stat.is_dir) {
                let child = if path.is_empty() {
                    e.name.clone()
                } else {
                    format!("{path}/{}", e.name)
                };
                self.observe(&child, &Ok(e.stat.clone())).await;
            }
        }
        res
    }

    /// Records a stat result; when it shows a new version of the file, drops the old pages.
    async fn observe(&self, path: &str, res: &Result<FileStat, UfsError>) {
        let Some(_old) = self.meta.record(path, res) else {
            return;
        };
        let Ok(stat) = res else { return };
        let keep = version_of(stat);
        let mem = self
            .mem_lock()
            .remove_where(|k, p| &*k.path == path && p.file_version != keep)
            .len() as u64;
        let mut dropped = mem;
        if let Some(disk) = &self.disk {
            let tier = disk.clone();
            let p = path.to_string();
            dropped += tokio::task::spawn_blocking(move || tier.drop_versions_except(&p, keep))
                .await
                .unwrap_or(0);
        }
        self.counters
            .stale_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        tracing::info!(path, stale_pages = dropped, "under-storage file changed");
    }

    /// Reads `len` bytes of `path` (normalised) at `offset`; short at EOF. All bytes come from
    /// one version of the file: the one the metadata cache names, or a newer one if a fill finds
    /// that the file changed.
    pub async fn read(&self, path: &str, offset: u64, len: u32) -> Result<Bytes, CacheError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        for _ in 0..READ_ATTEMPTS {
            let stat = self.stat(path).await?;
            if stat.is_dir {
                return Err(UfsError::IsADirectory { path: path.into() }.into());
            }
            // Nothing past the end of this version: no fill (and no miss) for it.
            let Some(len) = clamp_to(stat.size, offset, len) else {
                return Ok(Bytes::new());
            };
            match self
                .read_version(path, version_of(&stat), offset, len)
                .await
            {
                Err(CacheError::Changed { .. }) => continue,
                other => return other,
            }
        }
        Err(CacheError::Changed { path: path.into() })
    }

    /// Reads like [`read`](Self::read), but only from version `expect` of the file (the one the
    /// caller opened). When the metadata cache knows another version, or a fill finds the file
    /// changed, the UFS is stat'ed again at once (whatever the sync interval): if the file really
    /// is at another version the answer is `Stale`, never bytes of that version. With `len` 0 it
    /// checks the version against the UFS (and learns the new one) without reading.
    pub async fn read_at_version(
        &self,
        path: &str,
        expect: FileVersion,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, CacheError> {
        let want = version_of(&FileStat {
            size: expect.size,
            mtime_ns: expect.mtime_ns,
            ..FileStat::default()
        });
        // A read of nothing is a version check: always against the UFS itself.
        let probe = len == 0;
        let mut stat = if probe {
            let s = self.ufs.stat(path).await;
            self.observe(path, &s).await;
            s
        } else {
            self.stat(path).await
        };
        let mut restatted = probe;
        for _ in 0..READ_ATTEMPTS {
            match &stat {
                Ok(s) if !s.is_dir && FileVersion::of(s) == expect => {
                    let Some(len) = clamp_to(expect.size, offset, len) else {
                        return Ok(Bytes::new());
                    };
                    match self.read_version(path, want, offset, len).await {
                        // The fill saw another version, or no file: learn what is there now.
                        Err(CacheError::Changed { .. })
                        | Err(CacheError::Ufs(UfsError::NotFound { .. })) => {}
                        other => return other,
                    }
                }
                Ok(s) if restatted => {
                    return Err(CacheError::Stale {
                        path: path.into(),
                        expected: expect,
                        found: (!s.is_dir).then(|| FileVersion::of(s)),
                    });
                }
                Err(UfsError::NotFound { .. } | UfsError::NotADirectory { .. }) if restatted => {
                    return Err(CacheError::Stale {
                        path: path.into(),
                        expected: expect,
                        found: None,
                    });
                }
                Err(e) if restatted => return Err(e.clone().into()),
                // What this worker knows differs from what the caller saw: ask the UFS now.
                _ => {}
            }
            stat = self.ufs.stat(path).await;
            self.observe(path, &stat).await;
            restatted = true;
        }
        Err(CacheError::Changed { path: path.into() })
    }

    async fn read_version(
        &self,
        path: &str,
        version: u64,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, CacheError> {
        let ps = self.page_size;
        let end = offset.saturating_add(u64::from(len));
        let first = offset / ps;
        let last = (end - 1) / ps;
        if first == last {
            let page = self.page(path, first, version).await?;
            let start = (offset - first * ps) as usize;
            if start >= page.len() {
                return Ok(Bytes::new());
            }
            let stop = ((end - first * ps) as usize).min(page.len());
            return Ok(page.slice(start..stop));
        }
        let pages =
            futures::future::try_join_all((first..=last).map(|i| self.page(path, i, version)))
                .await?;
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

    /// The MEM page of the slot when it holds `version`; a page of another version is dropped.
    fn mem_get(&self, key: &PageKey, version: u64) -> Option<Bytes> {
        let mut mem = self.mem_lock();
        match mem.get(key) {
            Some(p) if p.file_version == version => {
                self.counters.hits_mem.fetch_add(1, Ordering::Relaxed);
                Some(p.data.clone())
            }
            Some(_) => {
                mem.remove(key);
                self.counters.stale_dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    /// One page of version `version` of the file (shorter than the page size at EOF, empty past
    /// it). `Changed` when the UFS holds another version now.
    pub async fn page(&self, path: &str, index: u64, version: u64) -> Result<Bytes, CacheError> {
        self.page_for(path, index, version, false).await
    }

    /// [`page`](Self::page), telling whether a warm-up (`load`) or a reader asks: a warm-up's
    /// fill is counted in `load_fills`, not as a miss.
    async fn page_for(
        &self,
        path: &str,
        index: u64,
        version: u64,
        load: bool,
    ) -> Result<Bytes, CacheError> {
        let key = PageKey::new(path, index);
        if let Some(b) = self.mem_get(&key, version) {
            return Ok(b);
        }
        let id = (key.clone(), version);
        let flight: Flight = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        let res = flight
            .get_or_init(|| self.fill(key.clone(), version, load))
            .await
            .clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&id);
            }
        }
        res
    }

    async fn fill(&self, key: PageKey, version: u64, load: bool) -> Result<Bytes, CacheError> {
        if let Some(b) = self.mem_get(&key, version) {
            return Ok(b);
        }
        let ps = self.page_size as usize;
        if let Some(disk) = &self.disk {
            match disk.lookup(&key, version) {
                Lookup::Hit => {
                    let mut buf = self.buffer(ps);
                    let tier = disk.clone();
                    let k = key.clone();
                    let (buf, res) = tokio::task::spawn_blocking(move || {
                        let r = tier.read_into(&k, version, buf.as_mut_slice());
                        (buf, r)
                    })
                    .await
                    .map_err(|e| CacheError::Internal(e.to_string()))?;
                    match res {
                        Ok(n) => {
                            self.counters.hits_ssd.fetch_add(1, Ordering::Relaxed);
                            let page = self.seal(buf, n);
                            let data = page.data.clone();
                            self.insert_mem(key, version, page);
                            return Ok(data);
                        }
                        Err(PageFileError::Torn(_)) => {
                            self.counters.torn_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(PageFileError::Stale) => {
                            self.counters.stale_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(PageFileError::Missing) => {}
                    }
                }
                Lookup::Stale => {
                    let tier = disk.clone();
                    let k = key.clone();
                    let dropped = tokio::task::spawn_blocking(move || tier.drop_stale(&k, version))
                        .await
                        .unwrap_or(false);
                    if dropped {
                        self.counters.stale_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Lookup::Miss => {}
            }
        }
        if load {
            self.counters.load_fills.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
        }
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
        let got = res?;
        if version_of(&got.stat) != version {
            // The file changed since the metadata was taken: what was read belongs to the new
            // version. Learn it (dropping the old pages) and let the read start again.
            self.observe(&key.path, &Ok(got.stat)).await;
            return Err(CacheError::Changed {
                path: key.path.to_string(),
            });
        }
        let page = self.seal(buf, got.len);
        let data = page.data.clone();
        if got.len > 0 {
            self.write_through(key.clone(), version, data.clone());
            self.insert_mem(key, version, page);
        }
        Ok(data)
    }

    /// Freezes the first `n` bytes of a page-size buffer. A short page (a file's last) moves to
    /// a buffer of about its size, so it holds (and is charged) what it stores, not a page; the
    /// copy happens once per fill, never on a hit. When no smaller buffer is free the page stays
    /// where it is, charged at the buffer's size.
    fn seal(&self, mut buf: Box<dyn PageBufMut>, n: usize) -> Sealed {
        let cap = buf.capacity();
        if n < cap
            && let Some(mut small) = self.alloc.alloc(n).filter(|b| b.capacity() < cap)
        {
            small.as_mut_slice()[..n].copy_from_slice(&buf.as_mut_slice()[..n]);
            let held = small.capacity() as u64;
            return Sealed {
                data: small.freeze(n),
                held,
            };
        }
        Sealed {
            data: buf.freeze(n),
            held: cap as u64,
        }
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

    /// Inserts the page charged at the bytes its buffer holds, evicting LRU pages over quota.
    fn insert_mem(&self, key: PageKey, version: u64, page: Sealed) {
        if page.held > self.mem_quota {
            return;
        }
        let mut mem = self.mem_lock();
        mem.insert(
            key,
            MemPage {
                file_version: version,
                data: page.data,
            },
            page.held,
        );
        while mem.weight() > self.mem_quota {
            if mem.pop_lru().is_none() {
                break;
            }
            self.counters.evictions_mem.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_through(&self, key: PageKey, version: u64, page: Bytes) {
        let Some(tx) = &self.writes else { return };
        self.pending_writes.fetch_add(1, Ordering::SeqCst);
        if tx.try_send((key, version, page)).is_err() {
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

/// `len` cut to the end of a file of `size` bytes; `None` when nothing of it is left.
fn clamp_to(size: u64, offset: u64, len: u32) -> Option<u32> {
    let left = size.checked_sub(offset).filter(|&l| l > 0)?;
    Some(len.min(u32::try_from(left).unwrap_or(u32::MAX))).filter(|&l| l > 0)
}

async fn ssd_writer(
    tier: Arc<DiskTier>,
    mut rx: tokio::sync::mpsc::Receiver<(PageKey, u64, Bytes)>,
    counters: Arc<CacheCounters>,
    pending: Arc<AtomicU64>,
) {
    while let Some((key, version, page)) = rx.recv().await {
        let t = tier.clone();
        let k = key.clone();
        let res = tokio::task::spawn_blocking(move || {
            if t.holds(&k, version) {
                return Ok(0);
            }
            t.write(&k, version, &page)
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
    use std::time::{Duration, SystemTime};

    const LONG: SyncInterval = SyncInterval::Every(Duration::from_secs(3600));

    /// Replaces the UFS file with `bytes` and sets an mtime `secs` seconds after the epoch, so
    /// the new version differs from the old one whatever the clock granularity.
    fn replace(d: &std::path::Path, bytes: &[u8], secs: u64) {
        let path = d.join("ufs/f.bin");
        std::fs::write(&path, bytes).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .expect("set mtime");
    }

    fn stale(s: &PageStore) -> u64 {
        s.counters.stale_dropped.load(Ordering::Relaxed)
    }

    fn ufs_stats(s: &PageStore) -> u64 {
        s.ufs().counters().stats.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn with_interval_zero_a_changed_file_reads_exactly_the_new_bytes() {
        let (d, old) = setup(4096 * 3 + 10);
        let s = store_with(d.path(), 1 << 20, None, SyncInterval::Always).await;
        let got = s.read("f.bin", 0, 1 << 16).await.expect("cold");
        assert_eq!(&got[..], &old[..]);
        let new: Vec<u8> = (0..4096 * 2 + 7).map(|i| (i % 13) as u8).collect();
        replace(d.path(), &new, 1_000_000);
        let got = s.read("f.bin", 0, 1 << 16).await.expect("changed");
        assert_eq!(&got[..], &new[..], "new bytes and the new size");
        assert_eq!(s.stat("f.bin").await.expect("stat").size, new.len() as u64);
        assert_eq!(
            stale(&s),
            4,
            "all 4 old pages dropped when the change was seen"
        );
        assert_eq!(s.tier_use().mem_pages, 3);
    }

    #[tokio::test]
    async fn within_the_interval_old_bytes_are_served_and_the_ufs_is_not_statted() {
        let (d, old) = setup(4096);
        let s = store_with(d.path(), 1 << 20, None, LONG).await;
        s.read("f.bin", 0, 4096).await.expect("cold");
        let stats = ufs_stats(&s);
        replace(d.path(), &[9u8; 4096], 1_000_000);
        let got = s.read("f.bin", 0, 4096).await.expect("hot");
        assert_eq!(&got[..], &old[..], "cached version within the interval");
        assert_eq!(ufs_stats(&s), stats, "no stat within the interval");
    }

    #[tokio::test]
    async fn after_the_interval_the_new_bytes_are_served_never_a_mix() {
        let (d, old) = setup(4096 * 2);
        let s = store_with(
            d.path(),
            1 << 20,
            None,
            SyncInterval::Every(Duration::from_millis(200)),
        )
        .await;
        s.read("f.bin", 0, 8192).await.expect("cold");
        let new = vec![5u8; 4096 * 3];
        replace(d.path(), &new, 1_000_000);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = s.read("f.bin", 0, 1 << 16).await.expect("read");
            if got[..] == new[..] {
                break;
            }
            assert_eq!(&got[..], &old[..], "either the old or the new version");
            assert!(std::time::Instant::now() < deadline, "still old after 10s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_fill_that_finds_a_new_version_restarts_the_read_so_versions_never_mix() {
        let (d, _) = setup(4096 * 3);
        let s = store_with(d.path(), 1 << 20, None, LONG).await;
        s.read("f.bin", 0, 10).await.expect("page 0 cached");
        let new = vec![7u8; 4096 * 3];
        replace(d.path(), &new, 1_000_000);
        // Page 0 is cached (old version, trusted); page 1 must come from the UFS, which now
        // holds the new version: the whole read switches to it.
        let got = s.read("f.bin", 0, 4096 * 2).await.expect("read");
        assert_eq!(&got[..], &new[..4096 * 2]);
        assert_eq!(stale(&s), 1);
        assert_eq!(
            s.stat("f.bin").await.expect("stat").mtime_ns,
            1_000_000 * 1_000_000_000,
            "the metadata cache learnt the new version"
        );
    }

    fn version(size: usize, secs: i64) -> FileVersion {
        FileVersion {
            size: size as u64,
            mtime_ns: secs * 1_000_000_000,
        }
    }

    #[tokio::test]
    async fn a_pinned_read_serves_its_version_and_says_stale_once_the_file_changed() {
        let (d, old) = setup(4096 * 3);
        replace(d.path(), &old, 1_000);
        let s = store_with(d.path(), 1 << 20, None, LONG).await;
        let v1 = version(old.len(), 1_000);
        let got = s.read_at_version("f.bin", v1, 0, 10).await.expect("v1");
        assert_eq!(&got[..], &old[..10]);
        let new = vec![7u8; 4096 * 2 + 5];
        replace(d.path(), &new, 2_000);
        // Page 0 of v1 is cached and the metadata cache still trusts v1: serving it is serving
        // the version asked for.
        let got = s.read_at_version("f.bin", v1, 0, 10).await.expect("v1 hit");
        assert_eq!(&got[..], &old[..10]);
        // Page 1 must come from the UFS, which holds v2 now: stale, never v2's bytes.
        let e = s
            .read_at_version("f.bin", v1, 0, 4096 * 2)
            .await
            .expect_err("changed");
        assert!(
            matches!(e, CacheError::Stale { found: Some(f), .. } if f == version(new.len(), 2_000))
        );
        let msg = e.to_string();
        assert!(
            msg.contains("f.bin changed since it was opened")
                && msg.contains(&format!("size {} -> {}", old.len(), new.len()))
                && msg.contains("reopen"),
            "{msg}"
        );
        // Later reads pinned to v1 stay stale, even of the cached page (v1 is known to be gone).
        assert!(matches!(
            s.read_at_version("f.bin", v1, 0, 10).await,
            Err(CacheError::Stale { .. })
        ));
        let got = s
            .read_at_version("f.bin", version(new.len(), 2_000), 0, 1 << 16)
            .await
            .expect("v2");
        assert_eq!(&got[..], &new[..]);
    }

    #[tokio::test]
    async fn a_pinned_read_restats_at_once_whatever_the_interval() {
        let (d, old) = setup(4096);
        replace(d.path(), &old, 1_000);
        let s = store_with(d.path(), 1 << 20, None, LONG).await;
        s.read("f.bin", 0, 10).await.expect("learn v1");
        let new = vec![3u8; 5000];
        replace(d.path(), &new, 2_000);
        // Another worker told the client about v2 already: this one checks and serves v2.
        let got = s
            .read_at_version("f.bin", version(new.len(), 2_000), 0, 1 << 16)
            .await
            .expect("v2 after a re-stat");
        assert_eq!(&got[..], &new[..]);
        // Asked for v1 by a client that opened it earlier: this worker knows v2 and checks.
        let stats = ufs_stats(&s);
        assert!(matches!(
            s.read_at_version("f.bin", version(old.len(), 1_000), 0, 10)
                .await,
            Err(CacheError::Stale { .. })
        ));
        assert_eq!(ufs_stats(&s), stats + 1, "one re-stat");
        // A version nobody has: stale too (not the bytes of what is there).
        assert!(matches!(
            s.read_at_version("f.bin", version(1, 5), 0, 10).await,
            Err(CacheError::Stale { .. })
        ));
        // A zero-length pinned read checks the UFS whatever the interval.
        let s2 = store_with(d.path(), 1 << 20, None, LONG).await;
        let v2 = version(new.len(), 2_000);
        s2.read("f.bin", 0, 10).await.expect("learn v2");
        replace(d.path(), &new, 3_000);
        assert_eq!(
            s2.stat("f.bin").await.expect("trusted").mtime_ns,
            2_000 * 1_000_000_000
        );
        assert!(matches!(
            s2.read_at_version("f.bin", v2, 0, 0).await,
            Err(CacheError::Stale { .. })
        ));
        assert_eq!(
            s2.stat("f.bin").await.expect("learnt").mtime_ns,
            3_000 * 1_000_000_000,
            "the check taught the metadata cache the new version"
        );
        let v3 = version(new.len(), 3_000);
        assert!(
            s2.read_at_version("f.bin", v3, 0, 0)
                .await
                .expect("same")
                .is_empty()
        );
        // Removed: stale, saying it is gone (a fresh store: no cached page of v2 to serve).
        std::fs::remove_file(d.path().join("ufs/f.bin")).expect("rm");
        let s = store_with(d.path(), 1 << 20, None, LONG).await;
        let e = s
            .read_at_version("f.bin", version(new.len(), 2_000), 0, 10)
            .await
            .expect_err("gone");
        assert!(matches!(e, CacheError::Stale { found: None, .. }), "{e}");
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[tokio::test]
    async fn interval_minus_one_stats_a_file_once() {
        let (d, _) = setup(4096 * 2);
        let s = store_with(d.path(), 1 << 20, None, SyncInterval::Never).await;
        for _ in 0..5 {
            s.read("f.bin", 0, 8192).await.expect("read");
        }
        assert_eq!(ufs_stats(&s), 1);
    }

    #[tokio::test]
    async fn not_found_is_rechecked_after_the_interval_and_always_with_minus_one() {
        let (d, _) = setup(10);
        for sync in [SyncInterval::Always, SyncInterval::Never] {
            let s = store_with(d.path(), 1 << 20, None, sync).await;
            let _ = std::fs::remove_file(d.path().join("ufs/late.bin"));
            assert!(matches!(
                s.stat("late.bin").await,
                Err(UfsError::NotFound { .. })
            ));
            std::fs::write(d.path().join("ufs/late.bin"), b"here").expect("write");
            let got = s.read("late.bin", 0, 10).await.expect("appeared");
            assert_eq!(&got[..], b"here", "{sync:?}");
        }
    }

    #[tokio::test]
    async fn list_updates_the_metadata_that_stat_and_read_use() {
        let (d, _) = setup(4096);
        let s = store_with(d.path(), 1 << 20, None, LONG).await;
        s.read("f.bin", 0, 10).await.expect("cold");
        let new = vec![3u8; 100];
        replace(d.path(), &new, 1_000_000);
        let listed = s.list("").await.expect("list");
        assert_eq!(listed[0].stat.size, 100);
        assert_eq!(s.stat("f.bin").await.expect("stat").size, 100);
        assert_eq!(&s.read("f.bin", 0, 4096).await.expect("read")[..], &new[..]);
    }

    #[tokio::test]
    async fn reading_a_directory_is_refused() {
        let (d, _) = setup(10);
        std::fs::create_dir_all(d.path().join("ufs/dir")).expect("mkdir");
        let s = store(d.path(), 1 << 20, None).await;
        assert!(matches!(
            s.read("dir", 0, 10).await,
            Err(CacheError::Ufs(UfsError::IsADirectory { .. }))
        ));
    }

    #[tokio::test]
    async fn disk_page_of_a_file_changed_while_down_is_not_served() {
        let (d, _) = setup(4096 * 2);
        {
            let s = store(d.path(), 1 << 20, Some(1 << 20)).await;
            s.read("f.bin", 0, 8192).await.expect("cold");
            s.flush().await;
            assert_eq!(s.tier_use().ssd_pages, 2);
        }
        let new = vec![4u8; 4096 + 1];
        replace(d.path(), &new, 1_000_000);
        let s = store(d.path(), 1 << 20, Some(1 << 20)).await;
        let got = s.read("f.bin", 0, 8192).await.expect("read");
        assert_eq!(&got[..], &new[..]);
        assert_eq!(s.counters.hits_ssd.load(Ordering::Relaxed), 0);
        assert_eq!(stale(&s), 2, "both old disk pages dropped");
        s.flush().await;
        let got = s.read("f.bin", 4096, 10).await.expect("hot");
        assert_eq!(&got[..], &new[4096..]);
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn store(
        dir: &std::path::Path,
        mem_quota: u64,
        ssd_quota: Option<u64>,
    ) -> Arc<PageStore> {
        store_with(
            dir,
            mem_quota,
            ssd_quota,
            SyncInterval::Every(Duration::from_secs(10)),
        )
        .await
    }

    async fn store_with(
        dir: &std::path::Path,
        mem_quota: u64,
        ssd_quota: Option<u64>,
        metadata_sync: SyncInterval,
    ) -> Arc<PageStore> {
        let ufs = LocalUfs::new(&dir.join("ufs")).expect("ufs");
        let cfg = StoreConfig {
            page_size: 4096,
            mem_quota,
            ssd: ssd_quota.map(|q| crate::config::SsdTier {
                dir: dir.join("ssd"),
                quota: q,
            }),
            metadata_sync,
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
    async fn a_short_last_page_is_charged_its_size_in_mem_and_on_disk() {
        let (d, bytes) = setup(4096 * 2 + 100);
        let s = store(d.path(), 1 << 20, Some(1 << 20)).await;
        s.read("f.bin", 0, 1 << 16).await.expect("cold");
        s.flush().await;
        let u = s.tier_use();
        assert_eq!((u.mem_pages, u.mem_bytes), (3, 4096 * 2 + 100));
        let header = (disk::HEADER_LEN + "f.bin".len()) as u64;
        assert_eq!(
            (u.ssd_pages, u.ssd_bytes),
            (3, 4096 * 2 + 100 + 3 * header),
            "each page file is its header and its data"
        );
        // Promoted from disk after a restart: charged the same.
        drop(s);
        let s = store(d.path(), 1 << 20, Some(1 << 20)).await;
        let got = s.read("f.bin", 0, 1 << 16).await.expect("warm");
        assert_eq!(&got[..], &bytes[..]);
        assert_eq!(s.tier_use().mem_bytes, 4096 * 2 + 100);
    }

    #[tokio::test]
    async fn eviction_counts_bytes_held_so_many_small_files_fit_a_few_pages_of_quota() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("ufs")).expect("mkdir");
        for i in 0..8 {
            std::fs::write(d.path().join(format!("ufs/s{i}")), data(512)).expect("write");
        }
        // 8 files of 512 B in a quota of one 4 KiB page: all held; one more page evicts the
        // least recently used small files until the bytes fit again.
        let s = store(d.path(), 4096, None).await;
        for i in 0..8 {
            s.read(&format!("s{i}"), 0, 4096).await.expect("small");
        }
        let u = s.tier_use();
        assert_eq!((u.mem_pages, u.mem_bytes), (8, 8 * 512));
        assert_eq!(s.counters.evictions_mem.load(Ordering::Relaxed), 0);
        std::fs::write(d.path().join("ufs/big"), data(4096)).expect("write");
        s.read("big", 0, 4096).await.expect("big");
        assert_eq!(s.tier_use().mem_bytes, 4096);
        assert_eq!(s.counters.evictions_mem.load(Ordering::Relaxed), 8);
    }

    #[tokio::test]
    async fn a_page_larger_than_the_quota_is_served_but_not_kept() {
        let (d, bytes) = setup(4096);
        let s = store(d.path(), 1000, None).await;
        let got = s.read("f.bin", 0, 4096).await.expect("read");
        assert_eq!(&got[..], &bytes[..]);
        assert_eq!(s.tier_use().mem_pages, 0);
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
