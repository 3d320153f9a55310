//! The `CacheCluster` API (`rcache.io/v1alpha1`): spec, status and the CEL rules the apiserver
//! enforces. Every field's doc comment becomes its `kubectl explain` text, so write them for users.
//! This module owns the schema only; it must not talk to the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// Default worker and FUSE image.
pub const DEFAULT_IMAGE: &str = "rcache/rcache:0.1.0";

/// Desired state of an rcache cluster: cache workers, FUSE mounts on nodes, the under storage
/// they cache, and the network (RDMA, IPoIB or TCP) the data path uses.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rcache.io",
    version = "v1alpha1",
    kind = "CacheCluster",
    namespaced,
    shortname = "rcc",
    status = "CacheClusterStatus",
    derive = "PartialEq",
    validation = rules::cluster_name(),
    doc = "CacheCluster is an RDMA-enabled cache: worker pods that cache pages of an under storage (UFS) and FUSE pods that mount the cache on nodes, wired to InfiniBand/RoCE secondary networks.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether workers, FUSE and network are all ready"}"#,
    printcolumn = r#"{"name":"Workers","type":"string","jsonPath":".status.workers","description":"Ready/desired cache workers"}"#,
    printcolumn = r#"{"name":"FUSE","type":"string","jsonPath":".status.fuse","description":"Ready/desired FUSE pods"}"#,
    printcolumn = r#"{"name":"Transport","type":"string","jsonPath":".status.transport","description":"Transport the workers observed carrying data (ucx/rc_mlx5, ucx/tcp, ucx/posix, tcp); ucx or tcp alone until a worker reported"}"#,
    printcolumn = r#"{"name":"Cached","type":"string","jsonPath":".status.cache.cached","description":"Bytes the workers' tiers hold"}"#,
    printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.cache.capacity","description":"Bytes the workers' tiers may hold"}"#,
    printcolumn = r#"{"name":"Hit","type":"string","jsonPath":".status.cache.hitRatio","description":"Page lookups served from a tier over the last window"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rules::pool_holds_a_page(),
    validation = rules::ssd_clear_of_ufs(),
    validation = rules::host_paths_apart()
)]
pub struct CacheClusterSpec {
    /// Cache workers: a StatefulSet of pods that hold cached pages in memory and on local disk
    /// and serve them to clients.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// FUSE client: a DaemonSet that mounts the cache on each selected node so other pods can
    /// read it through a hostPath.
    #[serde(default)]
    pub fuse: FuseSpec,
    /// Under storage (UFS): where cached data comes from.
    pub ufs: UfsSpec,
    /// Data network: transport mode, Multus secondary networks, RDMA device-plugin resources and
    /// registered buffer pool.
    #[serde(default)]
    pub network: NetworkSpec,
}

/// Cache worker settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::tiers_hold_a_page())]
pub struct WorkerSpec {
    /// Number of worker pods (at least 1). Members are identified by pod name, so scaling keeps
    /// the identities of the remaining workers.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.worker.replicas must be at least 1"))]
    pub replicas: i32,
    /// Container image holding the `rcache-worker` binary.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// CPU and memory requests/limits of the worker container. The RDMA device-plugin resource
    /// (spec.network.rdma.resourceName) is added by the operator; do not list it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a worker pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules of worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Cache tiers, fastest first: at most one MEM tier (pages in the registered buffer pool) and
    /// one SSD tier (pages in a directory). Default: one MEM tier with a 1Gi quota.
    #[serde(default = "default_tiers")]
    #[schemars(length(max = 4))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.medium == t.medium))").message("spec.worker.tiers: each medium (MEM, SSD) may appear at most once"))]
    pub tiers: Vec<TierSpec>,
    /// Cache page size as a Kubernetes quantity: a power of two from 4Ki to 16Mi (e.g. 1Mi).
    /// Rendered as rcache.worker.page.size.
    #[serde(default = "default_page_size")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::page_size())]
    pub page_size: String,
    /// Ports the worker listens on.
    #[serde(default)]
    pub ports: WorkerPorts,
}

/// Worker ports: three different ports, none of them 30001 (the FUSE client's web port).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::ports_differ(), validation = rules::ports_not_fuse_web())]
pub struct WorkerPorts {
    /// TCP data port (rcache.worker.data.port).
    #[serde(default = "default_data_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub data: i32,
    /// UCX (RDMA) data port (rcache.network.rdma.data.port).
    #[serde(default = "default_rdma_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub rdma: i32,
    /// HTTP port for /metrics, /healthz and /readyz (rcache.worker.web.port).
    #[serde(default = "default_web_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub web: i32,
}

/// One cache tier.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::ssd_tier_paths())]
pub struct TierSpec {
    /// Storage medium: MEM (registered memory) or SSD (a directory).
    pub medium: Medium,
    /// Directory inside the worker container holding the tier's pages (SSD only): an absolute
    /// path outside the system directories (/etc, /proc, /var/lib/kubelet, ...) and apart from
    /// the under-storage path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub path: Option<String>,
    /// Host directory backing an SSD tier (an absolute path outside the system directories, apart
    /// from spec.ufs.hostPath and spec.fuse.hostMountPath). When unset, the SSD tier uses an
    /// emptyDir volume limited to the quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub host_path: Option<String>,
    /// Capacity of the tier as a Kubernetes quantity (e.g. 4Gi), at least one page; a MEM tier
    /// of 0 is off.
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::size("spec.worker.tiers[].quota", "4Gi"))]
    pub quota: String,
}

/// Storage medium of a cache tier.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum Medium {
    /// Pages held in the worker's registered memory buffer pool.
    #[serde(rename = "MEM")]
    Mem,
    /// Pages held in a directory on local disk.
    #[serde(rename = "SSD")]
    Ssd,
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// FUSE client settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FuseSpec {
    /// Run the FUSE DaemonSet.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Image holding the `rcache-fuse` binary. Default: spec.worker.image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Absolute host directory where the cache is mounted on each node (hostPath with
    /// Bidirectional mount propagation). Other pods mount this path to read the cache. It must
    /// lie outside the system directories (/, /etc, /proc, /sys, /dev, /usr, /var/lib/kubelet,
    /// ... and their parents such as /var) and apart from the UFS and SSD host paths.
    #[serde(default = "default_host_mount_path")]
    #[schemars(length(max = 4096))]
    #[x_kube(
        validation = rules::absolute_path("spec.fuse.hostMountPath"),
        validation = rules::not_system_dir("spec.fuse.hostMountPath")
    )]
    pub host_mount_path: String,
    /// Node labels a FUSE pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of FUSE pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory requests/limits of the FUSE container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Read-ahead parts for sequential readers
    /// (rcache.user.position.reader.streaming.async.prefetch.max.part.number).
    #[serde(default = "default_prefetch_parts")]
    #[schemars(range(min = 0, max = 1024))]
    pub prefetch_parts: i32,
    /// Files up to this size (a quantity, e.g. 4Mi) are fetched whole on open; 0 disables
    /// (rcache.user.position.reader.streaming.async.prefetch.file.length.threshold).
    #[serde(default = "default_zero")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::size("spec.fuse.smallFilePrefetchThreshold", "4Mi or 0"))]
    pub small_file_prefetch_threshold: String,
    /// Cache of open/stat results in the FUSE client.
    #[serde(default)]
    pub open_status_cache: OpenStatusCache,
}

/// Cache of open/stat results.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenStatusCache {
    /// Cache open/stat results (rcache.fuse.open.read.status.cache.enabled).
    #[serde(default)]
    pub enabled: bool,
    /// Entries in the cache (rcache.fuse.open.read.status.cache.max.size).
    #[serde(default = "default_status_cache_size")]
    #[schemars(range(min = 1))]
    pub max_size: i32,
}

/// Under storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::s3_settings_need_s3())]
pub struct UfsSpec {
    /// URI of the under-storage root (rcache.ufs.uri): file:// with an absolute path outside the
    /// system directories, e.g. file:///data (a hostPath, NFS or PVC mount in the workers), or
    /// s3://bucket/prefix (AWS S3 or an S3-compatible store, see spec.ufs.s3). Other schemes
    /// (gs://, hdfs://) are refused: workers do not serve them.
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = rules::ufs_scheme(),
        validation = rules::ufs_file_path(),
        validation = rules::ufs_file_not_system_dir(),
        validation = rules::ufs_s3_uri()
    )]
    pub uri: String,
    /// Secret whose keys are passed to workers as environment variables: for s3://,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_REGION). Unset:
    /// the pod's identity (web-identity token, pod identity or instance profile). Values never
    /// appear in the ConfigMap, logs, Events or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// For an s3:// URI: where and how the workers reach the object store (rcache.underfs.s3.*).
    /// Unset: AWS itself, the region of the credentials (AWS_REGION) or us-east-1, and
    /// virtual-hosted addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// For a file:// URI: host directory mounted read-only into workers at the URI's path, an
    /// absolute path outside the system directories. Unset: the path must already exist in the
    /// worker image or another volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(
        validation = rules::absolute_path("spec.ufs.hostPath"),
        validation = rules::not_system_dir("spec.ufs.hostPath")
    )]
    pub host_path: Option<String>,
    /// How long workers trust what they learnt about an under-storage file (size and mtime,
    /// hence which version their cached pages belong to) before asking the under-storage again
    /// (rcache.user.file.metadata.sync.interval): a duration such as 10s or 5m, "0" to check on
    /// every read, "-1" never to re-check a file once seen (immutable datasets). A file that
    /// changes is served at its new version at most this long after the change; a reader that
    /// opened the old version gets ESTALE instead of mixed bytes. Default 10s.
    #[serde(default = "default_sync_interval")]
    #[schemars(regex(pattern = rules::sync_interval_pattern()))]
    pub metadata_sync_interval: String,
}

/// S3 client settings of an s3:// under-storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint of an S3-compatible store, e.g. https://minio.storage.svc:9000 or
    /// http://10.0.0.5:8333 (http:// allows plain HTTP) (rcache.underfs.s3.endpoint). Unset:
    /// AWS S3 of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = rules::s3_endpoint())]
    pub endpoint: Option<String>,
    /// Region of the bucket, e.g. eu-west-1 (rcache.underfs.s3.region). Unset: AWS_REGION of
    /// the credentials Secret, else us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = rules::s3_region())]
    pub region: Option<String>,
    /// Path-style addressing, endpoint/bucket/key, as most S3-compatible stores (MinIO,
    /// SeaweedFS, Ceph RGW) need; false: virtual-hosted bucket.endpoint/key, as AWS prefers
    /// (rcache.underfs.s3.path.style). Default false.
    #[serde(default)]
    pub path_style: bool,
}

/// Reference to a Secret in the CacheCluster's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
}

/// Data network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'rdma' || self.hostNetwork || has(self.rdma.resourceName)").message("spec.network: mode rdma needs spec.network.rdma.resourceName (an RDMA device-plugin resource such as rdma/hca_shared_devices_a) or spec.network.hostNetwork: true"),
    validation = Rule::new("self.mode != 'ipoib' || self.hostNetwork || (has(self.attachments) && size(self.attachments) > 0)").message("spec.network: mode ipoib needs spec.network.attachments (an IPoIB NetworkAttachmentDefinition) or spec.network.hostNetwork: true"),
    validation = Rule::new("!self.hostNetwork || !has(self.attachments) || size(self.attachments) == 0").message("spec.network.attachments must be empty when spec.network.hostNetwork is true (Multus does not attach host-network pods)")
)]
pub struct NetworkSpec {
    /// Transport mode: rdma (data over UCX on InfiniBand/RoCE), ipoib (TCP over an IPoIB
    /// interface) or tcp (TCP over the pod network or a secondary Ethernet network).
    #[serde(default)]
    pub mode: NetworkMode,
    /// Multus secondary networks attached to worker and FUSE pods. The first attachment's
    /// interface is the default bind device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub attachments: Vec<Attachment>,
    /// Interface the data path binds to inside pods (rcache.worker.data.bind.device and
    /// rcache.user.network.data.bind.device). Default: the first attachment's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = rules::interface("spec.network.bindDevice"))]
    pub bind_device: Option<String>,
    /// Run worker and FUSE pods in the host network namespace (no Multus; bind to a host
    /// interface such as ib0).
    #[serde(default)]
    pub host_network: bool,
    /// RDMA settings: device-plugin resource, device, registered buffer pool.
    #[serde(default)]
    pub rdma: RdmaSpec,
    /// What a client does when a worker's UCX port is unreachable: none (fail) or tcp (fall
    /// back to the TCP data port) (rcache.network.rdma.data.fallback).
    #[serde(default)]
    pub fallback: Fallback,
    /// Encrypt the TCP data path with TLS 1.3 (rcache.security.tls.enabled). The operator
    /// keeps a CA and a worker certificate for this CacheCluster in its <name>-auth Secret.
    /// UCX (rdma mode) never uses TLS; TLS costs TCP throughput (docs/security.md).
    #[serde(default)]
    pub tls: bool,
}

/// Transport mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// RDMA through UCX (InfiniBand or RoCE).
    Rdma,
    /// TCP over an IPoIB interface.
    Ipoib,
    /// TCP over the pod network or a secondary Ethernet network.
    #[default]
    Tcp,
}

impl NetworkMode {
    /// The spec spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Rdma => "rdma",
            NetworkMode::Ipoib => "ipoib",
            NetworkMode::Tcp => "tcp",
        }
    }
}

/// Client fallback policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Fail the read.
    #[default]
    None,
    /// Read over TCP from the worker's data port.
    Tcp,
}

/// A Multus secondary network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Name of the NetworkAttachmentDefinition (k8s.cni.cncf.io/v1).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the NetworkAttachmentDefinition. Default: the CacheCluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Interface name inside the pod (e.g. net1 or ib0), at most 15 characters.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = rules::interface("spec.network.attachments[].interface"))]
    pub interface: String,
}

/// RDMA settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.ibPort) || !has(self.device)").message("spec.network.rdma.ibPort applies to a device resolved from the bind interface: drop it when spec.network.rdma.device names the device and its port (mlx5_0:1)")
)]
pub struct RdmaSpec {
    /// Extended resource of the RDMA device plugin requested by worker and FUSE pods (e.g.
    /// rdma/hca_shared_devices_a or nvidia.com/mlnxnics). Required in rdma mode without host
    /// network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub resource_name: Option<String>,
    /// How many units of resourceName each pod requests.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub resource_count: i32,
    /// RDMA device and port such as mlx5_0:1 (rcache.network.rdma.data.bind.device); several
    /// separated by commas. Unset: resolved in the pod from the bind interface through sysfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = rules::rdma_device())]
    pub device: Option<String>,
    /// Registered (pinned) buffer pool of each worker.
    #[serde(default)]
    pub buffer_pool: BufferPool,
    /// Per-request timeout on the data path (rcache.network.rdma.data.operation.timeout.ms): a
    /// positive duration such as 30s or 500ms (a bare number is milliseconds).
    #[serde(default = "default_timeout")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = rules::operation_timeout())]
    pub operation_timeout: String,
    /// Refuse to serve without RDMA (rcache.network.rdma.data.strict): a worker whose UCX has
    /// no RDMA transport exits with the reason instead of serving over UCX's tcp. Either way,
    /// mode rdma without an RDMA lane is NetworkReady False (NoRdmaLane).
    #[serde(default)]
    pub strict: bool,
    /// RoCE GID index, 0-255 (rcache.network.rdma.data.gid.index, UCX_IB_GID_INDEX) for workers
    /// and clients. Unset: UCX's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub gid_index: Option<i32>,
    /// Port of the RDMA device, 1-255 (rcache.network.rdma.data.ib.port): the port of the device
    /// resolved from the bind interface. Not with device, which names its port itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub ib_port: Option<i32>,
}

/// Registered buffer pool sizes (quantities, e.g. 256Mi, 8Gi): prewarm ≤ initial ≤ max.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!isQuantity(self.prewarm) || !isQuantity(self.initial) || quantity(self.prewarm).compareTo(quantity(self.initial)) <= 0").message("spec.network.rdma.bufferPool.prewarm must not exceed spec.network.rdma.bufferPool.initial"),
    validation = Rule::new("!isQuantity(self.initial) || !isQuantity(self.max) || quantity(self.initial).compareTo(quantity(self.max)) <= 0").message("spec.network.rdma.bufferPool.initial must not exceed spec.network.rdma.bufferPool.max")
)]
pub struct BufferPool {
    /// Registered at start (rcache.network.rdma.data.buffer.pool.initial.size).
    #[serde(default = "default_pool_initial")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::size("spec.network.rdma.bufferPool.initial", "256Mi"))]
    pub initial: String,
    /// Registered and touched at start so the first reads do not fault
    /// (rcache.network.rdma.data.buffer.pool.prewarm.size).
    #[serde(default = "default_pool_initial")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::size("spec.network.rdma.bufferPool.prewarm", "256Mi"))]
    pub prewarm: String,
    /// Upper bound of the pool (rcache.network.rdma.data.buffer.pool.max.size).
    #[serde(default = "default_pool_max")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::size("spec.network.rdma.bufferPool.max", "8Gi"))]
    pub max: String,
}

/// Observed state, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheClusterStatus {
    /// metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, WorkersReady, FuseReady, NetworkReady, UfsReady, Progressing and Degraded.
    #[serde(default)]
    pub conditions: Vec<ClusterCondition>,
    /// Ready/desired workers, e.g. 2/3.
    #[serde(default)]
    pub workers: String,
    /// Ready/desired FUSE pods, e.g. 3/3 (0/0 when disabled).
    #[serde(default)]
    pub fuse: String,
    /// Ready worker pods.
    #[serde(default)]
    pub ready_workers: i32,
    /// Desired worker pods (spec.worker.replicas).
    #[serde(default)]
    pub desired_workers: i32,
    /// Ready FUSE pods.
    #[serde(default)]
    pub ready_fuse: i32,
    /// FUSE pods the DaemonSet wants.
    #[serde(default)]
    pub desired_fuse: i32,
    /// The transport that carries data: what the workers observed (`ucx/rc_mlx5`, `ucx/tcp`,
    /// `ucx/posix`, `tcp`, busiest first), or the requested `ucx`/`tcp` until a worker reported.
    #[serde(default)]
    pub transport: String,
    /// What the workers observed of their transports (from their `/v1/stats`, polled with
    /// `cache`); absent until a worker reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<FabricStatus>,
    /// Counter bumped whenever the published membership changes (members.json "generation").
    #[serde(default)]
    pub membership_generation: i64,
    /// Workers as published in the membership ConfigMap.
    #[serde(default)]
    pub members: Vec<Member>,
    /// What the cache holds, from the workers' numbers (updated at most every 30s, and only
    /// when a number changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheUsage>,
    /// The ReadOnlyMany PersistentVolumeClaim application pods mount to read the cache
    /// (`persistentVolumeClaim: {claimName: ...}`); absent while FUSE is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
}

/// The transports the workers observed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FabricStatus {
    /// The transports that carried data across the workers, busiest first (`ucx/tcp`), or what
    /// UCX offers while nothing was carried yet.
    #[serde(default)]
    pub observed: String,
    /// Every reporting worker running UCX has an RDMA transport and no endpoint fell back to
    /// tcp.
    #[serde(default)]
    pub rdma_lane: bool,
    /// Per worker.
    #[serde(default)]
    pub workers: Vec<WorkerFabric>,
}

/// One worker's observed transport.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerFabric {
    pub pod: String,
    /// `ucx/tcp`, `ucx/rc_mlx5`, `tcp`, ...
    #[serde(default)]
    pub observed: String,
    /// The worker serves UCX.
    #[serde(default)]
    pub ucx: bool,
    /// UCX offers an RDMA transport and no endpoint fell back to tcp.
    #[serde(default)]
    pub rdma_lane: bool,
    /// `ucx/<tl>:<device>` UCX offers.
    #[serde(default)]
    pub offered: Vec<String>,
}

/// What a cluster's cache holds, summed over its ready workers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheUsage {
    /// Cached bytes, readable (e.g. 1.5Gi).
    #[serde(default)]
    pub cached: String,
    /// Capacity of the tiers, readable (e.g. 24Gi).
    #[serde(default)]
    pub capacity: String,
    /// Bytes cached in all tiers.
    #[serde(default)]
    pub cached_bytes: i64,
    /// Bytes all tiers may hold (their quotas).
    #[serde(default)]
    pub capacity_bytes: i64,
    /// Per tier (MEM, SSD): bytes cached and capacity.
    #[serde(default)]
    pub tiers: Vec<TierUsage>,
    /// Files with at least one cached page (summed over workers: a file spread over several
    /// workers counts on each).
    #[serde(default)]
    pub files_cached: i64,
    /// Share of page lookups served from a tier over the last window, e.g. 0.98 (reads only;
    /// warm-up fills are not lookups). Empty until there were lookups.
    #[serde(default)]
    pub hit_ratio: String,
    /// Bytes read from the under storage over the last window.
    #[serde(default)]
    pub ufs_bytes_read: i64,
    /// Length of the window in seconds.
    #[serde(default)]
    pub window_seconds: i64,
    /// Workers whose numbers are included.
    #[serde(default)]
    pub workers_reporting: i32,
}

/// One tier's use, summed over workers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TierUsage {
    /// MEM or SSD.
    pub tier: String,
    /// Bytes cached in this tier.
    pub cached_bytes: i64,
    /// This tier's quota over all workers.
    pub capacity_bytes: i64,
}

/// A status condition. lastTransitionTime changes only when status changes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// CamelCase reason, e.g. NetworkAttachmentNotFound.
    pub reason: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// When status last changed (RFC 3339).
    pub last_transition_time: String,
    /// metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A worker as published in members.json (see docs/contracts.md).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Consistent-hash identity (the pod name, stable across restarts).
    pub id: String,
    /// Pod name.
    pub pod: String,
    /// Node the pod runs on.
    #[serde(default)]
    pub node: String,
    /// Address clients connect to: the bound interface's IP, else the pod IP.
    #[serde(default)]
    pub data_address: String,
    /// Ports of the worker.
    pub ports: MemberPorts,
    /// ucx or tcp: how clients connect.
    pub transport: String,
    /// What the worker observed carrying data (`ucx/tcp`, `ucx/rc_mlx5`); status only, never in
    /// the membership file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_transport: Option<String>,
    /// Whether clients may use this member.
    pub ready: bool,
}

/// Ports of a member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberPorts {
    /// TCP data port.
    pub data: i32,
    /// UCX data port.
    pub rdma: i32,
    /// Web port.
    pub web: i32,
}

fn default_replicas() -> i32 {
    1
}
fn default_one() -> i32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}
fn default_page_size() -> String {
    "1Mi".to_string()
}
fn default_tiers() -> Vec<TierSpec> {
    vec![TierSpec {
        medium: Medium::Mem,
        path: None,
        host_path: None,
        quota: "1Gi".to_string(),
    }]
}
fn default_data_port() -> i32 {
    29999
}
fn default_rdma_port() -> i32 {
    59999
}
fn default_web_port() -> i32 {
    30000
}
fn default_host_mount_path() -> String {
    "/mnt/rcache".to_string()
}
fn default_prefetch_parts() -> i32 {
    8
}
fn default_zero() -> String {
    "0".to_string()
}
fn default_status_cache_size() -> i32 {
    10000
}
fn default_sync_interval() -> String {
    "10s".to_string()
}
fn default_timeout() -> String {
    "30s".to_string()
}
fn default_pool_initial() -> String {
    "256Mi".to_string()
}
fn default_pool_max() -> String {
    "8Gi".to_string()
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            replicas: default_replicas(),
            image: default_image(),
            image_pull_policy: PullPolicy::default(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            tiers: default_tiers(),
            page_size: default_page_size(),
            ports: WorkerPorts::default(),
        }
    }
}

impl Default for WorkerPorts {
    fn default() -> Self {
        WorkerPorts {
            data: default_data_port(),
            rdma: default_rdma_port(),
            web: default_web_port(),
        }
    }
}

impl Default for FuseSpec {
    fn default() -> Self {
        FuseSpec {
            enabled: true,
            image: None,
            host_mount_path: default_host_mount_path(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            resources: None,
            prefetch_parts: default_prefetch_parts(),
            small_file_prefetch_threshold: default_zero(),
            open_status_cache: OpenStatusCache::default(),
        }
    }
}

impl Default for OpenStatusCache {
    fn default() -> Self {
        OpenStatusCache {
            enabled: false,
            max_size: default_status_cache_size(),
        }
    }
}

impl Default for RdmaSpec {
    fn default() -> Self {
        RdmaSpec {
            resource_name: None,
            resource_count: default_one(),
            device: None,
            buffer_pool: BufferPool::default(),
            operation_timeout: default_timeout(),
            strict: false,
            gid_index: None,
            ib_port: None,
        }
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool {
            initial: default_pool_initial(),
            prewarm: default_pool_initial(),
            max: default_pool_max(),
        }
    }
}
