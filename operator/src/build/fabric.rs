//! Fabric wiring shared by worker and FUSE pods: the Multus `k8s.v1.cni.cncf.io/networks`
//! annotation (JSON form with `interface`), the RDMA device-plugin resource in requests and
//! limits, host networking, `IPC_LOCK`, and the memlock handling of the entrypoint.
//!
//! Memlock: RDMA memory registration (`ibv_reg_mr`) pins pages and is charged against
//! `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`; the kernel (`ib_umem_get`, `mlock`)
//! skips the limit for a process with that capability. So rdma-mode containers get `IPC_LOCK`,
//! and their entrypoint raises the soft memlock limit to the hard limit (no extra capability
//! needed) so user-space checks in UCX/rdma-core that read `ulimit -l` see the largest allowed
//! value; the worker then reports the effective limit at start. No `SYS_RESOURCE`, no privileged
//! worker.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSpec, ResourceRequirements, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use crate::validate::{ClusterPlan, Transport};

/// Multus request annotation.
pub const MULTUS_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// Multus result annotation (read for membership).
pub const MULTUS_NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// The Multus annotation value, None without attachments (or with host network).
pub fn multus_annotation(plan: &ClusterPlan) -> Option<String> {
    if plan.attachments.is_empty() || plan.spec.network.host_network {
        return None;
    }
    let list: Vec<_> = plan
        .attachments
        .iter()
        .map(|a| json!({"name": a.name, "namespace": a.namespace, "interface": a.interface}))
        .collect();
    Some(serde_json::Value::Array(list).to_string())
}

/// Wraps a command so the soft memlock limit is raised first (see the module doc).
pub fn entrypoint(plan: &ClusterPlan, command: &str) -> Vec<String> {
    if plan.transport == Transport::Ucx {
        vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("ulimit -l \"$(ulimit -H -l)\" 2>/dev/null || true; exec {command}"),
        ]
    } else {
        vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("exec {command}"),
        ]
    }
}

/// Adds the device-plugin resource to a container's requests and limits (extended resources
/// must be equal in both), keeping the user's CPU/memory.
pub fn resources(
    plan: &ClusterPlan,
    user: Option<&ResourceRequirements>,
) -> Option<ResourceRequirements> {
    let mut r = user.cloned().unwrap_or_default();
    if let Some(name) = &plan.spec.network.rdma.resource_name {
        let q = Quantity(plan.spec.network.rdma.resource_count.to_string());
        r.requests
            .get_or_insert_with(BTreeMap::new)
            .insert(name.clone(), q.clone());
        r.limits
            .get_or_insert_with(BTreeMap::new)
            .insert(name.clone(), q);
    }
    if r == ResourceRequirements::default() {
        None
    } else {
        Some(r)
    }
}

/// The image's unprivileged user (Dockerfile: `USER 65532:65532`); worker containers run as it.
pub const IMAGE_USER: i64 = 65532;

/// The worker container's security context: the image's non-root user, stated explicitly so the
/// kubelet refuses to start it as root (`runAsNonRoot`), no privilege escalation, every
/// capability dropped but `IPC_LOCK` with RDMA.
///
/// A non-root process gets no *effective* capabilities from `capabilities.add` (no ambient set),
/// so IPC_LOCK does not lift RLIMIT_MEMLOCK here: the registered pool must fit the runtime's
/// memlock limit, which GPU/IB nodes raise (containerd `LimitMEMLOCK=infinity`). The worker checks
/// the limit at start and stops with a message naming the keys and the fix when it is too low.
pub fn security_context(plan: &ClusterPlan) -> SecurityContext {
    let add = (plan.transport == Transport::Ucx).then(|| vec!["IPC_LOCK".to_string()]);
    SecurityContext {
        run_as_user: Some(IMAGE_USER),
        run_as_group: Some(IMAGE_USER),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add,
            drop: Some(vec!["ALL".to_string()]),
        }),
        ..SecurityContext::default()
    }
}

/// Applies host networking to a pod spec.
pub fn wire_pod(plan: &ClusterPlan, pod: &mut PodSpec) {
    if plan.spec.network.host_network {
        pod.host_network = Some(true);
        pod.dns_policy = Some("ClusterFirstWithHostNet".to_string());
    }
}

/// Pod annotations for the fabric.
pub fn pod_annotations(plan: &ClusterPlan, config_hash: &str) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([(
        super::ANNOTATION_CONFIG_HASH.to_string(),
        config_hash.to_string(),
    )]);
    if let Some(v) = multus_annotation(plan) {
        a.insert(MULTUS_NETWORKS.to_string(), v);
    }
    a
}

/// Sets the container fields of the fabric (resources, capabilities).
pub fn wire_container(plan: &ClusterPlan, c: &mut Container, user: Option<&ResourceRequirements>) {
    c.resources = resources(plan, user);
    if c.security_context.is_none() {
        c.security_context = Some(security_context(plan));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    const RDMA: &str = "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, attachments: [{name: ib-net, interface: ib0}], rdma: {resourceName: rdma/hca_shared_devices_a, resourceCount: 2}}";

    #[test]
    fn multus_annotation_is_json_with_namespace_and_interface() {
        let plan = plan_of(RDMA);
        let v: serde_json::Value =
            serde_json::from_str(&multus_annotation(&plan).unwrap()).unwrap();
        assert_eq!(
            v,
            json!([{"name": "ib-net", "namespace": "demo-ns", "interface": "ib0"}])
        );
        assert_eq!(
            multus_annotation(&plan_of("ufs: {uri: 'file:///data'}")),
            None
        );
    }

    #[test]
    fn device_plugin_resource_goes_into_requests_and_limits_next_to_user_resources() {
        let plan = plan_of(&format!(
            "{RDMA}\nworker: {{resources: {{requests: {{cpu: '2'}}}}}}"
        ));
        let r = resources(&plan, plan.spec.worker.resources.as_ref()).unwrap();
        let req = r.requests.unwrap();
        assert_eq!(req["rdma/hca_shared_devices_a"], Quantity("2".into()));
        assert_eq!(req["cpu"], Quantity("2".into()));
        assert_eq!(
            r.limits.unwrap()["rdma/hca_shared_devices_a"],
            Quantity("2".into())
        );
    }

    #[test]
    fn rdma_containers_get_ipc_lock_and_a_memlock_raising_entrypoint() {
        let plan = plan_of(RDMA);
        let sc = security_context(&plan);
        assert_eq!(sc.capabilities.unwrap().add.unwrap(), vec!["IPC_LOCK"]);
        let cmd = entrypoint(&plan, "rcache-worker serve");
        assert!(cmd[2].starts_with("ulimit -l"), "{cmd:?}");
        assert!(cmd[2].ends_with("exec rcache-worker serve"));
    }

    #[test]
    fn tcp_containers_get_no_capabilities() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let caps = security_context(&plan).capabilities.unwrap();
        assert_eq!(caps.add, None);
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(resources(&plan, None).is_none());
        assert_eq!(entrypoint(&plan, "x")[2], "exec x");
    }

    #[test]
    fn host_network_sets_dns_policy_and_drops_multus() {
        let plan = plan_of(
            "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, hostNetwork: true, bindDevice: ib0}",
        );
        let mut pod = PodSpec::default();
        wire_pod(&plan, &mut pod);
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert!(!pod_annotations(&plan, "h").contains_key(MULTUS_NETWORKS));
    }
}
