//! Reads of one open file, with the prefetcher of the seed's "RDMA Prefetcher": a sequential
//! reader gets up to `max.part.number` parts fetched ahead into a per-handle window; a file at
//! or below `file.length.threshold` is fetched whole when opened; a random reader gets exactly
//! the bytes it asked for. A part is one worker page (`rcache.worker.page.size`), so reads to
//! the workers stay page aligned and each lands on one owner. Transient errors (a worker died or
//! timed out) are retried, and the client library routes the retry to a live worker. Every
//! fetch of a handle, prefetch included, is pinned to the version (size, mtime) the file was
//! opened at, so a handle never returns bytes of two versions; a changed file is `ESTALE`.
//!
//! This module owns the window and its memory bound (per handle: `max_parts` ahead, the parts of
//! the current read and one behind);
//! it never touches the kernel.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use rcache_transport::protocol::FileVersion;

use crate::metrics::PrefetchCounters;
use crate::source::{FileSource, SourceError};

/// Attempts per part before the read fails with the last error.
const FETCH_ATTEMPTS: u32 = 4;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);

/// One prefetch unit. The cell is filled by whichever of the prefetch task or a reader gets there
/// first; an aborted or failed fill leaves it empty for the next one to try.
#[derive(Debug, Default)]
struct Part {
    data: OnceCell<Bytes>,
    task: Mutex<Option<AbortHandle>>,
}

impl Part {
    fn abort(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

#[derive(Debug, Default)]
struct Window {
    parts: BTreeMap<u64, Arc<Part>>,
    /// End offset of the furthest read so far: the next sequential read starts near here.
    frontier: u64,
    sequential: bool,
}

/// Shape of the prefetcher, from the properties.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchPolicy {
    pub part_size: u64,
    pub max_parts: usize,
    pub whole_file_threshold: u64,
}

#[derive(Debug)]
pub struct OpenFile<S: FileSource> {
    source: Arc<S>,
    path: Arc<str>,
    /// The version opened; every fetch is pinned to it.
    version: FileVersion,
    size: u64,
    policy: PrefetchPolicy,
    whole: bool,
    window: Mutex<Window>,
    counters: PrefetchCounters,
}

async fn fetch<S: FileSource>(
    source: &S,
    path: &str,
    at: FileVersion,
    offset: u64,
    len: u32,
) -> Result<Bytes, SourceError> {
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        match source.read(path, at, offset, len).await {
            Ok(b) => return Ok(b),
            Err(e) if e.is_transient() && attempt < FETCH_ATTEMPTS => {
                tracing::warn!(path, offset, len, attempt, error = %e, "read failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl<S: FileSource> OpenFile<S> {
    /// Opens version `version` of `path`; a small file starts its whole-file fetch here. The
    /// prefetcher counts what it fetched and how reads found it in `counters`.
    pub fn open(
        source: Arc<S>,
        path: Arc<str>,
        version: FileVersion,
        policy: PrefetchPolicy,
        counters: PrefetchCounters,
    ) -> Arc<Self> {
        let size = version.size;
        let whole =
            policy.whole_file_threshold > 0 && size > 0 && size <= policy.whole_file_threshold;
        let f = Arc::new(Self {
            source,
            path,
            version,
            size,
            policy,
            whole,
            window: Mutex::new(Window::default()),
            counters,
        });
        if whole {
            let last = (size - 1) / policy.part_size;
            let mut w = f.lock();
            for idx in 0..=last {
                f.start_part(&mut w, idx);
            }
        }
        f
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Arc<str> {
        &self.path
    }

    /// The version every read of this handle is pinned to.
    pub fn version(&self) -> FileVersion {
        self.version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn part_range(&self, idx: u64) -> (u64, u32) {
        let start = idx * self.policy.part_size;
        let len = self.policy.part_size.min(self.size - start);
        (start, len as u32)
    }

    /// Creates part `idx` if absent and starts its fetch in the background.
    fn start_part(&self, w: &mut Window, idx: u64) -> Arc<Part> {
        if let Some(p) = w.parts.get(&idx) {
            return p.clone();
        }
        let part = Arc::new(Part::default());
        self.counters.fetched.inc();
        let (offset, len) = self.part_range(idx);
        let (source, path, p2) = (self.source.clone(), self.path.clone(), part.clone());
        let at = self.version;
        let task = tokio::spawn(async move {
            // The error is not kept: the reader that needs this part retries on its own.
            let _ = p2
                .data
                .get_or_try_init(|| fetch(&*source, &path, at, offset, len))
                .await;
            p2.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        });
        *part.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        w.parts.insert(idx, part.clone());
        part
    }

    /// Reads up to `len` bytes at `offset`; short only at end of file. A read inside one part is
    /// a slice of the transport's buffer (no copy); a read across parts is copied once.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, SourceError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = self.size.min(offset + u64::from(len));
        let ps = self.policy.part_size;
        let (first, last) = (offset / ps, (end - 1) / ps);
        let parts: Option<Vec<(u64, Arc<Part>)>> = {
            let mut w = self.lock();
            let window_bytes = ps * (self.policy.max_parts as u64 + 1);
            // Concurrent kernel readahead requests arrive out of order (several threads, and
            // the kernel issues its whole readahead window at once), so "sequential" means:
            // starts within one prefetch window of the frontier, behind or ahead.
            let sequential = offset <= w.frontier + window_bytes
                && offset + window_bytes >= w.frontier
                && (w.frontier > 0 || offset == 0);
            w.sequential = sequential;
            w.frontier = w.frontier.max(end);
            if self.whole || sequential {
                let ahead = if self.whole {
                    0
                } else {
                    self.policy.max_parts as u64
                };
                let max_idx = (self.size - 1) / ps;
                let upto = (last + ahead).min(max_idx);
                let mut v = Vec::with_capacity((last - first + 1) as usize);
                for idx in first..=upto {
                    let p = self.start_part(&mut w, idx);
                    if idx <= last {
                        v.push((idx, p));
                    }
                }
                if !self.whole {
                    // Parts behind the reader are done with; keep one for stragglers.
                    let keep_from = first.saturating_sub(1);
                    let behind: Vec<u64> = w.parts.range(..keep_from).map(|(k, _)| *k).collect();
                    for k in behind {
                        if let Some(p) = w.parts.remove(&k) {
                            p.abort();
                        }
                    }
                }
                Some(v)
            } else if (first..=last).all(|i| w.parts.contains_key(&i)) {
                Some((first..=last).map(|i| (i, w.parts[&i].clone())).collect())
            } else {
                None
            }
        };
        let Some(parts) = parts else {
            // Random access: exactly the requested bytes, nothing ahead.
            let len = (end - offset) as u32;
            return fetch(&*self.source, &self.path, self.version, offset, len).await;
        };
        let mut out: Option<BytesMut> = None;
        let mut single: Option<Bytes> = None;
        for (idx, part) in &parts {
            let (p_off, p_len) = self.part_range(*idx);
            if part.data.initialized() {
                self.counters.hit.inc();
            } else {
                self.counters.waited.inc();
            }
            let data = part
                .data
                .get_or_try_init(|| fetch(&*self.source, &self.path, self.version, p_off, p_len))
                .await?;
            let from = (offset.max(p_off) - p_off) as usize;
            let to = ((end.min(p_off + u64::from(p_len)) - p_off) as usize).min(data.len());
            let piece = if from < to {
                data.slice(from..to)
            } else {
                Bytes::new()
            };
            let short = data.len() < p_len as usize;
            if parts.len() == 1 {
                single = Some(piece);
            } else {
                out.get_or_insert_with(|| BytesMut::with_capacity((end - offset) as usize))
                    .extend_from_slice(&piece);
            }
            if short {
                break; // the file shrank under us: what we have is all there is
            }
        }
        Ok(single.unwrap_or_else(|| out.map(BytesMut::freeze).unwrap_or_default()))
    }

    /// Parts currently held (for tests and metrics).
    pub fn window_parts(&self) -> Vec<u64> {
        self.lock().parts.keys().copied().collect()
    }
}

impl<S: FileSource> Drop for OpenFile<S> {
    fn drop(&mut self) {
        for p in self.lock().parts.values() {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcache_transport::protocol::{DirEntry, FileStat};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A file of `len` bytes whose byte i is `i % 251`, counting reads, failing the first
    /// `fail_first` reads with EIO.
    struct Pattern {
        len: u64,
        reads: Mutex<Vec<(u64, u32)>>,
        fail_first: AtomicU32,
    }

    fn byte(i: u64) -> u8 {
        (i % 251) as u8
    }

    impl Pattern {
        fn new(len: u64, fail_first: u32) -> Arc<Self> {
            Arc::new(Self {
                len,
                reads: Mutex::new(Vec::new()),
                fail_first: AtomicU32::new(fail_first),
            })
        }
        fn reads(&self) -> Vec<(u64, u32)> {
            self.reads.lock().unwrap().clone()
        }
        fn version(&self) -> FileVersion {
            FileVersion {
                size: self.len,
                mtime_ns: 0,
            }
        }
    }

    impl FileSource for Pattern {
        async fn stat(&self, _: &str) -> Result<FileStat, SourceError> {
            Ok(FileStat {
                size: self.len,
                ..FileStat::default()
            })
        }
        async fn list(&self, _: &str) -> Result<Vec<DirEntry>, SourceError> {
            Ok(Vec::new())
        }
        async fn read(
            &self,
            _: &str,
            at: FileVersion,
            offset: u64,
            len: u32,
        ) -> Result<Bytes, SourceError> {
            self.reads.lock().unwrap().push((offset, len));
            if at != self.version() {
                return Err(SourceError::new(
                    libc::ESTALE,
                    "f changed since it was opened",
                ));
            }
            if self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SourceError::new(libc::EIO, "worker w0 went away"));
            }
            let end = self.len.min(offset + u64::from(len));
            Ok((offset..end.max(offset)).map(byte).collect())
        }
    }

    const PS: u64 = 4096;

    fn policy(max_parts: usize, threshold: u64) -> PrefetchPolicy {
        PrefetchPolicy {
            part_size: PS,
            max_parts,
            whole_file_threshold: threshold,
        }
    }

    /// `src` opened as "f" at its current version, with fresh prefetch counters.
    fn open_f(src: &Arc<Pattern>, policy: PrefetchPolicy) -> Arc<OpenFile<Pattern>> {
        OpenFile::open(
            src.clone(),
            "f".into(),
            src.version(),
            policy,
            PrefetchCounters::default(),
        )
    }

    fn expect(offset: u64, end: u64) -> Vec<u8> {
        (offset..end).map(byte).collect()
    }

    #[tokio::test]
    async fn sequential_reads_prefetch_up_to_max_parts_ahead_and_return_exact_bytes() {
        let src = Pattern::new(40 * PS + 100, 0);
        let f = open_f(&src, policy(3, 0));
        let mut off = 0;
        while off < src.len {
            let b = f.read(off, 3000).await.unwrap();
            assert_eq!(
                &b[..],
                &expect(off, src.len.min(off + 3000))[..],
                "at {off}"
            );
            off += b.len() as u64;
            let parts = f.window_parts();
            // max_parts ahead + the (up to 2) parts of the read + 1 straggler behind.
            assert!(parts.len() <= 3 + 2 + 1, "window bounded: {parts:?}");
        }
        tokio::task::yield_now().await;
        let reads = src.reads();
        assert!(
            reads
                .iter()
                .all(|(o, l)| o % PS == 0 && u64::from(*l) <= PS)
        );
        let mut offs: Vec<u64> = reads.iter().map(|r| r.0).collect();
        offs.sort();
        offs.dedup();
        assert_eq!(offs.len(), reads.len(), "every part fetched once");
        assert_eq!(f.read(src.len, 10).await.unwrap().len(), 0, "EOF");
    }

    #[tokio::test]
    async fn random_reads_fetch_only_the_requested_bytes() {
        let src = Pattern::new(100 * PS, 0);
        let f = open_f(&src, policy(8, 0));
        let b = f.read(50 * PS + 7, 4096).await.unwrap();
        assert_eq!(&b[..], &expect(50 * PS + 7, 51 * PS + 7)[..]);
        let b = f.read(10 * PS, 100).await.unwrap();
        assert_eq!(&b[..], &expect(10 * PS, 10 * PS + 100)[..]);
        assert_eq!(src.reads(), vec![(50 * PS + 7, 4096), (10 * PS, 100)]);
        assert!(f.window_parts().is_empty());
    }

    #[tokio::test]
    async fn out_of_order_readahead_requests_within_the_window_still_count_as_sequential() {
        let src = Pattern::new(100 * PS, 0);
        let f = open_f(&src, policy(4, 0));
        f.read(0, PS as u32).await.unwrap();
        // The kernel's next readahead requests arrive in another order.
        let b = f.read(3 * PS, PS as u32).await.unwrap();
        assert_eq!(&b[..], &expect(3 * PS, 4 * PS)[..]);
        let b = f.read(PS, PS as u32).await.unwrap();
        assert_eq!(&b[..], &expect(PS, 2 * PS)[..]);
        assert!(
            f.window_parts().contains(&7),
            "prefetched ahead: {:?}",
            f.window_parts()
        );
        // A jump far away is random again: exact bytes, no new parts.
        let before = f.window_parts();
        f.read(90 * PS, 10).await.unwrap();
        assert_eq!(f.window_parts(), before);
    }

    #[tokio::test]
    async fn a_small_file_is_fetched_whole_on_open() {
        let src = Pattern::new(3 * PS + 5, 0);
        let counters = PrefetchCounters::default();
        let f = OpenFile::open(
            src.clone(),
            "f".into(),
            src.version(),
            policy(1, 4 * PS),
            counters.clone(),
        );
        assert_eq!(f.window_parts(), vec![0, 1, 2, 3]);
        assert_eq!(counters.fetched.get(), 4, "four parts started on open");
        let b = f.read(2 * PS + 1, 10_000).await.unwrap();
        assert_eq!(&b[..], &expect(2 * PS + 1, src.len)[..]);
        let b = f.read(0, 10).await.unwrap();
        assert_eq!(&b[..], &expect(0, 10)[..]);
        let b = f.read(10, 100_000).await.unwrap();
        assert_eq!(&b[..], &expect(10, src.len)[..]);
        let mut offs: Vec<u64> = src.reads().iter().map(|r| r.0).collect();
        offs.sort();
        assert_eq!(
            offs,
            vec![0, PS, 2 * PS, 3 * PS],
            "each part fetched once, nothing else"
        );
        // Three reads touched parts 2,3 / 0 / 0..3: every part read is counted once per read.
        assert_eq!(counters.hit.get() + counters.waited.get(), 2 + 1 + 4);
        assert!(
            counters.hit.get() >= 3,
            "the last read finds parts 0, 2, 3 fetched"
        );
    }

    #[tokio::test]
    async fn a_transient_worker_error_is_retried_and_the_read_succeeds() {
        let src = Pattern::new(2 * PS, 2);
        let f = open_f(&src, policy(0, 0));
        let b = f.read(0, PS as u32).await.unwrap();
        assert_eq!(&b[..], &expect(0, PS)[..]);
    }

    #[tokio::test]
    async fn reads_and_prefetch_are_pinned_to_the_opened_version_and_stale_is_not_retried() {
        let src = Pattern::new(8 * PS, 0);
        let old = FileVersion {
            size: 8 * PS,
            mtime_ns: -5,
        };
        let f = OpenFile::open(
            src.clone(),
            "f".into(),
            old,
            policy(2, 0),
            PrefetchCounters::default(),
        );
        let err = f.read(0, 10).await.unwrap_err();
        assert_eq!(err.errno, libc::ESTALE);
        tokio::task::yield_now().await;
        let first_part = src.reads().iter().filter(|r| r.0 == 0).count();
        assert!(
            first_part <= 2,
            "ESTALE is an answer: no retries (prefetch and reader at most once each)"
        );
        // A random read goes to the source pinned too.
        let err = f.read(6 * PS + 3, 10).await.unwrap_err();
        assert_eq!(err.errno, libc::ESTALE);
    }

    #[tokio::test]
    async fn a_persistent_error_surfaces_with_its_errno() {
        let src = Pattern::new(2 * PS, 100);
        let f = open_f(&src, policy(0, 0));
        let err = f.read(0, 10).await.unwrap_err();
        assert_eq!(err.errno, libc::EIO);
        assert!(err.message.contains("w0"));
    }
}
