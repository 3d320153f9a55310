//! The CEL text of the CRD's `x-kubernetes-validations`, built from the contract crate's
//! patterns, limits and lists, so the apiserver refuses at `kubectl apply` what the worker would
//! refuse at start (docs/contracts.md). `crd.rs` attaches these rules to fields; `validate.rs`
//! checks the same things with the contract's Rust validators for objects stored before a rule
//! existed. Each rule's message names its field and says what is accepted.

use kube::core::{Message, Rule};
use rcache_contract::keys::DEFAULT_FUSE_WEB_PORT;
use rcache_contract::paths::{ABSOLUTE_PATTERN, DOT_SEGMENT_PATTERN, SYSTEM_DIRS};
use rcache_contract::ufs::{
    S3_ENDPOINT_PATTERN, S3_REGION_PATTERN, S3_URI_ACCEPTED, S3_URI_PATTERN, UFS_ACCEPTED,
};
use rcache_contract::values::{
    INTERFACE_PATTERN, MAX_DURATION_DIGITS, QUANTITY_PATTERN, RDMA_DEVICE_PATTERN,
};
use rcache_contract::worker::{MAX_PAGE, MIN_PAGE};

/// The system directories as a CEL list literal.
fn system_dirs() -> String {
    let quoted: Vec<String> = SYSTEM_DIRS.iter().map(|d| format!("'{d}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// CEL: `a` and `b` are the same directory or one holds the other.
fn overlap(a: &str, b: &str) -> String {
    format!("({a} == {b} || {a}.startsWith({b} + '/') || {b}.startsWith({a} + '/'))")
}

/// CEL: `x` is a quantity of whole bytes in the contract's grammar.
fn whole_bytes(x: &str) -> String {
    format!("({x}.matches(r'{QUANTITY_PATTERN}') && quantity({x}).isInteger())")
}

/// CEL: `x` is an absolute normalized path.
fn absolute(x: &str) -> String {
    format!("({x}.matches(r'{ABSOLUTE_PATTERN}') && !{x}.matches(r'{DOT_SEGMENT_PATTERN}'))")
}

/// CEL: `x` is neither `/` nor overlaps a system directory.
fn clear_of_system_dirs(x: &str) -> String {
    format!(
        "({x} != '/' && !{}.exists(d, {}))",
        system_dirs(),
        overlap(x, "d")
    )
}

/// A size field: a whole number of bytes such as 4Gi.
pub fn size(field: &str, example: &str) -> Rule {
    Rule::new(whole_bytes("self")).message(Message::Message(format!(
        "{field} must be a whole number of bytes written as a quantity such as {example}: digits and an optional suffix Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E, no fraction (1536Mi, not 1.5Gi)"
    )))
}

/// `spec.worker.pageSize`: a power of two between the worker's smallest and largest page.
pub fn page_size() -> Rule {
    let mut sizes = Vec::new();
    let mut s = MIN_PAGE;
    while s <= MAX_PAGE {
        sizes.push(s.to_string());
        s *= 2;
    }
    Rule::new(format!(
        "{} && quantity(self).asInteger() in [{}]",
        whole_bytes("self"),
        sizes.join(", ")
    ))
    .message(Message::Message(format!(
        "spec.worker.pageSize must be a power of two between {}Ki and {}Mi, such as 1Mi",
        MIN_PAGE >> 10,
        MAX_PAGE >> 20
    )))
}

/// A path field: absolute and normalized.
pub fn absolute_path(field: &str) -> Rule {
    Rule::new(absolute("self")).message(Message::Message(format!(
        "{field} must be an absolute path such as /mnt/rcache: no `.` or `..` components, no `//` or trailing `/`, printable ASCII without spaces"
    )))
}

/// A host or mount path field: clear of the system directories.
pub fn not_system_dir(field: &str) -> Rule {
    Rule::new(clear_of_system_dirs("self")).message(Message::Message(format!(
        "{field} must not be /, a system directory ({}), inside one, or a parent of one such as /var",
        SYSTEM_DIRS.join(", ")
    )))
}

/// The SSD tier's `path` (inside the worker) and `hostPath`: absolute, clear of system
/// directories.
pub fn ssd_tier_paths() -> Rule {
    Rule::new(format!(
        "self.medium != 'SSD' || (has(self.path) && {} && {} && (!has(self.hostPath) || ({} && {})))",
        absolute("self.path"),
        clear_of_system_dirs("self.path"),
        absolute("self.hostPath"),
        clear_of_system_dirs("self.hostPath"),
    ))
    .message(Message::Message(format!(
        "spec.worker.tiers[]: an SSD tier needs a path (the directory inside the worker), and its path and hostPath must be absolute paths such as /cache (no `.`, `..`, `//`, trailing `/` or spaces) outside the system directories ({})",
        SYSTEM_DIRS.join(", ")
    )))
}

/// `spec.worker`: a MEM tier of a non-zero quota and an SSD tier hold at least one page.
pub fn tiers_hold_a_page() -> Rule {
    Rule::new(format!(
        "!{page} || self.tiers.all(t, !{q} || (t.medium == 'MEM' && quantity(t.quota).asInteger() == 0) || quantity(t.quota).compareTo(quantity(self.pageSize)) >= 0)",
        page = whole_bytes("self.pageSize"),
        q = whole_bytes("t.quota"),
    ))
    .message("spec.worker.tiers[].quota must be at least spec.worker.pageSize (a MEM tier may be 0, which turns it off)")
}

/// `spec.worker.ports`: data, rdma and web differ (one Service lists them all).
pub fn ports_differ() -> Rule {
    Rule::new("self.data != self.rdma && self.data != self.web && self.rdma != self.web").message(
        "spec.worker.ports: data, rdma and web must be three different ports (the worker Service lists all three)",
    )
}

/// `spec.worker.ports`: none is the FUSE client's web port.
pub fn ports_not_fuse_web() -> Rule {
    let p = DEFAULT_FUSE_WEB_PORT;
    Rule::new(format!("self.data != {p} && self.rdma != {p} && self.web != {p}")).message(Message::Message(format!(
        "spec.worker.ports must not use {p}, the FUSE client's web port (rcache.fuse.web.port), which shares the node's network with host-network workers"
    )))
}

/// An interface name field.
pub fn interface(field: &str) -> Rule {
    Rule::new(format!("self.matches(r'{INTERFACE_PATTERN}')")).message(Message::Message(format!(
        "{field} must be at most 15 characters (the Linux interface name limit): letters, digits, _, . or -, starting with a letter or digit, e.g. ib0"
    )))
}

/// `spec.network.rdma.device`.
pub fn rdma_device() -> Rule {
    Rule::new(format!("self.matches(r'{RDMA_DEVICE_PATTERN}')")).message(
        "spec.network.rdma.device must name an RDMA device and its port, such as mlx5_0:1 (port 1-255; several separated by commas)",
    )
}

/// `spec.network.rdma.operationTimeout`: a positive duration.
pub fn operation_timeout() -> Rule {
    let n = MAX_DURATION_DIGITS;
    Rule::new(format!(
        "self.matches(r'^[0-9]{{1,{n}}}(ms|s|m|h)?$') && !self.matches(r'^0+(ms|s|m|h)?$')"
    ))
    .message(Message::Message(format!(
        "spec.network.rdma.operationTimeout must be a positive duration of at most {n} digits with unit ms, s, m or h (a bare number is ms), such as 30s or 500ms"
    )))
}

/// `spec.ufs.metadataSyncInterval`: the pattern of the CRD field.
pub fn sync_interval_pattern() -> String {
    format!("^(-1|0|[0-9]{{1,{MAX_DURATION_DIGITS}}}(ms|s|m|h))$")
}

/// `spec.ufs.uri`: a scheme workers serve, file:// or s3:// (`UfsConfig::from_properties`); any
/// other (gs://, hdfs://) is refused at apply, naming the field.
pub fn ufs_scheme() -> Rule {
    Rule::new("self.startsWith('file://') || self.startsWith('s3://')").message(Message::Message(format!(
        "spec.ufs.uri must be file:// or s3:// under-storage, such as file:///data or s3://bucket/prefix: workers serve {UFS_ACCEPTED}, not gs:// or hdfs://"
    )))
}

/// `spec.ufs.uri`: a file:// URI has an absolute normalized path.
pub fn ufs_file_path() -> Rule {
    Rule::new(format!(
        "!self.startsWith('file://') || {}",
        absolute("self.substring(7)")
    ))
    .message(
        "spec.ufs.uri must be file:// with an absolute path such as file:///data (no `.`, `..`, `//`, trailing `/` or spaces)",
    )
}

/// `spec.ufs.uri`: an s3:// URI names a bucket and a clean prefix
/// (`rcache_contract::ufs::check_s3_uri`).
pub fn ufs_s3_uri() -> Rule {
    Rule::new(format!(
        "!self.startsWith('s3://') || (self.matches(r'{S3_URI_PATTERN}') && !self.matches(r'{DOT_SEGMENT_PATTERN}'))"
    ))
    .message(Message::Message(format!(
        "spec.ufs.uri must be {S3_URI_ACCEPTED}"
    )))
}

/// `spec.ufs.s3.endpoint`: `rcache_contract::ufs::check_s3_endpoint`.
pub fn s3_endpoint() -> Rule {
    Rule::new(format!("self.matches(r'{S3_ENDPOINT_PATTERN}')")).message(
        "spec.ufs.s3.endpoint must be an http:// or https:// URL such as https://s3.example.com (a host and an optional port, no path)",
    )
}

/// `spec.ufs.s3.region`: `rcache_contract::ufs::check_s3_region`.
pub fn s3_region() -> Rule {
    Rule::new(format!("self.matches(r'{S3_REGION_PATTERN}')")).message(
        "spec.ufs.s3.region must be a region name such as eu-west-1 (1-64 letters, digits, `_` and `-`)",
    )
}

/// `spec.ufs`: S3 settings only with an s3:// URI.
pub fn s3_settings_need_s3() -> Rule {
    Rule::new("!has(self.s3) || self.uri.startsWith('s3://')")
        .message("spec.ufs.s3 applies only to an s3:// spec.ufs.uri")
}

/// `spec.ufs.uri`: a file:// path is clear of the system directories.
pub fn ufs_file_not_system_dir() -> Rule {
    Rule::new(format!(
        "!self.startsWith('file://') || {}",
        clear_of_system_dirs("self.substring(7)")
    ))
    .message(Message::Message(format!(
        "spec.ufs.uri must not name /, a system directory ({}), one inside them, or a parent of one",
        SYSTEM_DIRS.join(", ")
    )))
}

/// Longest CacheCluster name: its StatefulSet `<name>-worker` and DaemonSet `<name>-fuse` get
/// a `controller-revision-hash` label `<workload>-<hash of up to 10 characters>` that must fit
/// in 63 characters.
pub const MAX_CLUSTER_NAME: usize = 45;

/// The CacheCluster's name: a DNS-1035 label (its Service `<name>-worker` must be one) short
/// enough for its children's names and labels.
pub fn cluster_name() -> Rule {
    Rule::new(format!(
        "self.metadata.name.matches(r'^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= {MAX_CLUSTER_NAME}"
    ))
    .message(Message::Message(format!(
        "metadata.name of a CacheCluster must start with a letter, hold only lower-case letters, digits and -, end with a letter or digit, and be at most {MAX_CLUSTER_NAME} characters (its Service and workloads are named after it)"
    )))
}

/// The spec: the registered pool holds at least one page.
pub fn pool_holds_a_page() -> Rule {
    Rule::new(format!(
        "!{} || !{} || quantity(self.network.rdma.bufferPool.max).compareTo(quantity(self.worker.pageSize)) >= 0",
        whole_bytes("self.network.rdma.bufferPool.max"),
        whole_bytes("self.worker.pageSize")
    ))
    .message("spec.network.rdma.bufferPool.max must be at least spec.worker.pageSize")
}

/// The spec: the SSD tier's directory neither is, holds nor lies in the UFS root.
pub fn ssd_clear_of_ufs() -> Rule {
    Rule::new(format!(
        "!self.ufs.uri.startsWith('file://') || self.worker.tiers.all(t, t.medium != 'SSD' || !has(t.path) || !{})",
        overlap("t.path", "self.ufs.uri.substring(7)")
    ))
    .message("spec.worker.tiers[].path of the SSD tier must not be, hold or lie inside the under-storage path of spec.ufs.uri")
}

/// The spec: host directories do not overlap (the FUSE mount, the UFS and the SSD tier).
pub fn host_paths_apart() -> Rule {
    let fuse_vs = |x: &str| {
        format!(
            "!self.fuse.enabled || !{}",
            overlap("self.fuse.hostMountPath", x)
        )
    };
    Rule::new(format!(
        "(!has(self.ufs.hostPath) || ({})) && self.worker.tiers.all(t, t.medium != 'SSD' || !has(t.hostPath) || (({}) && (!has(self.ufs.hostPath) || !{})))",
        fuse_vs("self.ufs.hostPath"),
        fuse_vs("t.hostPath"),
        overlap("t.hostPath", "self.ufs.hostPath"),
    ))
    .message("spec.fuse.hostMountPath, spec.ufs.hostPath and the SSD tier's hostPath must be apart: none may be, hold or lie inside another")
}
