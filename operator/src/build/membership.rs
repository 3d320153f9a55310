//! Membership: who serves the cache and at which address. Reads each worker pod's Multus
//! `k8s.v1.cni.cncf.io/network-status` annotation and takes the IP of the bound interface (the
//! RDMA/IPoIB address clients must use, not the pod IP); falls back to the pod IP only when the
//! pods have no secondary network (tcp without attachments, or host network). Renders
//! `members.json` (docs/contracts.md) into the `<name>-membership` ConfigMap. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::fabric::MULTUS_NETWORK_STATUS;
use super::{child_meta, names};
use crate::crd::{Member, MemberPorts};
use crate::validate::ClusterPlan;

/// Key of the membership file in the ConfigMap.
pub const MEMBERS_KEY: &str = "members.json";

/// One entry of Multus' network-status annotation (fields we use).
#[derive(Deserialize, Debug)]
struct NetworkStatus {
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

/// members.json.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct MembershipFile {
    /// CacheCluster name.
    pub cluster: String,
    /// Bumped when members change.
    pub generation: i64,
    /// Workers.
    pub members: Vec<Member>,
}

/// Result of reading the worker pods.
#[derive(Debug, Default, PartialEq)]
pub struct Membership {
    /// Members, ordered by pod ordinal.
    pub members: Vec<Member>,
    /// Ready pods whose network-status has no IP on the bound interface (pod names).
    pub missing_address: Vec<String>,
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn ordinal(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The address of the bound interface from network-status, if present.
pub fn interface_address(pod: &Pod, interface: &str) -> Option<String> {
    let raw = pod.annotations().get(MULTUS_NETWORK_STATUS)?;
    let statuses: Vec<NetworkStatus> = serde_json::from_str(raw).ok()?;
    statuses
        .into_iter()
        .find(|s| s.interface.as_deref() == Some(interface))
        .and_then(|s| s.ips.into_iter().next())
}

/// Computes members from worker pods (terminating pods are left out).
pub fn members(plan: &ClusterPlan, pods: &[Pod]) -> Membership {
    let ports = &plan.spec.worker.ports;
    let uses_secondary = !plan.attachments.is_empty() && !plan.spec.network.host_network;
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| (ordinal(&p.name_any()), p.name_any()));
    let mut out = Membership::default();
    for pod in pods {
        let name = pod.name_any();
        let ready = pod_ready(pod);
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let address = if uses_secondary {
            let iface = plan.bind_device.as_deref().unwrap_or_default();
            interface_address(pod, iface)
        } else {
            (!pod_ip.is_empty()).then_some(pod_ip)
        };
        if ready && address.is_none() {
            out.missing_address.push(name.clone());
        }
        out.members.push(Member {
            id: name.clone(),
            pod: name,
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            ready: ready && address.is_some(),
            data_address: address.unwrap_or_default(),
            ports: MemberPorts {
                data: ports.data,
                rdma: ports.rdma,
                web: ports.web,
            },
            transport: plan.transport.as_str().to_string(),
            observed_transport: None,
        });
    }
    out
}

/// Renders members.json (pretty, deterministic).
pub fn render(plan: &ClusterPlan, generation: i64, members: &[Member]) -> String {
    let file = MembershipFile {
        cluster: plan.name.clone(),
        generation,
        members: members.to_vec(),
    };
    // Serializing plain structs of strings, ints and bools cannot fail.
    let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
    s.push('\n');
    s
}

/// The membership ConfigMap.
pub fn config_map(plan: &ClusterPlan, rendered: String) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(plan, names::membership(&plan.name), "membership"),
        data: Some(BTreeMap::from([(MEMBERS_KEY.to_string(), rendered)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const IB: &str = "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, attachments: [{name: ib-net, interface: ib0}], rdma: {resourceName: rdma/x}}";

    fn worker(name: &str, ready: bool, status_annotation: Option<&str>) -> Pod {
        let ann = status_annotation
            .map(|a| format!("  annotations:\n    k8s.v1.cni.cncf.io/network-status: '{a}'\n"))
            .unwrap_or_default();
        pod(&format!(
            "metadata:\n  name: {name}\n{ann}spec:\n  nodeName: rcache-node-0\n  containers: [{{name: worker}}]\nstatus:\n  podIP: 10.0.0.5\n  conditions: [{{type: Ready, status: '{}'}}]\n",
            if ready { "True" } else { "False" }
        ))
    }

    const STATUS: &str = r#"[{"name":"kindnet","interface":"eth0","ips":["10.0.0.5"],"default":true},{"name":"demo-ns/ib-net","interface":"ib0","ips":["192.168.50.10"]}]"#;

    #[test]
    fn data_address_is_the_bound_interface_ip_not_the_pod_ip() {
        let m = members(&plan_of(IB), &[worker("demo-worker-0", true, Some(STATUS))]);
        assert_eq!(m.members[0].data_address, "192.168.50.10");
        assert_eq!(m.members[0].transport, "ucx");
        assert_eq!(m.members[0].node, "rcache-node-0");
        assert!(m.members[0].ready);
        assert!(m.missing_address.is_empty());
    }

    #[test]
    fn ready_pod_without_the_interface_is_not_ready_and_reported() {
        let m = members(&plan_of(IB), &[worker("demo-worker-0", true, None)]);
        assert!(!m.members[0].ready);
        assert_eq!(m.members[0].data_address, "");
        assert_eq!(m.missing_address, ["demo-worker-0"]);
    }

    #[test]
    fn tcp_without_attachments_uses_the_pod_ip() {
        let m = members(
            &plan_of("ufs: {uri: 'file:///data'}"),
            &[worker("demo-worker-0", true, None)],
        );
        assert_eq!(m.members[0].data_address, "10.0.0.5");
        assert_eq!(m.members[0].transport, "tcp");
        assert_eq!(
            m.members[0].ports,
            MemberPorts {
                data: 29999,
                rdma: 59999,
                web: 30000
            }
        );
    }

    #[test]
    fn members_are_ordered_by_ordinal() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let pods = [
            worker("demo-worker-10", true, None),
            worker("demo-worker-2", false, None),
        ];
        let ids: Vec<_> = members(&plan, &pods)
            .members
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["demo-worker-2", "demo-worker-10"]);
    }

    #[test]
    fn members_json_matches_the_contract_shape() {
        let plan = plan_of(IB);
        let m = members(&plan, &[worker("demo-worker-0", true, Some(STATUS))]);
        let v: serde_json::Value = serde_json::from_str(&render(&plan, 3, &m.members)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cluster": "demo", "generation": 3, "members": [
                {"id": "demo-worker-0", "pod": "demo-worker-0", "node": "rcache-node-0",
                 "dataAddress": "192.168.50.10", "ports": {"data": 29999, "rdma": 59999, "web": 30000},
                 "transport": "ucx", "ready": true}]})
        );
        let cm = config_map(&plan, "x".into());
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-membership"));
    }
}
