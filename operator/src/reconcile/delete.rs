//! Stage "delete": a CacheCluster whose claim application pods mount is not torn away under them.
//!
//! A cluster with FUSE (hence a PersistentVolumeClaim) carries the finalizer [`FINALIZER`]. When
//! it is deleted, this stage deletes the claim first (so no new pod can mount it) and, while pods
//! still mount it, keeps the cluster, its workers and FUSE pods serving them: `Ready` turns
//! `False` with reason [`reason::DELETION_WAITS_FOR_CLAIM`] naming the pods, and a Warning Event
//! says the same. Once no pod mounts it the claim goes (`pvc-protection`), this stage deletes the
//! cluster's PersistentVolume and removes the finalizer; the garbage collector then removes the
//! children. It must not touch any other child: they go with their owner.
//!
//! Without the operator running, the finalizer stays: delete CacheClusters before uninstalling
//! the operator, or remove the finalizer by hand (`kubectl patch ... finalizers: null`).

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::{Context, ns_api, update_status};
use crate::Error;
use crate::build;
use crate::crd::CacheCluster;
use crate::status::reason;

/// The finalizer that holds a deleted cluster while pods mount its claim.
pub const FINALIZER: &str = "rcache.io/claim-users";

/// How often a deletion waiting for the claim's pods looks again.
pub const USERS_POLL: Duration = Duration::from_secs(5);

/// How soon a claim with no users left is looked at again (`pvc-protection` lets it go).
pub const CLAIM_POLL: Duration = Duration::from_secs(1);

/// Most pod names a status message or Event lists.
pub const USERS_SHOWN: usize = 5;

/// The pods (not finished) whose volumes name `claim`, as sorted names.
pub fn claim_users(pods: &[Pod], claim: &str) -> Vec<String> {
    let mut users: Vec<String> = pods
        .iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|p| {
            p.spec.as_ref().is_some_and(|s| {
                s.volumes.iter().flatten().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
            })
        })
        .map(|p| p.name_any())
        .collect();
    users.sort();
    users
}

/// The message of a deletion waiting for `users` of `claim`.
pub fn waiting_message(claim: &str, users: &[String]) -> String {
    let shown: Vec<&str> = users.iter().take(USERS_SHOWN).map(String::as_str).collect();
    let more = users.len().saturating_sub(USERS_SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "deletion waits: pod(s) {}{more} mount the PersistentVolumeClaim {claim}; the cache keeps serving them until they stop (delete them to finish)",
        shown.join(", ")
    )
}

pub fn has_finalizer(cc: &CacheCluster) -> bool {
    cc.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds [`FINALIZER`] to a cluster that has a claim (FUSE enabled), before the claim exists.
pub(super) async fn ensure_finalizer(ctx: &Context, cc: &CacheCluster) -> Result<(), Error> {
    if has_finalizer(cc) || !cc.spec.fuse.enabled {
        return Ok(());
    }
    let mut finalizers = cc.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    patch_finalizers(ctx, cc, finalizers).await
}

/// Writes `finalizers`, failing (to be retried) if the object changed since it was read.
async fn patch_finalizers(
    ctx: &Context,
    cc: &CacheCluster,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let ns = cc.namespace().unwrap_or_default();
    let name = cc.name_any();
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": cc.resource_version(),
    }});
    ns_api::<CacheCluster>(&ctx.client, &ns)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "set the finalizers of CacheCluster {ns}/{name}"
        )))?;
    Ok(())
}

/// The deletion of `cc`: waits for its claim's pods, then removes claim, PersistentVolume and
/// the finalizer.
pub(super) async fn finish(ctx: &Context, cc: &CacheCluster) -> Result<Action, Error> {
    if !has_finalizer(cc) {
        return Ok(Action::await_change());
    }
    let ns = cc.namespace().unwrap_or_default();
    let name = cc.name_any();
    let uid = cc.uid().unwrap_or_default();
    let claims = ns_api::<PersistentVolumeClaim>(&ctx.client, &ns);
    let claim = claims
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!(
            "get PersistentVolumeClaim {ns}/{name}"
        )))?
        .filter(|c| c.labels().get(build::LABEL_OWNER_UID) == Some(&uid));
    if let Some(claim) = claim {
        if claim.meta().deletion_timestamp.is_none() {
            claims
                .delete(&name, &DeleteParams::background())
                .await
                .map_err(Error::kube(format!(
                    "delete PersistentVolumeClaim {ns}/{name}"
                )))?;
            info!(cluster = %name, namespace = %ns, "CacheCluster deleted: deleted its claim first");
        }
        let pods = ns_api::<Pod>(&ctx.client, &ns)
            .list(&ListParams::default())
            .await
            .map_err(Error::kube(format!("list pods in {ns}")))?;
        let users = claim_users(&pods.items, &name);
        if users.is_empty() {
            return Ok(Action::requeue(CLAIM_POLL));
        }
        let message = waiting_message(&name, &users);
        if update_status::deletion_waits(ctx, cc, &message).await? {
            update_status::publish(
                ctx,
                cc,
                EventType::Warning,
                reason::DELETION_WAITS_FOR_CLAIM,
                message,
            )
            .await;
        }
        return Ok(Action::requeue(USERS_POLL));
    }
    let pv = build::volume::pv_name_of(&ns, &name);
    let volumes = Api::<PersistentVolume>::all(ctx.client.clone());
    if let Some(v) = volumes
        .get_opt(&pv)
        .await
        .map_err(Error::kube(format!("get PersistentVolume {pv}")))?
        && v.labels().get(build::LABEL_OWNER_UID) == Some(&uid)
    {
        match volumes.delete(&pv, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("delete PersistentVolume {pv}"))(e)),
        }
    }
    let rest: Vec<String> = cc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(ctx, cc, rest).await?;
    info!(cluster = %name, namespace = %ns, "CacheCluster deleted: no pod mounts its claim; claim and volume gone, children follow");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, claim: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "c"}],
                "volumes": claim.map(|c| vec![json!({"name": "d", "persistentVolumeClaim": {"claimName": c}})]).unwrap_or_default(),
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn claim_users_are_running_pods_that_mount_the_claim() {
        let pods = [
            pod("b-reader", Some("demo"), "Running"),
            pod("a-reader", Some("demo"), "Pending"),
            pod("other", Some("other-claim"), "Running"),
            pod("no-volume", None, "Running"),
            pod("done", Some("demo"), "Succeeded"),
            pod("crashed", Some("demo"), "Failed"),
        ];
        assert_eq!(claim_users(&pods, "demo"), ["a-reader", "b-reader"]);
        assert!(claim_users(&pods, "nobody").is_empty());
    }

    #[test]
    fn the_waiting_message_names_the_claim_the_pods_and_the_fix() {
        let users: Vec<String> = (0..7).map(|i| format!("trainer-{i}")).collect();
        let m = waiting_message("demo", &users);
        assert!(m.contains("PersistentVolumeClaim demo"), "{m}");
        assert!(
            m.contains("trainer-0, trainer-1") && m.contains("trainer-4"),
            "{m}"
        );
        assert!(!m.contains("trainer-5") && m.contains("and 2 more"), "{m}");
        assert!(m.contains("delete them to finish"), "{m}");
    }
}
