//! What each key of `rcache.properties` means, for the configuration reference
//! (`docs/configuration.md`, written by `cargo run -p rcache-operator --bin docgen`). The syntax
//! and default of a key live in [`crate::keys::KEYS`]; this module only explains them. A test
//! holds the two lists to the same keys, so a new key cannot ship without its explanation.

use crate::keys::*;

/// What `key` means and which CacheCluster field, if any, the operator renders it from; `None`
/// for a key that is not in [`KEYS`].
pub fn meaning(key: &str) -> Option<&'static str> {
    Some(match key {
        CLUSTER_NAME => "CacheCluster name (the operator sets it)",
        MEMBERSHIP_FILE => "the membership file the operator publishes (see docs/contracts.md)",
        BLOCK_SIZE => {
            "consistent-hash unit: (path, offset / block size) picks the worker that owns a page"
        }
        UFS_URI => {
            "under-storage root, from `spec.ufs.uri`: `file:///data` (an absolute directory in the \
             worker, outside the system directories) or `s3://bucket[/prefix]` (AWS S3 or an \
             S3-compatible store; a bucket of 3-63 `[a-z0-9.-]`, a prefix of printable ASCII \
             without spaces, `.`/`..` segments or `//`); other schemes are refused"
        }
        S3_ENDPOINT => {
            "S3-compatible endpoint `https://host[:port]`, from `spec.ufs.s3.endpoint`; unset means \
             AWS; an `http://` endpoint allows plain HTTP"
        }
        S3_REGION => {
            "bucket region, from `spec.ufs.s3.region`; unset: `AWS_REGION` / `AWS_DEFAULT_REGION` \
             of the environment, else `us-east-1`"
        }
        S3_PATH_STYLE => {
            "from `spec.ufs.s3.pathStyle`; `true`: path-style requests `endpoint/bucket/key` (MinIO, \
             SeaweedFS, Ceph RGW); `false`: virtual-hosted `bucket.endpoint/key`"
        }
        S3_THREADS_MAX => "S3 GETs in flight per worker (more readers wait for a slot)",
        S3_REQUEST_TIMEOUT => {
            "deadline of one S3 request; a request is retried (5xx, SlowDown, timeouts, connection \
             errors) with backoff at most `retry.max` times, and an operation without an answer \
             after `(retry.max + 1) x request.timeout + 1s` fails with `Io` (readers get `EIO`)"
        }
        S3_RETRY_MAX => "retries of a failed S3 request",
        WORKER_HOSTNAME => "address clients use when no bind device is set; unset: the pod IP",
        WORKER_BIND_DEVICE => {
            "interface the TCP data listener binds to (e.g. `ib0`), from `spec.network.bindDevice` \
             or the first attachment's interface; resolves to its IPv4 address"
        }
        WORKER_BIND_HOST => "bind host when no bind device is set",
        WORKER_DATA_PORT => {
            "TCP data port, from `spec.worker.ports.data`; the data, RDMA, web and FUSE web ports \
             must differ (`0`, any free port, is exempt)"
        }
        BENCH_ENABLED => {
            "answer the transport benchmark's `BenchRead`/`BenchWrite` (`rcache-worker bench \
             --mode client` against a live worker); off, they are answered `Unsupported`"
        }
        WORKER_WEB_PORT => {
            "`/metrics`, `/healthz`, `/readyz`, `/v1/...`; from `spec.worker.ports.web`"
        }
        PAGE_SIZE => {
            "cache page size, from `spec.worker.pageSize`: a power of two from 4KB to 16MB"
        }
        MEM_QUOTA => {
            "memory tier quota (pages live in the registered buffer pool), from the `MEM` entry of \
             `spec.worker.tiers`; `0` disables the tier"
        }
        SSD_DIR => {
            "disk tier directory (absolute, outside the system directories and the UFS root), from \
             the `SSD` entry of `spec.worker.tiers`; unset disables the tier"
        }
        SSD_QUOTA => "disk tier quota, from the `SSD` entry of `spec.worker.tiers`",
        RDMA_ENABLED => {
            "serve and read data over UCX (RDMA); `true` when `spec.network.mode` is `rdma`"
        }
        RDMA_BIND_DEVICE => {
            "RDMA device and port `mlx5_0:1` (port 1-255; several separated by commas), from \
             `spec.network.rdma.device`; unset: resolved from the bind interface through sysfs, \
             else UCX chooses"
        }
        RDMA_BIND_HOST => "UCX listener bind host when no bind device is set",
        RDMA_HOSTNAME => "address clients use for the UCX listener",
        RDMA_PORT => "UCX data port, from `spec.worker.ports.rdma`",
        POOL_INITIAL => {
            "registered buffer pool size at start, from `spec.network.rdma.bufferPool.initial`; \
             charged to RLIMIT_MEMLOCK"
        }
        POOL_PREWARM => {
            "registered and touched at start, from `spec.network.rdma.bufferPool.prewarm`; at most \
             the initial size"
        }
        POOL_MAX => {
            "the pool never grows beyond this, from `spec.network.rdma.bufferPool.max`; at least the \
             initial size and one page"
        }
        OP_TIMEOUT => {
            "per-request timeout on the data path, from `spec.network.rdma.operationTimeout`; \
             positive"
        }
        FALLBACK => {
            "what a client does when a worker's UCX port is unreachable, from \
             `spec.network.fallback`: `none` (fail, Alluxio's behaviour) or `tcp`"
        }
        AUTH_SECRET_FILE => {
            "file holding the cluster's shared secret (at least 16 bytes; surrounding white space \
             is ignored). Set, every data connection (TCP and UCX) must prove it knows the secret \
             by challenge-response before any request is served, and the FUSE and load clients \
             prove it; unset, no authentication. The operator always sets it to its mounted \
             Secret (`/etc/rcache/auth/token`)"
        }
        TLS_ENABLED => {
            "TLS 1.3 (rustls) on the TCP data port, from `spec.network.tls`. The worker serves it \
             with `tls.cert.file`/`tls.key.file` and answers a plain client with an `Unsupported` \
             error frame before closing; clients verify the worker against `tls.ca.file` and \
             `tls.server.name`. UCX never uses TLS (keep it off on a fabric)"
        }
        TLS_CERT_FILE => "worker: PEM certificate chain (leaf first); required when TLS is on",
        TLS_KEY_FILE => "worker: PEM private key of that certificate; required when TLS is on",
        TLS_CA_FILE => {
            "clients: PEM CA that signs the workers' certificates; required when TLS is on"
        }
        TLS_SERVER_NAME => {
            "clients: the DNS name every worker's certificate carries (one name per cluster, so \
             certificates need no addresses)"
        }
        RDMA_STRICT => {
            "`true`: a worker with `rdma.data.enabled` refuses to start (fatal error, termination \
             message) when its bind interface has no RDMA device or UCX offers no RDMA transport \
             (`rc_*`, `dc_*`, `ud_*`), from `spec.network.rdma.strict`. `false`: it serves over what \
             UCX found (e.g. `tcp`), logs a warning and reports it: `/v1/stats` \
             `fabric.rdmaLane=false`, metric `rcache_transport_rdma_lane 0`, condition \
             `NetworkReady False NoRdmaLane`"
        }
        RDMA_GID_INDEX => {
            "RoCE GID index 0-255, applied to UCX as `IB_GID_INDEX` on workers and clients, from \
             `spec.network.rdma.gidIndex`; unset: UCX's choice"
        }
        RDMA_IB_PORT => {
            "port 1-255 of the RDMA device, from `spec.network.rdma.ibPort`: the port of a device \
             resolved from the bind interface (`mlx5_0:<port>`); must agree with the port of \
             `rdma.data.bind.device` when both are set"
        }
        USER_BIND_DEVICE => {
            "client and FUSE side interface (e.g. `ib0`): the TCP source address, and the client's \
             UCX devices (`UCX_NET_DEVICES` = the interface's RDMA device, given or resolved \
             through sysfs, with `ib.port`, then the interface), by the same rule as the worker's"
        }
        METADATA_SYNC_INTERVAL => {
            "how long a worker trusts an under-storage file's size and mtime (its version) before \
             it stats the file again, from `spec.ufs.metadataSyncInterval`; a changed file's old \
             pages are dropped and never served. `0`: stat on every read; `-1`: never re-check a \
             file once seen (a \"not found\" is still re-checked every time)"
        }
        PREFETCH_PARTS => "read-ahead parts for sequential readers, from `spec.fuse.prefetchParts`",
        PREFETCH_THRESHOLD => {
            "files up to this size are fetched whole on open, from \
             `spec.fuse.smallFilePrefetchThreshold`; 0 or less disables"
        }
        FUSE_STATUS_CACHE => "cache open/stat results, from `spec.fuse.openStatusCache.enabled`",
        FUSE_STATUS_CACHE_SIZE => "entries in that cache, from `spec.fuse.openStatusCache.maxSize`",
        FUSE_MOUNT_POINT => "mount path inside the FUSE container",
        FUSE_WEB_PORT => {
            "the FUSE client's `/metrics`, `/healthz`, `/readyz` on 0.0.0.0; `0` disables"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_explained() {
        for k in KEYS {
            assert!(
                meaning(k.key).is_some(),
                "{} has no meaning in meaning.rs",
                k.key
            );
        }
        assert_eq!(meaning("rcache.no.such.key"), None);
    }
}
