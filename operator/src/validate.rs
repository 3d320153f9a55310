//! Stage 1 of the reconcile: turns a `CacheCluster` into a [`ClusterPlan`], the checked and
//! resolved input of the builders (bytes instead of quantities, the bind device chosen, NAD
//! namespaces filled in). Re-checks the CEL rules so a CRD installed without them (or an object
//! stored before a rule existed) still cannot produce broken children. Pure: no API calls.

use kube::ResourceExt;

use crate::Error;
use crate::crd::{Attachment, CacheCluster, CacheClusterSpec, Medium, NetworkMode};
use crate::quantity::parse_bytes;

/// Linux IFNAMSIZ - 1.
pub const MAX_INTERFACE_NAME: usize = 15;

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
    parse_bytes(value).map_err(|e| invalid(field, e))
}

fn check_interface(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME {
        return Err(invalid(
            field,
            format!("interface name {name:?} must be 1 to {MAX_INTERFACE_NAME} characters"),
        ));
    }
    Ok(())
}

/// Checks and resolves a CacheCluster.
pub fn plan(cc: &CacheCluster) -> Result<ClusterPlan, Error> {
    let namespace = cc
        .namespace()
        .ok_or_else(|| invalid("metadata.namespace", "CacheCluster must be namespaced"))?;
    let uid = cc.uid().unwrap_or_default();
    let spec = cc.spec.clone();
    let w = &spec.worker;
    if w.replicas < 1 {
        return Err(invalid("spec.worker.replicas", "must be at least 1"));
    }
    let page_size = bytes("spec.worker.pageSize", &w.page_size)?;
    if page_size == 0 {
        return Err(invalid("spec.worker.pageSize", "must be positive"));
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
        match tier.medium {
            Medium::Mem => mem_quota = quota,
            Medium::Ssd => {
                let path = tier
                    .path
                    .clone()
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| {
                        invalid(
                            &format!("spec.worker.tiers[{i}].path"),
                            "an SSD tier needs an absolute path",
                        )
                    })?;
                ssd = Some(SsdTier {
                    path,
                    host_path: tier.host_path.clone(),
                    quota,
                });
            }
        }
    }
    if !spec.fuse.host_mount_path.starts_with('/') {
        return Err(invalid(
            "spec.fuse.hostMountPath",
            "must be an absolute path (start with /)",
        ));
    }
    let small_file_threshold = bytes(
        "spec.fuse.smallFilePrefetchThreshold",
        &spec.fuse.small_file_prefetch_threshold,
    )?;
    let scheme_ok = ["file://", "s3://", "gs://", "hdfs://"]
        .iter()
        .any(|s| spec.ufs.uri.starts_with(s));
    if !scheme_ok {
        return Err(invalid(
            "spec.ufs.uri",
            "must use a supported scheme: file://, s3://, gs:// or hdfs://",
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
        for (extra, field) in cases {
            let err =
                plan(&cluster(&format!("ufs: {{uri: 'file:///data'}}\n{extra}"))).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        let err = plan(&cluster("ufs: {uri: 'ftp://x'}")).unwrap_err();
        assert!(err.to_string().contains("spec.ufs.uri"), "{err}");
    }
}
