//! The `CacheLoad` API (`rcache.io/v1alpha1`): a warm-up of a CacheCluster with a selection of
//! paths, run once or on a cron schedule, and its status (progress, verified completion). Every
//! field's doc comment is its `kubectl explain` text. This module owns the schema only.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::crd::ClusterCondition;
use crate::rules;

/// Phases of a CacheLoad.
pub mod phase {
    /// Waiting: for its CacheCluster, for another load of the same cluster, or for its schedule.
    pub const PENDING: &str = "Pending";
    /// A run is listing, loading or verifying.
    pub const RUNNING: &str = "Running";
    /// The last run ended verified: every page of every selected file resident, or counted in
    /// `bytesEvicted` (the selection does not fit; condition `Fits` says how much does).
    pub const COMPLETE: &str = "Complete";
    /// The last run ended with failures (`failures` lists the first ones) or could not run.
    pub const FAILED: &str = "Failed";
}

/// A warm-up of a CacheCluster: the workers fill their tiers with the selected files from the
/// under storage, each worker only the pages it owns, before the jobs that read them start.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rcache.io",
    version = "v1alpha1",
    kind = "CacheLoad",
    namespaced,
    shortname = "rcl",
    status = "CacheLoadStatus",
    derive = "PartialEq",
    doc = "CacheLoad fills a CacheCluster's workers with a selection of under-storage paths (warm-up), once or on a cron schedule, and reports progress and verified completion in its status.",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cacheClusterRef","description":"The CacheCluster filled"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Pending, Running, Complete or Failed"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress","description":"Bytes done (loaded, already cached or failed) of the selection"}"#,
    printcolumn = r#"{"name":"Files","type":"string","jsonPath":".status.files","description":"Files done/total"}"#,
    printcolumn = r#"{"name":"Throughput","type":"string","jsonPath":".status.throughput","description":"Bytes per second of the current or last run"}"#,
    printcolumn = r#"{"name":"ETA","type":"string","jsonPath":".status.eta","description":"Time left at the current throughput"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CacheLoadSpec {
    /// Name of the CacheCluster, in this namespace, whose workers are filled. Loads of one
    /// cluster run one at a time, in creation order.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.cacheClusterRef cannot change; create another CacheLoad"))]
    pub cache_cluster_ref: String,
    /// What to load, relative to the cluster's under-storage root: a file, a directory
    /// (everything below it), or a glob (`*` within a path segment, `**` across segments, `?`
    /// one character, `[a-z]` one of a set), e.g. `datasets/imagenet/train/**/*.jpg`.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 4096)))]
    #[x_kube(validation = Rule::new("self.all(p, !p.startsWith('/') && !p.matches(r'(^|/)\\.\\.(/|$)'))").message("spec.paths: each path is relative to the under-storage root (no leading /, no .. segment)"))]
    pub paths: Vec<String>,
    /// Cron schedule (five fields: minute hour day-of-month month day-of-week, in UTC, e.g.
    /// `0 2 * * *` for 02:00 every day) to run the load again. Unset: the load runs once (and
    /// again when its spec changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(r"self.matches(r'^\s*\S+(\s+\S+){4}\s*$')").message("spec.schedule must be a cron expression of five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *'"))]
    pub schedule: Option<String>,
    /// Load requests in flight at once (each covers a few pages of one file).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,
    /// Most bytes per second this load reads from the under storage, as a quantity (e.g.
    /// `500Mi`). Unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::size("spec.bandwidth", "500Mi"))]
    pub bandwidth: Option<String>,
    /// After loading, check that every page of every loaded file is resident in some tier;
    /// `Complete` then means verified. Pages evicted again (the selection does not fit) are
    /// counted in `status.bytesEvicted`.
    #[serde(default = "default_true")]
    pub verify: bool,
}

/// A path of the selection that failed and why.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LoadFailure {
    /// The file, or the selection entry that matched nothing.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// Observed state of a CacheLoad, written by the operator.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheLoadStatus {
    /// metadata.generation the last run was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Complete or Failed.
    #[serde(default)]
    pub phase: String,
    /// Share of the selection's bytes done (loaded, already cached or failed), e.g. 42%.
    #[serde(default)]
    pub progress: String,
    /// Files done/total, e.g. 120/122.
    #[serde(default)]
    pub files: String,
    /// Files selected.
    #[serde(default)]
    pub files_total: i64,
    /// Files loaded (or found resident).
    #[serde(default)]
    pub files_done: i64,
    /// Files (and selection entries) that failed.
    #[serde(default)]
    pub files_failed: i64,
    /// Bytes selected.
    #[serde(default)]
    pub bytes_total: i64,
    /// Bytes loaded or found resident.
    #[serde(default)]
    pub bytes_done: i64,
    /// Bytes of files that failed.
    #[serde(default)]
    pub bytes_failed: i64,
    /// Bytes that were cached before this run.
    #[serde(default)]
    pub bytes_already_cached: i64,
    /// Bytes this run read from the under storage.
    #[serde(default)]
    pub bytes_loaded: i64,
    /// Bytes of the selection resident when verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_resident: Option<i64>,
    /// Bytes loaded but evicted again by the time of verification (the selection does not fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_evicted: Option<i64>,
    /// The cluster's cache capacity (workers times tier quotas) when the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<i64>,
    /// The first failures, with their paths and errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<LoadFailure>,
    /// Bytes per second of the current or last run, e.g. 812Mi/s.
    #[serde(default)]
    pub throughput: String,
    /// Time left at the current throughput, e.g. 1m20s; empty when not running.
    #[serde(default)]
    pub eta: String,
    /// When the current or last run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the last run ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// When the schedule runs the load next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    /// Runs started so far.
    #[serde(default)]
    pub runs: i64,
    /// Worker pod coordinating the current or last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// The coordinator's web address (pod IP and web port) the operator polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_address: Option<String>,
    /// The run's job id on the coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Coordinators that were lost during the current run (it restarts on another worker).
    #[serde(default)]
    pub restarts: i64,
    /// Progressing, Fits, Verified and Complete.
    #[serde(default)]
    pub conditions: Vec<ClusterCondition>,
}

fn default_concurrency() -> i32 {
    8
}

fn default_true() -> bool {
    true
}
