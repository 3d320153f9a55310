//! The client library (used by FUSE and `bench`-style tools): reads a byte range by splitting it
//! into placement blocks, asks each block's owner on the consistent-hash ring, and fails over to
//! the next owner when one is unreachable, slow (request timeout) or answers with a transient
//! error, so a read fails only when no owner can serve it. Members announcing `ucx` are reached
//! over UCX; `fallback: tcp` retries a member's TCP port when its UCX port is unreachable, `none`
//! reports the worker instead. Paths are relative to the UFS root, `/`-separated.
//!
//! It owns connections and failover; it caches no data (the workers do).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rcache_transport::{
    AuthKey, BufferPool, ClientOptions, DirEntry, ErrorCode, FileStat, FileVersion, PoolConfig,
    Request, Response, SharedConnection, TlsClient, TransportError, TransportKind,
};

use crate::cluster::{Member, MemberTransport, MembershipWatch};
use crate::config::{self, ConfigError, Properties};

/// What to do when a member's UCX port cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Report the worker as unreachable (and fail over to the next owner).
    None,
    /// Use the member's TCP data port instead.
    Tcp,
}

/// Where the client learns the members.
#[derive(Clone, Debug)]
pub enum MembershipSource {
    /// The operator's membership file, polled for changes.
    File { path: PathBuf, poll: Duration },
    /// A fixed list (tests, tools).
    Fixed(Vec<Member>),
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub membership: MembershipSource,
    /// Placement unit (`rcache.cluster.placement.block.size`).
    pub block_size: u64,
    /// Per-request limit (`rcache.network.rdma.data.operation.timeout.ms`); past it the next
    /// owner is asked.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub fallback: Fallback,
    /// Largest single request; longer ranges are split at its multiples (≤ the protocol's
    /// 16 MiB). Best equal to the workers' page size (`rcache.worker.page.size`, 1 MiB).
    pub max_request: u32,
    /// Requests of one read in flight at once.
    pub parallel: usize,
    /// A member that failed is asked last for this long.
    pub down_for: Duration,
    /// Connections opened to each member (requests are spread over them round robin).
    pub connections_per_member: usize,
    /// When an owner has not answered after this long, the next owner is asked too (hedged
    /// request); `None` waits for `request_timeout`.
    pub hedge_after: Option<Duration>,
    /// Pool that received payloads land in (registered with UCX; reused, so large reads do not
    /// fault fresh heap pages in). `None`: the heap.
    pub receive_pool: Option<PoolConfig>,
    /// `rcache.user.network.data.bind.device`: the interface the client's data goes out of
    /// (TCP source address; UCX `NET_DEVICES` with the interface's RDMA device, if any).
    pub bind_device: Option<String>,
    /// `rcache.network.rdma.data.{bind.device,ib.port,gid.index}` for the client's UCX.
    pub rdma: rcache_contract::binding::RdmaSettings,
    /// The cluster's secret (`rcache.security.auth.secret.file`), proven to every worker at
    /// connection setup. `None`: workers that ask for authentication refuse this client.
    pub auth: Option<AuthKey>,
    /// TLS on TCP connections (`rcache.security.tls.*`), verified against the cluster's CA.
    pub tls: Option<TlsClient>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            membership: MembershipSource::Fixed(Vec::new()),
            block_size: 64 << 20,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            fallback: Fallback::None,
            max_request: 1 << 20,
            parallel: 8,
            down_for: Duration::from_secs(2),
            hedge_after: Some(Duration::from_secs(3)),
            connections_per_member: 1,
            receive_pool: Some(PoolConfig {
                chunk_size: 1 << 20,
                initial: 16 << 20,
                prewarm: 0,
                max: 256 << 20,
            }),
            bind_device: None,
            rdma: Default::default(),
            auth: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// Client settings from the properties (membership file, block size, timeout, fallback).
    pub fn from_properties(p: &Properties) -> Result<ClientConfig, ConfigError> {
        let block_size = p.size(config::BLOCK_SIZE);
        if block_size == 0 {
            return Err(p.bad(config::BLOCK_SIZE, "zero", "a positive size, e.g. 64MB"));
        }
        let request_timeout = p.duration(config::OP_TIMEOUT);
        if request_timeout.is_zero() {
            return Err(p.bad(config::OP_TIMEOUT, "zero", "a positive duration, e.g. 30s"));
        }
        let fallback = match p.text(config::FALLBACK).as_deref() {
            Some("tcp") => Fallback::Tcp,
            _ => Fallback::None,
        };
        let auth = match p.text(config::AUTH_SECRET_FILE) {
            None => None,
            Some(file) => Some(AuthKey::from_file(Path::new(&file)).map_err(|reason| {
                p.bad(
                    config::AUTH_SECRET_FILE,
                    reason,
                    "a readable file holding the cluster's secret (the operator mounts it)",
                )
            })?),
        };
        let tls = match config::tls_files(p, [config::TLS_CA_FILE])? {
            None => None,
            Some([ca]) => {
                let name = p
                    .text(config::TLS_SERVER_NAME)
                    .unwrap_or_else(|| "rcache-worker".into());
                Some(TlsClient::from_ca_file(&ca, &name).map_err(|reason| {
                    p.bad(
                        config::TLS_CA_FILE,
                        reason,
                        "a PEM file with the CA that signs the workers' certificates",
                    )
                })?)
            }
        };
        let path = p
            .text(config::MEMBERSHIP_FILE)
            .unwrap_or_else(|| "/etc/rcache/membership/members.json".into());
        Ok(ClientConfig {
            membership: MembershipSource::File {
                path: PathBuf::from(path),
                poll: Duration::from_secs(2),
            },
            block_size,
            request_timeout,
            connect_timeout: request_timeout.min(Duration::from_secs(5)),
            fallback,
            hedge_after: Some(
                (request_timeout / 10).clamp(Duration::from_millis(200), Duration::from_secs(3)),
            ),
            max_request: u32::try_from(p.size(config::PAGE_SIZE))
                .unwrap_or(1 << 20)
                .clamp(4 << 10, rcache_transport::protocol::MAX_PAYLOAD),
            bind_device: p.text(config::USER_BIND_DEVICE),
            rdma: rcache_contract::binding::RdmaSettings::from_properties(p)?,
            auth,
            tls,
            ..ClientConfig::default()
        })
    }
}

/// The client's side of the binding (the same rule as the worker's, `rcache_contract::binding`):
/// the bind device's IPv4 address for TCP, and `UCX_NET_DEVICES` = its RDMA device (given or
/// resolved through sysfs) plus the interface. No bind device: no RDMA property applies unless
/// a device is named, and the kernel and UCX choose.
fn bind_from(
    cfg: &ClientConfig,
) -> Result<(Option<std::net::IpAddr>, Option<String>), ClientError> {
    let iface = cfg.bind_device.as_deref().filter(|d| !d.is_empty());
    let bad = |e: rcache_transport::binding::BindError| {
        ClientError::Config(format!(
            "{} ({}): {e}",
            config::USER_BIND_DEVICE,
            iface.unwrap_or("")
        ))
    };
    let local_ip = match iface {
        Some(i) => Some(std::net::IpAddr::V4(
            rcache_transport::binding::interface_ipv4(i).map_err(bad)?,
        )),
        None => None,
    };
    let (devices, missing) = rcache_transport::binding::ucx_binding(
        cfg.rdma.device.as_deref(),
        cfg.rdma.ib_port,
        iface,
        &rcache_transport::binding::sysfs_root(),
    )
    .map_err(bad)?;
    if let Some(e) = missing {
        tracing::info!(error = %e, "client bind device has no RDMA device; UCX uses its tcp transport on it");
    }
    Ok((local_ip, devices))
}

/// Client errors; each names the path or the worker involved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{path}: is a directory")]
    IsADirectory { path: String },
    #[error("{path}: invalid request: {message}")]
    Invalid { path: String, message: String },
    #[error("no ready worker in the membership ({source_hint}); is the cluster up?")]
    NoWorkers { source_hint: String },
    #[error("worker {worker} is unavailable: {reason}")]
    Unavailable { worker: String, reason: String },
    /// A worker refused this client's authentication: every worker of the cluster shares the
    /// secret, so this is final.
    #[error(
        "worker {worker} {reason}; the client needs the cluster's secret \
         (rcache.security.auth.secret.file, the CacheCluster's <name>-auth Secret)"
    )]
    Unauthenticated { worker: String, reason: String },
    #[error("{path}: every owner failed; last: worker {worker}: {reason}")]
    AllOwnersFailed {
        path: String,
        worker: String,
        reason: String,
    },
    #[error("client configuration: {0}")]
    Config(String),
    /// A read pinned to a version found the file changed (the worker's message says how).
    #[error("{path}: stale: {message}")]
    Stale { path: String, message: String },
}

impl ClientError {
    /// The errno a filesystem should return: ENOENT for a missing path, EIO otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::NotFound { .. } => libc::ENOENT,
            ClientError::NotADirectory { .. } => libc::ENOTDIR,
            ClientError::IsADirectory { .. } => libc::EISDIR,
            ClientError::Invalid { .. } => libc::EINVAL,
            ClientError::Stale { .. } => libc::ESTALE,
            ClientError::Unauthenticated { .. } => libc::EACCES,
            _ => libc::EIO,
        }
    }
}

impl From<ConfigError> for ClientError {
    fn from(e: ConfigError) -> Self {
        ClientError::Config(e.to_string())
    }
}

/// One member's connection state; replaced when the member's addresses change.
struct Slot {
    addr: (String, u16, Option<u16>, MemberTransport),
    /// Open connections (up to `connections_per_member`), used round robin.
    conns: Mutex<Vec<SharedConnection>>,
    next: std::sync::atomic::AtomicUsize,
    /// Serialises connection set-up to this member.
    connecting: tokio::sync::Mutex<()>,
    down_until: Mutex<Option<Instant>>,
}

impl Slot {
    fn new(m: &Member) -> Slot {
        Slot {
            addr: (
                m.data_address.clone(),
                m.ports.data,
                m.ports.rdma,
                m.transport,
            ),
            conns: Mutex::new(Vec::new()),
            next: std::sync::atomic::AtomicUsize::new(0),
            connecting: tokio::sync::Mutex::new(()),
            down_until: Mutex::new(None),
        }
    }

    fn matches(&self, m: &Member) -> bool {
        self.addr.0 == m.data_address
            && self.addr.1 == m.ports.data
            && self.addr.2 == m.ports.rdma
            && self.addr.3 == m.transport
    }

    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t > now)
    }

    /// A connection when `want` are open already (round robin).
    fn pick(&self, want: usize) -> Option<SharedConnection> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.is_empty() || conns.len() < want {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(conns[i % conns.len()].clone())
    }

    fn forget(&self, conn: &SharedConnection) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| !Arc::ptr_eq(c, conn));
    }

    fn set_down(&self, until: Option<Instant>) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }
}

struct Inner {
    cfg: ClientConfig,
    members: MembershipWatch,
    source_hint: String,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    pool: Option<BufferPool>,
    /// Where connections go out from (the bind device): TCP source address, UCX devices.
    local_ip: Option<std::net::IpAddr>,
    ucx_devices: Option<String>,
}

/// A handle to the cache cluster; cheap to clone, safe to share.
#[derive(Clone)]
pub struct CacheClient {
    inner: Arc<Inner>,
}

fn describe(m: &Member) -> String {
    format!("{} ({})", m.id, m.data_address)
}

enum Attempt {
    Done(Response),
    /// Deterministic answer (missing path…): asking another owner would not help.
    Final(ClientError),
    /// This member failed; try the next.
    Next {
        reason: String,
        down: bool,
    },
}

impl CacheClient {
    /// Builds a client; with a membership file, loads it now and watches it.
    pub async fn new(cfg: ClientConfig) -> Result<CacheClient, ClientError> {
        if cfg.max_request == 0 || cfg.max_request > rcache_transport::protocol::MAX_PAYLOAD {
            return Err(ClientError::Config(format!(
                "max_request {} must be 1..={}",
                cfg.max_request,
                rcache_transport::protocol::MAX_PAYLOAD
            )));
        }
        let (members, source_hint) = match &cfg.membership {
            MembershipSource::Fixed(m) => (MembershipWatch::fixed(m.clone()), "fixed list".into()),
            MembershipSource::File { path, poll } => (
                MembershipWatch::watch_file(path.clone(), *poll)
                    .map_err(|e| ClientError::Config(e.to_string()))?,
                format!("{} (rcache.cluster.membership.file)", path.display()),
            ),
        };
        let pool = match &cfg.receive_pool {
            Some(p) => Some(
                // Every payload (≤ max_request) must fit a chunk to land in the pool.
                BufferPool::new(PoolConfig {
                    chunk_size: p
                        .chunk_size
                        .max(cfg.max_request as usize)
                        .next_multiple_of(4096),
                    max: p.max.max(cfg.max_request as usize * 4),
                    ..*p
                })
                .map_err(|e| ClientError::Config(format!("client receive pool: {e}")))?,
            ),
            None => None,
        };
        let (local_ip, ucx_devices) = bind_from(&cfg)?;
        Ok(CacheClient {
            inner: Arc::new(Inner {
                local_ip,
                ucx_devices,
                pool,
                cfg,
                members,
                source_hint,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Builds a client from the properties file's keys.
    pub async fn from_properties(props: &Properties) -> Result<CacheClient, ClientError> {
        Self::new(ClientConfig::from_properties(props)?).await
    }

    /// Ready members as currently known.
    pub fn members(&self) -> Vec<Member> {
        self.inner.members.ring().members().to_vec()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Metadata of `path`.
    pub async fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        let req = Request::Stat { path: path.into() };
        match self.call_owners(path, 0, req).await? {
            Response::Stat(s) => Ok(s),
            other => Err(unexpected(path, &other)),
        }
    }

    /// Entries of directory `path`.
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        let req = Request::List { path: path.into() };
        match self.call_owners(path, 0, req).await? {
            Response::List(l) => Ok(l),
            other => Err(unexpected(path, &other)),
        }
    }

    /// Reads `len` bytes at `offset`; shorter at EOF. Each placement block is answered by its
    /// own worker from that worker's view of the file, so a read spanning blocks may meet two
    /// versions of a file that changes; [`read_at_version`](Self::read_at_version) may not.
    pub async fn read(&self, path: &str, offset: u64, len: u32) -> Result<Bytes, ClientError> {
        self.read_pinned(path, None, offset, len).await
    }

    /// Asks the worker that answers `stat` for `path` to check the under-storage now (whatever
    /// its metadata sync interval) whether the file is still at version `at`: `Ok` when it is,
    /// [`ClientError::Stale`] when not, after which that worker's `stat` names the new version.
    pub async fn check_version(
        &self,
        path: &str,
        at: impl Into<FileVersion>,
    ) -> Result<(), ClientError> {
        // A pinned read of nothing is the protocol's version check; block 0's owner answers
        // `stat` too.
        self.read_segment(path, Some(at.into()), 0, 0, 0)
            .await
            .map(|_| ())
    }

    /// Reads like [`read`](Self::read), but only bytes of version `at` (a `&FileStat` the
    /// caller opened the file with, or its [`FileVersion`]): a worker that finds the file at
    /// another version answers [`ClientError::Stale`] instead, and every later read pinned to
    /// that version fails the same way; stat the file again to read the new version.
    pub async fn read_at_version(
        &self,
        path: &str,
        at: impl Into<FileVersion>,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ClientError> {
        self.read_pinned(path, Some(at.into()), offset, len).await
    }

    async fn read_pinned(
        &self,
        path: &str,
        expect: Option<FileVersion>,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ClientError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let bs = self.inner.cfg.block_size;
        let max = u64::from(self.inner.cfg.max_request);
        let end = offset.saturating_add(u64::from(len));
        let mut segs = Vec::new();
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            // Requests end on multiples of `max` too: with `max` = the worker's page size each
            // request falls inside one page, which the worker sends without a copy.
            let stop = end
                .min((block + 1).saturating_mul(bs))
                .min((pos / max + 1).saturating_mul(max));
            segs.push((pos, (stop - pos) as u32, block));
            pos = stop;
        }
        if segs.len() == 1 {
            let (o, l, b) = segs[0];
            return self.read_segment(path, expect, o, l, b).await;
        }
        let mut parts = futures::stream::iter(segs.into_iter().map(|(o, l, b)| async move {
            let r = self.read_segment(path, expect, o, l, b).await;
            (l, r)
        }))
        .buffered(self.inner.cfg.parallel.max(1));
        let mut out = BytesMut::with_capacity(len as usize);
        while let Some((asked, part)) = parts.next().await {
            let part = part?;
            out.extend_from_slice(&part);
            if part.len() < asked as usize {
                break; // EOF
            }
        }
        Ok(out.freeze())
    }

    async fn read_segment(
        &self,
        path: &str,
        expect: Option<FileVersion>,
        offset: u64,
        len: u32,
        block: u64,
    ) -> Result<Bytes, ClientError> {
        let req = Request::Read {
            path: path.into(),
            offset,
            len,
            expect,
        };
        match self.call_owners(path, block, req).await? {
            Response::Data(b) if b.len() <= len as usize => Ok(b),
            other => Err(unexpected(path, &other)),
        }
    }

    /// Warm-up of `[offset, offset + len)` of `path` (inside one placement block): the block's
    /// owner fills the pages it lacks from the under-storage (`fill`), or only counts which it
    /// holds (`fill` false). Fails over like a read, so a dead owner's pages land on the next.
    pub async fn load(
        &self,
        path: &str,
        at: Option<FileVersion>,
        offset: u64,
        len: u64,
        fill: bool,
    ) -> Result<rcache_transport::LoadCounts, ClientError> {
        let block = offset / self.inner.cfg.block_size;
        let req = Request::Load {
            path: path.into(),
            offset,
            len,
            fill,
            expect: at,
        };
        match self.call_owners(path, block, req).await? {
            Response::Loaded(c) => Ok(c),
            other => Err(unexpected(path, &other)),
        }
    }

    /// Sends `req` to the owners of (`path`, `block`) in order until one answers.
    async fn call_owners(
        &self,
        path: &str,
        block: u64,
        req: Request,
    ) -> Result<Response, ClientError> {
        let ring = self.inner.members.ring();
        let key_path = crate::ufs::normalize(path).map_err(|e| ClientError::Invalid {
            path: path.into(),
            message: e.to_string(),
        })?;
        let owners = ring.owners(&key_path, block);
        if owners.is_empty() {
            return Err(ClientError::NoWorkers {
                source_hint: self.inner.source_hint.clone(),
            });
        }
        // Members that failed recently go last, but are still tried. When every owner failed,
        // one more round after a short pause rides out a blip (a restart, a loaded machine).
        let slots: Vec<(&Member, Arc<Slot>)> =
            owners.into_iter().map(|m| (m, self.slot(m))).collect();
        let mut last = None;
        for round in 0..2 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let now = Instant::now();
            let order: Vec<&(&Member, Arc<Slot>)> = slots
                .iter()
                .filter(|(_, s)| !s.is_down(now))
                .chain(slots.iter().filter(|(_, s)| s.is_down(now)))
                .collect();
            let req = &req;
            if order.len() == 1 || self.inner.cfg.hedge_after.is_none() {
                // Nobody to hedge with: plain failover, no timers.
                for (m, slot) in order.iter().copied() {
                    match self.attempt(m, slot, req.clone(), path).await {
                        Attempt::Done(r) => {
                            slot.set_down(None);
                            return Ok(r);
                        }
                        Attempt::Final(e) => return Err(e),
                        Attempt::Next { reason, down } => {
                            if down {
                                slot.set_down(Some(Instant::now() + self.inner.cfg.down_for));
                            }
                            last = Some((describe(m), reason));
                        }
                    }
                }
                continue;
            }
            let launch = |i: usize| {
                let (m, slot) = order[i];
                async move { (i, self.attempt(m, slot, req.clone(), path).await) }
            };
            let mut running = futures::stream::FuturesUnordered::new();
            running.push(launch(0));
            let mut next = 1;
            let mut finished = vec![false; order.len()];
            loop {
                // A slow owner is hedged: past `hedge_after` the next owner is asked as well and
                // the first answer wins.
                let hedge = async {
                    match self.inner.cfg.hedge_after {
                        Some(d) if next < order.len() => tokio::time::sleep(d).await,
                        _ => futures::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    done = running.next() => {
                        let Some((i, attempt)) = done else { break };
                        let (m, slot) = order[i];
                        finished[i] = true;
                        match attempt {
                            Attempt::Done(r) => {
                                slot.set_down(None);
                                // Owners still silent were hedged around: ask them last for a while.
                                for (j, (_, s)) in order.iter().enumerate().take(next) {
                                    if !finished[j] {
                                        s.set_down(Some(Instant::now() + self.inner.cfg.down_for));
                                    }
                                }
                                return Ok(r);
                            }
                            Attempt::Final(e) => return Err(e),
                            Attempt::Next { reason, down } => {
                                tracing::debug!(worker = %describe(m), %reason, path, "failing over to the next owner");
                                if down {
                                    slot.set_down(Some(Instant::now() + self.inner.cfg.down_for));
                                }
                                last = Some((describe(m), reason));
                                if next < order.len() {
                                    running.push(launch(next));
                                    next += 1;
                                }
                            }
                        }
                    }
                    _ = hedge => {
                        tracing::debug!(worker = %describe(order[next].0), path, "owner slow; asking the next one too");
                        running.push(launch(next));
                        next += 1;
                    }
                }
            }
        }
        let (worker, reason) = last.unwrap_or_default();
        Err(ClientError::AllOwnersFailed {
            path: path.into(),
            worker,
            reason,
        })
    }

    fn slot(&self, m: &Member) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(m.id.as_str()) {
            Some(s) if s.matches(m) => s.clone(),
            _ => {
                let s = Arc::new(Slot::new(m));
                slots.insert(m.id.clone(), s.clone());
                s
            }
        }
    }

    async fn attempt(&self, m: &Member, slot: &Slot, req: Request, path: &str) -> Attempt {
        let want = self.inner.cfg.connections_per_member.max(1);
        let conn = match slot.pick(want) {
            Some(c) => c,
            None => {
                let _guard = slot.connecting.lock().await;
                match slot.pick(want) {
                    Some(c) => c,
                    None => match self.connect(m).await {
                        Ok(c) => {
                            slot.conns
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(c.clone());
                            c
                        }
                        Err(e @ ClientError::Unauthenticated { .. }) => return Attempt::Final(e),
                        Err(e) => {
                            // With some connections still open, use one of them.
                            match slot.pick(1) {
                                Some(c) => c,
                                None => {
                                    return Attempt::Next {
                                        reason: e.to_string(),
                                        down: true,
                                    };
                                }
                            }
                        }
                    },
                }
            }
        };
        let timeout = self.inner.cfg.request_timeout;
        let res = match tokio::time::timeout(timeout, conn.call(req)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        match res {
            Ok(Response::Error { code, message }) => match code {
                ErrorCode::NotFound => Attempt::Final(ClientError::NotFound { path: path.into() }),
                ErrorCode::NotADirectory => {
                    Attempt::Final(ClientError::NotADirectory { path: path.into() })
                }
                ErrorCode::IsADirectory => {
                    Attempt::Final(ClientError::IsADirectory { path: path.into() })
                }
                // The file changed under a pinned read: an answer, not a failure of this owner
                // (the others would say the same, or worse, serve the other version).
                ErrorCode::Stale => Attempt::Final(ClientError::Stale {
                    path: path.into(),
                    message,
                }),
                ErrorCode::InvalidRequest | ErrorCode::TooLarge => {
                    Attempt::Final(ClientError::Invalid {
                        path: path.into(),
                        message,
                    })
                }
                _ => Attempt::Next {
                    reason: format!("{code:?}: {message}"),
                    down: false,
                },
            },
            Ok(r) => Attempt::Done(r),
            Err(reason) => {
                // The connection may be broken: reconnect next time.
                slot.forget(&conn);
                Attempt::Next { reason, down: true }
            }
        }
    }

    async fn connect(&self, m: &Member) -> Result<SharedConnection, ClientError> {
        let opts = ClientOptions {
            connect_timeout: self.inner.cfg.connect_timeout,
            request_timeout: Some(self.inner.cfg.request_timeout),
            pool: self.inner.pool.clone(),
            local_ip: self.inner.local_ip,
            ucx_devices: self.inner.ucx_devices.clone(),
            ucx_gid_index: self.inner.cfg.rdma.gid_index,
            auth: self.inner.cfg.auth.clone(),
            tls: self.inner.cfg.tls.clone(),
            ..ClientOptions::default()
        };
        let refused = |e: TransportError| match e {
            TransportError::Auth { reason, .. } => ClientError::Unauthenticated {
                worker: describe(m),
                reason: format!("refused the connection: {reason}"),
            },
            other => ClientError::Unavailable {
                worker: describe(m),
                reason: other.to_string(),
            },
        };
        let tcp_addr = resolve(m, m.ports.data).await?;
        if m.transport == MemberTransport::Ucx {
            let port = m.ports.rdma.unwrap_or(59999);
            let ucx_addr = resolve(m, port).await?;
            match rcache_transport::connect(TransportKind::Ucx, ucx_addr, opts.clone()).await {
                Ok(c) => return Ok(c),
                Err(e @ TransportError::Auth { .. }) => return Err(refused(e)),
                Err(e) if self.inner.cfg.fallback == Fallback::Tcp => {
                    tracing::warn!(worker = %describe(m), error = %e, "UCX port unreachable; falling back to TCP (rcache.network.rdma.data.fallback=tcp)");
                }
                Err(e) => {
                    return Err(ClientError::Unavailable {
                        worker: describe(m),
                        reason: format!(
                            "UCX port {ucx_addr} unreachable ({e}) and rcache.network.rdma.data.fallback=none; \
                             set it to tcp to use the worker's TCP port"
                        ),
                    });
                }
            }
        }
        rcache_transport::connect(TransportKind::Tcp, tcp_addr, opts)
            .await
            .map_err(refused)
    }
}

async fn resolve(m: &Member, port: u16) -> Result<SocketAddr, ClientError> {
    let unavailable = |reason: String| ClientError::Unavailable {
        worker: describe(m),
        reason,
    };
    if let Ok(ip) = m.data_address.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((m.data_address.as_str(), port))
        .await
        .map_err(|e| unavailable(format!("cannot resolve {}: {e}", m.data_address)))?
        .next()
        .ok_or_else(|| unavailable(format!("{} has no address", m.data_address)))
}

fn unexpected(path: &str, r: &Response) -> ClientError {
    let what = match r {
        Response::Data(b) => format!("{} bytes of data", b.len()),
        other => format!("{other:?}"),
    };
    ClientError::Invalid {
        path: path.into(),
        message: format!("unexpected answer: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_errno() {
        assert_eq!(
            ClientError::NotFound { path: "x".into() }.errno(),
            libc::ENOENT
        );
        let e = ClientError::Unavailable {
            worker: "w-1 (10.0.0.1)".into(),
            reason: "refused".into(),
        };
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("w-1"));
        let e = ClientError::Stale {
            path: "d/f".into(),
            message: "d/f changed since it was opened".into(),
        };
        assert_eq!(e.errno(), libc::ESTALE);
        assert!(e.to_string().starts_with("d/f: stale"), "{e}");
    }

    #[test]
    fn properties_give_block_size_timeout_and_fallback() {
        let p = Properties::from_pairs([
            ("rcache.cluster.placement.block.size", "8MB"),
            ("rcache.network.rdma.data.operation.timeout.ms", "1500"),
            ("rcache.network.rdma.data.fallback", "tcp"),
            ("rcache.cluster.membership.file", "/tmp/m.json"),
        ])
        .expect("props");
        let c = ClientConfig::from_properties(&p).expect("cfg");
        assert_eq!(c.block_size, 8 << 20);
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.fallback, Fallback::Tcp);
        assert!(
            matches!(c.membership, MembershipSource::File { ref path, .. } if path == &PathBuf::from("/tmp/m.json"))
        );
    }

    #[tokio::test]
    async fn empty_membership_names_its_source() {
        let c = CacheClient::new(ClientConfig::default())
            .await
            .expect("client");
        let e = c.read("a", 0, 10).await.expect_err("no workers");
        assert!(e.to_string().contains("no ready worker"), "{e}");
    }
}
