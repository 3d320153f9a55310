//! The reconcile of one CacheCluster: validate → build → apply → status. Only `apply` and
//! `status` (and the observations feeding status) talk to the API server; validate and build are
//! the pure functions of [`crate::validate`] and [`crate::build`].
//!
//! Apply uses server-side apply with one field manager (`rcache-operator`, forced) so
//! re-applying an unchanged spec is a no-op for the apiserver (no resourceVersion bump); children
//! the spec no longer wants are found by `app.kubernetes.io/instance` + `rcache.io/owner-uid`
//! and deleted. Status is patched only when it differs from what is stored.
//!
//! Even a no-op apply costs the apiserver a full request (decode, merge of managed fields,
//! compare): at 200 clusters they were ~60% of its requests. So a child is applied only when it
//! may differ from what this process last applied ([`decide`], per kind [`SkipRule`]), read
//! from reflector stores of the children ([`ChildStores`]) that feed the controller's triggers.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::Error;
use crate::build::{self, FIELD_MANAGER, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_OWNER_UID};
use crate::crd::{CacheCluster, CacheClusterStatus};
use crate::metrics::Metrics;
use crate::status::{self, Observed, PodProblem};
use crate::validate::{self, ClusterPlan};

/// How often a healthy cluster is re-checked without any watch event.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay after the first failed reconcile of a cluster; it doubles with each further
/// failure in a row, up to [`MAX_BACKOFF`] (see [`backoff`]).
pub const RETRY: Duration = Duration::from_secs(5);
/// Longest delay between retries of a failing cluster.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Most CacheClusters whose sweep generation [`Context`] remembers.
pub const SWEPT_MAX: usize = 65_536;

/// The NetworkAttachmentDefinition resource (Multus CRD, not in k8s-openapi).
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// Shared state of reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on CacheClusters.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Which clusters' orphaned children this process already swept, at which generation.
    pub swept: Swept,
    /// The children as the controller's watches last saw them.
    pub children: ChildStores,
    /// What this process last applied, per cluster and child.
    pub applied: AppliedChildren,
    /// Failed reconciles in a row, per cluster (the retry backoff).
    pub failures: Failures,
    /// Who the rendered NetworkPolicies let in; `None`: render none (chart value).
    pub policy_peers: Option<build::network_policy::PolicyPeers>,
}

/// The delay before retrying a cluster whose last `failures` reconciles in a row failed:
/// [`RETRY`] doubled per earlier failure, at most [`MAX_BACKOFF`], so a child the API server
/// keeps refusing is not re-applied hot.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// CacheCluster uid → failed reconciles in a row (reset by a successful one). Bounded like
/// [`Swept`]; forgetting only restarts a backoff.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of cluster `uid`; returns the count in a row.
    pub fn record(&self, uid: &str) -> u32 {
        let Ok(mut m) = self.0.lock() else { return 1 };
        if m.len() >= SWEPT_MAX && !m.contains_key(uid) {
            m.clear();
        }
        let n = m.entry(uid.to_string()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Cluster `uid` reconciled: its next failure starts the backoff again.
    pub fn reset(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

/// Reflector stores of the owned children, filled by the same watch streams that trigger the
/// controller (a store is updated before its event triggers a reconcile, so a reconcile caused by
/// an edit or deletion of a child always sees it).
/// The stored objects have no managedFields, and the ConfigMaps no data (see `run.rs`).
#[derive(Clone)]
pub struct ChildStores {
    /// Properties and membership ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// Worker Services.
    pub services: Store<Service>,
    /// Worker StatefulSets.
    pub stateful_sets: Store<StatefulSet>,
    /// FUSE DaemonSets.
    pub daemon_sets: Store<DaemonSet>,
    /// Worker PodDisruptionBudgets.
    pub pdbs: Store<PodDisruptionBudget>,
    /// Worker NetworkPolicies.
    pub network_policies: Store<NetworkPolicy>,
}

/// How a child in the store shows that nobody changed it since this process applied it. Either
/// rule also needs the same desired object (hash) as the last successful apply, and the same
/// uid (a child deleted and recreated by someone else is a different object); a child absent from
/// the store, or a store not yet listed, is always applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipRule {
    /// ConfigMap, Service: only writes of the object itself change its resourceVersion (a
    /// ConfigMap has no status; the worker Services are headless ClusterIP, whose status nobody
    /// writes), so the resourceVersion our apply returned, still live, means untouched since.
    ResourceVersion,
    /// StatefulSet, DaemonSet, PodDisruptionBudget: their controllers write status all the time
    /// (each write bumps resourceVersion), but the apiserver bumps `metadata.generation` on every
    /// spec change and never on a status write, so the generation our apply returned means the
    /// same spec. Metadata edits do not bump it, so the desired labels, annotations and owner
    /// references must also be on the live object with the same values.
    Generation,
}

impl SkipRule {
    /// The rule for a child kind (generation for kinds with a status written by a controller).
    pub fn for_kind(kind: &str) -> Self {
        match kind {
            "StatefulSet" | "DaemonSet" | "PodDisruptionBudget" => SkipRule::Generation,
            _ => SkipRule::ResourceVersion,
        }
    }
}

/// What a successful apply of one child desired and got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Hash of the desired object as applied.
    pub desired: u64,
    /// uid of the object the apply returned.
    pub uid: String,
    /// resourceVersion the apply returned.
    pub resource_version: String,
    /// metadata.generation the apply returned.
    pub generation: Option<i64>,
}

impl Applied {
    /// What to remember of the object `applied` returned by an apply of desired hash `desired`.
    pub fn of<K: Resource>(desired: u64, applied: &K) -> Self {
        let m = applied.meta();
        Applied {
            desired,
            uid: m.uid.clone().unwrap_or_default(),
            resource_version: m.resource_version.clone().unwrap_or_default(),
            generation: m.generation,
        }
    }
}

/// A child as the store shows it.
#[derive(Debug)]
pub enum Live<'a, K> {
    /// The store has not finished its first list: it proves nothing.
    NotSynced,
    /// Not in the store: deleted (or never created, or no longer labelled as ours).
    Absent,
    /// In the store.
    Present(&'a K),
}

/// Whether to apply a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply it (first time in this process, spec changed, child changed or gone, store unsure).
    Apply,
    /// Nothing can change: the live child is what our last apply made of this desired object.
    Skip,
}

/// Decides whether to apply the child `desired` (hash `desired_hash`), given what this process
/// last applied for it and the child in the store; see [`SkipRule`] for what proves "unchanged".
pub fn decide<K: Resource>(
    rule: SkipRule,
    remembered: Option<&Applied>,
    live: Live<'_, K>,
    desired: &K,
    desired_hash: u64,
) -> Decision {
    let (Some(r), Live::Present(live)) = (remembered, live) else {
        return Decision::Apply;
    };
    let lm = live.meta();
    if r.desired != desired_hash || r.uid.is_empty() || lm.uid.as_deref() != Some(r.uid.as_str()) {
        return Decision::Apply;
    }
    let unchanged = match rule {
        SkipRule::ResourceVersion => {
            !r.resource_version.is_empty()
                && lm.resource_version.as_deref() == Some(r.resource_version.as_str())
        }
        SkipRule::Generation => {
            let dm = desired.meta();
            let subset =
                |want: &Option<std::collections::BTreeMap<String, String>>,
                 have: &Option<std::collections::BTreeMap<String, String>>| {
                    want.iter()
                        .flatten()
                        .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
                };
            r.generation.is_some()
                && lm.generation == r.generation
                && subset(&dm.labels, &lm.labels)
                && subset(&dm.annotations, &lm.annotations)
                && dm
                    .owner_references
                    .iter()
                    .flatten()
                    .all(|o| lm.owner_references.iter().flatten().any(|l| l == o))
        }
    };
    if unchanged {
        Decision::Skip
    } else {
        Decision::Apply
    }
}

/// Hash of an object as it would be applied (its JSON); None if it cannot be serialized.
fn desired_hash<K: Serialize>(obj: &K) -> Option<u64> {
    let bytes = serde_json::to_vec(obj).ok()?;
    let mut h = DefaultHasher::new();
    h.write(&bytes);
    Some(h.finish())
}

/// CacheCluster uid → child (`Kind/name`) → what this process last applied successfully.
/// Bounded like [`Swept`]; a cluster's entries go when it is deleted, a child's when the spec no
/// longer wants it. Forgetting only costs one more apply.
#[derive(Default)]
pub struct AppliedChildren(Mutex<HashMap<String, HashMap<String, Applied>>>);

impl AppliedChildren {
    /// What was last applied for `child` of cluster `uid`.
    pub fn get(&self, uid: &str, child: &str) -> Option<Applied> {
        self.0.lock().ok()?.get(uid)?.get(child).cloned()
    }

    /// Records a successful apply of `child` of cluster `uid`.
    pub fn record(&self, uid: &str, child: &str, applied: Applied) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= SWEPT_MAX && !m.contains_key(uid) {
                m.clear();
            }
            m.entry(uid.to_string())
                .or_default()
                .insert(child.to_string(), applied);
        }
    }

    /// Forgets `child` of cluster `uid` (its apply failed: its state is unknown).
    pub fn drop_child(&self, uid: &str, child: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some(c) = m.get_mut(uid)
        {
            c.remove(child);
        }
    }

    /// Keeps only the children of cluster `uid` named in `wanted`.
    pub fn retain(&self, uid: &str, wanted: &[String]) {
        if let Ok(mut m) = self.0.lock()
            && let Some(c) = m.get_mut(uid)
        {
            c.retain(|k, _| wanted.contains(k));
        }
    }

    /// Forgets cluster `uid` (it is being deleted).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

/// CacheCluster uid → the generation whose orphaned children this process already deleted.
/// The set of wanted children depends only on the spec, so the orphan LISTs (one per child kind)
/// run once per generation, and once per cluster after a restart, instead of on every reconcile:
/// at 200 clusters they were 40% of the operator's API requests.
#[derive(Default)]
pub struct Swept(Mutex<HashMap<String, i64>>);

impl Swept {
    /// Whether the orphans of cluster `uid` at `generation` still need deleting.
    pub fn needed(&self, uid: &str, generation: i64) -> bool {
        self.0
            .lock()
            .map_or(true, |m| m.get(uid) != Some(&generation))
    }

    /// Records a successful sweep of cluster `uid` at `generation`.
    pub fn done(&self, uid: &str, generation: i64) {
        if let Ok(mut m) = self.0.lock() {
            // Clusters deleted without a visible deletionTimestamp leave their entry behind;
            // bound the map (forgetting only costs one more sweep per cluster).
            if m.len() >= SWEPT_MAX {
                m.clear();
            }
            m.insert(uid.to_string(), generation);
        }
    }

    /// Forgets cluster `uid` (it is being deleted).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

/// Entry point for the controller: one reconcile, timed and counted.
pub async fn reconcile(cc: Arc<CacheCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = reconcile_cluster(&cc, &ctx).await;
    ctx.metrics
        .observe_reconcile(start.elapsed(), result.as_ref().err());
    if result.is_ok() {
        ctx.failures.reset(&cc.uid().unwrap_or_default());
    }
    result
}

/// What the controller does after a failed reconcile: an invalid spec waits for a change; a
/// refused child or a transient error is retried with [`backoff`].
pub fn error_policy(cc: Arc<CacheCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %cc.name_any(), namespace = cc.namespace().unwrap_or_default(), error = %err, "reconcile failed");
    match err {
        Error::InvalidSpec { .. } => Action::await_change(),
        _ => Action::requeue(backoff(ctx.failures.record(&cc.uid().unwrap_or_default()))),
    }
}

fn ns_api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let child = format!("{} {ns}/{name}", K::kind(&()));
    ns_api::<K>(client, ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|e| refused_or_kube(child, e))
}

/// An apply error: [`Error::ApplyRefused`] when the API server refused the object itself
/// (400 Bad Request, 422 Invalid; retrying the same object cannot help), else [`Error::Kube`].
pub fn refused_or_kube(child: String, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 400 || s.code == 422 => Error::ApplyRefused {
            child,
            message: s.message,
        },
        source => Error::Kube {
            action: format!("apply {child}"),
            source,
        },
    }
}

/// `Kind/name`, the key of a child in [`AppliedChildren`].
fn child_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Applies child `obj` of cluster `uid` unless [`decide`] says nothing can change; returns the
/// applied object, or the one in the store when skipped (its status is the latest watched).
async fn apply_child<K>(
    ctx: &Context,
    uid: &str,
    ns: &str,
    store: &Store<K>,
    obj: &K,
) -> Result<Arc<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let kind = K::kind(&());
    let key = child_key(obj);
    let hash = desired_hash(obj);
    let synced = store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok());
    let name = obj.meta().name.as_deref().unwrap_or_default();
    let in_store = if synced {
        store.get(&ObjectRef::<K>::new(name).within(ns))
    } else {
        None
    };
    if let Some(hash) = hash {
        let live = match (&in_store, synced) {
            (_, false) => Live::NotSynced,
            (None, true) => Live::Absent,
            (Some(o), true) => Live::Present(o.as_ref()),
        };
        let remembered = ctx.applied.get(uid, &key);
        if decide(
            SkipRule::for_kind(&kind),
            remembered.as_ref(),
            live,
            obj,
            hash,
        ) == Decision::Skip
            && let Some(o) = in_store
        {
            ctx.metrics.observe_apply(&kind, true);
            return Ok(o);
        }
    }
    ctx.metrics.observe_apply(&kind, false);
    match apply(&ctx.client, ns, obj).await {
        Ok(applied) => {
            match hash {
                Some(h) => ctx.applied.record(uid, &key, Applied::of(h, &applied)),
                None => ctx.applied.drop_child(uid, &key),
            }
            Ok(Arc::new(applied))
        }
        Err(e) => {
            ctx.applied.drop_child(uid, &key);
            Err(e)
        }
    }
}

/// Deletes objects of kind K labelled for this cluster whose names are not in `keep`.
async fn delete_orphans<K>(
    client: &Client,
    plan: &ClusterPlan,
    keep: &[String],
) -> Result<Vec<String>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api = ns_api::<K>(client, &plan.namespace);
    let selector = format!(
        "{LABEL_INSTANCE}={},{LABEL_OWNER_UID}={}",
        plan.name, plan.uid
    );
    let kind = K::kind(&());
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!(
            "list {kind} in {} ({selector})",
            plan.namespace
        )))?;
    let mut deleted = Vec::new();
    for obj in list.items {
        let name = obj.name_any();
        if keep.contains(&name) || obj.meta().deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(format!("{kind} {name}")),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "delete {kind} {}/{name}",
                    plan.namespace
                ))(e));
            }
        }
    }
    Ok(deleted)
}

fn names_of<K: Resource>(objs: &[K]) -> Vec<String> {
    objs.iter().filter_map(|o| o.meta().name.clone()).collect()
}

async fn publish(ctx: &Context, cc: &CacheCluster, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cc.object_ref(&())).await {
        warn!(cluster = %cc.name_any(), error = %e, "publishing event failed");
    }
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// Writes status if it changed; returns the previous status for event decisions.
async fn write_status(
    client: &Client,
    cc: &CacheCluster,
    mut new: CacheClusterStatus,
) -> Result<Option<CacheClusterStatus>, Error> {
    let prev = cc.status.clone();
    status::carry_transition_times(&mut new, prev.as_ref(), &now());
    // `status.cache` is the cache-usage poller's (`load::usage`); kept as it is.
    new.cache = prev.as_ref().and_then(|p| p.cache.clone());
    if prev.as_ref() == Some(&new) {
        return Ok(prev);
    }
    let ns = cc.namespace().unwrap_or_default();
    let name = cc.name_any();
    ns_api::<CacheCluster>(client, &ns)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": new })),
        )
        .await
        .map_err(Error::kube(format!(
            "patch status of CacheCluster {ns}/{name}"
        )))?;
    Ok(prev)
}

fn quantity_positive(q: &Quantity) -> bool {
    // Positive: a number (no sign) with a non-zero digit before its suffix.
    let number = q.0.trim();
    let digits = number
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(number, |end| &number[..end]);
    digits.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// Nodes advertising `resource` as allocatable (> 0).
async fn nodes_with_resource(client: &Client, resource: &str) -> Result<usize, Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list nodes"))?;
    Ok(nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(resource))
                .is_some_and(quantity_positive)
        })
        .count())
}

/// NADs referenced by the plan that do not exist, as `namespace/name`.
async fn missing_nads(client: &Client, plan: &ClusterPlan) -> Result<Vec<String>, Error> {
    let ar = nad_resource();
    let mut missing = Vec::new();
    for a in &plan.attachments {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &a.namespace, &ar);
        match api.get_opt(&a.name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(a.key()),
            // The Multus CRD itself is not installed: the NAD cannot exist.
            Err(kube::Error::Api(s)) if s.is_not_found() => missing.push(a.key()),
            Err(e) => {
                return Err(Error::kube(format!(
                    "get NetworkAttachmentDefinition {}",
                    a.key()
                ))(e));
            }
        }
    }
    Ok(missing)
}

fn unschedulable_reason(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|p| {
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find_map(|c| {
                (c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable"))
                .then(|| {
                    c.message
                        .clone()
                        .unwrap_or_else(|| "Unschedulable".to_string())
                })
            })
    })
}

/// Waiting reasons that mean the container cannot run (as opposed to `ContainerCreating`).
const FAILING_WAIT_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "Error",
    "CreateContainerConfigError",
    "ImagePullBackOff",
    "ErrImagePull",
];
/// Most characters of a pod's failure message kept for a condition.
pub const PROBLEM_MESSAGE_MAX: usize = 300;

/// A termination or waiting message made short and single-line for a condition. A message of
/// several lines is a log tail (terminationMessagePolicy FallbackToLogsOnError, e.g. a panic):
/// its last lines explain the exit, so the last ones fitting in [`PROBLEM_MESSAGE_MAX`] are kept.
/// A one-line message (what the rcache binaries write) keeps its start.
fn short_message(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let cut = |l: &str| -> String {
        if l.chars().count() <= PROBLEM_MESSAGE_MAX {
            l.to_string()
        } else {
            let head: String = l.chars().take(PROBLEM_MESSAGE_MAX - 3).collect();
            format!("{head}...")
        }
    };
    let Some(last) = lines.last() else {
        return String::new();
    };
    let mut kept = vec![cut(last)];
    let mut len = kept[0].chars().count();
    for l in lines.iter().rev().skip(1) {
        let n = l.chars().count() + 3;
        if len + n > PROBLEM_MESSAGE_MAX {
            break;
        }
        len += n;
        kept.insert(0, (*l).to_string());
    }
    kept.join(" | ")
}

/// Why a pod's container is failing, if it is: waiting with a failing reason, terminated
/// non-zero, or (not ready and) last terminated non-zero. The message is the termination message
/// (what the binary wrote, or the log tail) or else the waiting message, or the exit code.
pub fn pod_problem(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in statuses {
        let state = cs.state.as_ref();
        let last_term = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let term_text = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| match t
            .message
            .as_deref()
            .map(short_message)
        {
            Some(m) if !m.is_empty() => m,
            _ => format!("container {} exited with code {}", cs.name, t.exit_code),
        };
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if FAILING_WAIT_REASONS.contains(&reason) {
                let message = match last_term {
                    Some(t) if t.exit_code != 0 => term_text(t),
                    _ => w.message.as_deref().map(short_message).unwrap_or_default(),
                };
                return Some(PodProblem {
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    reason: reason.to_string(),
                    message,
                });
            }
        }
        let term = state
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
            .or(last_term.filter(|t| t.exit_code != 0 && !cs.ready));
        if let Some(t) = term {
            return Some(PodProblem {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                reason: t.reason.clone().unwrap_or_else(|| "Error".to_string()),
                message: term_text(t),
            });
        }
    }
    None
}

/// The failing pods among `pods`, sorted by name (a stable status across reconciles).
pub fn failing_pods(pods: &[Pod]) -> Vec<PodProblem> {
    let mut v: Vec<PodProblem> = pods.iter().filter_map(pod_problem).collect();
    v.sort_by(|a, b| a.pod.cmp(&b.pod));
    v
}

fn sts_rollout_pending(sts: &StatefulSet) -> bool {
    let generation = sts.metadata.generation;
    let Some(s) = &sts.status else { return true };
    s.observed_generation != generation
        || matches!((&s.current_revision, &s.update_revision), (Some(c), Some(u)) if c != u)
}

fn ds_rollout_pending(ds: &DaemonSet) -> bool {
    let Some(s) = &ds.status else { return true };
    s.observed_generation != ds.metadata.generation
}

/// Applied StatefulSets and DaemonSets (their status feeds the CacheCluster's).
type AppliedWorkloads = (Vec<Arc<StatefulSet>>, Vec<Arc<DaemonSet>>);

/// Stage 3: applies every child, stopping at the first the API server refuses.
async fn apply_children(
    ctx: &Context,
    uid: &str,
    ns: &str,
    children: &build::Children,
) -> Result<AppliedWorkloads, Error> {
    let stores = &ctx.children;
    for cm in &children.config_maps {
        apply_child(ctx, uid, ns, &stores.config_maps, cm).await?;
    }
    for svc in &children.services {
        apply_child(ctx, uid, ns, &stores.services, svc).await?;
    }
    let mut applied_sts = Vec::new();
    for sts in &children.stateful_sets {
        applied_sts.push(apply_child(ctx, uid, ns, &stores.stateful_sets, sts).await?);
    }
    let mut applied_ds = Vec::new();
    for ds in &children.daemon_sets {
        applied_ds.push(apply_child(ctx, uid, ns, &stores.daemon_sets, ds).await?);
    }
    for pdb in &children.pdbs {
        apply_child(ctx, uid, ns, &stores.pdbs, pdb).await?;
    }
    for np in &children.network_policies {
        apply_child(ctx, uid, ns, &stores.network_policies, np).await?;
    }
    // The volume pods consume (build::volume): the cluster-scoped PV first, then its claim.
    for pv in &children.volumes {
        apply_cluster_scoped(&ctx.client, pv).await?;
    }
    for pvc in &children.claims {
        apply::<PersistentVolumeClaim>(&ctx.client, ns, pvc).await?;
    }
    Ok((applied_sts, applied_ds))
}

/// Server-side apply of a cluster-scoped child (the PersistentVolume).
async fn apply_cluster_scoped(client: &Client, pv: &PersistentVolume) -> Result<(), Error> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    Api::<PersistentVolume>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(pv),
        )
        .await
        .map_err(|e| refused_or_kube(format!("PersistentVolume {name}"), e))?;
    Ok(())
}

/// Deletes our PersistentVolumes whose claim is gone (`Released`): a CacheCluster's PV cannot
/// be owned by it (cluster-scoped), so this sweep removes it once the garbage collector removed
/// the claim, which `pvc-protection` delays while pods still mount it.
async fn sweep_released_volumes(client: &Client) -> Result<Vec<String>, Error> {
    let api = Api::<PersistentVolume>::all(client.clone());
    let selector = format!(
        "{}={FIELD_MANAGER},{LABEL_COMPONENT}={}",
        build::LABEL_MANAGED_BY,
        build::volume::COMPONENT_VOLUME
    );
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list rcache PersistentVolumes".to_string()))?;
    let mut deleted = Vec::new();
    for pv in list
        .items
        .iter()
        .filter(|p| build::volume::pv_is_released(p))
    {
        let name = pv.name_any();
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                warn!(volume = %name, error = %e, "cannot delete a released rcache PersistentVolume")
            }
        }
    }
    Ok(deleted)
}

/// The cluster's authentication token and TLS certificates: those in `<name>-auth` while they
/// were made for the rotation value the CacheCluster asks for (`build::auth`), else new ones
/// written to the Secret. Returns them and what happened ("created", "rotated") when new.
async fn ensure_auth_material(
    client: &Client,
    cc: &CacheCluster,
    plan: &ClusterPlan,
) -> Result<(build::auth::AuthMaterial, Option<&'static str>), Error> {
    let api = ns_api::<Secret>(client, &plan.namespace);
    let name = build::names::auth(&plan.name);
    let rotation = build::auth::wanted_rotation(cc.metadata.annotations.as_ref());
    let existing = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("get Secret {}/{name}", plan.namespace)))?;
    if let Some(m) = existing
        .as_ref()
        .and_then(|s| build::auth::current_material(s, &rotation))
    {
        return Ok((m, None));
    }
    let m = build::auth::new_material(plan).map_err(Error::Auth)?;
    apply(
        client,
        &plan.namespace,
        &build::auth::secret(plan, &m, &rotation),
    )
    .await?;
    let what = if existing.is_some() {
        "rotated"
    } else {
        "created"
    };
    Ok((m, Some(what)))
}

async fn reconcile_cluster(cc: &CacheCluster, ctx: &Context) -> Result<Action, Error> {
    if cc.metadata.deletion_timestamp.is_some() {
        // Children carry controller owner references; the garbage collector removes them.
        if let Some(uid) = &cc.metadata.uid {
            ctx.swept.forget(uid);
            ctx.applied.forget(uid);
        }
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let generation = cc.metadata.generation.unwrap_or_default();
    let transport = if cc.spec.network.mode == crate::crd::NetworkMode::Rdma {
        "ucx"
    } else {
        "tcp"
    };

    // 1. validate
    let plan = match validate::plan(cc) {
        Ok(p) => p,
        Err(err) => {
            let observed = Observed {
                generation,
                spec_error: Some(err.to_string()),
                workers_desired: cc.spec.worker.replicas,
                transport: transport.to_string(),
                ..Observed::default()
            };
            let prev = write_status(client, cc, status::compute(&observed)).await?;
            let was_invalid = prev
                .as_ref()
                .and_then(|p| status::condition(p, status::READY))
                .is_some_and(|c| c.reason == status::reason::INVALID_SPEC);
            if !was_invalid {
                publish(
                    ctx,
                    cc,
                    EventType::Warning,
                    status::reason::INVALID_SPEC,
                    err.to_string(),
                )
                .await;
            }
            return Err(err);
        }
    };
    let ns = plan.namespace.clone();

    // Observe worker pods (membership and readiness).
    let selector = format!(
        "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={},{LABEL_OWNER_UID}={}",
        plan.name,
        build::COMPONENT_WORKER,
        plan.uid
    );
    let pods = ns_api::<Pod>(client, &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("list worker pods in {ns}")))?
        .items;
    let membership = build::membership::members(&plan, &pods);
    let prev_status = cc.status.clone().unwrap_or_default();
    let mut membership_generation = prev_status.membership_generation;
    if membership_generation == 0 || membership.members != prev_status.members {
        membership_generation += 1;
    }

    // 2. build
    let members_json = build::membership::render(&plan, membership_generation, &membership.members);
    let (material, auth_change) = ensure_auth_material(client, cc, &plan).await?;
    if let Some(what) = auth_change {
        let name = build::names::auth(&plan.name);
        info!(cluster = %plan.name, namespace = %ns, secret = %name, "authentication secret {what}");
        publish(
            ctx,
            cc,
            EventType::Normal,
            "AuthSecretChanged",
            format!("authentication secret {name} {what}; worker and FUSE pods roll onto it"),
        )
        .await;
    }
    let children = build::children(
        &plan,
        &members_json,
        &build::auth::fingerprint(&material),
        ctx.policy_peers.as_ref(),
    );

    // 3. apply (children unchanged since this process applied them are skipped)
    let uid = plan.uid.as_str();
    let (applied_sts, applied_ds) = match apply_children(ctx, uid, &ns, &children).await {
        Ok(applied) => applied,
        Err(err @ Error::ApplyRefused { .. }) => {
            let observed = Observed {
                generation,
                apply_error: Some(err.to_string()),
                workers_desired: cc.spec.worker.replicas,
                transport: transport.to_string(),
                ..Observed::default()
            };
            let new_status = status::compute(&observed);
            let prev = write_status(client, cc, new_status.clone()).await?;
            announce_transitions(ctx, cc, prev.as_ref(), &new_status).await;
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    let wanted: Vec<String> = children
        .config_maps
        .iter()
        .map(child_key)
        .chain(children.services.iter().map(child_key))
        .chain(children.stateful_sets.iter().map(child_key))
        .chain(children.daemon_sets.iter().map(child_key))
        .chain(children.pdbs.iter().map(child_key))
        .chain(children.network_policies.iter().map(child_key))
        .collect();
    ctx.applied.retain(uid, &wanted);
    let mut deleted = Vec::new();
    if ctx.swept.needed(&plan.uid, generation) {
        deleted.extend(
            delete_orphans::<ConfigMap>(client, &plan, &names_of(&children.config_maps)).await?,
        );
        deleted
            .extend(delete_orphans::<Service>(client, &plan, &names_of(&children.services)).await?);
        deleted.extend(
            delete_orphans::<StatefulSet>(client, &plan, &names_of(&children.stateful_sets))
                .await?,
        );
        deleted.extend(
            delete_orphans::<DaemonSet>(client, &plan, &names_of(&children.daemon_sets)).await?,
        );
        deleted.extend(
            delete_orphans::<PodDisruptionBudget>(client, &plan, &names_of(&children.pdbs)).await?,
        );
        deleted.extend(
            delete_orphans::<NetworkPolicy>(client, &plan, &names_of(&children.network_policies))
                .await?,
        );
        ctx.swept.done(&plan.uid, generation);
    }
    for d in &deleted {
        info!(cluster = %plan.name, namespace = %ns, object = %d, "deleted child the spec no longer wants");
        publish(
            ctx,
            cc,
            EventType::Normal,
            "ChildDeleted",
            format!("deleted {d}: no longer wanted by the spec"),
        )
        .await;
    }

    // 4. status
    let resource = match &plan.spec.network.rdma.resource_name {
        Some(r) => Some((r.clone(), nodes_with_resource(client, r).await?)),
        None => None,
    };
    let live_pods: Vec<Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    let workers_ready = live_pods
        .iter()
        .filter(|p| build::membership::pod_ready(p))
        .count();
    let (fuse_desired, fuse_ready, ds_pending) = match applied_ds.first() {
        Some(ds) => {
            let s = ds.status.clone().unwrap_or_default();
            (
                s.desired_number_scheduled,
                s.number_ready,
                ds_rollout_pending(ds.as_ref()),
            )
        }
        None => (0, 0, false),
    };
    // FUSE pods are listed only while some are not ready: a healthy cluster costs no request.
    let fuse_failing = if plan.spec.fuse.enabled && fuse_ready < fuse_desired {
        let selector = format!(
            "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={},{LABEL_OWNER_UID}={}",
            plan.name,
            build::COMPONENT_FUSE,
            plan.uid
        );
        let fuse_pods: Vec<Pod> = ns_api::<Pod>(client, &ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube(format!("list FUSE pods in {ns}")))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        failing_pods(&fuse_pods)
    } else {
        Vec::new()
    };
    let observed = Observed {
        generation,
        spec_error: None,
        apply_error: None,
        workers_desired: plan.spec.worker.replicas,
        workers_ready: i32::try_from(workers_ready).unwrap_or(i32::MAX),
        workers_unschedulable: unschedulable_reason(&live_pods),
        workers_failing: failing_pods(&live_pods),
        fuse_failing,
        fuse_enabled: plan.spec.fuse.enabled,
        fuse_desired,
        fuse_ready,
        rollout_pending: applied_sts.iter().any(|s| sts_rollout_pending(s)) || ds_pending,
        missing_nads: missing_nads(client, &plan).await?,
        resource,
        missing_address: membership.missing_address.clone(),
        bind_device: plan.bind_device.clone(),
        transport: plan.transport.as_str().to_string(),
        members: membership.members.clone(),
        membership_generation,
    };
    let mut new_status = status::compute(&observed);
    new_status.persistent_volume_claim = children
        .claims
        .first()
        .and_then(|c| c.metadata.name.clone());
    let prev = write_status(client, cc, new_status.clone()).await?;
    announce_transitions(ctx, cc, prev.as_ref(), &new_status).await;
    for pv in sweep_released_volumes(client).await? {
        info!(volume = %pv, "deleted a released rcache PersistentVolume (its CacheCluster and claim are gone)");
    }
    Ok(Action::requeue(RESYNC))
}

/// Events when Ready or NetworkReady change status or reason.
async fn announce_transitions(
    ctx: &Context,
    cc: &CacheCluster,
    prev: Option<&CacheClusterStatus>,
    new: &CacheClusterStatus,
) {
    for type_ in [status::NETWORK_READY, status::READY] {
        let Some(c) = status::condition(new, type_) else {
            continue;
        };
        let before = prev.and_then(|p| status::condition(p, type_));
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let (kind, reason) = if c.status == "True" {
            (EventType::Normal, c.reason.clone())
        } else {
            (EventType::Warning, c.reason.clone())
        };
        info!(cluster = %cc.name_any(), condition = type_, status = %c.status, reason = %c.reason, message = %c.message, "condition changed");
        publish(
            ctx,
            cc,
            kind,
            &reason,
            format!("{type_}={}: {}", c.status, c.message),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_retry_and_is_capped() {
        assert_eq!(backoff(1), RETRY);
        assert_eq!(backoff(2), RETRY * 2);
        assert_eq!(backoff(3), RETRY * 4);
        assert_eq!(backoff(7), MAX_BACKOFF.min(RETRY * 64));
        assert_eq!(backoff(40), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_count_in_a_row_per_cluster_until_a_success() {
        let f = Failures::default();
        assert_eq!(f.record("a"), 1);
        assert_eq!(f.record("a"), 2);
        assert_eq!(f.record("b"), 1);
        f.reset("a");
        assert_eq!(f.record("a"), 1);
    }

    #[test]
    fn an_invalid_child_is_a_refusal_with_the_apis_message_and_other_errors_stay_transient() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "Invalid")
                    .with_code(code)
                    .boxed(),
            )
        };
        let dup =
            "Service \"demo-worker\" is invalid: spec.ports[1]: Duplicate value: {\"port\":29999}";
        match refused_or_kube("Service ns/demo-worker".into(), api(422, dup)) {
            Error::ApplyRefused { child, message } => {
                assert_eq!(child, "Service ns/demo-worker");
                assert_eq!(message, dup);
            }
            other => panic!("{other}"),
        }
        assert!(matches!(
            refused_or_kube("x".into(), api(400, "bad")),
            Error::ApplyRefused { .. }
        ));
        for code in [409, 500, 503, 403] {
            assert!(
                matches!(
                    refused_or_kube("x".into(), api(code, "m")),
                    Error::Kube { .. }
                ),
                "{code}"
            );
        }
    }

    const MEMLOCK: &str = "rcache.network.rdma.data.buffer.pool.max.size=8GB needs RLIMIT_MEMLOCK >= 8 GiB, have 64 KiB; set the container's memlock limit";

    fn pod(name: &str, statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": statuses},
        }))
        .expect("pod")
    }

    fn problem(pod: &str, reason: &str, message: &str) -> PodProblem {
        PodProblem {
            pod: pod.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_crash_loop_reports_the_last_termination_message() {
        let p = pod(
            "ipoib-worker-1",
            json!([{
                "name": "worker", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": format!("{MEMLOCK}\n")}},
            }]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem("ipoib-worker-1", "CrashLoopBackOff", MEMLOCK))
        );
    }

    #[test]
    fn an_image_pull_failure_reports_the_waiting_message() {
        let p = pod(
            "w-0",
            json!([{
                "name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"r/x:9\""}},
            }]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem(
                "w-0",
                "ImagePullBackOff",
                "Back-off pulling image \"r/x:9\""
            ))
        );
    }

    #[test]
    fn a_terminated_container_without_message_names_its_exit_code() {
        let p = pod(
            "w-0",
            json!([{
                "name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            }]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem(
                "w-0",
                "OOMKilled",
                "container worker exited with code 137"
            ))
        );
    }

    #[test]
    fn starting_running_and_recovered_pods_are_not_failing() {
        let creating = pod(
            "w-0",
            json!([{"name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}}]),
        );
        let recovered = pod(
            "w-1",
            json!([{"name": "worker", "ready": true, "restartCount": 1, "image": "i", "imageID": "",
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 2, "message": "old failure"}}}]),
        );
        let stopped_cleanly = pod(
            "w-2",
            json!([{"name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]),
        );
        let no_status: Pod = serde_json::from_value(json!({"metadata": {"name": "w-3"}})).unwrap();
        assert_eq!(
            failing_pods(&[creating, recovered, stopped_cleanly, no_status]),
            []
        );
    }

    #[test]
    fn a_running_but_unready_container_that_crashed_last_time_is_failing() {
        let p = pod(
            "w-0",
            json!([{"name": "worker", "ready": false, "restartCount": 4, "image": "i", "imageID": "",
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "no RDMA device on ib0"}}}]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem("w-0", "Error", "no RDMA device on ib0"))
        );
    }

    #[test]
    fn failing_pods_are_sorted_by_name() {
        let crash = |name: &str| {
            pod(
                name,
                json!([{"name": "worker", "ready": false, "restartCount": 1, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 2, "message": "boom"}}}]),
            )
        };
        let names: Vec<String> = failing_pods(&[crash("w-2"), crash("w-0"), crash("w-1")])
            .into_iter()
            .map(|p| p.pod)
            .collect();
        assert_eq!(names, ["w-0", "w-1", "w-2"]);
    }

    #[test]
    fn long_one_line_messages_keep_their_start_and_log_tails_their_end() {
        let long = format!("{MEMLOCK} {}", "x".repeat(400));
        let short = short_message(&long);
        assert!(short.starts_with("rcache.network.rdma") && short.ends_with("..."));
        assert_eq!(short.chars().count(), PROBLEM_MESSAGE_MAX);

        let mut log = String::new();
        for i in 0..40 {
            log.push_str(&format!("2025-01-01T00:00:00Z INFO starting step {i}\n"));
        }
        log.push_str("thread 'main' panicked at src/main.rs:1:1:\nboom\n\n");
        let short = short_message(&log);
        assert!(
            short.ends_with("thread 'main' panicked at src/main.rs:1:1: | boom"),
            "{short}"
        );
        assert!(short.chars().count() <= PROBLEM_MESSAGE_MAX);
        assert_eq!(short_message(" \n "), "");
    }

    #[test]
    fn orphans_are_swept_once_per_generation_and_again_after_a_spec_change() {
        let swept = Swept::default();
        assert!(
            swept.needed("uid-a", 1),
            "a cluster never swept needs a sweep"
        );
        swept.done("uid-a", 1);
        assert!(
            !swept.needed("uid-a", 1),
            "same generation: no second sweep"
        );
        assert!(
            swept.needed("uid-a", 2),
            "a spec change can make children unwanted"
        );
        assert!(
            swept.needed("uid-b", 1),
            "another cluster is tracked on its own"
        );
        swept.forget("uid-a");
        assert!(
            swept.needed("uid-a", 1),
            "a forgotten cluster is swept again"
        );
    }

    fn sts(uid: &str, rv: &str, generation: i64, replicas: i32) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "demo-worker", "namespace": "ns", "uid": uid,
                "resourceVersion": rv, "generation": generation,
                "labels": {"app.kubernetes.io/managed-by": "rcache-operator"}},
            "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "demo"},
        }))
        .expect("sts")
    }

    fn cm(uid: &str, rv: &str, data: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": "demo-props", "namespace": "ns", "uid": uid, "resourceVersion": rv},
            "data": {"rcache.properties": data},
        }))
        .expect("cm")
    }

    /// The desired object as built (no uid, resourceVersion, generation) and its hash.
    fn desired_sts(replicas: i32) -> (StatefulSet, u64) {
        let mut d = sts("", "", 0, replicas);
        d.metadata.uid = None;
        d.metadata.resource_version = None;
        d.metadata.generation = None;
        let h = desired_hash(&d).expect("hash");
        (d, h)
    }

    const GEN: SkipRule = SkipRule::Generation;
    const RV: SkipRule = SkipRule::ResourceVersion;

    #[test]
    fn an_unchanged_child_is_not_applied_again_even_after_status_writes() {
        let (desired, h) = desired_sts(2);
        let applied = sts("u1", "100", 3, 2);
        let remembered = Applied::of(h, &applied);
        assert_eq!(
            decide(GEN, Some(&remembered), Live::Present(&applied), &desired, h),
            Decision::Skip
        );
        // The StatefulSet controller wrote status: new resourceVersion, same generation.
        let mut after_status = sts("u1", "107", 3, 2);
        after_status.status =
            serde_json::from_value(json!({"replicas": 2, "readyReplicas": 2})).expect("status");
        assert_eq!(
            decide(
                GEN,
                Some(&remembered),
                Live::Present(&after_status),
                &desired,
                h
            ),
            Decision::Skip
        );

        let (d, dh) = (
            cm("", "", "a=1"),
            desired_hash(&cm("", "", "a=1")).expect("hash"),
        );
        let live = cm("c1", "200", "a=1");
        let r = Applied::of(dh, &live);
        assert_eq!(
            decide(RV, Some(&r), Live::Present(&live), &d, dh),
            Decision::Skip
        );
    }

    #[test]
    fn a_changed_spec_is_applied() {
        let (_, h) = desired_sts(2);
        let applied = sts("u1", "100", 3, 2);
        let remembered = Applied::of(h, &applied);
        let (desired3, h3) = desired_sts(3);
        assert_eq!(
            decide(
                GEN,
                Some(&remembered),
                Live::Present(&applied),
                &desired3,
                h3
            ),
            Decision::Apply
        );
        let d = cm("", "", "a=2");
        let dh = desired_hash(&d).expect("hash");
        let live = cm("c1", "200", "a=1");
        let r = Applied::of(desired_hash(&cm("", "", "a=1")).expect("hash"), &live);
        assert_eq!(
            decide(RV, Some(&r), Live::Present(&live), &d, dh),
            Decision::Apply
        );
    }

    #[test]
    fn a_child_edited_by_someone_else_is_applied_to_repair_it() {
        let (desired, h) = desired_sts(2);
        let remembered = Applied::of(h, &sts("u1", "100", 3, 2));
        // `kubectl scale`/edit of the spec: generation bumped.
        let edited = sts("u1", "120", 4, 5);
        assert_eq!(
            decide(GEN, Some(&remembered), Live::Present(&edited), &desired, h),
            Decision::Apply
        );
        // A label of ours changed: generation unchanged, metadata differs.
        let mut relabelled = sts("u1", "121", 3, 2);
        relabelled
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("app.kubernetes.io/managed-by".into(), "someone".into());
        assert_eq!(
            decide(
                GEN,
                Some(&remembered),
                Live::Present(&relabelled),
                &desired,
                h
            ),
            Decision::Apply
        );
        // A ConfigMap edit bumps its resourceVersion.
        let d = cm("", "", "a=1");
        let dh = desired_hash(&d).expect("hash");
        let r = Applied::of(dh, &cm("c1", "200", "a=1"));
        let edited = cm("c1", "230", "a=9");
        assert_eq!(
            decide(RV, Some(&r), Live::Present(&edited), &d, dh),
            Decision::Apply
        );
    }

    #[test]
    fn a_deleted_or_recreated_child_is_applied() {
        let (desired, h) = desired_sts(2);
        let remembered = Applied::of(h, &sts("u1", "100", 3, 2));
        assert_eq!(
            decide(GEN, Some(&remembered), Live::Absent, &desired, h),
            Decision::Apply
        );
        // Deleted and recreated by someone else with the same generation: another uid.
        let recreated = sts("u2", "300", 3, 2);
        assert_eq!(
            decide(
                GEN,
                Some(&remembered),
                Live::Present(&recreated),
                &desired,
                h
            ),
            Decision::Apply
        );
    }

    #[test]
    fn an_unsynced_store_or_nothing_remembered_means_apply() {
        let (desired, h) = desired_sts(2);
        let applied = sts("u1", "100", 3, 2);
        let remembered = Applied::of(h, &applied);
        assert_eq!(
            decide(
                GEN,
                Some(&remembered),
                Live::<StatefulSet>::NotSynced,
                &desired,
                h
            ),
            Decision::Apply
        );
        assert_eq!(
            decide(GEN, None, Live::Present(&applied), &desired, h),
            Decision::Apply,
            "first reconcile in this process (e.g. after a restart)"
        );
        // The store still shows the object before our last apply.
        let stale = sts("u1", "90", 2, 1);
        assert_eq!(
            decide(GEN, Some(&remembered), Live::Present(&stale), &desired, h),
            Decision::Apply
        );
    }

    #[test]
    fn status_bearing_kinds_skip_by_generation_the_others_by_resource_version() {
        for k in ["StatefulSet", "DaemonSet", "PodDisruptionBudget"] {
            assert_eq!(SkipRule::for_kind(k), SkipRule::Generation, "{k}");
        }
        for k in ["ConfigMap", "Service"] {
            assert_eq!(SkipRule::for_kind(k), SkipRule::ResourceVersion, "{k}");
        }
    }

    #[test]
    fn applied_memory_forgets_deleted_clusters_unwanted_and_failed_children() {
        let a = AppliedChildren::default();
        let r = Applied::of(1, &cm("c1", "1", "x"));
        a.record("uid-a", "ConfigMap/p", r.clone());
        a.record("uid-a", "ConfigMap/m", r.clone());
        a.record("uid-b", "ConfigMap/p", r.clone());
        assert_eq!(a.get("uid-a", "ConfigMap/p"), Some(r.clone()));
        a.retain("uid-a", &["ConfigMap/p".to_string()]);
        assert_eq!(a.get("uid-a", "ConfigMap/m"), None);
        a.drop_child("uid-a", "ConfigMap/p");
        assert_eq!(a.get("uid-a", "ConfigMap/p"), None);
        a.forget("uid-b");
        assert_eq!(a.get("uid-b", "ConfigMap/p"), None);
    }

    #[test]
    fn swept_memory_is_bounded_and_forgetting_only_costs_a_sweep() {
        let swept = Swept::default();
        for i in 0..SWEPT_MAX {
            swept.done(&format!("uid-{i}"), 1);
        }
        swept.done("one-more", 1);
        assert!(!swept.needed("one-more", 1));
        assert!(
            swept.needed("uid-0", 1),
            "older entries were dropped, so swept again"
        );
    }
}
