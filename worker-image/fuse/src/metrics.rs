//! The FUSE client's metrics and its small web server on `rcache.fuse.web.port`: `/metrics`
//! (OpenMetrics text), `/healthz` (the process answers) and `/readyz` (the filesystem is mounted
//! and serving). Same style as the worker's (`rcache_worker::metrics`): prometheus_client
//! counters, which are atomics, so the read path pays no lock; the errno family is only touched
//! on errors. This module owns the metric names; `fs` and `reader` record into them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rcache_worker::metrics::WebEndpoints;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The FUSE operation answered with the error (`read`, `open`, `lookup`, ...).
    pub op: String,
    /// The errno's symbolic name (`EIO`, `ENOENT`, `ESTALE`, ...).
    pub errno: String,
}

/// The prefetcher's counters, handed to each open file (clones share the counts).
#[derive(Clone, Debug, Default)]
pub struct PrefetchCounters {
    /// Parts whose fetch the prefetcher started (read-ahead and whole-file fetch).
    pub fetched: Counter,
    /// Parts a read found already fetched: served from memory without waiting.
    pub hit: Counter,
    /// Parts a read had to wait for (still in flight, or fetched by the read itself).
    pub waited: Counter,
}

/// The symbolic name of an errno, for the `errno` label.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EIO => "EIO",
        libc::ENOENT => "ENOENT",
        libc::ESTALE => "ESTALE",
        libc::EROFS => "EROFS",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENOMEM => "ENOMEM",
        libc::EAGAIN => "EAGAIN",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTCONN => "ENOTCONN",
        libc::ENOSYS => "ENOSYS",
        other => return format!("E{other}"),
    };
    name.to_string()
}

/// The FUSE client's metrics (names under `rcache_fuse_`).
pub struct FuseMetrics {
    registry: Registry,
    pub reads: Counter,
    pub read_bytes: Counter,
    pub read_seconds: Histogram,
    errors: Family<ErrorLabels, Counter>,
    pub stale_reads: Counter,
    /// Cache invalidations the kernel accepted (sent after an ESTALE read).
    pub kernel_invalidations: Counter,
    pub open_files: Gauge,
    pub stat_cache_hits: Counter,
    pub stat_cache_misses: Counter,
    pub prefetch: PrefetchCounters,
    ready: AtomicBool,
    mount_point: OnceLock<PathBuf>,
}

impl std::fmt::Debug for FuseMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FuseMetrics")
    }
}

impl FuseMetrics {
    pub fn new() -> Arc<FuseMetrics> {
        let mut registry = Registry::with_prefix("rcache_fuse");
        let reads = Counter::default();
        registry.register(
            "reads",
            "Read requests answered (data or error)",
            reads.clone(),
        );
        let read_bytes = Counter::default();
        registry.register(
            "read_bytes",
            "Bytes returned to readers",
            read_bytes.clone(),
        );
        // 20 µs .. ~10 s, like the worker's request histogram.
        let read_seconds = Histogram::new(exponential_buckets(20e-6, 2.0, 20));
        registry.register(
            "read_seconds",
            "Time from the kernel's read request to the reply",
            read_seconds.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Requests answered with an error, by operation and errno",
            errors.clone(),
        );
        let stale_reads = Counter::default();
        registry.register(
            "stale_reads",
            "Reads answered ESTALE: the file changed since it was opened",
            stale_reads.clone(),
        );
        let kernel_invalidations = Counter::default();
        registry.register(
            "kernel_invalidations",
            "Kernel attribute and page cache invalidations sent after a file was found changed",
            kernel_invalidations.clone(),
        );
        let open_files = Gauge::default();
        registry.register("open_files", "Open file handles", open_files.clone());
        let stat_cache_hits = Counter::default();
        registry.register(
            "stat_cache_hits",
            "Stats answered from the open/stat cache (rcache.fuse.open.read.status.cache.*)",
            stat_cache_hits.clone(),
        );
        let stat_cache_misses = Counter::default();
        registry.register(
            "stat_cache_misses",
            "Stats the enabled open/stat cache could not answer",
            stat_cache_misses.clone(),
        );
        let prefetch = PrefetchCounters::default();
        registry.register(
            "prefetch_parts_fetched",
            "Parts the prefetcher started fetching (read-ahead and whole-file fetch)",
            prefetch.fetched.clone(),
        );
        registry.register(
            "prefetch_parts_hit",
            "Parts a read found already fetched",
            prefetch.hit.clone(),
        );
        registry.register(
            "prefetch_parts_waited",
            "Parts a read had to wait for",
            prefetch.waited.clone(),
        );
        Arc::new(FuseMetrics {
            registry,
            reads,
            read_bytes,
            read_seconds,
            errors,
            stale_reads,
            kernel_invalidations,
            open_files,
            stat_cache_hits,
            stat_cache_misses,
            prefetch,
            ready: AtomicBool::new(false),
            mount_point: OnceLock::new(),
        })
    }

    /// Records a request `op` answered with `errno`.
    pub fn error(&self, op: &str, errno: i32) {
        self.errors
            .get_or_create(&ErrorLabels {
                op: op.to_string(),
                errno: errno_name(errno),
            })
            .inc();
    }

    /// Records an answered read.
    pub fn read(&self, bytes: usize, took: Duration) {
        self.reads.inc();
        if bytes > 0 {
            self.read_bytes.inc_by(bytes as u64);
        }
        self.read_seconds.observe(took.as_secs_f64());
    }

    /// Marks the filesystem mounted at `mount_point` (true) or going away (false).
    pub fn set_mounted(&self, mount_point: &std::path::Path, mounted: bool) {
        let _ = self.mount_point.set(mount_point.to_path_buf());
        self.ready.store(mounted, Ordering::SeqCst);
    }

    /// Ready: marked mounted and the kernel still shows our filesystem at the mount point (a
    /// lazy unmount from outside, e.g. the DaemonSet's preStop, makes it unready at once).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self.mount_point.get().is_some_and(|mp| {
                crate::mount::mounted_fs_type(mp)
                    .is_some_and(|t| t == format!("fuse.{}", crate::mount::FS_SUBTYPE))
            })
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl WebEndpoints for FuseMetrics {
    fn encode(&self) -> String {
        FuseMetrics::encode(self)
    }
    fn is_ready(&self) -> bool {
        FuseMetrics::is_ready(self)
    }
    fn not_ready_text(&self) -> &'static str {
        "not mounted\n"
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` on `addr` (the worker's web server, shared).
pub async fn serve_web(metrics: Arc<FuseMetrics>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    rcache_worker::metrics::serve_web(metrics, addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_error_and_prefetch_metrics_are_exported_under_rcache_fuse() {
        let m = FuseMetrics::new();
        m.read(4096, Duration::from_micros(300));
        m.error("read", libc::EIO);
        m.error("read", libc::ESTALE);
        m.stale_reads.inc();
        m.prefetch.fetched.inc_by(3);
        m.open_files.inc();
        let text = m.encode();
        for want in [
            "rcache_fuse_reads_total 1",
            "rcache_fuse_read_bytes_total 4096",
            "rcache_fuse_read_seconds_bucket",
            "rcache_fuse_read_seconds_count 1",
            "rcache_fuse_errors_total{op=\"read\",errno=\"EIO\"} 1",
            "rcache_fuse_errors_total{op=\"read\",errno=\"ESTALE\"} 1",
            "rcache_fuse_stale_reads_total 1",
            "rcache_fuse_prefetch_parts_fetched_total 3",
            "rcache_fuse_open_files 1",
            "rcache_fuse_stat_cache_hits_total 0",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
    }

    #[test]
    fn an_unnamed_errno_gets_its_number() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(9999), "E9999");
    }

    #[test]
    fn not_ready_until_marked_mounted_and_the_kernel_shows_the_mount() {
        let m = FuseMetrics::new();
        assert!(!m.is_ready());
        // Marked, but nothing of ours is mounted there.
        let d = tempfile::tempdir().unwrap();
        m.set_mounted(d.path(), true);
        assert!(!m.is_ready());
    }

    #[tokio::test]
    async fn the_web_server_answers_healthz_and_readyz_503_before_the_mount() {
        let m = FuseMetrics::new();
        let addr = serve_web(m, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("rcache_fuse_reads_total 0"), "{metrics}");
    }
}
