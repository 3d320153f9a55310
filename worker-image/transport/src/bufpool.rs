//! The registered buffer pool: page-aligned memory carved into fixed-size chunks, grown in
//! regions up to a maximum. It owns the memory and the free list; it knows nothing about UCX —
//! the UCX transport registers each region (`ucp_mem_map`) and sends any `Bytes` that points
//! into a region without copying. Chunks go back to the pool when the last `Bytes` clone drops.
//!
//! A buffer smaller than half a chunk (a file's last page) is a *piece* of a chunk: chunks are
//! split into slabs of one piece size (size classes 4 KiB apart below 32 KiB, then eight per
//! doubling, so at most 1/8 is rounding), and a slab whose pieces are all free is a whole chunk
//! again. A piece lies in a mapped region like a chunk, so it is served without a copy too.
//!
//! Sizes come from `rcache.network.rdma.data.buffer.pool.{initial,prewarm,max}.size`.

use std::collections::{BTreeSet, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

/// Growth step once the initial region is used up.
const GROWTH_REGION: usize = 64 << 20;

/// Pool sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Size of one chunk (the cache page size); a multiple of the OS page size.
    pub chunk_size: usize,
    /// Memory mapped at start (`...buffer.pool.initial.size`).
    pub initial: usize,
    /// Memory touched at start so first reads do not fault (`...buffer.pool.prewarm.size`); ≤ initial.
    pub prewarm: usize,
    /// The pool never grows beyond this (`...buffer.pool.max.size`); ≥ initial.
    pub max: usize,
}

impl PoolConfig {
    /// Defaults of the properties file: 1 MiB chunks, 256 MiB initial and prewarmed, 8 GiB max.
    pub fn defaults() -> PoolConfig {
        PoolConfig {
            chunk_size: 1 << 20,
            initial: 256 << 20,
            prewarm: 256 << 20,
            max: 8 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("invalid buffer pool setting {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    #[error(
        "cannot map {bytes} bytes for the buffer pool: {reason} (lower rcache.network.rdma.data.buffer.pool.initial.size or raise the memory limit)"
    )]
    Map { bytes: usize, reason: String },
}

/// Use figures of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub chunk_size: usize,
    pub total_bytes: usize,
    pub in_use_bytes: usize,
    pub max_bytes: usize,
}

/// One mapped region: `[addr, addr + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub addr: usize,
    pub len: usize,
}

struct Inner {
    cfg: PoolConfig,
    /// Regions in the order they were mapped; never shrinks while the pool lives.
    regions: RwLock<Vec<Region>>,
    free: Mutex<Free>,
    total: AtomicUsize,
    in_use: AtomicUsize,
}

/// Free memory: whole chunks, and slabs (chunks split into pieces of one size).
#[derive(Default)]
struct Free {
    chunks: Vec<NonNull<u8>>,
    /// Slabs by the address of their chunk.
    slabs: HashMap<usize, Slab>,
    /// Slabs with a free piece, by piece size (lowest address first, so slabs fill densely).
    partial: HashMap<usize, BTreeSet<usize>>,
}

struct Slab {
    piece: usize,
    pieces: usize,
    /// Indexes of the free pieces.
    free: Vec<u32>,
}

// SAFETY: the raw chunk pointers in `free` are only handed out under the mutex; the memory they
// point to is owned by the pool and unmapped only when the last reference to `Inner` drops.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        let regions = self
            .regions
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for r in regions {
            // SAFETY: every region was mapped by `map_region` with exactly this length, and no
            // chunk is alive (each holds an Arc<Inner>).
            unsafe { libc::munmap(r.addr as *mut libc::c_void, r.len) };
        }
    }
}

/// A pool of fixed-size, page-aligned chunks. Cheap to clone; clones share the memory.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("stats", &self.stats())
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

fn map_region(len: usize, prewarm: usize) -> Result<Region, PoolError> {
    // SAFETY: anonymous private mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(PoolError::Map {
            bytes: len,
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    let page = page_size();
    let mut off = 0;
    while off < prewarm.min(len) {
        // SAFETY: within the mapping just created.
        unsafe { std::ptr::write_volatile((p as *mut u8).add(off), 0) };
        off += page;
    }
    Ok(Region {
        addr: p as usize,
        len,
    })
}

impl BufferPool {
    /// Maps `initial` bytes (touching the first `prewarm`) and validates the sizes.
    pub fn new(cfg: PoolConfig) -> Result<BufferPool, PoolError> {
        let page = page_size();
        if cfg.chunk_size == 0 || !cfg.chunk_size.is_multiple_of(page) {
            return Err(PoolError::InvalidConfig {
                key: "rcache.worker.page.size",
                reason: format!(
                    "chunk size {} must be a positive multiple of the page size {page}",
                    cfg.chunk_size
                ),
            });
        }
        if cfg.prewarm > cfg.initial {
            return Err(PoolError::InvalidConfig {
                key: "rcache.network.rdma.data.buffer.pool.prewarm.size",
                reason: format!(
                    "{} exceeds the initial size {}; set it ≤ initial",
                    cfg.prewarm, cfg.initial
                ),
            });
        }
        if cfg.initial > cfg.max {
            return Err(PoolError::InvalidConfig {
                key: "rcache.network.rdma.data.buffer.pool.initial.size",
                reason: format!(
                    "{} exceeds the max size {}; set it ≤ max",
                    cfg.initial, cfg.max
                ),
            });
        }
        if cfg.max < cfg.chunk_size {
            return Err(PoolError::InvalidConfig {
                key: "rcache.network.rdma.data.buffer.pool.max.size",
                reason: format!(
                    "{} is smaller than one chunk ({} bytes)",
                    cfg.max, cfg.chunk_size
                ),
            });
        }
        let inner = Arc::new(Inner {
            cfg,
            regions: RwLock::new(Vec::new()),
            free: Mutex::new(Free::default()),
            total: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
        });
        let pool = BufferPool { inner };
        let initial = cfg.initial / cfg.chunk_size * cfg.chunk_size;
        if initial > 0 {
            let mut free = pool.inner.free.lock().unwrap_or_else(|e| e.into_inner());
            pool.grow_locked(&mut free, initial, cfg.prewarm)?;
        }
        Ok(pool)
    }

    /// Maps one more region of `len` bytes (a multiple of the chunk size) onto the free list.
    fn grow_locked(&self, free: &mut Free, len: usize, prewarm: usize) -> Result<(), PoolError> {
        let r = map_region(len, prewarm)?;
        let cs = self.inner.cfg.chunk_size;
        // Hand out low addresses first (pop takes from the end).
        for i in (0..len / cs).rev() {
            // SAFETY: non-null: inside a successful mapping.
            free.chunks
                .push(unsafe { NonNull::new_unchecked((r.addr + i * cs) as *mut u8) });
        }
        self.inner
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
        self.inner.total.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Takes one chunk; grows the pool by a region when empty; `None` once `max` is reached
    /// (or the OS refuses more memory).
    pub fn alloc(&self) -> Option<ChunkMut> {
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        let ptr = self.take_chunk(&mut free)?;
        drop(free);
        let len = self.inner.cfg.chunk_size;
        self.inner.in_use.fetch_add(len, Ordering::Relaxed);
        Some(ChunkMut {
            pool: self.inner.clone(),
            ptr,
            len,
            slab: None,
        })
    }

    /// Takes a buffer of at least `size` bytes: a piece of a slab when `size` is under half a
    /// chunk (see [`piece_size`](Self::piece_size)), a whole chunk otherwise; `None` when
    /// `size` exceeds a chunk or the pool is exhausted.
    pub fn alloc_at_least(&self, size: usize) -> Option<ChunkMut> {
        let piece = self.piece_size(size)?;
        let cs = self.inner.cfg.chunk_size;
        if piece == cs {
            return self.alloc();
        }
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        let base = match free.partial.get(&piece).and_then(|s| s.first().copied()) {
            Some(b) => b,
            None => {
                let chunk = self.take_chunk(&mut free)?.as_ptr() as usize;
                let pieces = cs / piece;
                free.slabs.insert(
                    chunk,
                    Slab {
                        piece,
                        pieces,
                        // Pop hands out low indexes first.
                        free: (0..pieces as u32).rev().collect(),
                    },
                );
                free.partial.entry(piece).or_default().insert(chunk);
                chunk
            }
        };
        let slab = free.slabs.get_mut(&base)?;
        let idx = slab.free.pop()? as usize;
        if slab.free.is_empty()
            && let Some(p) = free.partial.get_mut(&piece)
        {
            p.remove(&base);
        }
        drop(free);
        self.inner.in_use.fetch_add(piece, Ordering::Relaxed);
        // SAFETY: non-null: an offset inside a chunk of a successful mapping.
        let ptr = unsafe { NonNull::new_unchecked((base + idx * piece) as *mut u8) };
        Some(ChunkMut {
            pool: self.inner.clone(),
            ptr,
            len: piece,
            slab: Some(base),
        })
    }

    /// The size of the buffer [`alloc_at_least`](Self::alloc_at_least) gives for `size` bytes
    /// (what such a buffer holds of the pool); `None` when `size` exceeds a chunk.
    pub fn piece_size(&self, size: usize) -> Option<usize> {
        piece_size(size, self.inner.cfg.chunk_size, page_size())
    }

    /// A free chunk, growing the pool by a region when there is none.
    fn take_chunk(&self, free: &mut Free) -> Option<NonNull<u8>> {
        if let Some(p) = free.chunks.pop() {
            return Some(p);
        }
        let cfg = self.inner.cfg;
        let total = self.inner.total.load(Ordering::Relaxed);
        let room = cfg.max.saturating_sub(total) / cfg.chunk_size * cfg.chunk_size;
        if room == 0 {
            return None;
        }
        let step = GROWTH_REGION.max(cfg.chunk_size) / cfg.chunk_size * cfg.chunk_size;
        if let Err(e) = self.grow_locked(free, step.min(room), 0) {
            tracing::warn!(error = %e, "buffer pool cannot grow");
            return None;
        }
        free.chunks.pop()
    }

    pub fn chunk_size(&self) -> usize {
        self.inner.cfg.chunk_size
    }

    pub fn config(&self) -> PoolConfig {
        self.inner.cfg
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            chunk_size: self.inner.cfg.chunk_size,
            total_bytes: self.inner.total.load(Ordering::Relaxed),
            in_use_bytes: self.inner.in_use.load(Ordering::Relaxed),
            max_bytes: self.inner.cfg.max,
        }
    }

    /// The regions mapped so far (for memory registration). New regions are appended.
    pub fn regions(&self) -> Vec<Region> {
        self.inner
            .regions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many regions are mapped (cheap; registration checks it before each send).
    pub fn region_count(&self) -> usize {
        self.inner
            .regions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Index of the region holding `[ptr, ptr + len)`, if the whole range lies in one region.
    pub fn region_of(&self, ptr: *const u8, len: usize) -> Option<(usize, Region)> {
        let a = ptr as usize;
        let regions = self.inner.regions.read().unwrap_or_else(|e| e.into_inner());
        regions
            .iter()
            .enumerate()
            .find(|(_, r)| a >= r.addr && a + len <= r.addr + r.len)
            .map(|(i, r)| (i, *r))
    }

    /// True when both handles share the same memory.
    pub fn same_pool(&self, other: &BufferPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// The buffer size that holds `size` bytes: 4 KiB steps (the OS page) up to 32 KiB, then eight
/// steps per doubling; a whole chunk from half a chunk up (a slab would hold one piece anyway).
/// `None` above a chunk.
fn piece_size(size: usize, chunk: usize, os_page: usize) -> Option<usize> {
    if size > chunk {
        return None;
    }
    if size.saturating_mul(2) > chunk {
        return Some(chunk);
    }
    let size = size.max(1);
    // Eight steps between a power of two and the next: at most an eighth is rounding.
    let floor_pow2 = 1usize << (usize::BITS - 1 - size.leading_zeros());
    let step = (floor_pow2 / 8).max(os_page);
    let piece = size.div_ceil(step) * step;
    Some(if piece.saturating_mul(2) > chunk {
        chunk
    } else {
        piece
    })
}

fn release(pool: &Inner, ptr: NonNull<u8>, len: usize, slab: Option<usize>) {
    pool.in_use.fetch_sub(len, Ordering::Relaxed);
    let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
    let Some(base) = slab else {
        free.chunks.push(ptr);
        return;
    };
    let Some(s) = free.slabs.get_mut(&base) else {
        return; // cannot happen: a slab lives while one of its pieces does
    };
    let was_full = s.free.is_empty();
    s.free
        .push(((ptr.as_ptr() as usize - base) / s.piece) as u32);
    let (piece, empty) = (s.piece, s.free.len() == s.pieces);
    if empty {
        free.slabs.remove(&base);
        if let Some(p) = free.partial.get_mut(&piece) {
            p.remove(&base);
        }
        // SAFETY: non-null: the address of a chunk of a successful mapping.
        free.chunks
            .push(unsafe { NonNull::new_unchecked(base as *mut u8) });
    } else if was_full {
        free.partial.entry(piece).or_default().insert(base);
    }
}

/// A chunk owned exclusively by its holder; fill it, then `freeze` it into `Bytes`.
pub struct ChunkMut {
    pool: Arc<Inner>,
    ptr: NonNull<u8>,
    /// A chunk's size, or a piece's.
    len: usize,
    /// The slab (its chunk's address) a piece belongs to; `None` for a whole chunk.
    slab: Option<usize>,
}

// SAFETY: exclusive ownership of a chunk of pool memory; the pool is Send + Sync.
unsafe impl Send for ChunkMut {}
unsafe impl Sync for ChunkMut {}

impl ChunkMut {
    /// The whole buffer ([`capacity`](Self::capacity) bytes), contents unspecified.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the buffer is len bytes of mapped memory owned exclusively by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes this buffer holds of the pool (a chunk, or a piece).
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Turns the first `len` bytes into shared, immutable `Bytes` (clamped to the capacity).
    /// The buffer returns to the pool when the last clone or slice of the `Bytes` drops.
    pub fn freeze(self, len: usize) -> Bytes {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: moving the fields out of a ManuallyDrop that is never used again.
        let pool = unsafe { std::ptr::read(&this.pool) };
        Bytes::from_owner(FrozenChunk {
            pool,
            ptr: this.ptr,
            len: len.min(this.len),
            held: this.len,
            slab: this.slab,
        })
    }
}

impl Drop for ChunkMut {
    fn drop(&mut self) {
        release(&self.pool, self.ptr, self.len, self.slab);
    }
}

struct FrozenChunk {
    pool: Arc<Inner>,
    ptr: NonNull<u8>,
    len: usize,
    held: usize,
    slab: Option<usize>,
}

// SAFETY: immutable view of pool memory that nobody else writes while this exists.
unsafe impl Send for FrozenChunk {}
unsafe impl Sync for FrozenChunk {}

impl AsRef<[u8]> for FrozenChunk {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: len ≤ chunk_size, memory mapped while the pool lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for FrozenChunk {
    fn drop(&mut self) {
        release(&self.pool, self.ptr, self.held, self.slab);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(chunk: usize, initial: usize, max: usize) -> PoolConfig {
        PoolConfig {
            chunk_size: chunk,
            initial,
            prewarm: initial,
            max,
        }
    }

    #[test]
    fn chunks_are_page_aligned_and_return_on_last_drop() {
        let pool = BufferPool::new(cfg(8192, 4 * 8192, 4 * 8192)).unwrap();
        let mut c = pool.alloc().unwrap();
        assert_eq!(c.as_mut_ptr() as usize % page_size(), 0);
        c.as_mut_slice()[..5].copy_from_slice(b"hello");
        let b = c.freeze(5);
        assert_eq!(&b[..], b"hello");
        assert_eq!(pool.stats().in_use_bytes, 8192);
        let b2 = b.slice(1..3);
        drop(b);
        assert_eq!(
            pool.stats().in_use_bytes,
            8192,
            "a slice still holds the chunk"
        );
        assert_eq!(&b2[..], b"el");
        assert!(pool.region_of(b2.as_ptr(), b2.len()).is_some());
        drop(b2);
        assert_eq!(pool.stats().in_use_bytes, 0);
    }

    #[test]
    fn alloc_returns_none_at_max_and_recovers_after_release() {
        let pool = BufferPool::new(cfg(4096, 0, 2 * 4096)).unwrap();
        assert_eq!(pool.stats().total_bytes, 0);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        assert_eq!(pool.stats().total_bytes, 2 * 4096);
        drop(a);
        assert!(pool.alloc().is_some());
        drop(b);
    }

    #[test]
    fn pool_grows_in_regions_up_to_max() {
        let pool = BufferPool::new(cfg(4096, 4096, 3 * 4096)).unwrap();
        let held: Vec<_> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(pool.regions().len(), 2);
        assert_eq!(pool.stats().total_bytes, 3 * 4096);
        assert!(pool.alloc().is_none());
        drop(held);
    }

    #[test]
    fn bad_sizes_name_the_property() {
        let e = BufferPool::new(PoolConfig {
            chunk_size: 4096,
            initial: 4096,
            prewarm: 8192,
            max: 8192,
        })
        .unwrap_err();
        assert!(e.to_string().contains("prewarm.size"), "{e}");
        let e = BufferPool::new(cfg(4096, 16384, 8192)).unwrap_err();
        assert!(e.to_string().contains("initial.size"), "{e}");
        let e = BufferPool::new(cfg(1000, 0, 8192)).unwrap_err();
        assert!(e.to_string().contains("page"), "{e}");
    }

    #[test]
    fn piece_sizes_round_up_by_at_most_an_eighth_or_one_os_page() {
        let mib = 1 << 20;
        assert_eq!(piece_size(1, mib, 4096), Some(4096));
        assert_eq!(piece_size(4097, mib, 4096), Some(8192));
        assert_eq!(piece_size(64 << 10, mib, 4096), Some(64 << 10));
        assert_eq!(piece_size((64 << 10) + 1, mib, 4096), Some(72 << 10));
        assert_eq!(piece_size(300_000, mib, 4096), Some(320 << 10));
        assert_eq!(
            piece_size((512 << 10) + 1, mib, 4096),
            Some(mib),
            "half a chunk up"
        );
        assert_eq!(piece_size(mib, mib, 4096), Some(mib));
        assert_eq!(piece_size(mib + 1, mib, 4096), None);
        for size in (1..mib).step_by(997) {
            let p = piece_size(size, mib, 4096).unwrap();
            assert!(p >= size, "{size} fits in {p}");
            assert!(
                p == mib || p - size <= (size / 8).max(4095),
                "{size} -> {p}"
            );
        }
    }

    #[test]
    fn small_buffers_are_pieces_of_one_chunk_counted_at_their_size() {
        let pool = BufferPool::new(cfg(1 << 20, 1 << 20, 1 << 20)).unwrap();
        let a = pool.alloc_at_least(64 << 10).unwrap();
        let b = pool.alloc_at_least((64 << 10) - 100).unwrap();
        assert_eq!((a.capacity(), b.capacity()), (64 << 10, 64 << 10));
        assert_eq!(
            b.as_slice().as_ptr() as usize - a.as_slice().as_ptr() as usize,
            64 << 10
        );
        assert_eq!(
            pool.stats().in_use_bytes,
            128 << 10,
            "in use counts the pieces"
        );
        let held: Vec<_> = (0..14)
            .map(|_| pool.alloc_at_least(64 << 10).unwrap())
            .collect();
        assert!(
            pool.alloc().is_none(),
            "the only chunk is a slab of 16 pieces"
        );
        assert!(
            pool.alloc_at_least(64 << 10).is_none(),
            "and all 16 are taken"
        );
        let frozen = a.freeze(1000);
        assert_eq!(frozen.len(), 1000);
        assert!(
            pool.region_of(frozen.as_ptr(), frozen.len()).is_some(),
            "a piece is registered memory"
        );
        drop((frozen, b, held));
        assert_eq!(pool.stats().in_use_bytes, 0);
        assert!(
            pool.alloc().is_some(),
            "a slab with every piece free is a whole chunk again"
        );
    }

    #[test]
    fn slabs_of_different_piece_sizes_share_the_pool() {
        let pool = BufferPool::new(cfg(1 << 20, 2 << 20, 2 << 20)).unwrap();
        let small = pool.alloc_at_least(4096).unwrap();
        let mid = pool.alloc_at_least(200 << 10).unwrap();
        assert_eq!(mid.capacity(), 208 << 10);
        assert!(pool.alloc().is_none(), "both chunks are slabs now");
        drop(small);
        let whole = pool.alloc().unwrap();
        assert_eq!(whole.capacity(), 1 << 20);
        assert!(
            pool.alloc_at_least((1 << 20) + 1).is_none(),
            "larger than a chunk"
        );
        drop((mid, whole));
        assert_eq!(pool.stats().in_use_bytes, 0);
    }

    #[test]
    fn pointer_outside_the_pool_has_no_region() {
        let pool = BufferPool::new(cfg(4096, 4096, 4096)).unwrap();
        let v = [0u8; 10];
        assert!(pool.region_of(v.as_ptr(), v.len()).is_none());
    }
}
