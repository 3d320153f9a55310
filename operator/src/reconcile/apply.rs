//! Stage "apply": server-side apply of every desired child, with one field manager, forced, in
//! a fixed order (ConfigMaps, Services, StatefulSets, DaemonSets, PDBs, then the
//! PersistentVolume and its claim), stopping at the first the API server refuses.
//!
//! It owns the memory of what this process applied ([`AppliedChildren`]) and the rule that skips
//! a child nobody changed since ([`decide`]). It must not delete anything (that is
//! [`super::sweep`]) nor write the CacheCluster's status (that is [`super::update_status`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, SWEPT_MAX, ns_api};
use crate::Error;
use crate::build::{self, FIELD_MANAGER};

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
/// Bounded like [`Swept`](super::Swept); a cluster's entries go when it is deleted, a child's when the spec no
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

pub(super) async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
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

/// Applied StatefulSets and DaemonSets (their status feeds the CacheCluster's).
pub(super) type AppliedWorkloads = (Vec<Arc<StatefulSet>>, Vec<Arc<DaemonSet>>);

/// Applies every child, stopping at the first the API server refuses.
pub(super) async fn apply_children(
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

/// Forgets what was applied for children of cluster `uid` that `children` no longer holds.
pub(super) fn forget_unwanted(ctx: &Context, uid: &str, children: &build::Children) {
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
