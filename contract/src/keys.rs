//! The property keys of `rcache.properties` (docs/contracts.md), the syntax of each key's value
//! ([`Kind`]) and its default. Add a key here (constant and [`KEYS`] entry), then render it in
//! the operator and read it in the worker; explain it in [`crate::meaning`] (docs/configuration.md
//! is generated from both).

/// What syntax a key's value has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `256MB`, `8GB`, `4096` (bytes); binary multiples.
    Size,
    /// Like `Size` but may be `0` or negative (`-1`) to mean "disabled".
    SignedSize,
    /// `20s`, `500ms`, `1m`, `2h`; a bare number of a `.ms` key is milliseconds.
    Duration,
    /// A duration like `Duration`, or `0` (check every time) or `-1` (never re-check).
    SyncInterval,
    /// `0`..=`65535` (`0` = any free port, used by tests).
    Port,
    Bool,
    /// A non-negative integer.
    Count,
    /// Free text, non-empty.
    Text,
    /// `scheme://rest`.
    Uri,
    /// One of a fixed set (lower case).
    OneOf(&'static [&'static str]),
    /// A Linux interface name such as `ib0` ([`crate::values::check_interface_name`]).
    Interface,
    /// RDMA devices `name:port[,name:port...]` such as `mlx5_0:1`
    /// ([`crate::values::check_rdma_device`]).
    RdmaDevice,
    /// An absolute, normalized path ([`crate::paths::check_absolute`]).
    Path,
}

impl Kind {
    /// What a value of this kind looks like, for error messages.
    pub fn accepted(&self) -> String {
        match self {
            Kind::Size => "a size: a number with an optional unit B, KB, MB, GB or TB \
                           (binary: 1MB = 1048576), e.g. 256MB"
                .into(),
            Kind::SignedSize => "a size such as 64MB, or 0 / a negative number to disable".into(),
            Kind::Duration => "a duration: a number with unit ms, s, m or h, e.g. 20s \
                               (a bare number of a .ms key is milliseconds)"
                .into(),
            Kind::SyncInterval => "a duration with unit ms, s, m or h (e.g. 10s), 0 to check on \
                                   every read, or -1 to never re-check a file once seen"
                .into(),
            Kind::Port => "a port number 0-65535".into(),
            Kind::Bool => "true or false".into(),
            Kind::Count => "a non-negative integer".into(),
            Kind::Text => "a non-empty string".into(),
            Kind::Uri => "a URI scheme://path, e.g. file:///data".into(),
            Kind::OneOf(opts) => format!("one of: {}", opts.join(", ")),
            Kind::Interface => crate::values::INTERFACE_ACCEPTED.into(),
            Kind::RdmaDevice => crate::values::RDMA_DEVICE_ACCEPTED.into(),
            Kind::Path => crate::paths::ABSOLUTE_ACCEPTED.into(),
        }
    }
}

/// One known key.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    pub key: &'static str,
    pub kind: Kind,
    pub default: Option<&'static str>,
}

const fn spec(key: &'static str, kind: Kind, default: Option<&'static str>) -> KeySpec {
    KeySpec { key, kind, default }
}

pub const CLUSTER_NAME: &str = "rcache.cluster.name";
pub const MEMBERSHIP_FILE: &str = "rcache.cluster.membership.file";
pub const BLOCK_SIZE: &str = "rcache.cluster.placement.block.size";
pub const UFS_URI: &str = "rcache.ufs.uri";
pub const WORKER_HOSTNAME: &str = "rcache.worker.hostname";
pub const WORKER_BIND_DEVICE: &str = "rcache.worker.data.bind.device";
pub const WORKER_BIND_HOST: &str = "rcache.worker.data.bind.host";
pub const WORKER_DATA_PORT: &str = "rcache.worker.data.port";
pub const WORKER_WEB_PORT: &str = "rcache.worker.web.port";
pub const PAGE_SIZE: &str = "rcache.worker.page.size";
pub const MEM_QUOTA: &str = "rcache.worker.page.store.mem.quota";
pub const SSD_DIR: &str = "rcache.worker.page.store.ssd.dir";
pub const SSD_QUOTA: &str = "rcache.worker.page.store.ssd.quota";
pub const RDMA_ENABLED: &str = "rcache.network.rdma.data.enabled";
pub const RDMA_BIND_DEVICE: &str = "rcache.network.rdma.data.bind.device";
pub const RDMA_BIND_HOST: &str = "rcache.network.rdma.data.bind.host";
pub const RDMA_HOSTNAME: &str = "rcache.network.rdma.data.hostname";
pub const RDMA_PORT: &str = "rcache.network.rdma.data.port";
pub const POOL_INITIAL: &str = "rcache.network.rdma.data.buffer.pool.initial.size";
pub const POOL_PREWARM: &str = "rcache.network.rdma.data.buffer.pool.prewarm.size";
pub const POOL_MAX: &str = "rcache.network.rdma.data.buffer.pool.max.size";
pub const OP_TIMEOUT: &str = "rcache.network.rdma.data.operation.timeout.ms";
pub const FALLBACK: &str = "rcache.network.rdma.data.fallback";
pub const USER_BIND_DEVICE: &str = "rcache.user.network.data.bind.device";
/// Refuse to serve over UCX without an RDMA transport (`false`: serve over what UCX finds and
/// report `NoRdmaLane`).
pub const RDMA_STRICT: &str = "rcache.network.rdma.data.strict";
/// RoCE GID index (`UCX_IB_GID_INDEX`); unset: UCX's choice.
pub const RDMA_GID_INDEX: &str = "rcache.network.rdma.data.gid.index";
/// InfiniBand/RoCE port of the RDMA device (1-255); overrides the port of the bound or
/// resolved device (`mlx5_0:<port>`).
pub const RDMA_IB_PORT: &str = "rcache.network.rdma.data.ib.port";
pub const PREFETCH_PARTS: &str =
    "rcache.user.position.reader.streaming.async.prefetch.max.part.number";
pub const PREFETCH_THRESHOLD: &str =
    "rcache.user.position.reader.streaming.async.prefetch.file.length.threshold";
pub const FUSE_STATUS_CACHE: &str = "rcache.fuse.open.read.status.cache.enabled";
pub const FUSE_STATUS_CACHE_SIZE: &str = "rcache.fuse.open.read.status.cache.max.size";
pub const FUSE_MOUNT_POINT: &str = "rcache.fuse.mount.point";
pub const FUSE_WEB_PORT: &str = "rcache.fuse.web.port";
pub const METADATA_SYNC_INTERVAL: &str = "rcache.user.file.metadata.sync.interval";
/// Whether `serve` answers the transport benchmark's `BenchRead`/`BenchWrite` (off in
/// production: they read and write the registered pool for anyone who can connect).
pub const BENCH_ENABLED: &str = "rcache.worker.bench.enabled";
/// The file holding the cluster's shared secret (the operator mounts the CacheCluster's Secret
/// there). Set: every data connection must prove it knows the secret (challenge-response) before
/// its requests are served, and the clients (FUSE, load) prove it. Unset: no authentication.
pub const AUTH_SECRET_FILE: &str = "rcache.security.auth.secret.file";
/// TLS on the TCP data path (rustls): workers serve it with [`TLS_CERT_FILE`] and
/// [`TLS_KEY_FILE`], clients verify them against [`TLS_CA_FILE`] and [`TLS_SERVER_NAME`]. UCX
/// never uses it.
pub const TLS_ENABLED: &str = "rcache.security.tls.enabled";
pub const TLS_CERT_FILE: &str = "rcache.security.tls.cert.file";
pub const TLS_KEY_FILE: &str = "rcache.security.tls.key.file";
pub const TLS_CA_FILE: &str = "rcache.security.tls.ca.file";
pub const TLS_SERVER_NAME: &str = "rcache.security.tls.server.name";
/// The S3 under-storage (`rcache.ufs.uri=s3://...`), read by [`crate::ufs::UfsConfig`].
pub const S3_ENDPOINT: &str = "rcache.underfs.s3.endpoint";
pub const S3_REGION: &str = "rcache.underfs.s3.region";
pub const S3_PATH_STYLE: &str = "rcache.underfs.s3.path.style";
pub const S3_THREADS_MAX: &str = "rcache.underfs.s3.threads.max";
pub const S3_REQUEST_TIMEOUT: &str = "rcache.underfs.s3.request.timeout";
pub const S3_RETRY_MAX: &str = "rcache.underfs.s3.retry.max";

/// Every key of `docs/contracts.md`, with its default.
pub const KEYS: &[KeySpec] = &[
    spec(CLUSTER_NAME, Kind::Text, None),
    spec(
        MEMBERSHIP_FILE,
        Kind::Text,
        Some("/etc/rcache/membership/members.json"),
    ),
    spec(BLOCK_SIZE, Kind::Size, Some("64MB")),
    spec(UFS_URI, Kind::Uri, None),
    spec(WORKER_HOSTNAME, Kind::Text, None),
    spec(WORKER_BIND_DEVICE, Kind::Interface, None),
    spec(WORKER_BIND_HOST, Kind::Text, Some("0.0.0.0")),
    spec(WORKER_DATA_PORT, Kind::Port, Some("29999")),
    spec(WORKER_WEB_PORT, Kind::Port, Some("30000")),
    spec(PAGE_SIZE, Kind::Size, Some("1MB")),
    spec(MEM_QUOTA, Kind::Size, Some("1GB")),
    spec(SSD_DIR, Kind::Path, None),
    spec(SSD_QUOTA, Kind::Size, Some("10GB")),
    spec(RDMA_ENABLED, Kind::Bool, Some("false")),
    spec(RDMA_BIND_DEVICE, Kind::RdmaDevice, None),
    spec(RDMA_BIND_HOST, Kind::Text, Some("0.0.0.0")),
    spec(RDMA_HOSTNAME, Kind::Text, None),
    spec(RDMA_PORT, Kind::Port, Some("59999")),
    spec(POOL_INITIAL, Kind::Size, Some("256MB")),
    spec(POOL_PREWARM, Kind::Size, Some("256MB")),
    spec(POOL_MAX, Kind::Size, Some("8GB")),
    spec(OP_TIMEOUT, Kind::Duration, Some("30s")),
    spec(FALLBACK, Kind::OneOf(&["none", "tcp"]), Some("none")),
    spec(USER_BIND_DEVICE, Kind::Interface, None),
    spec(RDMA_STRICT, Kind::Bool, Some("false")),
    spec(RDMA_GID_INDEX, Kind::Count, None),
    spec(RDMA_IB_PORT, Kind::Count, None),
    spec(PREFETCH_PARTS, Kind::Count, Some("8")),
    spec(PREFETCH_THRESHOLD, Kind::SignedSize, Some("0")),
    spec(FUSE_STATUS_CACHE, Kind::Bool, Some("false")),
    spec(FUSE_STATUS_CACHE_SIZE, Kind::Count, Some("10000")),
    spec(FUSE_MOUNT_POINT, Kind::Text, Some("/mnt/rcache")),
    spec(FUSE_WEB_PORT, Kind::Port, Some("30001")),
    spec(METADATA_SYNC_INTERVAL, Kind::SyncInterval, Some("10s")),
    spec(BENCH_ENABLED, Kind::Bool, Some("false")),
    spec(AUTH_SECRET_FILE, Kind::Path, None),
    spec(TLS_ENABLED, Kind::Bool, Some("false")),
    spec(TLS_CERT_FILE, Kind::Path, None),
    spec(TLS_KEY_FILE, Kind::Path, None),
    spec(TLS_CA_FILE, Kind::Path, None),
    spec(TLS_SERVER_NAME, Kind::Text, Some("rcache-worker")),
    spec(S3_ENDPOINT, Kind::Text, None),
    spec(S3_REGION, Kind::Text, None),
    spec(S3_PATH_STYLE, Kind::Bool, Some("false")),
    spec(S3_THREADS_MAX, Kind::Count, Some("32")),
    spec(S3_REQUEST_TIMEOUT, Kind::Duration, Some("30s")),
    spec(S3_RETRY_MAX, Kind::Count, Some("3")),
];

/// Looks up a known key.
pub fn key_spec(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.key == key)
}

/// The environment variable that overrides `key`: `rcache.worker.data.port` →
/// `RCACHE_WORKER_DATA_PORT`.
pub fn env_name(key: &str) -> String {
    key.replace(['.', '-'], "_").to_ascii_uppercase()
}

/// Default of `rcache.worker.data.port`.
pub const DEFAULT_DATA_PORT: u16 = 29999;
/// Default of `rcache.network.rdma.data.port`.
pub const DEFAULT_RDMA_PORT: u16 = 59999;
/// Default of `rcache.worker.web.port`.
pub const DEFAULT_WEB_PORT: u16 = 30000;
/// Default of `rcache.fuse.web.port` (the FUSE client's `/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_FUSE_WEB_PORT: u16 = 30001;
/// Default of `rcache.cluster.membership.file`.
pub const DEFAULT_MEMBERSHIP_FILE: &str = "/etc/rcache/membership/members.json";
/// Default of `rcache.fuse.mount.point`.
pub const DEFAULT_FUSE_MOUNT_POINT: &str = "/mnt/rcache";
