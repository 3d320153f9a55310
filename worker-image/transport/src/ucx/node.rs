//! A UCX node: one UCP context and worker on a dedicated thread, serving (listener + `Handler`)
//! or calling (one client endpoint). Other threads hold `Send` handles that post commands on a
//! channel and wake the thread through an eventfd; replies come back on tokio oneshots.
//!
//! The thread progresses the worker, spins briefly when idle (waking through the fd costs
//! throughput, pitfall 3), then arms the worker and sleeps in poll(2) on the worker's event fd
//! and the mailbox eventfd. Messages are active messages: the AM header carries the frame header
//! and metadata, the AM data carries the payload (rendezvous for large ones, from registered
//! memory when the payload lies in the buffer pool).
//!
//! Caller-progressed calls (client only, `ClientOptions::busy_poll`): handing a request to the
//! node thread and the reply back costs two thread hand-offs, which dominate small-request
//! latency (and on a small machine a third runnable thread waits for a core). So a client node's
//! worker is `UCS_THREAD_MODE_SERIALIZED` and sits behind a lock ([`Direct`]): a latency-sensitive
//! caller takes the lock, sends, and progresses the worker itself until its reply arrives or its
//! busy-poll window ends; meanwhile the node thread parks on its mailbox only, so the path is
//! two busy threads end to end (caller and server), like `ucx_perftest`. A caller whose window
//! ends without a reply hands the wait back to the node thread (wakes it) and awaits as usual.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use ucx_sys as sys;
use ucx_sys::ucs_status_t as st;

use super::{
    Context, Listener, MemHandle, UcxConfig, Worker, ep_accept, ep_close, ep_connect, status_text,
};
use crate::auth::{AuthKey, Gate, Verdict};
use crate::bufpool::{BufferPool, ChunkMut};
use crate::fabric;
use crate::protocol::{FrameHeader, HEADER_LEN, Request, Response};
use crate::tcp::{CatchPanic, Frame, encode_into};
use crate::{ClientOptions, Connection, Handler, ServerOptions, TransportError, TransportKind};

const AM_REQUEST: u32 = 1;
const AM_REPLY: u32 = 2;
/// Eager payloads at least this large are copied into a pool chunk rather than the heap.
const EAGER_TO_CHUNK_MIN: usize = 32 << 10;
/// Metadata larger than this travels in the AM data instead of the AM header.
const INLINE_META_MAX: usize = 2048;

fn spin_time() -> Duration {
    let us = std::env::var("RCACHE_UCX_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    Duration::from_micros(us)
}

type ReplyTx = oneshot::Sender<Result<Response, TransportError>>;

enum Cmd {
    Call {
        id: u64,
        req: Request,
        reply: ReplyTx,
    },
    Cancel {
        id: u64,
    },
    Reply {
        ep: usize,
        id: u64,
        resp: Response,
    },
    Stop,
}

/// Wakes the node thread when it sleeps.
struct Wake {
    evfd: RawFd,
    sleeping: AtomicBool,
}

impl Wake {
    fn new() -> std::io::Result<Arc<Wake>> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Wake {
            evfd: fd,
            sleeping: AtomicBool::new(false),
        }))
    }

    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes to our eventfd.
            unsafe { libc::write(self.evfd, &one as *const u64 as *const c_void, 8) };
        }
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: non-blocking read of 8 bytes.
        unsafe { libc::read(self.evfd, &mut v as *mut u64 as *mut c_void, 8) };
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.evfd) };
    }
}

#[derive(Clone)]
struct Mailbox {
    tx: mpsc::Sender<Cmd>,
    wake: Arc<Wake>,
}

impl Mailbox {
    fn post(&self, cmd: Cmd) -> bool {
        let ok = self.tx.send(cmd).is_ok();
        self.wake.wake();
        ok
    }
}

/// The lock that lets a client's callers progress its node themselves (module docs).
struct Direct {
    /// Address of the node (`*const Node`) while it lives, 0 once it is gone. Every use of the
    /// node by any thread, the node thread's own included, happens while holding this lock.
    node: Mutex<usize>,
    /// Callers progressing the worker right now.
    active: AtomicUsize,
    /// Bumped by every caller-progressed call: the node thread keeps off the worker's event fd
    /// while such calls keep coming.
    seq: AtomicU64,
}

impl Direct {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The node behind a held [`Direct`] lock, if it still lives.
///
/// # Safety
/// `addr` is the value under the lock and the lock is held for as long as the reference is used.
unsafe fn node_at<'a>(addr: usize) -> Option<&'a Node> {
    (addr != 0).then(|| unsafe { &*(addr as *const Node) })
}

/// How long a node thread parked for caller-progressed calls sleeps between looks.
const DIRECT_PARK: Duration = Duration::from_millis(5);

enum Role {
    Server {
        handler: Arc<dyn Handler>,
        /// Live endpoints and their authentication state.
        eps: HashMap<usize, Gate>,
        dead: Vec<usize>,
        auth: Option<AuthKey>,
    },
    Client {
        ep: Option<sys::ucp_ep_h>,
        pending: HashMap<u64, ReplyTx>,
        closed: Arc<Mutex<Option<String>>>,
    },
}

struct State {
    role: Role,
    /// How each wired-up endpoint's bytes are counted (`fabric`), by endpoint.
    routes: HashMap<usize, fabric::Route>,
    /// Replies produced inside callbacks, sent after progress returns.
    outq: VecDeque<(usize, u64, Response)>,
    regs: Vec<MemHandle>,
}

/// Everything the node thread owns. Callbacks get `&Node` through their `arg` pointer;
/// mutable state sits in a RefCell that is never borrowed across `progress()`.
struct Node {
    worker: Worker,
    ctx: Rc<Context>,
    peer: SocketAddr,
    pool: Option<BufferPool>,
    mailbox: Mailbox,
    st: RefCell<State>,
}

enum RecvBuf {
    Chunk(ChunkMut),
    Heap(Vec<u8>),
}

struct RecvCtx {
    node: *const Node,
    hdr: FrameHeader,
    meta: Option<Bytes>,
    buf: RecvBuf,
    len: usize,
    reply_ep: usize,
}

struct SendCtx {
    _hdr: BytesMut,
    _data: Option<Bytes>,
}

impl Node {
    /// Registers any pool region not registered yet (the pool grows while serving).
    fn refresh_regs(&self, st: &mut State) {
        let Some(pool) = &self.pool else { return };
        if pool.region_count() == st.regs.len() {
            return;
        }
        for r in pool.regions().into_iter().skip(st.regs.len()) {
            match self.ctx.mem_map(r.addr as *mut u8, r.len) {
                Ok(m) => st.regs.push(m),
                Err(e) => {
                    tracing::warn!(error = %e, bytes = r.len, "cannot register buffer pool region; sends from it will be copied by UCX");
                    return;
                }
            }
        }
    }

    fn memh_for(&self, ptr: *const u8, len: usize) -> Option<sys::ucp_mem_h> {
        let mut st = self.st.borrow_mut();
        self.refresh_regs(&mut st);
        st.regs
            .iter()
            .find(|m| m.contains(ptr, len))
            .map(|m| m.raw())
    }

    /// Sends one frame as an active message. Errors are UCX status codes.
    fn send<T: Frame>(
        &self,
        ep: sys::ucp_ep_h,
        am_id: u32,
        id: u64,
        msg: &T,
        reply_flag: bool,
    ) -> Result<(), sys::ucs_status> {
        let mut hdr = BytesMut::with_capacity(HEADER_LEN + 64);
        let data = encode_into(id, msg, &mut hdr).cloned();
        let meta_len = hdr.len() - HEADER_LEN;
        // Large metadata (directory listings) rides in the data part: AM headers are limited.
        let data = if meta_len
            > INLINE_META_MAX.min(self.worker.max_am_header().saturating_sub(HEADER_LEN))
        {
            let meta = hdr.split_off(HEADER_LEN);
            let mut joined =
                BytesMut::with_capacity(meta.len() + data.as_ref().map_or(0, |d| d.len()));
            joined.extend_from_slice(&meta);
            if let Some(d) = &data {
                joined.extend_from_slice(d);
            }
            Some(joined.freeze())
        } else {
            data
        };
        let mut p = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA,
            ..Default::default()
        };
        if reply_flag {
            p.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_FLAGS;
            p.flags = sys::UCP_AM_SEND_FLAG_REPLY;
        }
        let (dptr, dlen) = data
            .as_ref()
            .map_or((std::ptr::null(), 0), |d| (d.as_ptr(), d.len()));
        if dlen > 0
            && let Some(m) = self.memh_for(dptr, dlen)
        {
            p.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_MEMH;
            p.memh = m;
        }
        p.cb.send = Some(send_done);
        let hptr = hdr.as_ptr();
        let hlen = hdr.len();
        self.count(ep as usize, (hlen + dlen) as u64, true);
        let ctx = Box::into_raw(Box::new(SendCtx {
            _hdr: hdr,
            _data: data,
        }));
        p.user_data = ctx as *mut c_void;
        // SAFETY: header and data stay alive in `ctx` until the send completes.
        let req = unsafe {
            sys::ucp_am_send_nbx(
                ep,
                am_id,
                hptr as *const c_void,
                hlen,
                dptr as *const c_void,
                dlen,
                &p,
            )
        };
        if req.is_null() {
            // SAFETY: completed immediately; the callback will not run.
            drop(unsafe { Box::from_raw(ctx) });
            Ok(())
        } else if sys::UCS_PTR_IS_ERR(req) {
            drop(unsafe { Box::from_raw(ctx) });
            Err(sys::UCS_PTR_STATUS(req))
        } else {
            Ok(())
        }
    }

    fn alloc_recv(&self, len: usize) -> (RecvBuf, Option<sys::ucp_mem_h>) {
        if let Some(pool) = &self.pool
            && len <= pool.chunk_size()
            && let Some(mut c) = pool.alloc_at_least(len)
        {
            let m = self.memh_for(c.as_mut_ptr(), len);
            return (RecvBuf::Chunk(c), m);
        }
        let mut v = Vec::with_capacity(len);
        // SAFETY: UCX writes all `len` bytes before the buffer is read (recv completion).
        #[allow(clippy::uninit_vec)]
        unsafe {
            v.set_len(len)
        };
        (RecvBuf::Heap(v), None)
    }

    /// A whole message arrived: decode and hand it on.
    /// Counts `len` bytes sent or received on endpoint `ep` against the lane carrying them.
    fn count(&self, ep: usize, len: u64, sent: bool) {
        if let Some(r) = self.st.borrow().routes.get(&ep) {
            let lane = r.lane(len);
            if sent {
                lane.add_sent(len);
            } else {
                lane.add_received(len);
            }
        }
    }

    /// Learns the lanes of `ep` once it carried its first message (wire-up is done by then).
    fn observe(&self, ep: usize) {
        if ep == 0 || self.st.borrow().routes.contains_key(&ep) {
            return;
        }
        let text = super::ep_info(ep as sys::ucp_ep_h);
        if std::env::var_os("RCACHE_UCX_PRINT_EP").is_some() {
            eprint!("{text}");
        }
        if let Some(route) = fabric::record_endpoint(&text) {
            self.st.borrow_mut().routes.insert(ep, route);
        }
    }

    fn deliver(&self, hdr: FrameHeader, meta: Bytes, data: Bytes, reply_ep: usize) {
        let ep = match &self.st.borrow().role {
            Role::Server { .. } => reply_ep,
            Role::Client { ep, .. } => ep.map_or(0, |e| e as usize),
        };
        self.observe(ep);
        self.count(ep, (HEADER_LEN + meta.len() + data.len()) as u64, false);
        let mut st = self.st.borrow_mut();
        match &mut st.role {
            Role::Server {
                handler, eps, auth, ..
            } => {
                let handler = handler.clone();
                match Request::decode(hdr.op, &meta, data) {
                    Ok(req) => {
                        let gate = eps
                            .entry(reply_ep)
                            .or_insert_with(|| Gate::new(auth.clone(), TransportKind::Ucx));
                        match gate.admit(req) {
                            Verdict::Handle(req) => {
                                drop(st);
                                self.dispatch(handler, req, reply_ep, hdr.id);
                            }
                            // A refused endpoint stays refused: its every request gets the
                            // refusal and never reaches the handler; the client, told so,
                            // closes it.
                            Verdict::Reply(resp) | Verdict::Close(resp) => {
                                st.outq.push_back((reply_ep, hdr.id, resp))
                            }
                        }
                    }
                    Err(e) => st.outq.push_back((
                        reply_ep,
                        hdr.id,
                        Response::error(e.code(), format!("bad request: {e}")),
                    )),
                }
            }
            Role::Client { pending, .. } => {
                let resp =
                    Response::decode(hdr.op, &meta, data).map_err(|e| TransportError::Protocol {
                        addr: self.peer,
                        reason: e.to_string(),
                    });
                if let Some(tx) = pending.remove(&hdr.id) {
                    let _ = tx.send(resp);
                }
            }
        }
    }

    /// Polls the handler once in place (cache hits finish without waiting); otherwise it
    /// continues on the tokio runtime and the reply comes back through the mailbox.
    fn dispatch(&self, handler: Arc<dyn Handler>, req: Request, ep: usize, id: u64) {
        let mut fut = CatchPanic::handle(handler, req);
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(resp) => self.st.borrow_mut().outq.push_back((ep, id, resp)),
            Poll::Pending => {
                let mb = self.mailbox.clone();
                tokio::spawn(async move {
                    let resp = fut.await;
                    mb.post(Cmd::Reply { ep, id, resp });
                });
            }
        }
    }

    fn flush_outq(&self) -> u32 {
        let mut n = 0;
        loop {
            let item = self.st.borrow_mut().outq.pop_front();
            let Some((ep, id, resp)) = item else { break };
            n += 1;
            self.reply(ep, id, resp);
        }
        n
    }

    fn reply(&self, ep: usize, id: u64, resp: Response) {
        let alive = match &self.st.borrow().role {
            Role::Server { eps, .. } => eps.contains_key(&ep),
            Role::Client { .. } => false,
        };
        if !alive {
            return; // the client went away; nothing to answer
        }
        if let Err(s) = self.send(ep as sys::ucp_ep_h, AM_REPLY, id, &resp, false) {
            tracing::debug!(status = %status_text(s), "UCX reply failed");
        }
    }

    fn exec(&self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Stop => return false,
            Cmd::Reply { ep, id, resp } => self.reply(ep, id, resp),
            Cmd::Cancel { id } => {
                if let Role::Client { pending, .. } = &mut self.st.borrow_mut().role {
                    pending.remove(&id);
                }
            }
            Cmd::Call { id, req, reply } => {
                let ep = {
                    let mut st = self.st.borrow_mut();
                    let Role::Client {
                        ep,
                        pending,
                        closed,
                    } = &mut st.role
                    else {
                        return true;
                    };
                    if let Some(reason) = closed.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                        let _ = reply.send(Err(TransportError::Io {
                            addr: self.peer,
                            reason,
                        }));
                        return true;
                    }
                    let Some(ep) = *ep else { return true };
                    pending.insert(id, reply);
                    ep
                };
                if let Err(s) = self.send(ep, AM_REQUEST, id, &req, true) {
                    self.fail_client(format!("UCX send failed: {}", status_text(s)));
                }
            }
        }
        true
    }

    fn fail_client(&self, reason: String) {
        let mut st = self.st.borrow_mut();
        if let Role::Client {
            pending, closed, ..
        } = &mut st.role
        {
            *closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
            for (_, tx) in pending.drain() {
                let _ = tx.send(Err(TransportError::Io {
                    addr: self.peer,
                    reason: reason.clone(),
                }));
            }
        }
    }

    /// Closes endpoints that reported errors (outside callbacks).
    fn reap(&self) {
        let dead: Vec<usize> = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            match &mut st.role {
                Role::Server { dead, eps, .. } => {
                    for d in dead.iter() {
                        eps.remove(d);
                        st.routes.remove(d);
                    }
                    std::mem::take(dead)
                }
                Role::Client { .. } => Vec::new(),
            }
        };
        for ep in dead {
            // SAFETY: endpoint of this worker, removed from the live set above.
            let r = unsafe { ep_close(ep as sys::ucp_ep_h, true) };
            // SAFETY: r is ep_close's request on this worker.
            let _ = unsafe {
                self.worker
                    .wait("ucp_ep_close_nbx", r, Duration::from_secs(1))
            };
        }
    }

    /// Progresses until the worker has nothing more to do; returns the events handled.
    fn progress_all(&self) -> u32 {
        let mut work = 0;
        loop {
            let n = self.worker.progress();
            if n == 0 {
                return work;
            }
            work += n;
        }
    }

    /// True when no call waits for a reply (always true for a server).
    fn nothing_pending(&self) -> bool {
        match &self.st.borrow().role {
            Role::Client { pending, .. } => pending.is_empty(),
            Role::Server { .. } => true,
        }
    }

    /// Sleeps on the mailbox alone for up to `limit`, unless a command is queued (returned, for
    /// the caller to execute) or `stay_awake()` holds. Both are checked after the sleeping flag
    /// is up, so a concurrent `Wake::wake` is never lost.
    fn park_on_mailbox(
        &self,
        rx: &mpsc::Receiver<Cmd>,
        limit: Duration,
        stay_awake: impl Fn() -> bool,
    ) -> Option<Cmd> {
        let wake = &self.mailbox.wake;
        wake.sleeping.store(true, Ordering::SeqCst);
        let queued = rx.try_recv().ok();
        if queued.is_none() && !stay_awake() {
            let mut fd = libc::pollfd {
                fd: wake.evfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, limit.as_millis() as i32) };
            if fd.revents != 0 {
                wake.drain();
            }
        }
        wake.sleeping.store(false, Ordering::SeqCst);
        queued
    }

    /// The node thread's loop. With `direct` (a client whose callers may progress the worker
    /// themselves) every use of the node happens under the `Direct` lock, and while callers
    /// progress it the thread parks on its mailbox instead of the worker's event fd.
    fn run(&self, rx: &mpsc::Receiver<Cmd>, direct: Option<&Direct>) {
        let spin = spin_time();
        let mut idle = Instant::now();
        let mut seen_seq = 0u64;
        loop {
            let guard = direct.map(Direct::lock);
            let mut work = 0u32;
            while let Ok(cmd) = rx.try_recv() {
                work += 1;
                if !self.exec(cmd) {
                    return;
                }
            }
            work += self.progress_all();
            work += self.flush_outq();
            self.reap();
            if work > 0 {
                idle = Instant::now();
                continue;
            }
            if let Some(d) = direct {
                let seq = d.seq.load(Ordering::SeqCst);
                if d.active.load(Ordering::SeqCst) > 0
                    || (seq != seen_seq && self.nothing_pending())
                {
                    // Callers are progressing the worker (or were a moment ago and nothing is
                    // left to wait for): keep off the event fd, look again in a while.
                    seen_seq = seq;
                    drop(guard);
                    // A caller whose window ended without its reply leaves the call pending
                    // and wakes us: then this thread must wait on the worker again.
                    let handed_back = || {
                        let _g = d.lock();
                        d.active.load(Ordering::SeqCst) == 0 && !self.nothing_pending()
                    };
                    if let Some(cmd) = self.park_on_mailbox(rx, DIRECT_PARK, handed_back) {
                        let _g = d.lock();
                        if !self.exec(cmd) {
                            return;
                        }
                    }
                    idle = Instant::now();
                    continue;
                }
            }
            if idle.elapsed() < spin {
                // Yield rather than burn the core: on small machines the thread that must run
                // next (the caller's tokio worker, the peer) may be waiting for this CPU.
                drop(guard);
                std::thread::yield_now();
                continue;
            }
            match self.worker.arm() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "ucp_worker_arm");
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            self.mailbox.wake.sleeping.store(true, Ordering::SeqCst);
            if let Ok(cmd) = rx.try_recv() {
                self.mailbox.wake.sleeping.store(false, Ordering::SeqCst);
                if !self.exec(cmd) {
                    return;
                }
                idle = Instant::now();
                continue;
            }
            if let Some(d) = direct
                && d.active.load(Ordering::SeqCst) > 0
            {
                // A caller started progressing after our look above: do not sleep on the fd.
                self.mailbox.wake.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            drop(guard);
            let mut fds = [
                libc::pollfd {
                    fd: self.worker.event_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.mailbox.wake.evfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
            self.mailbox.wake.sleeping.store(false, Ordering::SeqCst);
            if fds[1].revents != 0 {
                self.mailbox.wake.drain();
            }
            idle = Instant::now();
        }
    }

    /// Closes every endpoint (flush, then force) before the worker goes.
    fn close_all(&self) {
        let eps: Vec<usize> = match &mut self.st.borrow_mut().role {
            Role::Server { eps, .. } => eps.drain().map(|(ep, _)| ep).collect(),
            Role::Client { ep, .. } => ep.take().map(|e| e as usize).into_iter().collect(),
        };
        for ep in eps {
            // SAFETY: live endpoint of this worker, not used afterwards.
            let r = unsafe { ep_close(ep as sys::ucp_ep_h, false) };
            // A reset peer makes the flush fail: that is a close too. Force only on timeout.
            // SAFETY: r is ep_close's request on this worker.
            if let Err(e) = unsafe {
                self.worker
                    .wait("ucp_ep_close_nbx", r, Duration::from_secs(2))
            } && e.status == st::UCS_ERR_TIMED_OUT
            {
                let r = unsafe { ep_close(ep as sys::ucp_ep_h, true) };
                let _ = unsafe {
                    self.worker
                        .wait("ucp_ep_close_nbx(force)", r, Duration::from_secs(1))
                };
            }
        }
        self.fail_client("connection closed".into());
    }
}

unsafe extern "C" fn send_done(req: *mut c_void, _status: sys::ucs_status, user_data: *mut c_void) {
    // SAFETY: user_data is the SendCtx boxed in Node::send; the request is ours to free.
    unsafe {
        drop(Box::from_raw(user_data as *mut SendCtx));
        sys::ucp_request_free(req);
    }
}

unsafe extern "C" fn recv_done(
    req: *mut c_void,
    status: sys::ucs_status,
    _len: usize,
    user_data: *mut c_void,
) {
    // SAFETY: user_data is the RecvCtx boxed in am_recv; the request is ours to free.
    let ctx = unsafe { Box::from_raw(user_data as *mut RecvCtx) };
    unsafe { sys::ucp_request_free(req) };
    if status != st::UCS_OK {
        tracing::debug!(status = %status_text(status), "UCX rendezvous receive failed");
        return;
    }
    finish_recv(*ctx);
}

fn finish_recv(ctx: RecvCtx) {
    // SAFETY: the node outlives its worker's callbacks.
    let node = unsafe { &*ctx.node };
    let all = match ctx.buf {
        RecvBuf::Chunk(c) => c.freeze(ctx.len),
        RecvBuf::Heap(v) => Bytes::from(v),
    };
    let (meta, data) = match ctx.meta {
        Some(m) => (m, all),
        None => {
            let ml = (ctx.hdr.meta_len as usize).min(all.len());
            (all.slice(..ml), all.slice(ml..))
        }
    };
    node.deliver(ctx.hdr, meta, data, ctx.reply_ep);
}

unsafe extern "C" fn am_recv(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status {
    // SAFETY: arg is the Node registered with this handler; header/data valid for the call.
    let node = unsafe { &*(arg as *const Node) };
    let param = unsafe { &*param };
    let hdr_bytes = if header.is_null() {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(header as *const u8, header_length) }
    };
    let reply_ep = param.reply_ep as usize;
    let hdr = match FrameHeader::decode(hdr_bytes) {
        Ok(h) => h,
        Err((id, e)) => {
            tracing::debug!(error = %e, "bad UCX frame");
            if reply_ep != 0 {
                node.st.borrow_mut().outq.push_back((
                    reply_ep,
                    id.unwrap_or(0),
                    Response::error(e.code(), format!("bad frame: {e}")),
                ));
            }
            return st::UCS_OK;
        }
    };
    let inline_meta = header_length == HEADER_LEN + hdr.meta_len as usize;
    let expect = hdr.data_len as usize
        + if inline_meta {
            0
        } else {
            hdr.meta_len as usize
        };
    if length != expect {
        if reply_ep != 0 {
            node.st.borrow_mut().outq.push_back((
                reply_ep,
                hdr.id,
                Response::error(
                    crate::ErrorCode::InvalidRequest,
                    "frame lengths do not match the message",
                ),
            ));
        }
        return st::UCS_OK;
    }
    let meta = inline_meta.then(|| Bytes::copy_from_slice(&hdr_bytes[HEADER_LEN..]));
    if param.recv_attr & sys::UCP_AM_RECV_ATTR_FLAG_RNDV as u64 != 0 {
        let (mut buf, memh) = node.alloc_recv(length);
        let dst = match &mut buf {
            RecvBuf::Chunk(c) => c.as_mut_ptr(),
            RecvBuf::Heap(v) => v.as_mut_ptr(),
        };
        let ctx = Box::into_raw(Box::new(RecvCtx {
            node,
            hdr,
            meta,
            buf,
            len: length,
            reply_ep,
        }));
        let mut p = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA,
            user_data: ctx as *mut c_void,
            ..Default::default()
        };
        p.cb.recv_am = Some(recv_done);
        if let Some(m) = memh {
            p.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_MEMH;
            p.memh = m;
        }
        // SAFETY: data is the rendezvous descriptor; dst stays alive in ctx until completion.
        let req = unsafe {
            sys::ucp_am_recv_data_nbx(node.worker.h, data, dst as *mut c_void, length, &p)
        };
        if req.is_null() {
            finish_recv(*unsafe { Box::from_raw(ctx) });
        } else if sys::UCS_PTR_IS_ERR(req) {
            drop(unsafe { Box::from_raw(ctx) });
            tracing::debug!(status = %status_text(sys::UCS_PTR_STATUS(req)), "ucp_am_recv_data_nbx");
        }
        return st::UCS_OK;
    }
    // Eager data lives in UCX's receive buffer only during this call: copy it out, into a
    // pool chunk when it is large (no allocation, pages already touched).
    let body = if length == 0 {
        Bytes::new()
    } else {
        // SAFETY: UCX passes `length` readable bytes at `data` for the duration of the call.
        let src = unsafe { std::slice::from_raw_parts(data as *const u8, length) };
        match node
            .pool
            .as_ref()
            .filter(|p| length >= EAGER_TO_CHUNK_MIN && length <= p.chunk_size())
            .and_then(|p| p.alloc())
        {
            Some(mut c) => {
                c.as_mut_slice()[..length].copy_from_slice(src);
                c.freeze(length)
            }
            None => Bytes::copy_from_slice(src),
        }
    };
    let (meta, data) = match meta {
        Some(m) => (m, body),
        None => {
            let ml = (hdr.meta_len as usize).min(body.len());
            (body.slice(..ml), body.slice(ml..))
        }
    };
    node.deliver(hdr, meta, data, reply_ep);
    st::UCS_OK
}

unsafe extern "C" fn on_conn(conn: sys::ucp_conn_request_h, arg: *mut c_void) {
    // SAFETY: arg is the Node.
    let node = unsafe { &*(arg as *const Node) };
    match unsafe { ep_accept(&node.worker, conn, Some(on_ep_error), arg) } {
        Ok(ep) => {
            if let Role::Server { eps, auth, .. } = &mut node.st.borrow_mut().role {
                eps.insert(ep as usize, Gate::new(auth.clone(), TransportKind::Ucx));
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot accept UCX connection"),
    }
}

unsafe extern "C" fn on_ep_error(arg: *mut c_void, ep: sys::ucp_ep_h, status: sys::ucs_status) {
    // SAFETY: arg is the Node.
    let node = unsafe { &*(arg as *const Node) };
    let reason = format!("UCX endpoint failed: {}", status_text(status));
    let is_client = matches!(node.st.borrow().role, Role::Client { .. });
    if is_client {
        node.fail_client(reason);
    } else if let Role::Server { dead, .. } = &mut node.st.borrow_mut().role {
        tracing::debug!(%reason, "client endpoint closed");
        dead.push(ep as usize);
    }
}

/// Builds the context, worker and node on the current (dedicated) thread.
fn build_node(
    cfg: &UcxConfig,
    peer: SocketAddr,
    pool: Option<BufferPool>,
    role: Role,
    mailbox: Mailbox,
) -> Result<Box<Node>, String> {
    let ctx = Context::new(cfg).map_err(|e| e.to_string())?;
    fabric::record_context(&ctx.info());
    // A client's worker may be progressed by its callers too (under the `Direct` lock).
    let worker = match role {
        Role::Client { .. } => Worker::new_serialized(&ctx),
        Role::Server { .. } => Worker::new(&ctx),
    }
    .map_err(|e| e.to_string())?;
    let node = Box::new(Node {
        worker,
        ctx,
        peer,
        pool,
        mailbox,
        st: RefCell::new(State {
            role,
            outq: VecDeque::new(),
            regs: Vec::new(),
            routes: HashMap::new(),
        }),
    });
    {
        let mut st = node.st.borrow_mut();
        node.refresh_regs(&mut st);
    }
    let arg = &*node as *const Node as *mut c_void;
    for id in [AM_REQUEST, AM_REPLY] {
        // SAFETY: the node is boxed (stable address) and outlives the worker's use of it.
        unsafe { node.worker.set_am_handler(id, Some(am_recv), arg) }.map_err(|e| e.to_string())?;
    }
    Ok(node)
}

// ---------------------------------------------------------------------------------------------
// Server

pub(crate) struct UcxServer {
    pub local_addr: SocketAddr,
    mailbox: Mailbox,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

impl UcxServer {
    pub async fn shutdown(&self) {
        self.mailbox.post(Cmd::Stop);
        let rx = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }
}

impl Drop for UcxServer {
    fn drop(&mut self) {
        self.mailbox.post(Cmd::Stop);
    }
}

fn ucx_config(devices: &Option<String>, gid_index: Option<u32>) -> UcxConfig {
    UcxConfig {
        net_devices: devices.clone(),
        gid_index,
    }
}

pub(crate) async fn listen(
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    opts: ServerOptions,
) -> Result<UcxServer, TransportError> {
    let lerr = |reason: String| TransportError::Listen { addr, reason };
    let rt = tokio::runtime::Handle::current();
    let wake = Wake::new().map_err(|e| lerr(e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    let mailbox = Mailbox { tx, wake };
    let (ready_tx, ready_rx) = oneshot::channel::<Result<SocketAddr, String>>();
    let (done_tx, done_rx) = oneshot::channel();
    let mb = mailbox.clone();
    let cfg = ucx_config(&opts.ucx_devices, opts.ucx_gid_index);
    std::thread::Builder::new()
        .name(format!("ucx-server-{}", addr.port()))
        .spawn(move || {
            let _rt = rt.enter();
            let role = Role::Server {
                handler,
                eps: HashMap::new(),
                dead: Vec::new(),
                auth: opts.auth.clone(),
            };
            let node = match build_node(&cfg, addr, opts.pool.clone(), role, mb) {
                Ok(n) => n,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let arg = &*node as *const Node as *mut c_void;
            // SAFETY: the node outlives the listener (dropped first below).
            let listener = match unsafe { Listener::new(&node.worker, addr, Some(on_conn), arg) } {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(listener.local_addr));
            node.run(&rx, None);
            drop(listener);
            node.close_all();
            drop(node);
            let _ = done_tx.send(());
        })
        .map_err(|e| lerr(e.to_string()))?;
    let local_addr = match ready_rx.await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(lerr(e)),
        Err(_) => return Err(lerr("UCX thread ended during start".into())),
    };
    tracing::info!(%local_addr, "UCX data server listening");
    Ok(UcxServer {
        local_addr,
        mailbox,
        done: Mutex::new(Some(done_rx)),
    })
}

// ---------------------------------------------------------------------------------------------
// Client

pub(crate) struct UcxConnection {
    peer: SocketAddr,
    mailbox: Mailbox,
    direct: Arc<Direct>,
    next_id: AtomicU64,
    closed: Arc<Mutex<Option<String>>>,
    timeout: Option<Duration>,
    busy_poll: Option<Duration>,
}

impl Drop for UcxConnection {
    fn drop(&mut self) {
        self.mailbox.post(Cmd::Stop);
    }
}

pub(crate) async fn connect(
    addr: SocketAddr,
    opts: &ClientOptions,
) -> Result<UcxConnection, TransportError> {
    let cerr = |reason: String| TransportError::Connect { addr, reason };
    let wake = Wake::new().map_err(|e| cerr(e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    let mailbox = Mailbox { tx, wake };
    let closed = Arc::new(Mutex::new(None));
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let mb = mailbox.clone();
    let cfg = ucx_config(&opts.ucx_devices, opts.ucx_gid_index);
    let pool = opts.pool.clone();
    let closed2 = closed.clone();
    let direct = Arc::new(Direct {
        node: Mutex::new(0),
        active: AtomicUsize::new(0),
        seq: AtomicU64::new(0),
    });
    let direct2 = direct.clone();
    std::thread::Builder::new()
        .name(format!("ucx-client-{}", addr.port()))
        .spawn(move || {
            let role = Role::Client {
                ep: None,
                pending: HashMap::new(),
                closed: closed2,
            };
            let node = match build_node(&cfg, addr, pool, role, mb) {
                Ok(n) => n,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let arg = &*node as *const Node as *mut c_void;
            // SAFETY: the node outlives the endpoint (closed in close_all).
            match unsafe { ep_connect(&node.worker, addr, Some(on_ep_error), arg) } {
                Ok(ep) => {
                    if let Role::Client { ep: slot, .. } = &mut node.st.borrow_mut().role {
                        *slot = Some(ep);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            }
            *direct2.lock() = &*node as *const Node as usize;
            let _ = ready_tx.send(Ok(()));
            node.run(&rx, Some(&direct2));
            let mut g = direct2.lock();
            *g = 0;
            node.close_all();
            drop(g);
        })
        .map_err(|e| cerr(e.to_string()))?;
    match tokio::time::timeout(opts.connect_timeout, ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(cerr(e)),
        Ok(Err(_)) => return Err(cerr("UCX thread ended during connect".into())),
        Err(_) => {
            return Err(TransportError::Timeout {
                addr,
                after_ms: opts.connect_timeout.as_millis() as u64,
            });
        }
    }
    Ok(UcxConnection {
        peer: addr,
        mailbox,
        direct,
        next_id: AtomicU64::new(1),
        closed,
        timeout: opts.request_timeout,
        busy_poll: opts.busy_poll,
    })
}

struct CancelGuard<'a> {
    mailbox: &'a Mailbox,
    id: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.mailbox.post(Cmd::Cancel { id: self.id });
        }
    }
}

impl UcxConnection {
    fn stopped(&self) -> TransportError {
        TransportError::Io {
            addr: self.peer,
            reason: "UCX connection thread has stopped".into(),
        }
    }

    /// A caller-progressed call (module docs): send and progress the worker on this thread
    /// until the reply arrives or `window` passes; then hand the wait back to the node thread.
    async fn call_progressing(
        &self,
        req: Request,
        window: Duration,
    ) -> Result<Response, TransportError> {
        let d = &*self.direct;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        d.active.fetch_add(1, Ordering::SeqCst);
        d.seq.fetch_add(1, Ordering::SeqCst);
        {
            let g = d.lock();
            // SAFETY: the address under the held lock.
            let Some(node) = (unsafe { node_at(*g) }) else {
                d.active.fetch_sub(1, Ordering::SeqCst);
                return Err(self.stopped());
            };
            node.exec(Cmd::Call { id, req, reply: tx });
            node.progress_all();
        }
        let start = Instant::now();
        let mut idle_spins = 0u32;
        let mut polls = 0u32;
        let outcome = loop {
            match rx.try_recv() {
                Ok(r) => break Some(r),
                Err(oneshot::error::TryRecvError::Closed) => break Some(Err(self.stopped())),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            polls = polls.wrapping_add(1);
            // Reading the clock costs as much as a poll: look every 16th round.
            if polls.is_multiple_of(16) && start.elapsed() >= window {
                break None;
            }
            let progressed = match d.node.try_lock() {
                // SAFETY: the address under the held lock.
                Ok(g) => unsafe { node_at(*g) }.map_or(0, Node::progress_all),
                Err(_) => 0,
            };
            if progressed == 0 {
                idle_spins += 1;
                // Mostly spin (the reply is microseconds away); yield now and then so an
                // oversubscribed machine still runs the peer.
                if idle_spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        };
        d.active.fetch_sub(1, Ordering::SeqCst);
        if let Some(r) = outcome {
            return r;
        }
        // Window over: the node thread waits for the reply from here on.
        self.mailbox.wake.wake();
        let guard = CancelGuard {
            mailbox: &self.mailbox,
            id,
            armed: true,
        };
        self.await_reply(rx, guard).await
    }

    async fn await_reply(
        &self,
        rx: oneshot::Receiver<Result<Response, TransportError>>,
        mut guard: CancelGuard<'_>,
    ) -> Result<Response, TransportError> {
        let res = match self.timeout {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(TransportError::Timeout {
                        addr: self.peer,
                        after_ms: t.as_millis() as u64,
                    });
                }
            },
            None => rx.await,
        };
        guard.armed = false;
        res.unwrap_or_else(|_| {
            Err(TransportError::Io {
                addr: self.peer,
                reason: "connection closed".into(),
            })
        })
    }
}

#[async_trait::async_trait]
impl Connection for UcxConnection {
    async fn call(&self, req: Request) -> Result<Response, TransportError> {
        if let Some(reason) = self
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(TransportError::Io {
                addr: self.peer,
                reason,
            });
        }
        if let Some(window) = self.busy_poll {
            return self.call_progressing(req, window).await;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if !self.mailbox.post(Cmd::Call { id, req, reply: tx }) {
            return Err(self.stopped());
        }
        let guard = CancelGuard {
            mailbox: &self.mailbox,
            id,
            armed: true,
        };
        self.await_reply(rx, guard).await
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Ucx
    }
}

#[cfg(test)]
mod tests {
    use crate::bufpool::{BufferPool, PoolConfig};
    use crate::protocol::{DirEntry, ErrorCode, FileStat};
    use crate::{
        ClientOptions, Handler, Request, Response, ServerOptions, TransportKind, connect, listen,
    };
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Duration;

    struct Served {
        pool_bytes: Bytes,
    }

    #[async_trait::async_trait]
    impl Handler for Served {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Ping => Response::Pong,
                Request::BenchRead { len } => Response::Data(self.pool_bytes.slice(..len as usize)),
                Request::BenchWrite { payload } => {
                    if payload
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == (i % 251) as u8)
                    {
                        Response::Ack
                    } else {
                        Response::error(ErrorCode::InvalidRequest, "payload corrupted")
                    }
                }
                Request::List { .. } => {
                    // Metadata far beyond an AM header: travels in the AM data.
                    let st = FileStat {
                        size: 1,
                        is_dir: false,
                        mode: 0o100644,
                        mtime_ns: 0,
                    };
                    Response::List(
                        (0..5000)
                            .map(|i| DirEntry {
                                name: format!("file-{i:05}"),
                                stat: st.clone(),
                            })
                            .collect(),
                    )
                }
                Request::Stat { .. } => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Response::Stat(FileStat::default())
                }
                Request::Read { .. } => Response::error(ErrorCode::NotFound, "no such file"),
                Request::Load { .. } => Response::error(ErrorCode::Unsupported, "no loads here"),
                Request::AuthHello | Request::AuthProof { .. } => {
                    Response::error(ErrorCode::InvalidRequest, "answered by the transport")
                }
            }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A UCX server on 127.0.0.1 (port 0) whose `Served` handler answers reads from one pool
    /// chunk of `chunk_size` filled with `pattern`.
    async fn served(chunk_size: usize, max: usize) -> crate::Server {
        let pool = BufferPool::new(PoolConfig {
            chunk_size,
            initial: max / 2,
            prewarm: chunk_size,
            max,
        })
        .unwrap();
        let mut c = pool.alloc().unwrap();
        let n = c.capacity();
        c.as_mut_slice().copy_from_slice(&pattern(n));
        let h = Arc::new(Served {
            pool_bytes: c.freeze(n),
        });
        let opts = ServerOptions {
            pool: Some(pool),
            ..Default::default()
        };
        listen(TransportKind::Ucx, "127.0.0.1:0".parse().unwrap(), h, opts)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_rendezvous_payload_lands_in_a_piece_of_the_client_pool_not_a_chunk() {
        let s = served(1 << 20, 8 << 20).await;
        let cpool = BufferPool::new(PoolConfig {
            chunk_size: 1 << 20,
            initial: 2 << 20,
            prewarm: 0,
            max: 2 << 20,
        })
        .unwrap();
        let copts = ClientOptions {
            pool: Some(cpool.clone()),
            ..Default::default()
        };
        let conn = connect(TransportKind::Ucx, s.local_addr(), copts)
            .await
            .unwrap();
        // 64 KiB is past every rendezvous threshold here (tcp 20553, posix 8256 bytes).
        match conn
            .call(Request::BenchRead { len: 64 << 10 })
            .await
            .unwrap()
        {
            Response::Data(d) => {
                assert_eq!(&d[..], &pattern(64 << 10)[..]);
                assert!(cpool.region_of(d.as_ptr(), d.len()).is_some());
                assert_eq!(cpool.stats().in_use_bytes, 64 << 10, "a piece, not 1 MiB");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Server and client in one process over whatever transports UCX picks here (shared
    /// memory and tcp); the process-level tests pin UCX_TLS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ucx_serves_registered_memory_pipelined_large_metadata_and_async_handlers() {
        let s = served(2 << 20, 16 << 20).await;
        assert_ne!(s.local_addr().port(), 0);
        let cpool = BufferPool::new(PoolConfig {
            chunk_size: 1 << 20,
            initial: 8 << 20,
            prewarm: 0,
            max: 8 << 20,
        })
        .unwrap();
        let copts = ClientOptions {
            pool: Some(cpool),
            ..Default::default()
        };
        let conn = connect(TransportKind::Ucx, s.local_addr(), copts)
            .await
            .unwrap();
        assert_eq!(conn.kind(), TransportKind::Ucx);

        let mut tasks = Vec::new();
        for i in 0..32usize {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let len = [100, 4096, 65536, 1 << 20, (2 << 20) - 7][i % 5];
                match conn
                    .call(Request::BenchRead { len: len as u32 })
                    .await
                    .unwrap()
                {
                    Response::Data(d) => assert_eq!(&d[..], &pattern(len)[..], "read of {len}"),
                    other => panic!("unexpected {other:?}"),
                }
                let w = Bytes::from(pattern(len));
                assert_eq!(
                    conn.call(Request::BenchWrite { payload: w }).await.unwrap(),
                    Response::Ack
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        match conn.call(Request::List { path: "".into() }).await.unwrap() {
            Response::List(v) => {
                assert_eq!(v.len(), 5000);
                assert_eq!(v[4999].name, "file-04999");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            conn.call(Request::Stat { path: "x".into() }).await.unwrap(),
            Response::Stat(FileStat::default())
        );
        assert!(matches!(
            conn.call(Request::Read {
                path: "a".into(),
                offset: 0,
                len: 1,
                expect: None,
            })
            .await
            .unwrap(),
            Response::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ));
        s.shutdown().await;
        let mut failed = false;
        for _ in 0..100 {
            if conn.call(Request::Ping).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(failed, "calls must fail once the server is gone");
    }

    /// Caller-progressed calls (`busy_poll`): replies inside the window come back on the
    /// caller's own progress; a reply slower than the window (5 ms `Stat`) is handed back to the
    /// node thread and still arrives; concurrent callers do not lose or mix up replies; after
    /// the callers stop, the idle connection still answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caller_progressed_calls_get_their_replies_fast_or_slow() {
        let s = served(1 << 20, 4 << 20).await;
        let copts = ClientOptions {
            busy_poll: Some(Duration::from_micros(500)),
            ..Default::default()
        };
        let conn = connect(TransportKind::Ucx, s.local_addr(), copts)
            .await
            .unwrap();
        for i in 0..200usize {
            let len = [1, 4096, 65536][i % 3];
            match conn
                .call(Request::BenchRead { len: len as u32 })
                .await
                .unwrap()
            {
                Response::Data(d) => assert_eq!(&d[..], &pattern(len)[..], "read {i} of {len}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Slower than the window: handed back to the node thread.
        for _ in 0..3 {
            assert_eq!(
                conn.call(Request::Stat { path: "x".into() }).await.unwrap(),
                Response::Stat(FileStat::default())
            );
        }
        // Four callers at once, mixing fast and slow requests.
        let mut tasks = Vec::new();
        for t in 0..4usize {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50usize {
                    if (i + t) % 17 == 0 {
                        assert_eq!(
                            conn.call(Request::Stat { path: "x".into() }).await.unwrap(),
                            Response::Stat(FileStat::default())
                        );
                        continue;
                    }
                    let len = 512 * (t + 1) + i;
                    match conn
                        .call(Request::BenchRead { len: len as u32 })
                        .await
                        .unwrap()
                    {
                        Response::Data(d) => assert_eq!(&d[..], &pattern(len)[..]),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Idle long enough for the node thread to go back to sleeping on the worker's fd.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conn.call(Request::Ping).await.unwrap(), Response::Pong);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails_with_the_address() {
        // Bind and drop a TCP listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let e = match connect(TransportKind::Ucx, addr, opts).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e,
        };
        assert!(e.to_string().contains(&port.to_string()), "{e}");
    }
}
