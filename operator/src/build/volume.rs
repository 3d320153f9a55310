//! The volume application pods consume: for every CacheCluster with FUSE enabled, a
//! PersistentVolume served by the rcache CSI node plugin (`csi.rcache.io`) and a `ReadOnlyMany`
//! PersistentVolumeClaim of the cluster's name in its namespace, bound to each other
//! (`claimRef` / `volumeName`), so a pod needs only `persistentVolumeClaim: {claimName: <name>}`.
//!
//! The claim is owned by the CacheCluster (the garbage collector deletes it; `pvc-protection`
//! keeps it while pods still mount it). A PersistentVolume is cluster-scoped and cannot have a
//! namespaced owner: it is labelled with the cluster's uid, kept with reclaim policy `Retain`,
//! and the operator deletes it once it is `Released` (its claim is gone).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{child_meta, labels};
use crate::validate::ClusterPlan;

/// Component label of the PV and PVC.
pub const COMPONENT_VOLUME: &str = "volume";
/// The CSI driver (the chart's `CSIDriver` object, `rcache-csi`'s GetPluginInfo name).
pub const CSI_DRIVER: &str = "csi.rcache.io";
/// Volume attribute with the node path of the cache mount (read by `rcache-csi`).
pub const ATTR_HOST_MOUNT_PATH: &str = "hostMountPath";
/// Capacity written on both objects: the cache has no size a pod could fill (read-only); the
/// value only has to match for the claim to bind.
pub const CAPACITY: &str = "1Ti";
/// Access mode of both.
pub const ACCESS_MODE: &str = "ReadOnlyMany";

/// The PersistentVolume's name: cluster-scoped, so unique across namespaces.
pub fn pv_name(plan: &ClusterPlan) -> String {
    pv_name_of(&plan.namespace, &plan.name)
}

/// The PersistentVolume's name of CacheCluster `namespace/name`.
pub fn pv_name_of(namespace: &str, name: &str) -> String {
    format!("rcache-{namespace}-{name}")
}

/// The claim's name: the cluster's.
pub fn pvc_name(plan: &ClusterPlan) -> String {
    plan.name.clone()
}

fn capacity() -> BTreeMap<String, Quantity> {
    BTreeMap::from([("storage".to_string(), Quantity(CAPACITY.to_string()))])
}

/// The PersistentVolume of the cluster.
pub fn persistent_volume(plan: &ClusterPlan) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(plan)),
            labels: Some(labels(plan, COMPONENT_VOLUME)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec![ACCESS_MODE.to_string()]),
            capacity: Some(capacity()),
            persistent_volume_reclaim_policy: Some("Retain".to_string()),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".to_string()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("PersistentVolumeClaim".to_string()),
                namespace: Some(plan.namespace.clone()),
                name: Some(pvc_name(plan)),
                ..ObjectReference::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: CSI_DRIVER.to_string(),
                volume_handle: format!("{}/{}", plan.namespace, plan.name),
                read_only: Some(true),
                volume_attributes: Some(BTreeMap::from([(
                    ATTR_HOST_MOUNT_PATH.to_string(),
                    plan.spec.fuse.host_mount_path.clone(),
                )])),
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The claim application pods name.
pub fn claim(plan: &ClusterPlan) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: child_meta(plan, pvc_name(plan), COMPONENT_VOLUME),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![ACCESS_MODE.to_string()]),
            storage_class_name: Some(String::new()),
            volume_name: Some(pv_name(plan)),
            volume_mode: Some("Filesystem".to_string()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(capacity()),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Whether a PersistentVolume of ours may be deleted: its claim is gone (`Released`).
pub fn pv_is_released(pv: &PersistentVolume) -> bool {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Released")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    #[test]
    fn the_volume_and_claim_bind_to_each_other_read_only_many() {
        let plan = plan_of("ufs: {uri: 'file:///data'}\nfuse: {hostMountPath: /mnt/data-cache}");
        let pv = persistent_volume(&plan);
        let pvc = claim(&plan);
        assert_eq!(pv.metadata.name.as_deref(), Some("rcache-demo-ns-demo"));
        assert_eq!(pv.metadata.namespace, None, "cluster-scoped");
        assert_eq!(
            pv.metadata.owner_references, None,
            "no namespaced owner on a PV"
        );
        assert_eq!(
            pv.metadata.labels.as_ref().unwrap()["rcache.io/owner-uid"],
            "uid-1"
        );
        let s = pv.spec.unwrap();
        let csi = s.csi.unwrap();
        assert_eq!(csi.driver, "csi.rcache.io");
        assert_eq!(csi.volume_handle, "demo-ns/demo");
        assert_eq!(csi.read_only, Some(true));
        assert_eq!(
            csi.volume_attributes.unwrap()["hostMountPath"],
            "/mnt/data-cache"
        );
        assert_eq!(s.access_modes.unwrap(), vec!["ReadOnlyMany"]);
        assert_eq!(
            s.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        let cr = s.claim_ref.unwrap();
        assert_eq!(
            (cr.namespace.as_deref(), cr.name.as_deref()),
            (Some("demo-ns"), Some("demo"))
        );
        assert_eq!(pvc.metadata.name.as_deref(), Some("demo"));
        assert_eq!(pvc.metadata.namespace.as_deref(), Some("demo-ns"));
        let o = &pvc.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(o.kind, "CacheCluster");
        let ps = pvc.spec.unwrap();
        assert_eq!(ps.volume_name.as_deref(), Some("rcache-demo-ns-demo"));
        assert_eq!(
            ps.storage_class_name.as_deref(),
            Some(""),
            "no default class"
        );
        assert_eq!(ps.access_modes.unwrap(), vec!["ReadOnlyMany"]);
        assert_eq!(
            ps.resources.unwrap().requests.unwrap()["storage"],
            s.capacity.unwrap()["storage"]
        );
    }

    #[test]
    fn only_a_released_volume_may_be_deleted() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let mut pv = persistent_volume(&plan);
        assert!(!pv_is_released(&pv));
        for (phase, released) in [("Bound", false), ("Available", false), ("Released", true)] {
            pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            assert_eq!(pv_is_released(&pv), released, "{phase}");
        }
    }
}
