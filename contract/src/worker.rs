//! What the worker accepts: [`WorkerConfig::from_properties`] checks every cross-key rule of the
//! properties (page size, block size, quotas, pool sizes, timeout, UFS root, cache directory,
//! ports) on top of each key's syntax, and [`accept`] is the worker's whole verdict on a rendered
//! properties file. The operator's agreement tests hold the apiserver's rules to this verdict.

use std::path::PathBuf;
use std::time::Duration;

use crate::keys::*;
use crate::paths::{SAFE_DIR_ACCEPTED, check_safe_dir, overlaps};
use crate::properties::{ConfigError, Properties};
use crate::ufs::UfsConfig;
use crate::values::SyncInterval;

/// The worker's verdict on properties text (no environment overrides): the configuration it
/// would run, or the error it would refuse to start with. The FUSE client's and the client's
/// checks are implied by the worker's (page size within 4KB..16MB, positive block size and
/// timeout).
pub fn accept(text: &str, source: &str) -> Result<WorkerConfig, ConfigError> {
    WorkerConfig::from_properties(&Properties::parse(text, source)?)
}

/// Where the worker keeps pages on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdTier {
    pub dir: PathBuf,
    pub quota: u64,
}

/// The worker's validated configuration.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub cluster: String,
    /// `rcache.ufs.uri`.
    pub ufs: UfsConfig,
    pub page_size: u64,
    pub block_size: u64,
    pub mem_quota: u64,
    pub ssd: Option<SsdTier>,
    pub data_bind_device: Option<String>,
    pub data_bind_host: String,
    pub data_port: u16,
    pub web_port: u16,
    pub rdma_enabled: bool,
    pub rdma_bind_device: Option<String>,
    pub rdma_bind_host: String,
    pub rdma_port: u16,
    pub pool_initial: u64,
    pub pool_prewarm: u64,
    pub pool_max: u64,
    pub op_timeout: Duration,
    /// `rcache.user.file.metadata.sync.interval`.
    pub metadata_sync: SyncInterval,
    /// `rcache.worker.bench.enabled`: answer the transport benchmark's requests.
    pub bench_enabled: bool,
    /// `rcache.network.rdma.data.{ib.port,gid.index}` (and the device, as `rdma_bind_device`).
    pub rdma: crate::binding::RdmaSettings,
    /// `rcache.network.rdma.data.strict`: refuse to serve over UCX without an RDMA transport.
    pub rdma_strict: bool,
    /// `rcache.security.auth.secret.file`: clients must prove the secret in this file.
    pub auth_secret_file: Option<PathBuf>,
    /// `rcache.security.tls.*`: serve TLS on the TCP data port with this certificate and key.
    pub tls: Option<TlsFiles>,
}

/// The certificate and key a worker serves TLS with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// With `rcache.security.tls.enabled=true`, the files named by `keys` (each required); else
/// `None`. Used by the worker (cert, key) and by clients (CA).
pub fn tls_files<const N: usize>(
    p: &Properties,
    keys: [&str; N],
) -> Result<Option<[PathBuf; N]>, ConfigError> {
    if !p.flag(TLS_ENABLED) {
        return Ok(None);
    }
    let mut out: [PathBuf; N] = std::array::from_fn(|_| PathBuf::new());
    for (slot, key) in out.iter_mut().zip(keys) {
        *slot = PathBuf::from(p.required(key, "required with rcache.security.tls.enabled=true")?);
    }
    Ok(Some(out))
}

/// The ports of a worker and of the FUSE client beside it (host network) must differ: the
/// operator lists the worker's in one Service, and two listeners cannot share a port. `0` (any
/// free port, tests) is exempt.
fn check_ports(p: &Properties) -> Result<(), ConfigError> {
    let ports = [WORKER_DATA_PORT, RDMA_PORT, WORKER_WEB_PORT, FUSE_WEB_PORT];
    for (i, a) in ports.iter().enumerate() {
        for b in &ports[..i] {
            let port = p.port(a);
            if port != 0 && port == p.port(b) {
                return Err(p.bad(
                    a,
                    format!("equals {b} ({port})"),
                    format!("a port different from {}", ports.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// Smallest and largest page sizes the worker accepts.
pub const MIN_PAGE: u64 = 4 << 10;
pub const MAX_PAGE: u64 = 16 << 20;

impl WorkerConfig {
    pub fn from_properties(p: &Properties) -> Result<Self, ConfigError> {
        let cluster = p.required(
            CLUSTER_NAME,
            "the CacheCluster name; the operator renders it",
        )?;
        let ufs = UfsConfig::from_properties(p)?;
        let page_size = p.size(PAGE_SIZE);
        if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(p.bad(
                PAGE_SIZE,
                "page size out of range",
                "a power of two between 4KB and 16MB, e.g. 1MB",
            ));
        }
        let block_size = p.size(BLOCK_SIZE);
        if block_size < page_size || !block_size.is_multiple_of(page_size) {
            return Err(p.bad(
                BLOCK_SIZE,
                format!("must be a multiple of {PAGE_SIZE} ({page_size} bytes)"),
                "a multiple of the page size, e.g. 64MB",
            ));
        }
        let mem_quota = p.size(MEM_QUOTA);
        if mem_quota != 0 && mem_quota < page_size {
            return Err(p.bad(
                MEM_QUOTA,
                format!("smaller than one page ({page_size} bytes)"),
                "0 (tier off) or at least one page",
            ));
        }
        let ssd = match p.text(SSD_DIR) {
            None => None,
            Some(dir) => {
                if let Err(reason) = check_safe_dir(&dir) {
                    return Err(p.bad(SSD_DIR, reason, SAFE_DIR_ACCEPTED));
                }
                if let Some(root) = ufs.local_root()
                    && overlaps(&dir, root)
                {
                    return Err(p.bad(
                        SSD_DIR,
                        format!("overlaps the under-storage root {root} ({UFS_URI})"),
                        "a directory that neither is, holds nor lies inside the UFS root",
                    ));
                }
                let quota = p.size(SSD_QUOTA);
                if quota < page_size {
                    return Err(p.bad(
                        SSD_QUOTA,
                        format!("smaller than one page ({page_size} bytes)"),
                        "at least one page, e.g. 10GB",
                    ));
                }
                Some(SsdTier {
                    dir: PathBuf::from(dir),
                    quota,
                })
            }
        };
        let (pool_initial, pool_prewarm, pool_max) =
            (p.size(POOL_INITIAL), p.size(POOL_PREWARM), p.size(POOL_MAX));
        if pool_prewarm > pool_initial {
            return Err(p.bad(
                POOL_PREWARM,
                format!("larger than {POOL_INITIAL} ({pool_initial} bytes)"),
                "a size no larger than the initial pool size",
            ));
        }
        if pool_max < pool_initial {
            return Err(p.bad(
                POOL_MAX,
                format!("smaller than {POOL_INITIAL} ({pool_initial} bytes)"),
                "a size at least the initial pool size",
            ));
        }
        if pool_max < page_size {
            return Err(p.bad(
                POOL_MAX,
                format!("smaller than one page ({page_size} bytes, {PAGE_SIZE})"),
                "a size of at least one page",
            ));
        }
        check_ports(p)?;
        let rdma = crate::binding::RdmaSettings::from_properties(p)?;
        let op_timeout = p.duration(OP_TIMEOUT);
        if op_timeout.is_zero() {
            return Err(p.bad(OP_TIMEOUT, "zero", "a positive duration, e.g. 30s"));
        }
        Ok(WorkerConfig {
            cluster,
            ufs,
            page_size,
            block_size,
            mem_quota,
            ssd,
            data_bind_device: p.text(WORKER_BIND_DEVICE),
            data_bind_host: p.text(WORKER_BIND_HOST).unwrap_or_else(|| "0.0.0.0".into()),
            data_port: p.port(WORKER_DATA_PORT),
            web_port: p.port(WORKER_WEB_PORT),
            rdma_enabled: p.flag(RDMA_ENABLED),
            rdma_bind_device: p.text(RDMA_BIND_DEVICE),
            rdma_bind_host: p.text(RDMA_BIND_HOST).unwrap_or_else(|| "0.0.0.0".into()),
            rdma_port: p.port(RDMA_PORT),
            pool_initial,
            pool_prewarm,
            pool_max,
            op_timeout,
            metadata_sync: p.sync_interval(METADATA_SYNC_INTERVAL),
            bench_enabled: p.flag(BENCH_ENABLED),
            rdma,
            rdma_strict: p.flag(RDMA_STRICT),
            auth_secret_file: p.text(AUTH_SECRET_FILE).map(PathBuf::from),
            tls: tls_files(p, [TLS_CERT_FILE, TLS_KEY_FILE])?
                .map(|[cert, key]| TlsFiles { cert, key }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "rcache.cluster.name=demo\nrcache.ufs.uri=file:///data\n";

    fn refused(extra: &str) -> String {
        match accept(&format!("{BASE}{extra}\n"), "t") {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_rendered_defaults_are_accepted() {
        let w = accept(BASE, "t").expect("accepted");
        assert_eq!(w.data_port, DEFAULT_DATA_PORT);
        assert_eq!(w.rdma_port, DEFAULT_RDMA_PORT);
        assert_eq!(w.web_port, DEFAULT_WEB_PORT);
    }

    #[test]
    fn authentication_is_off_unless_a_secret_file_is_named_and_the_name_must_be_absolute() {
        assert!(
            accept(BASE, "t")
                .expect("accepted")
                .auth_secret_file
                .is_none()
        );
        let on = accept(
            &format!("{BASE}rcache.security.auth.secret.file=/etc/rcache/auth/token\n"),
            "t",
        );
        assert_eq!(
            on.expect("accepted").auth_secret_file,
            Some(PathBuf::from("/etc/rcache/auth/token"))
        );
        let e = refused("rcache.security.auth.secret.file=token");
        assert!(e.contains("rcache.security.auth.secret.file"), "{e}");
    }

    #[test]
    fn tls_is_off_by_default_and_needs_a_certificate_and_key_when_on() {
        assert!(accept(BASE, "t").expect("accepted").tls.is_none());
        let e = refused("rcache.security.tls.enabled=true");
        assert!(e.contains("rcache.security.tls.cert.file"), "{e}");
        let on = accept(
            &format!(
                "{BASE}rcache.security.tls.enabled=true\nrcache.security.tls.cert.file=/tls/tls.crt\n\
                 rcache.security.tls.key.file=/tls/tls.key\n"
            ),
            "t",
        )
        .expect("accepted");
        assert_eq!(
            on.tls,
            Some(TlsFiles {
                cert: "/tls/tls.crt".into(),
                key: "/tls/tls.key".into()
            })
        );
    }

    #[test]
    fn benchmark_requests_are_off_unless_enabled() {
        assert!(!accept(BASE, "t").expect("accepted").bench_enabled);
        let on = accept(&format!("{BASE}rcache.worker.bench.enabled=true\n"), "t");
        assert!(on.expect("accepted").bench_enabled);
    }

    #[test]
    fn equal_ports_are_refused_naming_both_keys() {
        let m = refused("rcache.network.rdma.data.port=29999");
        assert!(m.contains(RDMA_PORT) && m.contains(WORKER_DATA_PORT), "{m}");
        let m = refused("rcache.worker.web.port=30001");
        assert!(m.contains(FUSE_WEB_PORT), "{m}");
        // 0 (any free port) may repeat.
        accept(
            &format!("{BASE}rcache.worker.data.port=0\nrcache.worker.web.port=0\nrcache.network.rdma.data.port=0\n"),
            "t",
        )
        .expect("zero ports");
    }

    #[test]
    fn system_directories_are_refused_as_ufs_root_and_cache_directory() {
        let m = match accept("rcache.cluster.name=a\nrcache.ufs.uri=file:///etc\n", "t") {
            Ok(_) => panic!("accepted /etc"),
            Err(e) => e.to_string(),
        };
        assert!(m.contains(UFS_URI) && m.contains("system directory"), "{m}");
        let m = refused("rcache.worker.page.store.ssd.dir=/var");
        assert!(m.contains(SSD_DIR) && m.contains("/var/lib"), "{m}");
    }

    #[test]
    fn a_cache_directory_overlapping_the_ufs_root_is_refused() {
        let m = refused("rcache.worker.page.store.ssd.dir=/data/cache");
        assert!(
            m.contains(SSD_DIR) && m.contains("under-storage root"),
            "{m}"
        );
    }

    #[test]
    fn a_pool_smaller_than_a_page_is_refused() {
        let m = refused(
            "rcache.worker.page.size=4MB\nrcache.network.rdma.data.buffer.pool.initial.size=1MB\nrcache.network.rdma.data.buffer.pool.prewarm.size=1MB\nrcache.network.rdma.data.buffer.pool.max.size=2MB",
        );
        assert!(m.contains(POOL_MAX), "{m}");
    }

    #[test]
    fn an_rdma_device_without_a_port_and_a_bad_interface_are_refused_at_parse() {
        let m = refused("rcache.network.rdma.data.bind.device=mlx5_0");
        assert!(
            m.contains(RDMA_BIND_DEVICE) && m.contains("mlx5_0:1"),
            "{m}"
        );
        let m = refused("rcache.worker.data.bind.device=ib0 extra");
        assert!(m.contains(WORKER_BIND_DEVICE), "{m}");
    }

    #[test]
    fn a_zero_operation_timeout_is_refused() {
        let m = refused("rcache.network.rdma.data.operation.timeout.ms=0s");
        assert!(m.contains(OP_TIMEOUT) && m.contains("positive"), "{m}");
    }
}
