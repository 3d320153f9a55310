//! The builders of the plan stage ([`crate::reconcile::plan`]): pure functions from a
//! [`ClusterPlan`] (and observed worker pods for membership) to the k8s-openapi objects the
//! operator applies. One file per child; shared naming, labels and owner references live here.
//! Nothing in `build` talks to the API server.

pub mod auth;
pub mod fabric;
pub mod fuse;
pub mod membership;
pub mod network_policy;
pub mod pdb;
pub mod properties;
pub mod volume;
pub mod worker;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::validate::ClusterPlan;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "rcache-operator";
/// Label: the CacheCluster name.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label: the part of the cluster (worker, fuse, properties, membership).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Label: always `rcache`.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: always `rcache-operator`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: uid of the owning CacheCluster (orphan cleanup selects on it).
pub const LABEL_OWNER_UID: &str = "rcache.io/owner-uid";
/// Pod annotation: hash of the rendered properties, so a config change rolls the pods.
pub const ANNOTATION_CONFIG_HASH: &str = "rcache.io/config-hash";
/// Component label values.
pub const COMPONENT_WORKER: &str = "worker";
/// FUSE component.
pub const COMPONENT_FUSE: &str = "fuse";
/// Where the properties and membership files are mounted in every rcache container.
pub const CONFIG_DIR: &str = "/etc/rcache";
/// Properties file path inside containers (docs/contracts.md).
pub const PROPERTIES_PATH: &str = "/etc/rcache/rcache.properties";
/// Membership file path inside containers (docs/contracts.md).
pub const MEMBERSHIP_PATH: &str = "/etc/rcache/membership/members.json";
/// FUSE mount point inside the FUSE container (docs/contracts.md).
pub const FUSE_MOUNT_POINT: &str = "/mnt/rcache";

/// Names of the children of a CacheCluster.
pub mod names {
    /// Properties ConfigMap.
    pub fn properties(cluster: &str) -> String {
        format!("{cluster}-properties")
    }
    /// Membership ConfigMap.
    pub fn membership(cluster: &str) -> String {
        format!("{cluster}-membership")
    }
    /// Worker StatefulSet, headless Service and PDB.
    pub fn worker(cluster: &str) -> String {
        format!("{cluster}-worker")
    }
    /// FUSE DaemonSet.
    pub fn fuse(cluster: &str) -> String {
        format!("{cluster}-fuse")
    }
    /// The Secret with the cluster's authentication token.
    pub fn auth(cluster: &str) -> String {
        format!("{cluster}-auth")
    }
}

/// Labels that select a component's pods (immutable once a workload exists).
pub fn selector_labels(plan: &ClusterPlan, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), "rcache".to_string()),
        (LABEL_INSTANCE.to_string(), plan.name.clone()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

/// Labels on every child and pod: selector labels plus manager and owner uid.
pub fn labels(plan: &ClusterPlan, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(plan, component);
    l.insert(LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string());
    l.insert(LABEL_OWNER_UID.to_string(), plan.uid.clone());
    l
}

/// The controller owner reference to the CacheCluster (garbage collection deletes children).
pub fn owner_ref(plan: &ClusterPlan) -> OwnerReference {
    OwnerReference {
        api_version: "rcache.io/v1alpha1".to_string(),
        kind: "CacheCluster".to_string(),
        name: plan.name.clone(),
        uid: plan.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child.
pub fn child_meta(plan: &ClusterPlan, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(plan, component)),
        owner_references: Some(vec![owner_ref(plan)]),
        ..ObjectMeta::default()
    }
}

/// FNV-1a 64, hex: a stable content hash without a dependency.
pub fn content_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Everything the spec asks for, in apply order.
#[derive(Clone, Debug)]
pub struct Children {
    /// Properties and membership ConfigMaps.
    pub config_maps: Vec<ConfigMap>,
    /// Headless worker Service.
    pub services: Vec<Service>,
    /// Worker StatefulSet.
    pub stateful_sets: Vec<StatefulSet>,
    /// FUSE DaemonSet (empty when disabled).
    pub daemon_sets: Vec<DaemonSet>,
    /// Worker PDB.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The PersistentVolume application pods consume (with FUSE; cluster-scoped, see `volume`).
    pub volumes: Vec<PersistentVolume>,
    /// Its claim, named like the cluster (with FUSE).
    pub claims: Vec<PersistentVolumeClaim>,
    /// Who may reach the workers (unless the operator was told not to render it).
    pub network_policies: Vec<NetworkPolicy>,
}

/// Builds all children. `members_json` is the rendered membership (see [`membership`]);
/// `auth_fingerprint` is the [`auth::fingerprint`] of the cluster's token, part of the pods'
/// config hash so a rotated token rolls them; `peers` `None` renders no NetworkPolicy.
pub fn children(
    plan: &ClusterPlan,
    members_json: &str,
    auth_fingerprint: &str,
    peers: Option<&network_policy::PolicyPeers>,
) -> Children {
    let props = properties::render(plan);
    let hash = content_hash(&format!("{props}\n# auth {auth_fingerprint}\n"));
    Children {
        config_maps: vec![
            properties::config_map(plan, props),
            membership::config_map(plan, members_json.to_string()),
        ],
        services: vec![worker::headless_service(plan)],
        stateful_sets: vec![worker::stateful_set(plan, &hash)],
        daemon_sets: if plan.spec.fuse.enabled {
            vec![fuse::daemon_set(plan, &hash)]
        } else {
            Vec::new()
        },
        pdbs: vec![pdb::pod_disruption_budget(plan)],
        volumes: if plan.spec.fuse.enabled {
            vec![volume::persistent_volume(plan)]
        } else {
            Vec::new()
        },
        claims: if plan.spec.fuse.enabled {
            vec![volume::claim(plan)]
        } else {
            Vec::new()
        },
        network_policies: peers
            .map(|p| network_policy::network_policy(plan, p))
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    #[test]
    fn children_carry_instance_and_owner_uid_labels_and_a_controller_owner_ref() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let c = children(&plan, "{}", "fp", None);
        let metas = c
            .config_maps
            .iter()
            .map(|o| &o.metadata)
            .chain(c.services.iter().map(|o| &o.metadata))
            .chain(c.stateful_sets.iter().map(|o| &o.metadata))
            .chain(c.daemon_sets.iter().map(|o| &o.metadata))
            .chain(c.pdbs.iter().map(|o| &o.metadata));
        let mut n = 0;
        for m in metas {
            n += 1;
            let l = m.labels.as_ref().unwrap();
            assert_eq!(l[LABEL_INSTANCE], "demo");
            assert_eq!(l[LABEL_OWNER_UID], "uid-1");
            let o = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (o.kind.as_str(), o.controller),
                ("CacheCluster", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("demo-ns"));
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn disabled_fuse_builds_no_daemon_set() {
        let plan = plan_of("ufs: {uri: 'file:///data'}\nfuse: {enabled: false}");
        let c = children(&plan, "{}", "fp", None);
        assert!(c.daemon_sets.is_empty());
        assert!(
            c.volumes.is_empty() && c.claims.is_empty(),
            "no cache mount to publish"
        );
    }

    #[test]
    fn a_new_auth_token_changes_the_pods_config_hash() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let hash = |fp: &str| {
            let c = children(&plan, "{}", fp, None);
            let t = c.stateful_sets[0].spec.as_ref().unwrap().template.clone();
            t.metadata.unwrap().annotations.unwrap()[ANNOTATION_CONFIG_HASH].clone()
        };
        assert_eq!(hash("a"), hash("a"));
        assert_ne!(hash("a"), hash("b"));
    }

    #[test]
    fn the_network_policy_is_rendered_only_when_peers_are_given() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        assert!(
            children(&plan, "{}", "fp", None)
                .network_policies
                .is_empty()
        );
        let peers = network_policy::PolicyPeers {
            operator_namespace: "rcache-system".into(),
            monitoring_namespace: None,
        };
        let c = children(&plan, "{}", "fp", Some(&peers));
        assert_eq!(c.network_policies.len(), 1);
        let m = &c.network_policies[0].metadata;
        assert_eq!(m.labels.as_ref().unwrap()[LABEL_OWNER_UID], "uid-1");
    }

    #[test]
    fn content_hash_is_stable() {
        assert_eq!(content_hash("a=b\n"), content_hash("a=b\n"));
        assert_ne!(content_hash("a=b\n"), content_hash("a=c\n"));
    }
}
