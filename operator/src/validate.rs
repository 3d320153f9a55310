//! The validate stage of the reconcile ([`crate::reconcile`]): turns a `CacheCluster` into a
//! [`ClusterPlan`], the checked and resolved input of the builders (bytes instead of quantities,
//! the bind device chosen, NAD namespaces filled in). Re-checks the CEL rules (`rules.rs`) with the
//! contract crate's validators, so a CRD installed without them (or an object stored before a rule
//! existed) still cannot produce broken children or properties the worker refuses. Pure: no API
//! calls.

use kube::ResourceExt;

use crate::Error;
use crate::crd::{Attachment, CacheCluster, CacheClusterSpec, Medium, NetworkMode};
use rcache_contract::keys::DEFAULT_FUSE_WEB_PORT;
use rcache_contract::paths::{check_absolute, check_safe_dir, overlaps};
use rcache_contract::ufs::{check_s3_endpoint, check_s3_region, check_s3_uri};
use rcache_contract::values::{
    MAX_DURATION_DIGITS, check_interface_name, check_rdma_device, parse_quantity,
};
use rcache_contract::worker::{MAX_PAGE, MIN_PAGE};

/// Linux IFNAMSIZ - 1.
pub const MAX_INTERFACE_NAME: usize = rcache_contract::values::MAX_INTERFACE_NAME;

/// The data transport workers serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// RDMA through UCX.
    Ucx,
    /// TCP (pod network, secondary Ethernet or IPoIB).
    Tcp,
}

impl Transport {
    /// Spelling used in status and members.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ucx => "ucx",
            Transport::Tcp => "tcp",
        }
    }
}

/// A Multus attachment with its namespace resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedAttachment {
    /// NAD namespace.
    pub namespace: String,
    /// NAD name.
    pub name: String,
    /// Interface name inside the pod.
    pub interface: String,
}

impl ResolvedAttachment {
    /// `namespace/name`, the form Multus uses in network-status.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// SSD tier, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdTier {
    /// Directory inside the worker.
    pub path: String,
    /// Backing host directory; None means an emptyDir.
    pub host_path: Option<String>,
    /// Quota in bytes.
    pub quota: u64,
}

/// Everything the builders need, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    /// CacheCluster name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// metadata.uid (labels children for orphan cleanup).
    pub uid: String,
    /// metadata.generation.
    pub generation: i64,
    /// The spec as stored (with apiserver defaults).
    pub spec: CacheClusterSpec,
    /// Page size in bytes.
    pub page_size: u64,
    /// MEM tier quota in bytes (0: no MEM tier).
    pub mem_quota: u64,
    /// SSD tier, if any.
    pub ssd: Option<SsdTier>,
    /// Buffer pool initial, prewarm and max in bytes.
    pub pool_initial: u64,
    /// Buffer pool prewarm bytes.
    pub pool_prewarm: u64,
    /// Buffer pool max bytes.
    pub pool_max: u64,
    /// Small-file prefetch threshold in bytes.
    pub small_file_threshold: u64,
    /// Attachments with namespaces.
    pub attachments: Vec<ResolvedAttachment>,
    /// Interface the data path binds to, if any.
    pub bind_device: Option<String>,
    /// Served transport.
    pub transport: Transport,
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: field.to_string(),
        message: message.into(),
    }
}

fn bytes(field: &str, value: &str) -> Result<u64, Error> {
    parse_quantity(value).map_err(|e| invalid(field, e))
}

fn check_interface(field: &str, name: &str) -> Result<(), Error> {
    check_interface_name(name).map_err(|e| {
        invalid(
            field,
            format!("{e}: 1 to {MAX_INTERFACE_NAME} letters, digits, _, . or -"),
        )
    })
}

fn safe_dir(field: &str, path: &str) -> Result<(), Error> {
    check_safe_dir(path).map_err(|e| invalid(field, e))
}

/// `digits` followed by one of `units` (or nothing when `bare` is allowed), at most
/// [`MAX_DURATION_DIGITS`] digits: the CRD's duration grammar.
fn duration_digits(text: &str, bare: bool) -> Option<&str> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(end);
    let unit_ok = matches!(unit, "ms" | "s" | "m" | "h") || (bare && unit.is_empty());
    (!num.is_empty() && num.len() <= MAX_DURATION_DIGITS && unit_ok).then_some(num)
}

/// Checks and resolves a CacheCluster.
pub fn plan(cc: &CacheCluster) -> Result<ClusterPlan, Error> {
    let namespace = cc
        .namespace()
        .ok_or_else(|| invalid("metadata.namespace", "CacheCluster must be namespaced"))?;
    let uid = cc.uid().unwrap_or_default();
    let name = cc.name_any();
    let dns_label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !dns_label || name.len() > crate::rules::MAX_CLUSTER_NAME {
        return Err(invalid(
            "metadata.name",
            format!(
                "must be a DNS-1035 label of at most {} characters (its Service and workloads are named after it)",
                crate::rules::MAX_CLUSTER_NAME
            ),
        ));
    }
    let spec = cc.spec.clone();
    let w = &spec.worker;
    if w.replicas < 1 {
        return Err(invalid("spec.worker.replicas", "must be at least 1"));
    }
    if w.image.is_empty() || spec.fuse.image.as_deref() == Some("") {
        return Err(invalid("spec.worker.image", "an image must not be empty"));
    }
    let page_size = bytes("spec.worker.pageSize", &w.page_size)?;
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(invalid(
            "spec.worker.pageSize",
            "must be a power of two between 4Ki and 16Mi, such as 1Mi",
        ));
    }
    let ports = &w.ports;
    for (field, port) in [
        ("spec.worker.ports.data", ports.data),
        ("spec.worker.ports.rdma", ports.rdma),
        ("spec.worker.ports.web", ports.web),
    ] {
        if !(1..=65535).contains(&port) {
            return Err(invalid(field, "must be a port 1-65535"));
        }
    }
    if !(0..=1024).contains(&spec.fuse.prefetch_parts) {
        return Err(invalid("spec.fuse.prefetchParts", "must be 0 to 1024"));
    }
    if spec.fuse.open_status_cache.max_size < 1 {
        return Err(invalid(
            "spec.fuse.openStatusCache.maxSize",
            "must be at least 1",
        ));
    }
    if spec.network.rdma.resource_count < 1 {
        return Err(invalid(
            "spec.network.rdma.resourceCount",
            "must be at least 1",
        ));
    }
    if ports.data == ports.rdma || ports.data == ports.web || ports.rdma == ports.web {
        return Err(invalid(
            "spec.worker.ports",
            "data, rdma and web must be three different ports",
        ));
    }
    let fuse_web = i32::from(DEFAULT_FUSE_WEB_PORT);
    if [ports.data, ports.rdma, ports.web].contains(&fuse_web) {
        return Err(invalid(
            "spec.worker.ports",
            format!("must not use {fuse_web}, the FUSE client's web port"),
        ));
    }
    let mut mem_quota = 0;
    let mut ssd = None;
    let mut seen = Vec::new();
    for (i, tier) in w.tiers.iter().enumerate() {
        if seen.contains(&tier.medium) {
            return Err(invalid(
                "spec.worker.tiers",
                "each medium (MEM, SSD) may appear at most once",
            ));
        }
        seen.push(tier.medium);
        let quota = bytes(&format!("spec.worker.tiers[{i}].quota"), &tier.quota)?;
        if quota < page_size && !(tier.medium == Medium::Mem && quota == 0) {
            return Err(invalid(
                &format!("spec.worker.tiers[{i}].quota"),
                "must be at least spec.worker.pageSize (a MEM tier may be 0)",
            ));
        }
        match tier.medium {
            Medium::Mem => mem_quota = quota,
            Medium::Ssd => {
                let field = format!("spec.worker.tiers[{i}].path");
                let path = tier
                    .path
                    .clone()
                    .ok_or_else(|| invalid(&field, "an SSD tier needs an absolute path"))?;
                safe_dir(&field, &path)?;
                if let Some(host) = &tier.host_path {
                    safe_dir(&format!("spec.worker.tiers[{i}].hostPath"), host)?;
                }
                ssd = Some(SsdTier {
                    path,
                    host_path: tier.host_path.clone(),
                    quota,
                });
            }
        }
    }
    safe_dir("spec.fuse.hostMountPath", &spec.fuse.host_mount_path)?;
    let small_file_threshold = bytes(
        "spec.fuse.smallFilePrefetchThreshold",
        &spec.fuse.small_file_prefetch_threshold,
    )?;
    // The schemes workers serve (the CRD's `rules::ufs_scheme`, `ufs_file_path`,
    // `ufs_file_not_system_dir` and `ufs_s3_uri` say the same at apply).
    let ufs_path = if let Some(path) = spec.ufs.uri.strip_prefix("file://") {
        check_absolute(path).map_err(|e| invalid("spec.ufs.uri", e))?;
        safe_dir("spec.ufs.uri", path)?;
        Some(path)
    } else if spec.ufs.uri.starts_with("s3://") {
        check_s3_uri(&spec.ufs.uri).map_err(|e| invalid("spec.ufs.uri", e))?;
        None
    } else {
        return Err(invalid(
            "spec.ufs.uri",
            "must be file:// with an absolute path such as file:///data or s3://bucket[/prefix]; workers serve file:// and s3:// under-storage (not gs:// or hdfs://)",
        ));
    };
    if spec.ufs.s3.is_some() && ufs_path.is_some() {
        return Err(invalid(
            "spec.ufs.s3",
            "applies only to an s3:// spec.ufs.uri",
        ));
    }
    if let Some(endpoint) = spec.ufs.s3.as_ref().and_then(|s| s.endpoint.as_deref()) {
        check_s3_endpoint(endpoint).map_err(|e| invalid("spec.ufs.s3.endpoint", e))?;
    }
    if let Some(region) = spec.ufs.s3.as_ref().and_then(|s| s.region.as_deref()) {
        check_s3_region(region).map_err(|e| invalid("spec.ufs.s3.region", e))?;
    }
    if let Some(ssd) = &ssd
        && let Some(ufs_path) = ufs_path
        && overlaps(&ssd.path, ufs_path)
    {
        return Err(invalid(
            "spec.worker.tiers[].path",
            "the SSD tier's path must not be, hold or lie inside the under-storage path",
        ));
    }
    if let Some(host) = &spec.ufs.host_path {
        safe_dir("spec.ufs.hostPath", host)?;
    }
    let host_dirs = [
        spec.fuse
            .enabled
            .then_some(spec.fuse.host_mount_path.as_str()),
        spec.ufs.host_path.as_deref(),
        ssd.as_ref().and_then(|t| t.host_path.as_deref()),
    ];
    for (i, a) in host_dirs.iter().enumerate() {
        for b in &host_dirs[..i] {
            if let (Some(a), Some(b)) = (a, b)
                && overlaps(a, b)
            {
                return Err(invalid(
                    "spec.fuse.hostMountPath",
                    format!(
                        "host paths {b} and {a} overlap: the FUSE mount, the UFS and the SSD tier host paths must be apart"
                    ),
                ));
            }
        }
    }
    let sync = spec.ufs.metadata_sync_interval.as_str();
    if !(sync == "-1" || sync == "0" || duration_digits(sync, false).is_some()) {
        return Err(invalid(
            "spec.ufs.metadataSyncInterval",
            "must be -1, 0 or a duration such as 10s (ms, s, m or h)",
        ));
    }
    let net = &spec.network;
    let pool = &net.rdma.buffer_pool;
    let pool_initial = bytes("spec.network.rdma.bufferPool.initial", &pool.initial)?;
    let pool_prewarm = bytes("spec.network.rdma.bufferPool.prewarm", &pool.prewarm)?;
    let pool_max = bytes("spec.network.rdma.bufferPool.max", &pool.max)?;
    if pool_prewarm > pool_initial {
        return Err(invalid(
            "spec.network.rdma.bufferPool.prewarm",
            "must not exceed spec.network.rdma.bufferPool.initial",
        ));
    }
    if pool_initial > pool_max {
        return Err(invalid(
            "spec.network.rdma.bufferPool.initial",
            "must not exceed spec.network.rdma.bufferPool.max",
        ));
    }
    if pool_max < page_size {
        return Err(invalid(
            "spec.network.rdma.bufferPool.max",
            "must be at least spec.worker.pageSize",
        ));
    }
    let timeout = net.rdma.operation_timeout.as_str();
    if !duration_digits(timeout, true).is_some_and(|n| n.bytes().any(|b| b != b'0')) {
        return Err(invalid(
            "spec.network.rdma.operationTimeout",
            "must be a positive duration such as 30s or 500ms",
        ));
    }
    if let Some(dev) = &net.rdma.device {
        check_rdma_device(dev).map_err(|e| invalid("spec.network.rdma.device", e))?;
    }
    if let Some(port) = net.rdma.ib_port {
        let port = u8::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| invalid("spec.network.rdma.ibPort", "must be 1-255"))?;
        if net.rdma.device.is_some() {
            return Err(invalid(
                "spec.network.rdma.ibPort",
                format!(
                    "applies to a device resolved from the bind interface: drop it ({port}) when spec.network.rdma.device names the device and its port"
                ),
            ));
        }
    }
    if net.rdma.gid_index.is_some_and(|g| !(0..=255).contains(&g)) {
        return Err(invalid("spec.network.rdma.gidIndex", "must be 0-255"));
    }
    if net.mode == NetworkMode::Rdma && !net.host_network && net.rdma.resource_name.is_none() {
        return Err(invalid(
            "spec.network.rdma.resourceName",
            "mode rdma needs an RDMA device-plugin resource or spec.network.hostNetwork: true",
        ));
    }
    if net.mode == NetworkMode::Ipoib && !net.host_network && net.attachments.is_empty() {
        return Err(invalid(
            "spec.network.attachments",
            "mode ipoib needs an attachment or spec.network.hostNetwork: true",
        ));
    }
    if net.host_network && !net.attachments.is_empty() {
        return Err(invalid(
            "spec.network.attachments",
            "must be empty when spec.network.hostNetwork is true",
        ));
    }
    let attachments = net
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a): (usize, &Attachment)| {
            check_interface(
                &format!("spec.network.attachments[{i}].interface"),
                &a.interface,
            )?;
            Ok(ResolvedAttachment {
                namespace: a.namespace.clone().unwrap_or_else(|| namespace.clone()),
                name: a.name.clone(),
                interface: a.interface.clone(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let bind_device = net
        .bind_device
        .clone()
        .or_else(|| attachments.first().map(|a| a.interface.clone()));
    if let Some(dev) = &bind_device {
        check_interface("spec.network.bindDevice", dev)?;
    }
    let transport = match net.mode {
        NetworkMode::Rdma => Transport::Ucx,
        NetworkMode::Ipoib | NetworkMode::Tcp => Transport::Tcp,
    };
    Ok(ClusterPlan {
        name: cc.name_any(),
        namespace,
        uid,
        generation: cc.metadata.generation.unwrap_or_default(),
        spec,
        page_size,
        mem_quota,
        ssd,
        pool_initial,
        pool_prewarm,
        pool_max,
        small_file_threshold,
        attachments,
        bind_device,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::cluster;

    #[test]
    fn minimal_spec_plans_tcp_with_defaults() {
        let p = plan(&cluster("ufs: {uri: 'file:///data'}")).unwrap();
        assert_eq!(p.transport, Transport::Tcp);
        assert_eq!(p.page_size, 1 << 20);
        assert_eq!(p.mem_quota, 1 << 30);
        assert_eq!(p.pool_max, 8 << 30);
        assert_eq!(p.bind_device, None);
        assert_eq!(p.spec.worker.replicas, 1);
    }

    #[test]
    fn bind_device_defaults_to_first_attachment_interface_and_nad_namespace_to_the_cluster() {
        let p = plan(&cluster(
            "ufs: {uri: 'file:///data'}\nnetwork: {mode: ipoib, attachments: [{name: ib-net, interface: ib0}, {name: other, namespace: net, interface: net2}]}",
        ))
        .unwrap();
        assert_eq!(p.bind_device.as_deref(), Some("ib0"));
        assert_eq!(p.attachments[0].key(), "demo-ns/ib-net");
        assert_eq!(p.attachments[1].key(), "net/other");
    }

    #[test]
    fn rdma_without_resource_or_host_network_is_refused_naming_the_field() {
        let err = plan(&cluster(
            "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma}",
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.network.rdma.resourceName"),
            "{err}"
        );
    }

    #[test]
    fn ib_port_with_a_named_device_is_refused_naming_the_field() {
        let err = plan(&cluster(
            "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, hostNetwork: true, rdma: {device: 'mlx5_0:1', ibPort: 1}}",
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.network.rdma.ibPort"),
            "{err}"
        );
        assert!(
            plan(&cluster(
                "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, hostNetwork: true, rdma: {ibPort: 2, gidIndex: 3}}",
            ))
            .is_ok()
        );
    }

    #[test]
    fn a_name_its_children_cannot_carry_is_refused() {
        for name in ["1st", "Demo", "a-", &"a".repeat(46)] {
            let mut cc = cluster("ufs: {uri: 'file:///data'}");
            cc.metadata.name = Some(name.to_string());
            let err = plan(&cc).unwrap_err();
            assert!(err.to_string().contains("metadata.name"), "{name}: {err}");
        }
        let mut cc = cluster("ufs: {uri: 'file:///data'}");
        cc.metadata.name = Some("a".repeat(45));
        plan(&cc).expect("45 characters");
    }

    #[test]
    fn each_bad_spec_is_refused_with_its_field() {
        let cases = [
            ("worker: {replicas: 0}", "spec.worker.replicas"),
            ("fuse: {hostMountPath: rel}", "spec.fuse.hostMountPath"),
            (
                "network: {rdma: {bufferPool: {prewarm: 1Gi, initial: 512Mi, max: 2Gi}}}",
                "bufferPool.prewarm",
            ),
            (
                "network: {rdma: {bufferPool: {prewarm: 1Mi, initial: 4Gi, max: 2Gi}}}",
                "bufferPool.initial",
            ),
            (
                "network: {attachments: [{name: a, interface: abcdefghijklmnop}]}",
                "attachments[0].interface",
            ),
            (
                "worker: {tiers: [{medium: MEM, quota: 1Gi}, {medium: MEM, quota: 2Gi}]}",
                "spec.worker.tiers",
            ),
            (
                "worker: {tiers: [{medium: SSD, quota: 1Gi}]}",
                "spec.worker.tiers[0].path",
            ),
            (
                "network: {hostNetwork: true, attachments: [{name: a, interface: ib0}]}",
                "spec.network.attachments",
            ),
        ];
        let issue_16 = [
            ("worker: {pageSize: '3000'}", "spec.worker.pageSize"),
            ("worker: {pageSize: 1.5Mi}", "spec.worker.pageSize"),
            (
                "network: {rdma: {operationTimeout: 0s}}",
                "spec.network.rdma.operationTimeout",
            ),
            (
                "network: {rdma: {device: mlx5_0}}",
                "spec.network.rdma.device",
            ),
            ("fuse: {hostMountPath: /etc}", "spec.fuse.hostMountPath"),
            ("fuse: {hostMountPath: /var}", "spec.fuse.hostMountPath"),
            (
                "worker: {ports: {data: 29999, rdma: 29999}}",
                "spec.worker.ports",
            ),
            ("worker: {ports: {web: 30001}}", "spec.worker.ports"),
            ("network: {bindDevice: ''}", "spec.network.bindDevice"),
            (
                "worker: {tiers: [{medium: SSD, path: /data/cache, quota: 1Gi}]}",
                "spec.worker.tiers[].path",
            ),
            (
                "worker: {tiers: [{medium: SSD, path: /c, hostPath: /var/lib/kubelet, quota: 1Gi}]}",
                "spec.worker.tiers[0].hostPath",
            ),
            (
                "worker: {tiers: [{medium: SSD, path: /c, hostPath: /mnt/rcache/x, quota: 1Gi}]}",
                "spec.fuse.hostMountPath",
            ),
            (
                "worker: {tiers: [{medium: MEM, quota: 512Ki}], pageSize: 1Mi}",
                "spec.worker.tiers[0].quota",
            ),
            (
                "network: {rdma: {bufferPool: {initial: 1Mi, prewarm: 1Mi, max: 1Mi}}}\nworker: {pageSize: 4Mi}",
                "spec.network.rdma.bufferPool.max",
            ),
        ];
        for (extra, field) in cases.into_iter().chain(issue_16) {
            let err =
                plan(&cluster(&format!("ufs: {{uri: 'file:///data'}}\n{extra}"))).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        for uri in [
            "ftp://x",
            "hdfs://nn:8020/d",
            "s3://b/p",
            "file:///etc",
            "file://data",
        ] {
            let err = plan(&cluster(&format!("ufs: {{uri: '{uri}'}}"))).unwrap_err();
            assert!(err.to_string().contains("spec.ufs.uri"), "{uri}: {err}");
        }
        let err = plan(&cluster("ufs: {uri: 'file:///data', hostPath: /proc/1}")).unwrap_err();
        assert!(err.to_string().contains("spec.ufs.hostPath"), "{err}");
    }

    #[test]
    fn schemes_the_worker_does_not_serve_and_s3_settings_without_s3_are_refused() {
        for uri in ["gs://bucket/p", "hdfs://nn:8020/p"] {
            let err = plan(&cluster(&format!("ufs: {{uri: '{uri}'}}"))).unwrap_err();
            assert!(
                err.to_string().contains("spec.ufs.uri") && err.to_string().contains("s3://"),
                "{uri}: {err}"
            );
        }
        let err = plan(&cluster(
            "ufs: {uri: 'file:///data', s3: {endpoint: 'http://x:1'}}",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("spec.ufs.s3"), "{err}");
        plan(&cluster(
            "ufs: {uri: 's3://bucket/p', s3: {endpoint: 'http://x:1', pathStyle: true}}",
        ))
        .expect("s3 with settings");
        for (uri, field) in [
            ("s3://Bad_Bucket/p", "spec.ufs.uri"),
            ("s3://bucket/../p", "spec.ufs.uri"),
            ("s3://bucket//p", "spec.ufs.uri"),
        ] {
            let err = plan(&cluster(&format!("ufs: {{uri: '{uri}'}}"))).unwrap_err();
            assert!(err.to_string().contains(field), "{uri}: {err}");
        }
        let err = plan(&cluster(
            "ufs: {uri: 's3://bucket/p', s3: {endpoint: 'minio:9000'}}",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("spec.ufs.s3.endpoint"), "{err}");
        let err = plan(&cluster(
            "ufs: {uri: 's3://bucket/p', s3: {region: \"eu-west-1\\nrcache.ufs.uri=file:///etc\"}}",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("spec.ufs.s3.region"), "{err}");
    }
}
