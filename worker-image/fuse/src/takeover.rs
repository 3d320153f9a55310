//! FUSE takeover: the `/dev/fuse` connection outlives the client process.
//!
//! A keeper (`rcache-fuse keeper`, or the CSI node plugin, which outlives FUSE pods) holds the
//! connection's file descriptor and a journal of what the kernel still refers to: the inode
//! numbers it looked up (with their lookup counts) and the open file and directory handles (with
//! the file version each open pinned). The client, after mounting, hands the fd to the keeper
//! (`SCM_RIGHTS` over a unix socket) and journals each new inode or handle *before* the kernel
//! learns of it. A restarted client, killed or stopped alike, asks the keeper for the fd and the
//! journal, rebuilds its tables, serves the same connection and asks the kernel to resend the
//! requests the dead process had read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9), so
//! open files keep reading and nothing sees `ENOTCONN`.
//!
//! Wire: frames of `len u32 LE | JSON` ([`Msg`]); an fd travels alone as the byte `F` with the
//! fd attached, right after the frame that announces it ([`Msg::Offer`] with a state,
//! [`Msg::Adopt`]). Reads are exact, so a 1-byte `recvmsg` receives the fd with its byte.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One change to what the kernel refers to, journaled before the kernel learns of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A lookup answered `ino` for `path` (one more kernel reference).
    Lookup { ino: u64, path: String },
    /// The kernel dropped `n` references to `ino`.
    Forget { ino: u64, n: u64 },
    /// File handle `fh` opened `ino` at version (`size`, `mtime_ns`).
    Open {
        fh: u64,
        ino: u64,
        size: u64,
        mtime_ns: i64,
    },
    /// File handle `fh` was released.
    Release { fh: u64 },
    /// Directory handle `fh` opened `ino`.
    OpenDir { fh: u64, ino: u64 },
    /// Directory handle `fh` was released.
    ReleaseDir { fh: u64 },
}

/// An open file handle in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenHandle {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

/// What the kernel refers to on a connection: enough for a client with no memory of it to
/// answer every request the kernel may still send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverState {
    /// ino -> (path, kernel lookup references). The root (1) is implicit.
    pub inodes: BTreeMap<u64, (String, u64)>,
    /// File handles the kernel holds.
    pub files: BTreeMap<u64, OpenHandle>,
    /// Directory handles the kernel holds: fh -> ino.
    pub dirs: BTreeMap<u64, u64>,
    /// Above every handle number handed out so far.
    pub next_fh: u64,
}

impl TakeoverState {
    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::Lookup { ino, path } => {
                let e = self.inodes.entry(*ino).or_insert_with(|| (path.clone(), 0));
                if e.0 != *path {
                    // The number was freed and reused for another path.
                    *e = (path.clone(), 0);
                }
                e.1 += 1;
            }
            Record::Forget { ino, n } => {
                if let Some(e) = self.inodes.get_mut(ino) {
                    e.1 = e.1.saturating_sub(*n);
                    if e.1 == 0 {
                        self.inodes.remove(ino);
                    }
                }
            }
            Record::Open {
                fh,
                ino,
                size,
                mtime_ns,
            } => {
                self.files.insert(
                    *fh,
                    OpenHandle {
                        ino: *ino,
                        size: *size,
                        mtime_ns: *mtime_ns,
                    },
                );
                self.next_fh = self.next_fh.max(fh + 1);
            }
            Record::Release { fh } => {
                self.files.remove(fh);
            }
            Record::OpenDir { fh, ino } => {
                self.dirs.insert(*fh, *ino);
                self.next_fh = self.next_fh.max(fh + 1);
            }
            Record::ReleaseDir { fh } => {
                self.dirs.remove(fh);
            }
        }
    }
}

/// Messages between a client and the keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Client: I serve (or will mount) `mount`.
    Hello { mount: String },
    /// Keeper: the connection it holds for that mount, if any; with a state, the fd follows.
    Offer { state: Option<TakeoverState> },
    /// Client: I mounted afresh; the fd follows; forget any earlier connection of this mount.
    Adopt,
    /// Client: a journal entry.
    Record(Record),
}

/// Largest frame accepted (a state of about a million inodes).
const MAX_FRAME: usize = 256 << 20;
const FD_MARKER: u8 = b'F';

pub fn write_msg(w: &mut impl Write, m: &Msg) -> io::Result<()> {
    let body = serde_json::to_vec(m).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// The next frame, or `None` at a clean end of stream.
pub fn read_msg(r: &mut impl Read) -> io::Result<Option<Msg>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("takeover frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Bytes of control buffer for one cmsg carrying one fd.
fn fd_cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize }
}

/// A message header over the 1-byte `iov` and the control buffer `cbuf` (of
/// [`fd_cmsg_space`] bytes); its pointers are valid while both are.
fn fd_msghdr(iov: &mut libc::iovec, cbuf: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data, for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = cbuf.len() as _;
    msg
}

/// Sends `fd` over `sock` with one marker byte (`SCM_RIGHTS`).
pub fn send_fd(sock: &UnixStream, fd: impl AsFd) -> io::Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    let byte = [FD_MARKER];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut cbuf = vec![0u8; fd_cmsg_space()];
    let msg = fd_msghdr(&mut iov, &mut cbuf);
    // SAFETY: every pointer in `msg` outlives the sendmsg call, and the control buffer is
    // CMSG_SPACE(int) bytes, exactly one cmsg carrying one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, raw);
        loop {
            let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n == 1 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if n < 0 {
                e
            } else {
                io::Error::other("sendmsg sent no byte")
            });
        }
    }
}

/// Receives the fd sent by [`send_fd`].
pub fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut cbuf = vec![0u8; fd_cmsg_space()];
    let mut msg = fd_msghdr(&mut iov, &mut cbuf);
    // SAFETY: the msghdr points at buffers that outlive recvmsg; the cmsg walk stays inside the
    // control buffer (CMSG_FIRSTHDR checks msg_controllen), and a received SCM_RIGHTS fd is ours
    // to own (MSG_CMSG_CLOEXEC keeps it from leaking into children).
    unsafe {
        let n = loop {
            let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed before sending the fd",
            ));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if byte[0] != FD_MARKER
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected a file descriptor (SCM_RIGHTS) from the takeover peer",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// True once the FUSE connection behind `fd` is gone (unmounted or aborted): `/dev/fuse` then
/// polls `POLLERR`. Never blocks.
pub fn connection_ended(fd: impl AsFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

/// The client's side of the journal: records go to the keeper before the kernel sees the
/// inode or handle they describe. A keeper that went away costs takeover, never a request.
#[derive(Debug, Default)]
pub struct Journal {
    sock: Mutex<Option<UnixStream>>,
}

impl Journal {
    /// A journal that records nothing (no keeper).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn to(sock: UnixStream) -> Self {
        Self {
            sock: Mutex::new(Some(sock)),
        }
    }

    pub fn is_active(&self) -> bool {
        self.sock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn record(&self, r: Record) {
        let mut g = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = g.as_mut() else { return };
        if let Err(e) = write_msg(s, &Msg::Record(r)) {
            tracing::warn!(error = %e, "the takeover keeper went away; a restart of this client will not keep open files");
            *g = None;
        }
    }
}

/// What the keeper answered a client.
pub enum Offer {
    /// Nothing held for the mount: mount afresh, then [`KeeperLink::adopt`].
    Fresh(KeeperLink),
    /// A live connection and its journal: serve it.
    TakeOver {
        link: KeeperLink,
        fd: OwnedFd,
        state: TakeoverState,
    },
}

/// A client's connection to the keeper.
pub struct KeeperLink {
    sock: UnixStream,
}

impl KeeperLink {
    /// Asks the keeper at `socket` for the connection kept under `key` (one per CacheCluster
    /// on a node: `<namespace>/<name>`; every FUSE container mounts at the same path).
    pub fn connect(socket: &Path, key: &str) -> anyhow::Result<Offer> {
        let mut sock = UnixStream::connect(socket).with_context(|| {
            format!(
                "cannot reach the FUSE keeper at {} (is the rcache CSI node plugin running on this node?)",
                socket.display()
            )
        })?;
        // The keeper waits up to KEEPER_HANDOVER_WAIT for the previous client's journal.
        sock.set_read_timeout(Some(KEEPER_HANDOVER_WAIT + Duration::from_secs(10)))?;
        write_msg(
            &mut sock,
            &Msg::Hello {
                mount: key.to_owned(),
            },
        )?;
        let offer = read_msg(&mut sock)?
            .context("the FUSE keeper closed the connection without an answer")?;
        let out = match offer {
            Msg::Offer { state: None } => Offer::Fresh(KeeperLink { sock }),
            Msg::Offer { state: Some(state) } => {
                let fd = recv_fd(&sock).context("receiving the FUSE fd from the keeper")?;
                Offer::TakeOver {
                    link: KeeperLink { sock },
                    fd,
                    state,
                }
            }
            other => anyhow::bail!("unexpected answer from the FUSE keeper: {other:?}"),
        };
        Ok(out)
    }

    /// Hands a freshly mounted connection's fd to the keeper.
    pub fn adopt(mut self, fd: impl AsFd) -> anyhow::Result<Journal> {
        write_msg(&mut self.sock, &Msg::Adopt)?;
        send_fd(&self.sock, fd).context("sending the FUSE fd to the keeper")?;
        Ok(self.into_journal())
    }

    pub fn into_journal(self) -> Journal {
        let _ = self.sock.set_read_timeout(None);
        Journal::to(self.sock)
    }
}

/// How long the keeper waits, on a client's hello, for the previous client's connection to end
/// (so its last journal entries are in before the state is handed over).
pub const KEEPER_HANDOVER_WAIT: Duration = Duration::from_secs(5);

struct Held {
    fd: Option<OwnedFd>,
    state: TakeoverState,
    clients: usize,
    orphan_since: Option<Instant>,
}

#[derive(Default)]
struct KeeperInner {
    held: HashMap<String, Held>,
}

/// The keeper: holds FUSE connections and their journals for clients that come and go.
#[derive(Clone)]
pub struct Keeper {
    inner: Arc<(Mutex<KeeperInner>, Condvar)>,
    /// A connection no client serves for this long is closed (its readers see ENOTCONN).
    orphan_grace: Duration,
    /// Where the keeper sees the nodes' cache mounts (propagated both ways): once it closes an
    /// orphaned connection, the dead rcache mounts under them are detached, so a deleted
    /// CacheCluster leaves no `ENOTCONN` mount on the node.
    sweep_roots: Vec<PathBuf>,
}

impl Keeper {
    pub fn new(orphan_grace: Duration) -> Self {
        Self {
            inner: Arc::new((Mutex::new(KeeperInner::default()), Condvar::new())),
            orphan_grace,
            sweep_roots: Vec::new(),
        }
    }

    /// Detaches dead rcache mounts under `roots` after closing an orphaned connection.
    pub fn with_dead_mount_sweep(mut self, roots: Vec<PathBuf>) -> Self {
        self.sweep_roots = roots;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeeperInner> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts currently held.
    pub fn held(&self) -> Vec<String> {
        let g = self.lock();
        let mut v: Vec<String> = g
            .held
            .iter()
            .filter(|(_, h)| h.fd.is_some())
            .map(|(m, _)| m.clone())
            .collect();
        v.sort();
        v
    }

    /// Listens on `socket` (replacing a stale socket file) and serves clients on threads.
    pub fn serve(&self, socket: &Path) -> anyhow::Result<()> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot replace {}", socket.display()));
            }
        }
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "FUSE keeper listening");
        // Connections a previous keeper held died with it: their mounts are dead. On a thread:
        // a live mount whose client hangs must not keep the keeper from listening.
        let roots = self.sweep_roots.clone();
        std::thread::Builder::new()
            .name("keeper-sweep".into())
            .spawn(move || {
                for p in unmount_dead_mounts(&roots) {
                    tracing::info!(mount_point = %p.display(), "detached a dead rcache FUSE mount left from before this keeper");
                }
            })?;
        let reaper = self.clone();
        std::thread::Builder::new()
            .name("keeper-reaper".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    reaper.reap();
                }
            })?;
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    let k = self.clone();
                    std::thread::Builder::new()
                        .name("keeper-client".into())
                        .spawn(move || {
                            if let Err(e) = k.serve_client(s) {
                                tracing::warn!(error = %e, "FUSE keeper client ended with an error");
                            }
                        })?;
                }
                Err(e) => tracing::warn!(error = %e, "FUSE keeper accept failed"),
            }
        }
        Ok(())
    }

    /// Drops connections that ended (unmounted) and those no client came back to in time; the
    /// mounts of the latter are detached (see [`Keeper::with_dead_mount_sweep`]).
    pub fn reap(&self) {
        let mut g = self.lock();
        let grace = self.orphan_grace;
        let mut closed = false;
        g.held.retain(|mount, h| {
            let Some(fd) = h.fd.as_ref() else {
                return h.clients > 0;
            };
            if connection_ended(fd) {
                tracing::info!(mount, "FUSE connection ended (unmounted); released");
                return false;
            }
            if h.clients == 0 && h.orphan_since.is_some_and(|t| t.elapsed() > grace) {
                tracing::warn!(
                    mount,
                    ?grace,
                    "no FUSE client came back; closing the connection and detaching its mount"
                );
                closed = true;
                return false;
            }
            true
        });
        // Closing the last fd aborted those connections: their mounts answer ENOTCONN now.
        drop(g);
        if closed {
            for p in unmount_dead_mounts(&self.sweep_roots) {
                tracing::info!(mount_point = %p.display(), "detached a dead rcache FUSE mount");
            }
        }
    }

    fn serve_client(&self, mut sock: UnixStream) -> anyhow::Result<()> {
        let Some(Msg::Hello { mount }) = read_msg(&mut sock)? else {
            anyhow::bail!("a FUSE keeper client must start with Hello");
        };
        // Wait for the previous client's connection to end, so its journal is complete.
        let offer = {
            let (m, cv) = &*self.inner;
            let deadline = Instant::now() + KEEPER_HANDOVER_WAIT;
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let busy = g.held.get(&mount).is_some_and(|h| h.clients > 0);
                let left = deadline.saturating_duration_since(Instant::now());
                if !busy || left.is_zero() {
                    break;
                }
                g = cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let h = g.held.entry(mount.clone()).or_insert_with(|| Held {
                fd: None,
                state: TakeoverState::default(),
                clients: 0,
                orphan_since: None,
            });
            h.clients += 1;
            h.orphan_since = None;
            match h.fd.as_ref() {
                Some(fd) if !connection_ended(fd) => Some((fd.try_clone()?, h.state.clone())),
                _ => {
                    h.fd = None;
                    h.state = TakeoverState::default();
                    None
                }
            }
        };
        let res = self.client_loop(&mut sock, &mount, offer);
        let mut g = self.lock();
        if let Some(h) = g.held.get_mut(&mount) {
            h.clients = h.clients.saturating_sub(1);
            if h.clients == 0 {
                h.orphan_since = Some(Instant::now());
            }
        }
        drop(g);
        self.inner.1.notify_all();
        res
    }

    fn client_loop(
        &self,
        sock: &mut UnixStream,
        mount: &str,
        offer: Option<(OwnedFd, TakeoverState)>,
    ) -> anyhow::Result<()> {
        match offer {
            Some((fd, state)) => {
                tracing::info!(
                    mount,
                    inodes = state.inodes.len(),
                    files = state.files.len(),
                    "handing the FUSE connection to a restarted client"
                );
                write_msg(sock, &Msg::Offer { state: Some(state) })?;
                send_fd(sock, &fd)?;
            }
            None => write_msg(sock, &Msg::Offer { state: None })?,
        }
        while let Some(m) = read_msg(sock)? {
            match m {
                Msg::Adopt => {
                    let fd = recv_fd(sock)?;
                    tracing::info!(mount, "holding a new FUSE connection");
                    if let Some(h) = self.lock().held.get_mut(mount) {
                        h.fd = Some(fd);
                        h.state = TakeoverState::default();
                    }
                }
                Msg::Record(r) => {
                    if let Some(h) = self.lock().held.get_mut(mount) {
                        h.state.apply(&r);
                    }
                }
                other => anyhow::bail!("unexpected message from a FUSE client: {other:?}"),
            }
        }
        Ok(())
    }
}

/// Detaches every `fuse.rcache` mount under `roots` whose connection is gone (`ENOTCONN`),
/// innermost first; returns what it detached. Live mounts are left alone.
pub fn unmount_dead_mounts(roots: &[PathBuf]) -> Vec<PathBuf> {
    if roots.is_empty() {
        return Vec::new();
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut dead: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let fs_type = line.split(" - ").nth(1)?.split(' ').next()?;
            if fs_type != "fuse.rcache" {
                return None;
            }
            let mp = PathBuf::from(crate::mount::unescape_mountinfo(line.split(' ').nth(4)?));
            roots.iter().any(|r| mp.starts_with(r)).then_some(mp)
        })
        // statfs always reaches the connection (the root's attributes are cached for a day):
        // an aborted one answers ENOTCONN at once.
        .filter(|mp| connection_aborted(mp))
        .collect();
    dead.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    dead.dedup();
    dead.into_iter()
        .filter(|mp| match crate::mount::lazy_unmount(mp) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(mount_point = %mp.display(), error = %e, "cannot detach a dead rcache FUSE mount");
                false
            }
        })
        .collect()
}

/// True when the FUSE mount at `mp` answers `statfs` with ENOTCONN (its connection is gone).
fn connection_aborted(mp: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed statfs buffer that outlives the call.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf)
    };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// Default keeper socket on a node (inside the CSI plugin's directory, shared by hostPath with
/// the FUSE pods).
pub const DEFAULT_KEEPER_SOCKET: &str = "/var/lib/kubelet/plugins/csi.rcache.io/keeper.sock";

/// Builds a `fuser` session over a connection taken from the keeper. The kernel initialised it
/// long ago and will not send `FUSE_INIT` again, while `Session::from_fd` waits for one: the
/// session is first built over one end of a socket pair on which a synthetic `FUSE_INIT` waits,
/// then that descriptor number is atomically switched to the taken `/dev/fuse` connection
/// (`dup3`) before any request is read. Finally the kernel is asked to resend the requests the
/// previous client read but never answered.
pub fn session_over<FS: fuser::Filesystem>(
    fs: FS,
    fuse_fd: OwnedFd,
    config: fuser::Config,
) -> anyhow::Result<fuser::Session<FS>> {
    let mut pair = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two fds into the array on success.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error()).context("socketpair for the FUSE takeover");
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let init = synthetic_init();
    // SAFETY: writes `init.len()` bytes from a live buffer to a valid fd.
    let n = unsafe { libc::write(theirs.as_raw_fd(), init.as_ptr().cast(), init.len()) };
    if n != init.len() as isize {
        return Err(io::Error::last_os_error()).context("writing the synthetic FUSE_INIT");
    }
    let acl = config.acl;
    let session = fuser::Session::from_fd(fs, ours, acl, config)
        .context("starting the FUSE session over the taken connection")?;
    let slot = session.as_fd().as_raw_fd();
    // SAFETY: `slot` is the session's own descriptor and nothing reads it yet (the session's
    // threads start later); dup3 replaces it atomically, so it stays a valid open fd, now the
    // /dev/fuse connection. The socket end it named is closed by dup3.
    if unsafe { libc::dup3(fuse_fd.as_raw_fd(), slot, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).context("switching the session to /dev/fuse");
    }
    drop(theirs);
    drop(fuse_fd);
    notify_resend(session.as_fd())?;
    Ok(session)
}

/// A `FUSE_INIT` request as the kernel sends it (protocol 7.31, no flags); only `fuser`'s
/// handshake reads it, and its answer goes to the other end of the socket pair, unread.
fn synthetic_init() -> Vec<u8> {
    const FUSE_INIT: u32 = 26;
    let mut b = Vec::with_capacity(104);
    let total: u32 = 40 + 64;
    b.extend_from_slice(&total.to_le_bytes()); // len
    b.extend_from_slice(&FUSE_INIT.to_le_bytes()); // opcode
    b.extend_from_slice(&1u64.to_le_bytes()); // unique
    b.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    b.extend_from_slice(&0u32.to_le_bytes()); // uid
    b.extend_from_slice(&0u32.to_le_bytes()); // gid
    b.extend_from_slice(&0u32.to_le_bytes()); // pid
    b.extend_from_slice(&0u16.to_le_bytes()); // total_extlen
    b.extend_from_slice(&0u16.to_le_bytes()); // padding
    b.extend_from_slice(&7u32.to_le_bytes()); // major
    b.extend_from_slice(&31u32.to_le_bytes()); // minor
    b.extend_from_slice(&(1u32 << 20).to_le_bytes()); // max_readahead
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    b.extend_from_slice(&0u32.to_le_bytes()); // flags2
    b.extend_from_slice(&[0u8; 44]); // unused
    b
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9+): the kernel moves every request sent to a daemon but not
/// answered back to the pending queue, so the new client answers what the old one read.
fn notify_resend(fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&16u32.to_le_bytes()); // len
    h.extend_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes()); // error = notify code
    h.extend_from_slice(&0u64.to_le_bytes()); // unique 0 = notification
    // SAFETY: writes 16 bytes from a live buffer to the fuse fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), h.as_ptr().cast(), h.len()) };
    if n == h.len() as isize {
        tracing::info!(
            "asked the kernel to resend the requests the previous client left unanswered"
        );
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Kernels before 6.9 do not know the notification: requests the old client had read stay
    // unanswered, the rest is served.
    tracing::warn!(error = %e, "the kernel cannot resend unanswered FUSE requests (needs Linux 6.9); reads in flight at the restart may hang");
    Ok(())
}

/// Where a client finds its keeper and under which key its connection is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperOpts {
    pub socket: PathBuf,
    pub key: String,
}

impl KeeperOpts {
    /// `--keeper-socket` and `--takeover-id` (default: the mount point). `None` without a
    /// socket, or when the socket does not exist (no CSI plugin on this node): the client then
    /// runs as before and says that a restart will not keep open files.
    pub fn resolve(socket: Option<PathBuf>, key: Option<String>, mount: &Path) -> Option<Self> {
        let socket = socket.filter(|p| !p.as_os_str().is_empty())?;
        if !socket.exists() {
            tracing::warn!(socket = %socket.display(), "no FUSE keeper on this node (is the rcache CSI node plugin installed?); a restart of this client will not keep open files");
            return None;
        }
        let key = key
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| mount.to_string_lossy().into_owned());
        Some(Self { socket, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_state_follows_lookups_forgets_opens_and_releases() {
        let mut s = TakeoverState::default();
        s.apply(&Record::Lookup {
            ino: 7,
            path: "a/b".into(),
        });
        s.apply(&Record::Lookup {
            ino: 7,
            path: "a/b".into(),
        });
        s.apply(&Record::Open {
            fh: 3,
            ino: 7,
            size: 10,
            mtime_ns: 5,
        });
        s.apply(&Record::OpenDir { fh: 9, ino: 1 });
        assert_eq!(s.inodes[&7], ("a/b".to_string(), 2));
        assert_eq!(s.next_fh, 10);
        s.apply(&Record::Forget { ino: 7, n: 1 });
        assert_eq!(s.inodes[&7].1, 1);
        s.apply(&Record::Forget { ino: 7, n: 1 });
        assert!(!s.inodes.contains_key(&7));
        s.apply(&Record::Release { fh: 3 });
        s.apply(&Record::ReleaseDir { fh: 9 });
        assert!(s.files.is_empty() && s.dirs.is_empty());
        assert_eq!(s.next_fh, 10, "handle numbers are never reused");
    }

    #[test]
    fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        let m = Msg::Record(Record::Lookup {
            ino: 1 << 63,
            path: "x\ny".into(),
        });
        write_msg(&mut buf, &m).unwrap();
        assert_eq!(read_msg(&mut buf.as_slice()).unwrap(), Some(m));
        assert_eq!(read_msg(&mut &[][..]).unwrap(), None);
        let big = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_msg(&mut &big[..]).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn an_fd_crosses_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &f, b"hello").unwrap();
        send_fd(&a, &f).unwrap();
        let got = recv_fd(&b).unwrap();
        let mut g = std::fs::File::from(got);
        use std::io::Seek;
        g.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn a_keeper_hands_the_held_state_to_the_next_client() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("k.sock");
        let keeper = Keeper::new(Duration::from_secs(60));
        let k = keeper.clone();
        let s2 = sock.clone();
        std::thread::spawn(move || k.serve(&s2));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "keeper did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mnt = "team-a/demo";
        let Offer::Fresh(link) = KeeperLink::connect(&sock, mnt).unwrap() else {
            panic!("a new keeper holds nothing");
        };
        // Any fd stands for the connection here (a pipe never polls POLLERR while open).
        let (r, _w) = std::io::pipe().unwrap();
        let journal = link.adopt(&r).unwrap();
        journal.record(Record::Lookup {
            ino: 42,
            path: "f".into(),
        });
        journal.record(Record::Open {
            fh: 1,
            ino: 42,
            size: 3,
            mtime_ns: 4,
        });
        drop(journal); // the client dies
        match KeeperLink::connect(&sock, mnt).unwrap() {
            Offer::TakeOver { state, .. } => {
                assert_eq!(state.inodes[&42].0, "f");
                assert_eq!(state.files[&1].size, 3);
            }
            Offer::Fresh(_) => panic!("the keeper forgot the connection"),
        }
        assert_eq!(keeper.held(), vec![mnt.to_string()]);
    }
}
