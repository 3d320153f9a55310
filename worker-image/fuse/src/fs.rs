//! The FUSE filesystem: a read-only POSIX view of the under-storage namespace. Request threads
//! of `fuser` only parse and dispatch; each operation that needs the workers runs as a tokio task
//! that answers the kernel when done, so a slow worker never blocks other requests. This module
//! owns inode and handle bookkeeping and errno replies; data movement lives in `reader`.
//!
//! An open handle reads the version (size, mtime) of the file its open saw; when the file has
//! changed since, its reads fail with `ESTALE` and the path's cached stat is dropped, so the
//! application's next open sees the new version.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use rcache_transport::protocol::{FileStat, FileVersion};
use tokio::runtime::Handle;

use crate::inodes::{InodeTable, ROOT_INO, child_path};
use crate::metrics::FuseMetrics;
use crate::options::FuseOptions;
use crate::reader::{OpenFile, PrefetchPolicy};
use crate::source::{FileSource, SourceError};
use crate::stat_cache::{STAT_CACHE_TTL, StatCache};
use crate::takeover::{Journal, Record, TakeoverState};

/// How long the kernel may trust an entry or attribute before asking again.
const KERNEL_TTL: Duration = Duration::from_secs(1);
/// How long the kernel may trust the root directory's attributes. The kubelet and the container
/// runtime stat a FUSE pod's hostPath (this mount's root) before starting its next container; if
/// the root's attributes expired while no client serves (a restart handing over through the
/// keeper), that stat waits for a client that cannot start until it returns. The root of a
/// read-only cache has nothing in its attributes worth asking again for.
const ROOT_TTL: Duration = Duration::from_secs(24 * 3600);
/// An open this soon after the lookup of its path pins the version that lookup saw instead of
/// asking the workers again: one `open(2)` of a path the kernel does not know sends a lookup
/// and then an open, microseconds apart, and the second stat (a round trip to a worker, a third
/// of the cost of reading a small file) would tell nothing new: the kernel itself trusts that
/// stat for [`KERNEL_TTL`]. Each lookup's stat serves one open at most, so a file reopened
/// later is stat'ed afresh (close-to-open).
const OPEN_AFTER_LOOKUP: Duration = KERNEL_TTL;
/// Lookups remembered for their open at most; past this, expired ones are dropped.
const LOOKUPS_REMEMBERED: usize = 4096;
/// Largest read the kernel sends and readahead it keeps in flight (FUSE max_pages limit is
/// 256 pages = 1 MiB by default).
pub const MAX_READ: u32 = 1 << 20;

/// FUSE capabilities asked of the kernel beyond fuser's defaults, and why:
/// - `FUSE_ASYNC_DIO`: an asynchronous O_DIRECT read (libaio, io_uring) is sent to us without
///   the submitter waiting for it, so an application's queue depth reaches the workers; without
///   it the kernel answers each such read before taking the next (queue depth 1 per thread).
/// - `FUSE_PARALLEL_DIROPS`: lookups (and readdirs) in one directory are not serialised on
///   the directory's lock, so threads opening many files of a dataset directory overlap.
const WANTED_CAPABILITIES: [(fuser::InitFlags, &str); 2] = [
    (fuser::InitFlags::FUSE_ASYNC_DIO, "FUSE_ASYNC_DIO"),
    (
        fuser::InitFlags::FUSE_PARALLEL_DIROPS,
        "FUSE_PARALLEL_DIROPS",
    ),
];

struct DirListing {
    entries: Vec<(u64, FileType, String)>,
}

struct Shared<S: FileSource> {
    source: Arc<S>,
    opts: FuseOptions,
    inodes: InodeTable,
    stats: StatCache,
    files: Mutex<HashMap<u64, Arc<OpenFile<S>>>>,
    dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    /// (size, mtime) an inode had at its last open: unchanged means the kernel's page cache of
    /// the file is still valid (FOPEN_KEEP_CACHE), like libfuse's `auto_cache`.
    seen: Mutex<HashMap<u64, (u64, i64)>>,
    /// The version a read of a path found stale: a stat that is told this version again (a
    /// worker's metadata may trust it for its sync interval) checks it first.
    stale: Mutex<HashMap<String, FileVersion>>,
    /// The stat each recent lookup of a file found, for the open that follows it (see
    /// [`OPEN_AFTER_LOOKUP`]).
    looked_up: Mutex<HashMap<Arc<str>, (FileStat, Instant)>>,
    next_fh: AtomicU64,
    /// Directory handles a previous client opened (takeover): fh -> ino, listed on first use.
    restored_dirs: Mutex<HashMap<u64, u64>>,
    /// Where new inodes and handles are journaled for a restarted client (see `takeover`).
    journal: Arc<OnceLock<Journal>>,
    metrics: Arc<FuseMetrics>,
    /// Sends cache invalidations to the kernel; set once the session exists (see `mount`).
    kernel: Arc<OnceLock<fuser::Notifier>>,
    uid: u32,
    gid: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: FileSource> Shared<S> {
    /// The stat of `path` for a lookup, getattr or open. When it names the version a read of
    /// the path found stale, the under-storage is checked (the workers' metadata may still
    /// trust that version for its sync interval) and the file stat'ed again, so the kernel and
    /// the next open learn the new version.
    async fn stat(&self, path: &str) -> Result<FileStat, SourceError> {
        self.stat_or(path, None).await
    }

    /// [`Shared::stat`], taking `known` (a stat just made) in place of asking the cache or
    /// the source; the stale-version check still applies.
    async fn stat_or(&self, path: &str, known: Option<FileStat>) -> Result<FileStat, SourceError> {
        let st = if let Some(st) = known {
            st
        } else if let Some(st) = self.stats.get(path) {
            self.metrics.stat_cache_hits.inc();
            st
        } else {
            if self.stats.enabled() {
                self.metrics.stat_cache_misses.inc();
            }
            let st = self.source.stat(path).await?;
            self.stats.put(path, &st);
            st
        };
        let stale = lock(&self.stale).get(path).copied();
        let Some(stale) = stale.filter(|v| !st.is_dir && *v == FileVersion::of(&st)) else {
            if stale.is_some() {
                lock(&self.stale).remove(path);
            }
            return Ok(st);
        };
        match self.source.read(path, stale, 0, 0).await {
            Ok(_) => {
                // Back at that version after all: nothing to re-learn.
                lock(&self.stale).remove(path);
                return Ok(st);
            }
            Err(e) if e.errno == libc::ESTALE => {}
            Err(e) => return Err(e),
        }
        self.stats.remove(path);
        let st = self.source.stat(path).await?;
        self.stats.put(path, &st);
        lock(&self.stale).remove(path);
        Ok(st)
    }

    /// Remembers what the lookup of file `path` found, for the open that follows.
    fn remember_lookup(&self, path: &str, st: &FileStat) {
        let mut m = lock(&self.looked_up);
        if m.len() >= LOOKUPS_REMEMBERED {
            m.retain(|_, (_, at)| at.elapsed() < OPEN_AFTER_LOOKUP);
            if m.len() >= LOOKUPS_REMEMBERED {
                return;
            }
        }
        m.insert(Arc::from(path), (st.clone(), Instant::now()));
    }

    /// The stat of `path`'s lookup if it was made within [`OPEN_AFTER_LOOKUP`]; taken, so it
    /// serves one open.
    fn take_lookup(&self, path: &str) -> Option<FileStat> {
        let (st, at) = lock(&self.looked_up).remove(path)?;
        (at.elapsed() < OPEN_AFTER_LOOKUP).then_some(st)
    }

    fn record(&self, r: Record) {
        if let Some(j) = self.journal.get() {
            j.record(r);
        }
    }

    fn prefetch_policy(&self) -> PrefetchPolicy {
        PrefetchPolicy {
            part_size: self.opts.part_size,
            max_parts: self.opts.prefetch_parts,
            whole_file_threshold: self.opts.whole_file_threshold,
        }
    }

    /// The entries of directory `ino` at `path` (with `.` and `..`), for a directory handle.
    async fn listing(&self, ino: u64, path: &str) -> Result<DirListing, Errno> {
        let list = match self.source.list(path).await {
            Ok(l) => l,
            Err(e) => {
                log_failure("opendir", path, &e);
                return Err(self.fail("opendir", &e));
            }
        };
        let parent_ino = match path.rfind('/') {
            Some(i) => self.inodes.peek(&path[..i]),
            None => ROOT_INO,
        };
        let mut entries = Vec::with_capacity(list.len() + 2);
        entries.push((ino, FileType::Directory, ".".to_owned()));
        entries.push((parent_ino, FileType::Directory, "..".to_owned()));
        for e in list {
            let child = child_path(path, &e.name);
            self.stats.put(&child, &e.stat);
            entries.push((self.inodes.peek(&child), kind(&e.stat), e.name));
        }
        Ok(DirListing { entries })
    }

    fn attr(&self, ino: u64, st: &FileStat) -> FileAttr {
        let mtime = if st.mtime_ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(st.mtime_ns as u64)
        } else {
            UNIX_EPOCH
        };
        let perm = match (st.mode & 0o7777, st.is_dir) {
            (0, true) => 0o755,
            (0, false) => 0o644,
            (p, _) => p,
        };
        FileAttr {
            ino: INodeNo(ino),
            size: st.size,
            blocks: st.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: kind(st),
            perm: perm as u16,
            nlink: if st.is_dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            // A large preferred I/O size makes cp, dd and friends issue big reads.
            blksize: self.opts.part_size.min(u64::from(MAX_READ)) as u32,
            flags: 0,
        }
    }
}

fn kind(st: &FileStat) -> FileType {
    if st.is_dir {
        FileType::Directory
    } else {
        FileType::RegularFile
    }
}

fn errno(e: &SourceError) -> Errno {
    Errno::from_i32(e.errno)
}

impl<S: FileSource> Shared<S> {
    /// The errno of `e` for the reply to `op`, counted in `rcache_fuse_errors_total`.
    fn fail(&self, op: &str, e: &SourceError) -> Errno {
        self.metrics.error(op, e.errno);
        errno(e)
    }

    /// `errno` for the reply to `op`, counted in `rcache_fuse_errors_total`.
    fn fail_with(&self, op: &str, errno: Errno) -> Errno {
        self.metrics.error(op, errno.code());
        errno
    }
}

/// Logs a failure worth an operator's attention (I/O errors name the worker in their message);
/// "not found" is an answer, not a failure.
fn log_failure(op: &str, path: &str, e: &SourceError) {
    if e.errno == libc::ENOENT || e.errno == libc::ENOTDIR {
        tracing::debug!(op, path, error = %e, "not found");
    } else {
        tracing::warn!(op, path, errno = e.errno, error = %e, "operation failed");
    }
}

/// Answers a readdir from a listing, from entry `offset` on.
fn fill_dir(listing: &DirListing, offset: u64, mut reply: ReplyDirectory) {
    for (i, (ino, kind, name)) in listing.entries.iter().enumerate().skip(offset as usize) {
        if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
            break;
        }
    }
    reply.ok();
}

/// Answers a read. A stale handle (the file changed since it was opened) is not a failure: it
/// is logged at info, and the path's stat and page-cache marker are dropped so that the next
/// open stats the file again and the kernel does not keep pages of the old version.
#[allow(clippy::too_many_arguments)]
fn reply_read<S: FileSource>(
    shared: &Shared<S>,
    ino: u64,
    path: &str,
    version: FileVersion,
    reply: ReplyData,
    offset: u64,
    size: u32,
    started: Instant,
    res: Result<bytes::Bytes, SourceError>,
) {
    shared
        .metrics
        .read(res.as_ref().map_or(0, |b| b.len()), started.elapsed());
    match res {
        Ok(data) => reply.data(&data),
        Err(e) if e.errno == libc::ESTALE => {
            shared.metrics.stale_reads.inc();
            shared.metrics.error("read", libc::ESTALE);
            tracing::info!(path, offset, size, error = %e, "file changed since it was opened: ESTALE");
            shared.stats.remove(path);
            lock(&shared.looked_up).remove(path);
            lock(&shared.seen).remove(&ino);
            lock(&shared.stale).insert(path.to_string(), version);
            reply.error(Errno::ESTALE);
            // The kernel still holds the old size and pages (attributes are valid for
            // KERNEL_TTL): without this, a reopen within that second could read past the new
            // end of a shrunk file. Sent from another thread: a notification from inside a
            // request handler may deadlock against the kernel's inode lock.
            if let Some(n) = shared.kernel.get().cloned() {
                let metrics = shared.metrics.clone();
                std::thread::spawn(move || match n.inval_inode(INodeNo(ino), 0, 0) {
                    Ok(()) => {
                        metrics.kernel_invalidations.inc();
                    }
                    Err(e) => tracing::debug!(ino, error = %e, "kernel cache invalidation failed"),
                });
            }
        }
        Err(e) => {
            tracing::warn!(path, offset, size, errno = e.errno, error = %e, "read failed");
            reply.error(shared.fail("read", &e));
        }
    }
}

pub struct RcacheFs<S: FileSource> {
    shared: Arc<Shared<S>>,
    rt: Handle,
}

impl<S: FileSource> RcacheFs<S> {
    /// A filesystem over `source`; its async work runs on `rt`, its figures go to `metrics`.
    pub fn new(source: S, opts: FuseOptions, rt: Handle, metrics: Arc<FuseMetrics>) -> Self {
        let stats = StatCache::new(opts.stat_cache_enabled, opts.stat_cache_max, STAT_CACHE_TTL);
        Self {
            shared: Arc::new(Shared {
                source: Arc::new(source),
                stats,
                opts,
                inodes: InodeTable::new(),
                files: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                seen: Mutex::new(HashMap::new()),
                stale: Mutex::new(HashMap::new()),
                looked_up: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                restored_dirs: Mutex::new(HashMap::new()),
                journal: Arc::new(OnceLock::new()),
                metrics,
                kernel: Arc::new(OnceLock::new()),
                // SAFETY: getuid/getgid cannot fail and touch no memory.
                uid: unsafe { libc::getuid() },
                gid: unsafe { libc::getgid() },
            }),
            rt,
        }
    }

    /// Where the mount puts the session's notifier, so the filesystem can tell the kernel to
    /// drop what it caches of a file that changed (its size and pages).
    pub fn kernel_notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.shared.kernel.clone()
    }

    /// Where the mount puts the takeover journal (see `takeover`), before serving requests:
    /// every new inode and handle is journaled there from then on.
    pub fn journal_slot(&self) -> Arc<OnceLock<Journal>> {
        self.shared.journal.clone()
    }

    /// Takes over what a previous client's kernel connection refers to: the same inode numbers
    /// with their lookup references, open files reading the version their open pinned, and
    /// directory handles (listed again on their next read).
    pub fn restore(&self, state: &TakeoverState) {
        let shared = &self.shared;
        shared.inodes.restore(
            state
                .inodes
                .iter()
                .map(|(ino, (path, n))| (*ino, path.as_str(), *n)),
        );
        let policy = shared.prefetch_policy();
        for (fh, h) in &state.files {
            let Some(path) = shared.inodes.path(h.ino) else {
                tracing::warn!(
                    fh,
                    ino = h.ino,
                    "an open handle of an unknown inode; its reads fail with EBADF"
                );
                continue;
            };
            let file = OpenFile::open(
                shared.source.clone(),
                path,
                FileVersion {
                    size: h.size,
                    mtime_ns: h.mtime_ns,
                },
                policy,
                shared.metrics.prefetch.clone(),
            );
            lock(&shared.files).insert(*fh, file);
            lock(&shared.seen).insert(h.ino, (h.size, h.mtime_ns));
            shared.metrics.open_files.inc();
        }
        lock(&shared.restored_dirs).extend(state.dirs.iter().map(|(fh, ino)| (*fh, *ino)));
        shared
            .next_fh
            .fetch_max(state.next_fh.max(1), Ordering::Relaxed);
    }

    fn path_of(&self, ino: INodeNo) -> Result<Arc<str>, Errno> {
        self.shared.inodes.path(ino.0).ok_or(Errno::ESTALE)
    }
}

impl<S: FileSource> Filesystem for RcacheFs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The kernel caps readahead at what it offered (raised after mount through the bdi's
        // read_ahead_kb, see `mount`); ask for as much as allowed.
        if let Err(max) = config.set_max_readahead(MAX_READ) {
            let _ = config.set_max_readahead(max);
        }
        // Let many readahead and asynchronous O_DIRECT requests be in flight (both count as
        // background requests): several readers each with an 8 MiB readahead window, or 4 jobs
        // x iodepth 16, would otherwise stall at the kernel's congestion threshold.
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        // Each is asked for alone, so a kernel without one still gets the others.
        for (cap, name) in WANTED_CAPABILITIES {
            if config.add_capabilities(cap).is_err() {
                tracing::info!(
                    capability = name,
                    "the kernel does not offer this FUSE capability"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent_path = match self.path_of(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT); // the protocol carries UTF-8 names only
        };
        let path = child_path(&parent_path, name);
        let shared = self.shared.clone();
        self.rt.spawn(async move {
            match shared.stat(&path).await {
                Ok(st) => {
                    if !st.is_dir {
                        shared.remember_lookup(&path, &st);
                    }
                    let ino = shared.inodes.lookup(&path);
                    shared.record(Record::Lookup {
                        ino,
                        path: path.clone(),
                    });
                    reply.entry(&KERNEL_TTL, &shared.attr(ino, &st), Generation(0));
                }
                Err(e) => {
                    log_failure("lookup", &path, &e);
                    reply.error(shared.fail("lookup", &e));
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.inodes.forget(ino.0, nlookup);
        self.shared.record(Record::Forget {
            ino: ino.0,
            n: nlookup,
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        // An open file answers from its handle: same size the reads are bounded by.
        let open_size = fh.and_then(|fh| lock(&shared.files).get(&fh.0).map(|f| f.size()));
        self.rt.spawn(async move {
            match shared.stat(&path).await {
                Ok(mut st) => {
                    if let Some(size) = open_size.filter(|_| !st.is_dir) {
                        st.size = size;
                    }
                    let ttl = if ino.0 == 1 { &ROOT_TTL } else { &KERNEL_TTL };
                    reply.attr(ttl, &shared.attr(ino.0, &st));
                }
                Err(e) => {
                    log_failure("getattr", &path, &e);
                    reply.error(shared.fail("getattr", &e));
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        self.rt.spawn(async move {
            let listing = match shared.listing(ino.0, &path).await {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            };
            let fh = shared.next_fh.fetch_add(1, Ordering::Relaxed);
            shared.record(Record::OpenDir { fh, ino: ino.0 });
            lock(&shared.dirs).insert(fh, Arc::new(listing));
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(listing) = lock(&self.shared.dirs).get(&fh.0).cloned() else {
            // A handle a previous client opened (takeover): list the directory again.
            let Some(ino) = lock(&self.shared.restored_dirs).get(&fh.0).copied() else {
                return reply.error(Errno::EBADF);
            };
            let path = match self.path_of(INodeNo(ino)) {
                Ok(p) => p,
                Err(e) => return reply.error(e),
            };
            let shared = self.shared.clone();
            self.rt.spawn(async move {
                match shared.listing(ino, &path).await {
                    Ok(l) => {
                        let l = Arc::new(l);
                        lock(&shared.dirs).insert(fh.0, l.clone());
                        lock(&shared.restored_dirs).remove(&fh.0);
                        fill_dir(&l, offset, reply);
                    }
                    Err(e) => reply.error(e),
                }
            });
            return;
        };
        fill_dir(&listing, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.dirs).remove(&fh.0);
        lock(&self.shared.restored_dirs).remove(&fh.0);
        self.shared.record(Record::ReleaseDir { fh: fh.0 });
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(self.shared.fail_with("open", Errno::EROFS));
        }
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        self.rt.spawn(async move {
            let known = shared.take_lookup(&path);
            let st = match shared.stat_or(&path, known).await {
                Ok(st) if st.is_dir => return reply.error(shared.fail_with("open", Errno::EISDIR)),
                Ok(st) => st,
                Err(e) => {
                    log_failure("open", &path, &e);
                    return reply.error(shared.fail("open", &e));
                }
            };
            let policy = shared.prefetch_policy();
            let file = OpenFile::open(
                shared.source.clone(),
                path,
                FileVersion::of(&st),
                policy,
                shared.metrics.prefetch.clone(),
            );
            let fh = shared.next_fh.fetch_add(1, Ordering::Relaxed);
            shared.record(Record::Open {
                fh,
                ino: ino.0,
                size: st.size,
                mtime_ns: st.mtime_ns,
            });
            lock(&shared.files).insert(fh, file);
            shared.metrics.open_files.inc();
            let version = (st.size, st.mtime_ns);
            let unchanged = lock(&shared.seen).insert(ino.0, version) == Some(version);
            let flags = if unchanged {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(fh), flags);
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let started = Instant::now();
        let Some(file) = lock(&self.shared.files).get(&fh.0).cloned() else {
            return reply.error(self.shared.fail_with("read", Errno::EBADF));
        };
        tracing::trace!(fh = fh.0, offset, size, "read");
        let path = file.path().clone();
        let version = file.version();
        let mut read = Box::pin(async move { file.read(offset, size).await });
        // Fast path: when the prefetcher already holds the bytes, answer on this FUSE thread
        // and skip the hand-off to a runtime thread (two context switches per request). The
        // first poll runs inside the runtime's context so it may start prefetch tasks; a
        // pending read continues as a task, whose first poll registers the real waker.
        let first = {
            let _rt = self.rt.enter();
            read.as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        };
        match first {
            std::task::Poll::Ready(res) => reply_read(
                &self.shared,
                ino.0,
                &path,
                version,
                reply,
                offset,
                size,
                started,
                res,
            ),
            std::task::Poll::Pending => {
                let shared = self.shared.clone();
                self.rt.spawn(async move {
                    let res = read.await;
                    reply_read(
                        &shared, ino.0, &path, version, reply, offset, size, started, res,
                    )
                });
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if lock(&self.shared.files).remove(&fh.0).is_some() {
            self.shared.metrics.open_files.dec();
        }
        self.shared.record(Record::Release { fh: fh.0 });
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Capacity lives in the workers and the under-storage; report an empty, read-only volume.
        reply.statfs(0, 0, 0, 0, 0, MAX_READ, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(self.shared.fail_with("access", Errno::EROFS));
        } else {
            reply.ok();
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush on a read-only filesystem. ENOSYS tells the kernel to stop sending
        // FLUSH on every close() of this connection: one round trip less per close, and a
        // process that closes or execs (closing its O_CLOEXEC fds) never waits on a client
        // that is restarting (see `takeover`).
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes; ENOSYS makes the kernel stop asking.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // Everything that would modify the namespace: read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(self.shared.fail_with("setattr", Errno::EROFS));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.shared.fail_with("mknod", Errno::EROFS));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.shared.fail_with("mkdir", Errno::EROFS));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.shared.fail_with("unlink", Errno::EROFS));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.shared.fail_with("rmdir", Errno::EROFS));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.shared.fail_with("symlink", Errno::EROFS));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.shared.fail_with("rename", Errno::EROFS));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.shared.fail_with("link", Errno::EROFS));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(self.shared.fail_with("write", Errno::EROFS));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(self.shared.fail_with("create", Errno::EROFS));
    }
}
