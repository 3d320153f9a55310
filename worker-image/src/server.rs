//! The worker process: the transport [`Handler`] that answers Read/Stat/List from the page store
//! and the UFS, and [`serve`], which assembles pool, store, listeners and web endpoints from a
//! [`WorkerConfig`] and runs until SIGTERM. Placement is the client's job: a worker serves any
//! path it is asked for.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rcache_transport::protocol::MAX_PAYLOAD;
use rcache_transport::{
    BufferPool, ChunkMut, ErrorCode, Handler, PoolConfig, Request, Response, ServerOptions,
    TransportKind, binding,
};

use crate::cache::{CacheError, PageAllocator, PageBufMut, PageStore, StoreConfig};
use crate::config::{
    POOL_INITIAL, POOL_MAX, POOL_PREWARM, RDMA_ENABLED, RDMA_STRICT, WorkerConfig,
};
use crate::metrics::{Metrics, Op, Outcome, RequestMetrics};
use crate::ufs::{UfsError, normalize};

/// Pages in the registered pool: a pool chunk is one page, a file's last page a piece of one.
pub struct PoolAllocator(pub BufferPool);

struct PoolBuf(ChunkMut);

impl PageBufMut for PoolBuf {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn freeze(self: Box<Self>, len: usize) -> bytes::Bytes {
        self.0.freeze(len)
    }
}

impl PageAllocator for PoolAllocator {
    fn alloc(&self, size: usize) -> Option<Box<dyn PageBufMut>> {
        self.0
            .alloc_at_least(size)
            .map(|c| Box::new(PoolBuf(c)) as Box<dyn PageBufMut>)
    }
}

/// Serves one transport's requests from the shared store.
pub struct WorkerHandler {
    store: Arc<PageStore>,
    metrics: RequestMetrics,
    bench: Option<rcache_transport::bench::BenchHandler>,
}

impl WorkerHandler {
    /// `bench_pool`: the registered pool `BenchRead`/`BenchWrite` are answered from, so `bench`
    /// can measure a live worker; `None` (production: `rcache.worker.bench.enabled=false`)
    /// answers them `Unsupported`.
    pub fn new(
        store: Arc<PageStore>,
        metrics: Arc<Metrics>,
        bench_pool: Option<&BufferPool>,
        transport: TransportKind,
    ) -> WorkerHandler {
        let bench = bench_pool
            .and_then(|p| rcache_transport::bench::BenchHandler::new(p, Duration::ZERO).ok());
        WorkerHandler {
            store,
            metrics: metrics.handles(&transport.to_string()),
            bench,
        }
    }

    async fn answer(&self, req: Request) -> (Op, Response) {
        match req {
            Request::Ping => (Op::Ping, Response::Pong),
            Request::Read {
                path,
                offset,
                len,
                expect,
            } => {
                if len > MAX_PAYLOAD {
                    return (
                        Op::Read,
                        Response::error(
                            ErrorCode::TooLarge,
                            format!(
                                "read of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit; split it"
                            ),
                        ),
                    );
                }
                let res = match normalize(&path) {
                    Ok(p) => match expect {
                        Some(v) => self.store.read_at_version(&p, v, offset, len).await,
                        None => self.store.read(&p, offset, len).await,
                    },
                    Err(e) => Err(CacheError::Ufs(e)),
                };
                match res {
                    Ok(b) => (Op::Read, Response::Data(b)),
                    Err(e) => (Op::Read, cache_error(e)),
                }
            }
            Request::Stat { path } => {
                let res = match normalize(&path) {
                    Ok(p) => self.store.stat(&p).await,
                    Err(e) => Err(e),
                };
                match res {
                    Ok(s) => (Op::Stat, Response::Stat(s)),
                    Err(e) => (Op::Stat, ufs_error(e)),
                }
            }
            Request::List { path } => {
                let res = match normalize(&path) {
                    Ok(p) => self.store.list(&p).await,
                    Err(e) => Err(e),
                };
                match res {
                    Ok(l) => (Op::List, Response::List(l)),
                    Err(e) => (Op::List, ufs_error(e)),
                }
            }
            Request::Load {
                path,
                offset,
                len,
                fill,
                expect,
            } => {
                let res = match normalize(&path) {
                    Ok(p) => self.store.load_range(&p, offset, len, fill, expect).await,
                    Err(e) => Err(CacheError::Ufs(e)),
                };
                match res {
                    Ok(c) => (Op::Load, Response::Loaded(c)),
                    Err(e) => (Op::Load, cache_error(e)),
                }
            }
            // The transport's authentication gate answers these; they never reach a handler.
            Request::AuthHello | Request::AuthProof { .. } => (
                Op::Ping,
                Response::error(
                    ErrorCode::InvalidRequest,
                    "authentication requests are answered by the transport",
                ),
            ),
            req @ (Request::BenchRead { .. } | Request::BenchWrite { .. }) => match &self.bench {
                Some(b) => (Op::Bench, b.handle(req).await),
                None => (
                    Op::Bench,
                    Response::error(
                        ErrorCode::Unsupported,
                        "bench requests are off on this worker (set rcache.worker.bench.enabled=true to measure it)",
                    ),
                ),
            },
        }
    }
}

fn ufs_error(e: UfsError) -> Response {
    Response::error(e.code(), e.to_string())
}

fn cache_error(e: CacheError) -> Response {
    match e {
        CacheError::Ufs(u) => ufs_error(u),
        CacheError::Internal(m) => Response::error(ErrorCode::Io, m),
        e @ CacheError::Changed { .. } => Response::error(ErrorCode::Io, e.to_string()),
        e @ CacheError::Stale { .. } => Response::error(ErrorCode::Stale, e.to_string()),
    }
}

#[async_trait::async_trait]
impl Handler for WorkerHandler {
    async fn handle(&self, req: Request) -> Response {
        let start = Instant::now();
        let (op, resp) = self.answer(req).await;
        let (outcome, bytes) = match &resp {
            Response::Data(b) => (Outcome::Ok, b.len() as u64),
            Response::Error {
                code: ErrorCode::Stale,
                ..
            } => (Outcome::Stale, 0),
            Response::Error { .. } => (Outcome::Error, 0),
            _ => (Outcome::Ok, 0),
        };
        self.metrics.record(op, outcome, bytes, start.elapsed());
        resp
    }
}

/// RLIMIT_MEMLOCK as (soft, hard); `u64::MAX` is unlimited.
pub fn memlock_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return (0, 0);
    }
    // rlim_t is u64 on Linux but not on every libc: keep the cast.
    #[allow(clippy::unnecessary_cast)]
    let conv = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v as u64
        }
    };
    (conv(r.rlim_cur), conv(r.rlim_max))
}

/// With RDMA on, the pool is pinned: RLIMIT_MEMLOCK must cover it. Raises the soft limit to the
/// hard one when that helps; refuses to start when even that is below the initial pool.
pub fn check_memlock(cfg: &WorkerConfig) -> anyhow::Result<()> {
    if !cfg.rdma_enabled {
        return Ok(());
    }
    let (mut soft, hard) = memlock_limit();
    if soft < cfg.pool_max && hard > soft {
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } == 0 {
            soft = hard;
        }
    }
    let show = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            format!("{v} bytes")
        }
    };
    if soft < cfg.pool_initial {
        anyhow::bail!(
            "RLIMIT_MEMLOCK is {} but {RDMA_ENABLED}=true needs at least {} ({POOL_INITIAL}) pinned, \
             up to {} ({POOL_MAX}). Set the container's memlock limit to unlimited (add the IPC_LOCK \
             capability, `ulimit -l unlimited`, or LimitMEMLOCK=infinity in the container runtime), \
             or lower {POOL_INITIAL}",
            show(soft),
            cfg.pool_initial,
            cfg.pool_max
        );
    }
    if soft < cfg.pool_max {
        tracing::warn!(
            memlock = %show(soft), pool_max = cfg.pool_max,
            "RLIMIT_MEMLOCK is below {POOL_MAX}: the pool cannot grow to its maximum; set memlock to unlimited"
        );
    }
    let _ = POOL_PREWARM;
    Ok(())
}

/// Extra settings of `serve` that are not properties.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Write the bound ports as JSON here once listening (tests use port 0).
    pub ports_file: Option<PathBuf>,
    /// How warm-up jobs reach the cluster (the membership file); `None` loads into this
    /// worker only.
    pub cluster_client: Option<crate::client::ClientConfig>,
}

/// What `serve` bound.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BoundPorts {
    pub data: u16,
    pub web: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<u16>,
}

fn bind_ip(device: &Option<String>, host: &str, key: &str) -> anyhow::Result<IpAddr> {
    let host: IpAddr = host
        .parse()
        .with_context(|| format!("{key} = {host:?} is not an IP address"))?;
    Ok(binding::listen_ip(device.as_deref(), host)?)
}

/// `UCX_NET_DEVICES` for the UCX listener: the RDMA device from the property, else resolved
/// from the bind interface through sysfs; an interface without an RDMA device (a veth in tests,
/// UCX over tcp) leaves the choice to UCX on that interface, or is fatal when strict.
fn ucx_devices(cfg: &WorkerConfig) -> anyhow::Result<Option<String>> {
    let (devices, missing) = binding::ucx_binding(
        cfg.rdma_bind_device.as_deref(),
        cfg.rdma.ib_port,
        cfg.data_bind_device.as_deref(),
        &binding::sysfs_root(),
    )?;
    if let Some(e) = missing {
        if cfg.rdma_strict {
            anyhow::bail!("{e} ({RDMA_STRICT}=true refuses to serve without RDMA)");
        }
        tracing::warn!(error = %e, "UCX will use the interface's own transports (tcp); status reports NoRdmaLane");
    }
    Ok(devices)
}

/// The strict check once UCX is up: what its context offers must include an RDMA transport
/// (`rc_*`, `dc_*`, `ud_*`). Not strict: a warning, and `/v1/stats` and the metrics say so.
fn check_rdma_offered(cfg: &WorkerConfig) -> anyhow::Result<()> {
    let r = rcache_transport::fabric::report();
    if r.rdma_offered {
        return Ok(());
    }
    let offered = if r.offered.is_empty() {
        "nothing".to_string()
    } else {
        r.offered.join(", ")
    };
    let why = format!(
        "no RDMA lane: UCX offers {offered} (UCX_TLS={}, UCX_NET_DEVICES={}); give the pod an RDMA \
         device (device-plugin resource, rcache.network.rdma.data.bind.device such as mlx5_0:1) or \
         use mode ipoib/tcp",
        std::env::var("UCX_TLS").unwrap_or_else(|_| "unset".into()),
        std::env::var("UCX_NET_DEVICES").unwrap_or_else(|_| "unset".into()),
    );
    if cfg.rdma_strict {
        anyhow::bail!("{why} ({RDMA_STRICT}=true refuses to serve over UCX without RDMA)");
    }
    tracing::warn!(reason = %why, "serving over UCX without RDMA; status reports NoRdmaLane ({RDMA_STRICT}=true makes this fatal)");
    Ok(())
}

/// Runs the worker until SIGTERM/SIGINT.
pub async fn serve(cfg: WorkerConfig, opts: ServeOptions) -> anyhow::Result<()> {
    check_memlock(&cfg)?;
    let pool = BufferPool::new(PoolConfig {
        chunk_size: cfg.page_size as usize,
        initial: cfg.pool_initial as usize,
        prewarm: cfg.pool_prewarm as usize,
        max: cfg.pool_max as usize,
    })
    .context("cannot create the buffer pool")?;
    if cfg.mem_quota > cfg.pool_max {
        tracing::warn!(
            mem_quota = cfg.mem_quota,
            pool_max = cfg.pool_max,
            "rcache.worker.page.store.mem.quota exceeds {POOL_MAX}: pages beyond the pool live on the heap and are copied when sent"
        );
    }
    let ufs = crate::ufs::open(&cfg.ufs)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (store, report) = PageStore::open(
        StoreConfig {
            page_size: cfg.page_size,
            mem_quota: cfg.mem_quota,
            ssd: cfg.ssd.clone(),
            metadata_sync: cfg.metadata_sync,
        },
        ufs,
        Arc::new(PoolAllocator(pool.clone())),
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the SSD tier {:?} (rcache.worker.page.store.ssd.dir)",
            cfg.ssd.as_ref().map(|s| &s.dir)
        )
    })?;
    if let Some(r) = report {
        tracing::info!(
            pages = r.pages,
            bytes = r.bytes,
            dropped = r.dropped,
            stale = r.stale,
            "SSD tier scanned"
        );
    }
    let metrics = Metrics::new(Some(store.clone()), Some(pool.clone()));

    let data_ip = bind_ip(
        &cfg.data_bind_device,
        &cfg.data_bind_host,
        crate::config::WORKER_BIND_HOST,
    )?;
    let web_addr = SocketAddr::new(
        if cfg.data_bind_device.is_some() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            data_ip
        },
        cfg.web_port,
    );
    let loads = crate::load::LoadService::new(store.clone(), opts.cluster_client.clone());
    let web = crate::metrics::serve_web_with(metrics.clone(), web_addr, crate::load::router(loads))
        .await
        .with_context(|| format!("cannot listen on {web_addr} (rcache.worker.web.port)"))?;

    let auth = match &cfg.auth_secret_file {
        Some(file) => Some(
            rcache_transport::AuthKey::from_file(file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", crate::config::AUTH_SECRET_FILE))?,
        ),
        None => {
            tracing::warn!(
                "{} is not set: any client that reaches the data ports is served",
                crate::config::AUTH_SECRET_FILE
            );
            None
        }
    };
    let tls = match &cfg.tls {
        Some(f) => Some(
            rcache_transport::TlsServer::from_pem_files(&f.cert, &f.key).map_err(|e| {
                anyhow::anyhow!(
                    "{} / {}: {e}",
                    crate::config::TLS_CERT_FILE,
                    crate::config::TLS_KEY_FILE
                )
            })?,
        ),
        None => None,
    };
    let server_opts = ServerOptions {
        pool: Some(pool.clone()),
        auth,
        tls,
        ucx_devices: if cfg.rdma_enabled {
            ucx_devices(&cfg)?
        } else {
            None
        },
        ucx_gid_index: cfg.rdma.gid_index,
        ..ServerOptions::default()
    };
    let bench_pool = cfg.bench_enabled.then_some(&pool);
    let tcp_handler = Arc::new(WorkerHandler::new(
        store.clone(),
        metrics.clone(),
        bench_pool,
        TransportKind::Tcp,
    ));
    let tcp = rcache_transport::listen(
        TransportKind::Tcp,
        SocketAddr::new(data_ip, cfg.data_port),
        tcp_handler,
        server_opts.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "TCP data listener (rcache.worker.data.port={})",
            cfg.data_port
        )
    })?;
    let mut ucx = None;
    if cfg.rdma_enabled {
        let ip = bind_ip(
            &cfg.data_bind_device,
            &cfg.rdma_bind_host,
            crate::config::RDMA_BIND_HOST,
        )?;
        let handler = Arc::new(WorkerHandler::new(
            store.clone(),
            metrics.clone(),
            bench_pool,
            TransportKind::Ucx,
        ));
        let s = rcache_transport::listen(
            TransportKind::Ucx,
            SocketAddr::new(ip, cfg.rdma_port),
            handler,
            server_opts,
        )
        .await
        .with_context(|| {
            format!(
                "UCX data listener (rcache.network.rdma.data.port={})",
                cfg.rdma_port
            )
        })?;
        ucx = Some(s);
        check_rdma_offered(&cfg)?;
    }
    let ports = BoundPorts {
        data: tcp.local_addr().port(),
        web: web.port(),
        rdma: ucx.as_ref().map(|s| s.local_addr().port()),
    };
    tracing::info!(
        cluster = %cfg.cluster, ufs = %ufs_describe(&store), tcp = %tcp.local_addr(),
        ucx = ?ucx.as_ref().map(|s| s.local_addr()), web = %web, page_size = cfg.page_size,
        mem_quota = cfg.mem_quota, ssd = ?cfg.ssd, metadata_sync = ?cfg.metadata_sync,
        "rcache worker serving"
    );
    if let Some(path) = &opts.ports_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&ports)?)
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write ports file {}", path.display()))?;
    }
    metrics.set_ready(true);

    shutdown_signal().await;
    tracing::info!("shutting down: draining SSD writes");
    metrics.set_ready(false);
    tcp.shutdown().await;
    if let Some(s) = &ucx {
        s.shutdown().await;
    }
    if tokio::time::timeout(Duration::from_secs(20), store.flush())
        .await
        .is_err()
    {
        tracing::warn!("SSD writes still pending after 20s; exiting (they are redone on demand)");
    }
    Ok(())
}

fn ufs_describe(store: &PageStore) -> String {
    store.ufs().describe()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pinned_read_of_a_changed_file_is_counted_as_stale() {
        use rcache_transport::protocol::FileVersion;
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("f"), b"new bytes").expect("write");
        let store = PageStore::open(
            StoreConfig {
                page_size: 4096,
                mem_quota: 1 << 20,
                ssd: None,
                metadata_sync: crate::config::SyncInterval::Every(Duration::from_secs(10)),
            },
            crate::ufs::LocalUfs::new(d.path()).expect("ufs"),
            Arc::new(crate::cache::HeapAllocator),
        )
        .await
        .expect("store")
        .0;
        let metrics = Metrics::new(None, None);
        let h = WorkerHandler::new(store, metrics.clone(), None, TransportKind::Tcp);
        // The client opened another version of `f` (other size and mtime).
        let resp = h
            .handle(Request::Read {
                path: "f".into(),
                offset: 0,
                len: 4,
                expect: Some(FileVersion {
                    size: 3,
                    mtime_ns: 1,
                }),
            })
            .await;
        assert!(
            matches!(
                resp,
                Response::Error {
                    code: ErrorCode::Stale,
                    ..
                }
            ),
            "{resp:?}"
        );
        let text = metrics.encode();
        assert!(
            text.contains("op=\"read\",transport=\"tcp\",result=\"stale\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("op=\"read\",transport=\"tcp\",result=\"error\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bench_requests_are_refused_unless_the_property_enables_them() {
        let d = tempfile::tempdir().expect("tmp");
        let store = PageStore::open(
            StoreConfig {
                page_size: 4096,
                mem_quota: 1 << 20,
                ssd: None,
                metadata_sync: crate::config::SyncInterval::Always,
            },
            crate::ufs::LocalUfs::new(d.path()).expect("ufs"),
            Arc::new(crate::cache::HeapAllocator),
        )
        .await
        .expect("store")
        .0;
        let pool = BufferPool::new(PoolConfig {
            chunk_size: 1 << 20,
            initial: 1 << 20,
            prewarm: 0,
            max: 1 << 20,
        })
        .expect("pool");
        let metrics = Metrics::new(None, None);
        let off = WorkerHandler::new(store.clone(), metrics.clone(), None, TransportKind::Tcp);
        match off.handle(Request::BenchRead { len: 4096 }).await {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Unsupported);
                assert!(message.contains("rcache.worker.bench.enabled"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let on = WorkerHandler::new(store, metrics, Some(&pool), TransportKind::Tcp);
        match on.handle(Request::BenchRead { len: 4096 }).await {
            Response::Data(b) => assert_eq!(b.len(), 4096),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bind_device_wins_over_bind_host_and_unknown_device_is_named() {
        let ip = bind_ip(&Some("lo".into()), "0.0.0.0", "k").expect("lo");
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let e = bind_ip(&Some("ib-nope".into()), "0.0.0.0", "k")
            .expect_err("missing")
            .to_string();
        assert!(e.contains("ib-nope"), "{e}");
        let e = bind_ip(&None, "not-an-ip", "rcache.worker.data.bind.host")
            .expect_err("bad host")
            .to_string();
        assert!(e.contains("rcache.worker.data.bind.host"), "{e}");
    }

    #[test]
    fn memlock_check_names_the_keys_and_the_fix() {
        let p = crate::config::Properties::from_pairs([
            ("rcache.cluster.name", "c"),
            ("rcache.ufs.uri", "file:///data"),
            ("rcache.network.rdma.data.enabled", "true"),
            ("rcache.network.rdma.data.buffer.pool.initial.size", "1TB"),
            ("rcache.network.rdma.data.buffer.pool.prewarm.size", "0"),
            ("rcache.network.rdma.data.buffer.pool.max.size", "2TB"),
        ])
        .expect("props");
        let cfg = WorkerConfig::from_properties(&p).expect("cfg");
        if memlock_limit().1 == u64::MAX {
            // Unlimited here, so nothing would be refused: run this same test again in a child
            // whose limit is 8 MiB (what containers get by default), set with prlimit.
            let exe = std::env::current_exe().expect("the test binary");
            let out = std::process::Command::new("prlimit")
                .arg("--memlock=8388608:8388608")
                .arg(exe)
                .args([
                    "--exact",
                    "server::tests::memlock_check_names_the_keys_and_the_fix",
                ])
                .output()
                .expect("run prlimit (util-linux)");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "under an 8 MiB limit:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let e = check_memlock(&cfg).expect_err("too low").to_string();
        assert!(
            e.contains("RLIMIT_MEMLOCK") && e.contains("unlimited"),
            "{e}"
        );
        assert!(e.contains(POOL_INITIAL), "{e}");
    }
}
