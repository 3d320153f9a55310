//! The `<name>-worker` NetworkPolicy: who may reach a CacheCluster's worker pods. The data port
//! (and the UCX port, which UCX uses to set connections up) only from the cluster's own worker
//! and FUSE pods and from pods labelled [`LABEL_CLIENT_OF`]`: <name>` in its namespace; the web
//! port (metrics, health, warm-up control) only from those, from the operator's namespace and
//! from the monitoring namespace the chart names. Pure.
//!
//! What it cannot do: host-network pods and secondary (Multus) interfaces are outside
//! NetworkPolicy in most CNIs, so on a fabric the authentication secret is the guard.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{COMPONENT_WORKER, LABEL_INSTANCE, LABEL_NAME, child_meta, names, selector_labels};
use crate::validate::{ClusterPlan, Transport};

/// Pod label naming the CacheCluster a pod is a client of: such pods (in the cluster's
/// namespace) may reach its workers' data ports. They still need the cluster's secret.
pub const LABEL_CLIENT_OF: &str = "rcache.io/client-of";
/// The namespace label every namespace carries (Kubernetes 1.22+).
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// Who besides the cluster's own pods is let in; from the operator's flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyPeers {
    /// The operator's namespace: it calls the workers' web port (warm-ups, usage).
    pub operator_namespace: String,
    /// The namespace whose Prometheus scrapes the workers' metrics, if any.
    pub monitoring_namespace: Option<String>,
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        ..NetworkPolicyPort::default()
    }
}

fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn namespace(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                LABEL_NAMESPACE_NAME.to_string(),
                name.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The policy of the cluster's worker pods.
pub fn network_policy(plan: &ClusterPlan, peers: &PolicyPeers) -> NetworkPolicy {
    let ports = &plan.spec.worker.ports;
    // The cluster's own pods: workers (peer reads, warm-ups) and FUSE pods.
    let own = pods(BTreeMap::from([
        (LABEL_NAME.to_string(), "rcache".to_string()),
        (LABEL_INSTANCE.to_string(), plan.name.clone()),
    ]));
    let clients = pods(BTreeMap::from([(
        LABEL_CLIENT_OF.to_string(),
        plan.name.clone(),
    )]));
    let mut data_ports = vec![tcp(ports.data)];
    if plan.transport == Transport::Ucx {
        data_ports.push(tcp(ports.rdma));
    }
    let mut web_from = vec![own.clone(), namespace(&peers.operator_namespace)];
    if let Some(ns) = &peers.monitoring_namespace {
        web_from.push(namespace(ns));
    }
    NetworkPolicy {
        metadata: child_meta(plan, names::worker(&plan.name), COMPONENT_WORKER),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(plan, COMPONENT_WORKER)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(data_ports),
                    from: Some(vec![own, clients]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(ports.web)]),
                    from: Some(web_from),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    fn peers() -> PolicyPeers {
        PolicyPeers {
            operator_namespace: "rcache-system".into(),
            monitoring_namespace: Some("monitoring".into()),
        }
    }

    fn port_numbers(r: &NetworkPolicyIngressRule) -> Vec<i32> {
        r.ports
            .as_ref()
            .expect("ports")
            .iter()
            .map(|p| match p.port {
                Some(IntOrString::Int(n)) => n,
                _ => panic!("numeric port"),
            })
            .collect()
    }

    fn labels_of(p: &NetworkPolicyPeer) -> (Option<&BTreeMap<String, String>>, bool) {
        (
            p.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref()),
            p.namespace_selector.is_some(),
        )
    }

    #[test]
    fn worker_pods_admit_data_from_own_pods_and_labelled_clients_only() {
        let plan = plan_of("ufs: {uri: 'file:///data'}\nnetwork: {mode: tcp}");
        let np = network_policy(&plan, &peers());
        assert_eq!(np.metadata.name.as_deref(), Some("demo-worker"));
        assert_eq!(np.metadata.namespace.as_deref(), Some("demo-ns"));
        let spec = np.spec.expect("spec");
        let sel = spec
            .pod_selector
            .expect("selector")
            .match_labels
            .expect("labels");
        assert_eq!(sel["app.kubernetes.io/component"], "worker");
        assert_eq!(sel["app.kubernetes.io/instance"], "demo");
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = spec.ingress.expect("rules");
        assert_eq!(port_numbers(&rules[0]), vec![29999], "tcp: no UCX port");
        let from = rules[0].from.as_ref().expect("from");
        assert_eq!(from.len(), 2);
        let own = labels_of(&from[0]).0.expect("own pods");
        assert_eq!(own["app.kubernetes.io/instance"], "demo");
        assert!(
            !own.contains_key("app.kubernetes.io/component"),
            "workers and FUSE"
        );
        assert_eq!(
            labels_of(&from[1]).0.expect("clients")[LABEL_CLIENT_OF],
            "demo"
        );
        assert!(
            from.iter()
                .all(|p| p.namespace_selector.is_none() && p.ip_block.is_none())
        );
    }

    #[test]
    fn the_ucx_port_is_admitted_like_the_data_port_on_rdma() {
        let plan = plan_of(
            "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, hostNetwork: true, bindDevice: ib0}",
        );
        let rules = network_policy(&plan, &peers())
            .spec
            .expect("spec")
            .ingress
            .expect("rules");
        assert_eq!(port_numbers(&rules[0]), vec![29999, 59999]);
    }

    #[test]
    fn the_web_port_admits_the_operator_and_monitoring_namespaces() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let rules = network_policy(&plan, &peers())
            .spec
            .expect("spec")
            .ingress
            .expect("rules");
        assert_eq!(port_numbers(&rules[1]), vec![30000]);
        let namespaces: Vec<&str> = rules[1]
            .from
            .as_ref()
            .expect("from")
            .iter()
            .filter_map(|p| p.namespace_selector.as_ref())
            .map(|s| s.match_labels.as_ref().expect("labels")[LABEL_NAMESPACE_NAME].as_str())
            .collect();
        assert_eq!(namespaces, vec!["rcache-system", "monitoring"]);
        let without = PolicyPeers {
            monitoring_namespace: None,
            ..peers()
        };
        let rules = network_policy(&plan, &without)
            .spec
            .expect("spec")
            .ingress
            .expect("rules");
        assert_eq!(rules[1].from.as_ref().expect("from").len(), 2);
    }
}
