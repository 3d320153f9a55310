//! UCX: a small safe layer over `ucx-sys` (context, worker, listener, endpoint, active
//! messages, memory registration, rkeys and RMA get) and, in `node`, the transport built on it.
//!
//! Every UCP object here is used by exactly one thread (`UCS_THREAD_MODE_SINGLE`): the types
//! are `!Send` and live on a node's dedicated thread; other threads talk to that thread through
//! channels (see `node`). Pitfalls followed (shared/notes/ucx.md): `ucp_init_version`, zeroed
//! params with every `field_mask` bit set, `UCP_FEATURE_WAKEUP` for the event fd, error handlers
//! on every endpoint, `MM_ERROR_HANDLING=y` so shared memory survives peer error handling,
//! listener port read back with `ucp_listener_query`, `ucp_ep_close_nbx` + progress to close.

pub(crate) mod node;

use std::ffi::{CStr, CString, c_void};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use ucx_sys as sys;
use ucx_sys::ucs_status_t as st;

pub(crate) use node::{UcxServer, connect, listen};

/// A UCX call that failed, with the call's name and UCX's text for the status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} failed: {text} (status {status})")]
pub struct UcxError {
    pub op: &'static str,
    pub status: i8,
    pub text: String,
}

pub fn status_text(status: sys::ucs_status) -> String {
    // SAFETY: ucs_status_string returns a static string for any status.
    unsafe { CStr::from_ptr(sys::ucs_status_string(status)) }
        .to_string_lossy()
        .into_owned()
}

fn check(op: &'static str, status: sys::ucs_status) -> Result<(), UcxError> {
    if status == st::UCS_OK {
        Ok(())
    } else {
        Err(UcxError {
            op,
            status,
            text: status_text(status),
        })
    }
}

fn err(op: &'static str, status: sys::ucs_status) -> UcxError {
    UcxError {
        op,
        status,
        text: status_text(status),
    }
}

/// UCX configuration overrides applied on top of the `UCX_*` environment.
#[derive(Clone, Debug, Default)]
pub struct UcxConfig {
    /// `NET_DEVICES` (e.g. `mlx5_0:1`, or `lo` in tests); `None` keeps UCX's choice / the env.
    pub net_devices: Option<String>,
    /// `IB_GID_INDEX` (RoCE); `None` keeps UCX's choice / the env.
    pub gid_index: Option<u32>,
}

/// True when `UCX_TLS` allows shared-memory transports (unset, `all`, `sm`, `mm`, `posix`, `sysv`).
fn tls_include_mm() -> bool {
    match std::env::var("UCX_TLS") {
        Err(_) => true,
        Ok(v) => v.split(',').any(|t| {
            matches!(
                t.trim().trim_start_matches('^'),
                "all" | "sm" | "shm" | "mm" | "posix" | "sysv"
            )
        }),
    }
}

/// What a UCX `*_print_info` call writes, as text (through `open_memstream`).
fn print_to_string(print: impl FnOnce(*mut sys::FILE)) -> String {
    let mut buf: *mut libc::c_char = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: out-pointers valid for the stream's life; the buffer is read after fclose and
    // freed here.
    unsafe {
        let f = libc::open_memstream(&mut buf, &mut len);
        if f.is_null() {
            return String::new();
        }
        print(f as *mut sys::FILE);
        libc::fclose(f);
        if buf.is_null() {
            return String::new();
        }
        let text =
            String::from_utf8_lossy(std::slice::from_raw_parts(buf as *const u8, len)).into_owned();
        libc::free(buf as *mut c_void);
        text
    }
}

/// The lanes of a live endpoint, as `ucp_ep_print_info` prints them (see `fabric`).
pub(crate) fn ep_info(ep: sys::ucp_ep_h) -> String {
    // SAFETY: ep is live (the caller's), the stream valid during the call.
    print_to_string(|f| unsafe { sys::ucp_ep_print_info(ep, f) })
}

/// A UCP context (`ucp_init`). Features: active messages, RMA, wakeup.
pub struct Context {
    h: sys::ucp_context_h,
}

impl Context {
    pub fn new(cfg: &UcxConfig) -> Result<Rc<Context>, UcxError> {
        let mut config: *mut sys::ucp_config_t = std::ptr::null_mut();
        // SAFETY: out-pointer; NULL prefix/filename mean the defaults (`UCX_` env prefix).
        check("ucp_config_read", unsafe {
            sys::ucp_config_read(std::ptr::null(), std::ptr::null(), &mut config)
        })?;
        let set = |name: &str, value: &str| {
            let (n, v) = (
                CString::new(name).unwrap_or_default(),
                CString::new(value).unwrap_or_default(),
            );
            // SAFETY: config is valid; strings are NUL-terminated.
            unsafe { sys::ucp_config_modify(config, n.as_ptr(), v.as_ptr()) }
        };
        // Pitfall 4: listener endpoints with peer error handling drop shared memory unless
        // the mm transports handle errors too. The environment wins if it says otherwise.
        if std::env::var_os("UCX_MM_ERROR_HANDLING").is_none() && tls_include_mm() {
            let s = set("MM_ERROR_HANDLING", "y");
            if s != st::UCS_OK {
                tracing::debug!(status = %status_text(s), "UCX does not know MM_ERROR_HANDLING");
            }
        }
        if let Some(dev) = &cfg.net_devices {
            let s = set("NET_DEVICES", dev);
            if s != st::UCS_OK {
                // SAFETY: config came from ucp_config_read.
                unsafe { sys::ucp_config_release(config) };
                return Err(err("ucp_config_modify(NET_DEVICES)", s));
            }
        }
        if let Some(gid) = cfg.gid_index {
            let s = set("IB_GID_INDEX", &gid.to_string());
            if s != st::UCS_OK {
                // UCX built without verbs does not know the key: nothing uses a GID then.
                tracing::debug!(status = %status_text(s), "UCX does not know IB_GID_INDEX");
            }
        }
        let name = c"rcache";
        let params = sys::ucp_params_t {
            field_mask: (sys::UCP_PARAM_FIELD_FEATURES | sys::UCP_PARAM_FIELD_NAME) as u64,
            features: (sys::UCP_FEATURE_AM | sys::UCP_FEATURE_RMA | sys::UCP_FEATURE_WAKEUP) as u64,
            name: name.as_ptr(),
            ..Default::default()
        };
        let mut h: sys::ucp_context_h = std::ptr::null_mut();
        // SAFETY: params zeroed apart from the masked fields; out-pointer.
        let s = unsafe { sys::ucp_init(&params, config, &mut h) };
        // SAFETY: config no longer needed after ucp_init.
        unsafe { sys::ucp_config_release(config) };
        check("ucp_init", s)?;
        Ok(Rc::new(Context { h }))
    }

    /// The context's transports and devices, as `ucp_context_print_info` prints them.
    pub fn info(&self) -> String {
        // SAFETY: the context is live, the stream valid during the call.
        print_to_string(|f| unsafe { sys::ucp_context_print_info(self.h, f) })
    }

    /// Registers `[addr, addr + len)` for local and remote access (`ucp_mem_map`).
    pub fn mem_map(self: &Rc<Self>, addr: *mut u8, len: usize) -> Result<MemHandle, UcxError> {
        let params = sys::ucp_mem_map_params_t {
            field_mask: (sys::UCP_MEM_MAP_PARAM_FIELD_ADDRESS | sys::UCP_MEM_MAP_PARAM_FIELD_LENGTH)
                as u64,
            address: addr as *mut c_void,
            length: len,
            ..Default::default()
        };
        let mut memh: sys::ucp_mem_h = std::ptr::null_mut();
        // SAFETY: the caller keeps the memory mapped for the handle's life (MemHandle docs).
        check("ucp_mem_map", unsafe {
            sys::ucp_mem_map(self.h, &params, &mut memh)
        })?;
        Ok(MemHandle {
            ctx: self.clone(),
            memh,
            addr: addr as usize,
            len,
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: all workers and memory handles hold an Rc to the context and are gone.
        unsafe { sys::ucp_cleanup(self.h) };
    }
}

/// Registered memory. The memory must stay mapped until this handle drops.
pub struct MemHandle {
    ctx: Rc<Context>,
    memh: sys::ucp_mem_h,
    pub addr: usize,
    pub len: usize,
}

impl MemHandle {
    pub fn raw(&self) -> sys::ucp_mem_h {
        self.memh
    }

    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        let a = ptr as usize;
        a >= self.addr && a + len <= self.addr + self.len
    }

    /// Packs the remote key a peer needs for RMA on this memory.
    pub fn pack_rkey(&self) -> Result<Vec<u8>, UcxError> {
        let mut buf: *mut c_void = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: out-pointers; the packed buffer is copied then released.
        check("ucp_rkey_pack", unsafe {
            sys::ucp_rkey_pack(self.ctx.h, self.memh, &mut buf, &mut size)
        })?;
        // SAFETY: UCX returned `size` readable bytes at `buf`.
        let v = unsafe { std::slice::from_raw_parts(buf as *const u8, size) }.to_vec();
        // SAFETY: buffer from ucp_rkey_pack.
        unsafe { sys::ucp_rkey_buffer_release(buf) };
        Ok(v)
    }
}

impl Drop for MemHandle {
    fn drop(&mut self) {
        // SAFETY: memh from ucp_mem_map on this context.
        unsafe { sys::ucp_mem_unmap(self.ctx.h, self.memh) };
    }
}

/// A UCP worker. Made with [`Worker::new`] it is in `UCS_THREAD_MODE_SINGLE`: use it only from
/// the thread that made it. Made with [`Worker::new_serialized`] (`UCS_THREAD_MODE_SERIALIZED`)
/// several threads may use it one at a time, which the owner guarantees with a lock.
pub struct Worker {
    pub(crate) h: sys::ucp_worker_h,
    efd: RawFd,
    max_am_header: usize,
    _ctx: Rc<Context>,
    _not_send: PhantomData<*const ()>,
}

impl Worker {
    pub fn new(ctx: &Rc<Context>) -> Result<Worker, UcxError> {
        Self::with_mode(ctx, sys::UCS_THREAD_MODE_SINGLE)
    }

    /// A worker that several threads use one at a time (the caller serialises every use).
    pub fn new_serialized(ctx: &Rc<Context>) -> Result<Worker, UcxError> {
        Self::with_mode(ctx, sys::UCS_THREAD_MODE_SERIALIZED)
    }

    fn with_mode(ctx: &Rc<Context>, mode: sys::ucs_thread_mode_t) -> Result<Worker, UcxError> {
        let params = sys::ucp_worker_params_t {
            field_mask: sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
            thread_mode: mode,
            ..Default::default()
        };
        let mut h: sys::ucp_worker_h = std::ptr::null_mut();
        // SAFETY: params zeroed apart from masked fields.
        check("ucp_worker_create", unsafe {
            sys::ucp_worker_create(ctx.h, &params, &mut h)
        })?;
        let mut efd: i32 = -1;
        // SAFETY: worker valid; requires UCP_FEATURE_WAKEUP (set in Context::new).
        let s = unsafe { sys::ucp_worker_get_efd(h, &mut efd) };
        if s != st::UCS_OK {
            // SAFETY: created above.
            unsafe { sys::ucp_worker_destroy(h) };
            return Err(err("ucp_worker_get_efd", s));
        }
        let mut attr = sys::ucp_worker_attr_t {
            field_mask: sys::UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER as u64,
            ..Default::default()
        };
        // SAFETY: worker valid, attr zeroed.
        let max_am_header = if unsafe { sys::ucp_worker_query(h, &mut attr) } == st::UCS_OK {
            attr.max_am_header
        } else {
            64
        };
        Ok(Worker {
            h,
            efd,
            max_am_header,
            _ctx: ctx.clone(),
            _not_send: PhantomData,
        })
    }

    /// One round of progress; returns how many events were handled.
    #[inline]
    pub fn progress(&self) -> u32 {
        // SAFETY: single-threaded worker used on its own thread.
        unsafe { sys::ucp_worker_progress(self.h) }
    }

    /// Arms the event fd. `Ok(false)`: events are pending, progress again before sleeping.
    pub fn arm(&self) -> Result<bool, UcxError> {
        // SAFETY: worker valid.
        match unsafe { sys::ucp_worker_arm(self.h) } {
            st::UCS_OK => Ok(true),
            st::UCS_ERR_BUSY => Ok(false),
            s => Err(err("ucp_worker_arm", s)),
        }
    }

    pub fn event_fd(&self) -> RawFd {
        self.efd
    }

    pub fn max_am_header(&self) -> usize {
        self.max_am_header
    }

    /// Installs an active-message handler for `id`.
    ///
    /// # Safety
    /// `arg` must stay valid while the worker may call `cb` (until the worker drops).
    pub unsafe fn set_am_handler(
        &self,
        id: u32,
        cb: sys::ucp_am_recv_callback_t,
        arg: *mut c_void,
    ) -> Result<(), UcxError> {
        let p = sys::ucp_am_handler_param_t {
            field_mask: (sys::UCP_AM_HANDLER_PARAM_FIELD_ID
                | sys::UCP_AM_HANDLER_PARAM_FIELD_CB
                | sys::UCP_AM_HANDLER_PARAM_FIELD_ARG
                | sys::UCP_AM_HANDLER_PARAM_FIELD_FLAGS) as u64,
            id,
            flags: sys::UCP_AM_FLAG_WHOLE_MSG,
            cb,
            arg,
        };
        check("ucp_worker_set_am_recv_handler", unsafe {
            sys::ucp_worker_set_am_recv_handler(self.h, &p)
        })
    }

    /// Progresses until `done()` or `limit` passes; true when done.
    pub fn progress_until(
        &self,
        limit: std::time::Duration,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let t = std::time::Instant::now();
        while !done() {
            if t.elapsed() > limit {
                return false;
            }
            if self.progress() == 0 {
                std::hint::spin_loop();
            }
        }
        true
    }

    /// Waits for a request from a non-blocking call to finish (progressing), then frees it.
    ///
    /// # Safety
    /// `req` is the untouched return value of a UCP non-blocking call on this worker.
    pub unsafe fn wait(
        &self,
        op: &'static str,
        req: sys::ucs_status_ptr_t,
        limit: std::time::Duration,
    ) -> Result<(), UcxError> {
        if req.is_null() {
            return Ok(());
        }
        if sys::UCS_PTR_IS_ERR(req) {
            return Err(err(op, sys::UCS_PTR_STATUS(req)));
        }
        let mut status = st::UCS_INPROGRESS;
        let finished = self.progress_until(limit, || {
            // SAFETY: req is a live request until freed below.
            status = unsafe { sys::ucp_request_check_status(req) };
            status != st::UCS_INPROGRESS
        });
        if !finished {
            // SAFETY: cancel then free an unfinished request.
            unsafe {
                sys::ucp_request_cancel(self.h, req);
                sys::ucp_request_free(req);
            }
            return Err(err(op, st::UCS_ERR_TIMED_OUT));
        }
        // SAFETY: finished request, freed once.
        unsafe { sys::ucp_request_free(req) };
        check(op, status)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: endpoints and listeners were closed first by their owners.
        unsafe { sys::ucp_worker_destroy(self.h) };
    }
}

/// Writes `addr` as a sockaddr into `storage`; returns its length.
pub(crate) fn to_sockaddr(
    addr: SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

pub(crate) fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// A listener accepting connection requests on a socket address.
pub struct Listener {
    h: sys::ucp_listener_h,
    pub local_addr: SocketAddr,
}

impl Listener {
    /// Listens on `addr` (port 0: a free port, read back with `ucp_listener_query`).
    ///
    /// # Safety
    /// `arg` must stay valid while the listener lives.
    pub unsafe fn new(
        worker: &Worker,
        addr: SocketAddr,
        cb: sys::ucp_listener_conn_callback_t,
        arg: *mut c_void,
    ) -> Result<Listener, UcxError> {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = to_sockaddr(addr, &mut ss);
        let params = sys::ucp_listener_params_t {
            field_mask: (sys::UCP_LISTENER_PARAM_FIELD_SOCK_ADDR
                | sys::UCP_LISTENER_PARAM_FIELD_CONN_HANDLER) as u64,
            sockaddr: sys::ucs_sock_addr_t {
                addr: &ss as *const _ as *const sys::sockaddr,
                addrlen: len,
            },
            conn_handler: sys::ucp_listener_conn_handler_t { cb, arg },
            ..Default::default()
        };
        let mut h: sys::ucp_listener_h = std::ptr::null_mut();
        check("ucp_listener_create", unsafe {
            sys::ucp_listener_create(worker.h, &params, &mut h)
        })?;
        let mut attr = sys::ucp_listener_attr_t {
            field_mask: sys::UCP_LISTENER_ATTR_FIELD_SOCKADDR as u64,
            ..Default::default()
        };
        let s = unsafe { sys::ucp_listener_query(h, &mut attr) };
        if s != st::UCS_OK {
            unsafe { sys::ucp_listener_destroy(h) };
            return Err(err("ucp_listener_query", s));
        }
        // SAFETY: bindgen's sockaddr_storage has the C layout of libc's.
        let ss2: &libc::sockaddr_storage =
            unsafe { &*(&attr.sockaddr as *const _ as *const libc::sockaddr_storage) };
        let mut local_addr = from_sockaddr(ss2).unwrap_or(addr);
        if local_addr.ip().is_unspecified() && !addr.ip().is_unspecified() {
            local_addr.set_ip(addr.ip());
        }
        Ok(Listener { h, local_addr })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: listener from ucp_listener_create.
        unsafe { sys::ucp_listener_destroy(self.h) };
    }
}

/// Endpoint creation parameters common to both sides: peer error handling with a callback.
fn ep_params(err_cb: sys::ucp_err_handler_cb_t, arg: *mut c_void) -> sys::ucp_ep_params_t {
    sys::ucp_ep_params_t {
        field_mask: (sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
            | sys::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64,
        err_mode: sys::UCP_ERR_HANDLING_MODE_PEER,
        err_handler: sys::ucp_err_handler_t { cb: err_cb, arg },
        ..Default::default()
    }
}

/// Creates a client endpoint to a listener at `addr`.
///
/// # Safety
/// `arg` must stay valid while the endpoint lives.
pub unsafe fn ep_connect(
    worker: &Worker,
    addr: SocketAddr,
    err_cb: sys::ucp_err_handler_cb_t,
    arg: *mut c_void,
) -> Result<sys::ucp_ep_h, UcxError> {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = to_sockaddr(addr, &mut ss);
    let mut p = ep_params(err_cb, arg);
    p.field_mask |= (sys::UCP_EP_PARAM_FIELD_SOCK_ADDR | sys::UCP_EP_PARAM_FIELD_FLAGS) as u64;
    p.flags = sys::UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr = sys::ucs_sock_addr_t {
        addr: &ss as *const _ as *const sys::sockaddr,
        addrlen: len,
    };
    let mut ep: sys::ucp_ep_h = std::ptr::null_mut();
    check("ucp_ep_create", unsafe {
        sys::ucp_ep_create(worker.h, &p, &mut ep)
    })?;
    Ok(ep)
}

/// Accepts a connection request from a listener callback.
///
/// # Safety
/// `conn` comes from the listener callback; `arg` stays valid while the endpoint lives.
pub unsafe fn ep_accept(
    worker: &Worker,
    conn: sys::ucp_conn_request_h,
    err_cb: sys::ucp_err_handler_cb_t,
    arg: *mut c_void,
) -> Result<sys::ucp_ep_h, UcxError> {
    let mut p = ep_params(err_cb, arg);
    p.field_mask |= sys::UCP_EP_PARAM_FIELD_CONN_REQUEST as u64;
    p.conn_request = conn;
    let mut ep: sys::ucp_ep_h = std::ptr::null_mut();
    check("ucp_ep_create", unsafe {
        sys::ucp_ep_create(worker.h, &p, &mut ep)
    })?;
    Ok(ep)
}

/// Starts closing an endpoint (flush, or force after an error); returns the request to wait on.
///
/// # Safety
/// `ep` is a live endpoint of `worker`; it must not be used afterwards.
pub unsafe fn ep_close(ep: sys::ucp_ep_h, force: bool) -> sys::ucs_status_ptr_t {
    let p = sys::ucp_request_param_t {
        op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS,
        flags: if force {
            sys::UCP_EP_CLOSE_FLAG_FORCE
        } else {
            0
        },
        ..Default::default()
    };
    unsafe { sys::ucp_ep_close_nbx(ep, &p) }
}

/// A peer's remote key, unpacked for one endpoint. Destroy before closing the endpoint.
pub struct RemoteKey {
    h: sys::ucp_rkey_h,
}

impl RemoteKey {
    /// # Safety
    /// `ep` is a live endpoint.
    pub unsafe fn unpack(ep: sys::ucp_ep_h, packed: &[u8]) -> Result<RemoteKey, UcxError> {
        let mut h: sys::ucp_rkey_h = std::ptr::null_mut();
        check("ucp_ep_rkey_unpack", unsafe {
            sys::ucp_ep_rkey_unpack(ep, packed.as_ptr() as *const c_void, &mut h)
        })?;
        Ok(RemoteKey { h })
    }

    /// Starts an RMA get of `dst.len()` bytes from `remote_addr` into `dst`.
    ///
    /// # Safety
    /// `dst` must stay valid until the returned request completes.
    pub unsafe fn get(
        &self,
        ep: sys::ucp_ep_h,
        dst: &mut [u8],
        remote_addr: u64,
        memh: Option<&MemHandle>,
    ) -> sys::ucs_status_ptr_t {
        let mut p = sys::ucp_request_param_t::default();
        if let Some(m) = memh {
            p.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_MEMH;
            p.memh = m.raw();
        }
        unsafe {
            sys::ucp_get_nbx(
                ep,
                dst.as_mut_ptr() as *mut c_void,
                dst.len(),
                remote_addr,
                self.h,
                &p,
            )
        }
    }
}

impl Drop for RemoteKey {
    fn drop(&mut self) {
        // SAFETY: rkey from ucp_ep_rkey_unpack.
        unsafe { sys::ucp_rkey_destroy(self.h) };
    }
}

/// Flushes outstanding operations on an endpoint (needed before reading RMA results on some
/// transports); returns the request to wait on.
///
/// # Safety
/// `ep` is live.
pub unsafe fn ep_flush(ep: sys::ucp_ep_h) -> sys::ucs_status_ptr_t {
    let p = sys::ucp_request_param_t::default();
    unsafe { sys::ucp_ep_flush_nbx(ep, &p) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::time::Duration;

    struct Accepted {
        worker: *const Worker,
        eps: RefCell<Vec<sys::ucp_ep_h>>,
    }

    unsafe extern "C" fn on_conn(conn: sys::ucp_conn_request_h, arg: *mut c_void) {
        let a = unsafe { &*(arg as *const Accepted) };
        let ep =
            unsafe { ep_accept(&*a.worker, conn, None, std::ptr::null_mut()) }.expect("accept");
        a.eps.borrow_mut().push(ep);
    }

    /// RMA get between two workers progressed by one thread: the client reads a registered
    /// buffer of the server through a packed and unpacked rkey.
    #[test]
    fn rma_get_reads_registered_memory_through_a_packed_rkey() {
        let ctx = Context::new(&UcxConfig::default()).unwrap();
        let server = Worker::new(&ctx).unwrap();
        let client = Worker::new(&ctx).unwrap();
        let acc = Box::new(Accepted {
            worker: &server,
            eps: RefCell::new(Vec::new()),
        });
        let listener = unsafe {
            Listener::new(
                &server,
                "127.0.0.1:0".parse().unwrap(),
                Some(on_conn),
                &*acc as *const _ as *mut c_void,
            )
        }
        .unwrap();
        assert_ne!(
            listener.local_addr.port(),
            0,
            "ucp_listener_query reports the real port"
        );
        let ep = unsafe { ep_connect(&client, listener.local_addr, None, std::ptr::null_mut()) }
            .unwrap();
        let pump = |until: &dyn Fn() -> bool| {
            let t = std::time::Instant::now();
            while !until() {
                server.progress();
                client.progress();
                assert!(t.elapsed() < Duration::from_secs(10), "timed out");
            }
        };
        pump(&|| !acc.eps.borrow().is_empty());

        let mut src: Vec<u8> = (0..1 << 16).map(|i| (i % 251) as u8).collect();
        let mh = ctx.mem_map(src.as_mut_ptr(), src.len()).unwrap();
        let packed = mh.pack_rkey().unwrap();
        let rkey = unsafe { RemoteKey::unpack(ep, &packed) }.unwrap();
        let mut dst = vec![0u8; src.len()];
        let req = unsafe { rkey.get(ep, &mut dst, src.as_ptr() as u64, None) };
        if !req.is_null() {
            assert!(
                !sys::UCS_PTR_IS_ERR(req),
                "get failed: {}",
                status_text(sys::UCS_PTR_STATUS(req))
            );
            pump(&|| unsafe { sys::ucp_request_check_status(req) } != st::UCS_INPROGRESS);
            assert_eq!(unsafe { sys::ucp_request_check_status(req) }, st::UCS_OK);
            unsafe { sys::ucp_request_free(req) };
        }
        assert_eq!(dst, src);
        drop(rkey);
        let close = |w: &Worker, ep| {
            let r = unsafe { ep_close(ep, false) };
            if !r.is_null() && !sys::UCS_PTR_IS_ERR(r) {
                let t = std::time::Instant::now();
                while unsafe { sys::ucp_request_check_status(r) } == st::UCS_INPROGRESS
                    && t.elapsed() < Duration::from_secs(5)
                {
                    server.progress();
                    client.progress();
                }
                unsafe { sys::ucp_request_free(r) };
            }
            let _ = w;
        };
        close(&client, ep);
        for sep in acc.eps.borrow_mut().drain(..) {
            close(&server, sep);
        }
        drop(mh);
        drop(listener);
    }
}
