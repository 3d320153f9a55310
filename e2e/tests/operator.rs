//! Operator tests against the local real control plane (e2e/cluster) with a running
//! rcache-operator. Run by e2e/suites/20-operator.sh, which builds and starts the operator and
//! sets RCACHE_E2E=1; without that variable every test returns at once (printing that it was
//! skipped) so `cargo test --workspace` passes without a cluster.
//!
//! kwok runs no containers and no CNI: it marks pods Running/Ready. Multus therefore never
//! writes `k8s.v1.cni.cncf.io/network-status` on worker pods; the NAD test patches that
//! annotation onto the pods itself, a mock of exactly what Multus does after attaching the
//! secondary interface.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use rcache_operator::crd::{CacheCluster, CacheClusterStatus, ClusterCondition};
use rcache_operator::reconcile::nad_resource;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A client when RCACHE_E2E=1, else None after printing that the test is skipped.
async fn cluster_client(test: &str) -> Option<Client> {
    if std::env::var("RCACHE_E2E").as_deref() != Ok("1") {
        // `make test` runs these only from e2e/suites/20-operator.sh (RCACHE_E2E=1) and keeps
        // them out of test-rust, so under CI a skip means they were run the wrong way.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and {test} cannot run: RCACHE_E2E=1 is not set (run e2e/suites/20-operator.sh)"
        );
        eprintln!(
            "skipped {test}: set RCACHE_E2E=1 and run e2e/suites/20-operator.sh (needs the local cluster)"
        );
        return None;
    }
    Some(
        Client::try_default()
            .await
            .expect("kube client from KUBECONFIG"),
    )
}

/// A throwaway namespace, deleted (without waiting) when dropped, also on panic.
struct TestNs(String);

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

async fn test_ns(client: &Client, prefix: &str) -> TestNs {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!(
        "{prefix}-{:x}{:x}",
        std::process::id() & 0xfff,
        nanos & 0xfffff
    );
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"rcache.io/e2e": "20-operator"}}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    // Pods need the default ServiceAccount, which the controller-manager creates shortly after.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    wait_for("default ServiceAccount", || async {
        sa.get_opt("default").await.ok().flatten()
    })
    .await;
    TestNs(name)
}

/// Polls `f` every 500 ms until it returns Some, panicking after TIMEOUT.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cc_resource() -> ApiResource {
    ApiResource::erase::<CacheCluster>(&())
}

/// Creates a CacheCluster from raw JSON (as a user would write it, no client-side defaults).
async fn create_cc(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let ar = cc_resource();
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rcache.io/v1alpha1",
        "kind": "CacheCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
}

async fn status(api: &Api<CacheCluster>, name: &str) -> Option<CacheClusterStatus> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status)
}

fn condition<'a>(s: &'a CacheClusterStatus, t: &str) -> Option<&'a ClusterCondition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

/// Waits until condition `t` has `status` (and `reason`, if given); returns the status.
async fn wait_condition(
    api: &Api<CacheCluster>,
    name: &str,
    t: &str,
    want: &str,
    reason: Option<&str>,
) -> CacheClusterStatus {
    wait_for(&format!("{name} {t}={want} {reason:?}"), || async {
        let s = status(api, name).await?;
        let c = condition(&s, t)?;
        (c.status == want && reason.is_none_or(|r| c.reason == r)).then_some(s)
    })
    .await
}

async fn exists<K>(client: &Client, ns: &str, name: &str) -> bool
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .is_some()
}

async fn members_json(client: &Client, ns: &str, name: &str) -> Option<Value> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&format!("{name}-membership"))
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get("members.json")?).ok()
}

#[tokio::test]
async fn each_bad_spec_is_refused_at_apply_with_a_message_naming_the_field() {
    let Some(client) = cluster_client("bad specs").await else {
        return;
    };
    let ns = test_ns(&client, "op-bad").await;
    let cases = [
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"mode": "rdma"}}),
            "spec.network: mode rdma needs spec.network.rdma.resourceName",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "worker": {"replicas": 0}}),
            "spec.worker.replicas must be at least 1",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "fuse": {"hostMountPath": "mnt/cache"}}),
            "spec.fuse.hostMountPath must be an absolute path",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"rdma": {"bufferPool": {"prewarm": "1Gi", "initial": "512Mi", "max": "8Gi"}}}}),
            "spec.network.rdma.bufferPool.prewarm must not exceed spec.network.rdma.bufferPool.initial",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"rdma": {"bufferPool": {"prewarm": "1Mi", "initial": "16Gi", "max": "8Gi"}}}}),
            "spec.network.rdma.bufferPool.initial must not exceed spec.network.rdma.bufferPool.max",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"mode": "ipoib", "attachments": [{"name": "ib", "interface": "ib0-but-far-too-long"}]}}),
            "spec.network.attachments[].interface must be at most 15 characters",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "worker": {"tiers": [{"medium": "MEM", "quota": "1Gi"}, {"medium": "MEM", "quota": "2Gi"}]}}),
            "spec.worker.tiers: each medium (MEM, SSD) may appear at most once",
        ),
        (
            json!({"ufs": {"uri": "ftp://host/data"}}),
            "spec.ufs.uri must be file://",
        ),
        // Specs the worker refuses at start are refused at apply (issue 16).
        (
            json!({"ufs": {"uri": "file:///d"}, "worker": {"pageSize": "3000"}}),
            "spec.worker.pageSize must be a power of two",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"rdma": {"operationTimeout": "0s"}}}),
            "spec.network.rdma.operationTimeout must be a positive duration",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"rdma": {"device": "mlx5_0"}}}),
            "spec.network.rdma.device must name an RDMA device and its port",
        ),
        (
            json!({"ufs": {"uri": "hdfs://namenode:8020/data"}}),
            "spec.ufs.uri must be file://",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "fuse": {"hostMountPath": "/etc"}}),
            "spec.fuse.hostMountPath must not be /, a system directory",
        ),
        (
            json!({"ufs": {"uri": "file:///d", "hostPath": "/var/lib/kubelet/pods"}}),
            "spec.ufs.hostPath must not be /, a system directory",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "worker": {"tiers": [{"medium": "SSD", "path": "/cache", "hostPath": "/var", "quota": "1Gi"}]}}),
            "spec.worker.tiers[]: an SSD tier needs a path",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "worker": {"ports": {"data": 29999, "rdma": 29999}}}),
            "spec.worker.ports: data, rdma and web must be three different ports",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "worker": {"ports": {"web": 30001}}}),
            "spec.worker.ports must not use 30001",
        ),
        (
            json!({"ufs": {"uri": "gs://bucket/data"}}),
            "not gs:// or hdfs://",
        ),
        (
            json!({"ufs": {"uri": "s3://Bad_Bucket/data"}}),
            "s3://bucket",
        ),
        (
            json!({"ufs": {"uri": "file:///d", "s3": {"pathStyle": true}}}),
            "spec.ufs.s3 applies only to an s3:// spec.ufs.uri",
        ),
        (
            json!({"ufs": {"uri": "s3://bucket/p", "s3": {"endpoint": "minio:9000"}}}),
            "spec.ufs.s3.endpoint must be an http:// or https:// URL",
        ),
        (
            json!({"ufs": {"uri": "file:///d", "metadataSyncInterval": "10"}}),
            "spec.ufs.metadataSyncInterval",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"mode": "ipoib"}}),
            "spec.network: mode ipoib needs spec.network.attachments",
        ),
        (
            json!({"ufs": {"uri": "file:///d"}, "network": {"hostNetwork": true, "attachments": [{"name": "ib", "interface": "ib0"}]}}),
            "spec.network.attachments must be empty when spec.network.hostNetwork is true",
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        match create_cc(&client, &ns.0, &format!("bad-{i}"), spec.clone()).await {
            Ok(_) => panic!("spec {spec} was accepted; expected refusal with {want:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(want),
                    "spec {spec}: error {msg:?} does not contain {want:?}"
                );
            }
        }
    }
    // And the good version of the same spec is accepted.
    create_cc(
        &client,
        &ns.0,
        "good",
        json!({"ufs": {"uri": "file:///data/set", "hostPath": "/srv/datasets"}, "worker": {"pageSize": "4Mi"}, "network": {"rdma": {"device": "mlx5_0:1", "operationTimeout": "500ms"}}}),
    )
    .await
    .expect("valid spec accepted");
    create_cc(
        &client,
        &ns.0,
        "good-s3",
        json!({"ufs": {"uri": "s3://bucket/prefix", "s3": {"endpoint": "http://10.0.0.5:8333", "region": "eu-west-1", "pathStyle": true}}}),
    )
    .await
    .expect("valid spec accepted");
}

/// A child the apiserver refuses (here the StatefulSet, for a node selector key that is not a
/// label key; admission of the CacheCluster cannot see pod-template rules) turns Ready False with
/// reason ApplyFailed and the API's message, instead of leaving the cluster without status.
#[tokio::test]
async fn a_child_the_apiserver_refuses_sets_apply_failed_with_its_message() {
    let Some(client) = cluster_client("apply failed").await else {
        return;
    };
    let ns = test_ns(&client, "op-applyfail").await;
    let n = ns.0.as_str();
    create_cc(
        &client,
        n,
        "refused",
        json!({"ufs": {"uri": "file:///data"}, "worker": {"nodeSelector": {"bad key!": "x"}}}),
    )
    .await
    .expect("create");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), n);
    let s = wait_condition(&api, "refused", "Ready", "False", Some("ApplyFailed")).await;
    let msg = &condition(&s, "Ready").expect("Ready").message;
    assert!(
        msg.contains("StatefulSet") && msg.contains("nodeSelector"),
        "{msg}"
    );
    assert_eq!(
        condition(&s, "Degraded").map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", "ApplyFailed"))
    );
}

#[tokio::test]
async fn valid_spec_produces_its_children_and_turns_ready_when_kwok_readies_the_pods() {
    let Some(client) = cluster_client("valid spec").await else {
        return;
    };
    let ns = test_ns(&client, "op-valid").await;
    let n = ns.0.as_str();
    create_cc(
        &client,
        n,
        "demo",
        json!({"ufs": {"uri": "file:///data"}, "worker": {"replicas": 2}}),
    )
    .await
    .expect("create");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), n);
    let s = wait_condition(&api, "demo", "Ready", "True", Some("ClusterReady")).await;
    assert_eq!(s.workers, "2/2");
    assert_eq!(s.transport, "tcp");
    assert_eq!(s.members.len(), 2);
    let cc = api.get("demo").await.unwrap();
    assert_eq!(s.observed_generation, cc.metadata.generation);
    for t in ["WorkersReady", "FuseReady", "NetworkReady"] {
        assert_eq!(
            condition(&s, t).map(|c| c.status.as_str()),
            Some("True"),
            "{t}"
        );
    }
    assert!(exists::<StatefulSet>(&client, n, "demo-worker").await);
    assert!(exists::<Service>(&client, n, "demo-worker").await);
    assert!(exists::<DaemonSet>(&client, n, "demo-fuse").await);
    assert!(exists::<PodDisruptionBudget>(&client, n, "demo-worker").await);
    let props = Api::<ConfigMap>::namespaced(client.clone(), n)
        .get("demo-properties")
        .await
        .unwrap();
    let text = props.data.unwrap()["rcache.properties"].clone();
    for line in [
        "rcache.cluster.name=demo",
        "rcache.ufs.uri=file:///data",
        "rcache.worker.data.port=29999",
        "rcache.network.rdma.data.enabled=false",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "properties lack {line}:\n{text}"
        );
    }
    let members = members_json(&client, n, "demo")
        .await
        .expect("members.json");
    assert_eq!(members["cluster"], "demo");
    let ids: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["demo-worker-0", "demo-worker-1"]);
    // The children are owned by the CacheCluster (garbage collection deletes them with it).
    let sts = Api::<StatefulSet>::namespaced(client.clone(), n)
        .get("demo-worker")
        .await
        .unwrap();
    assert_eq!(sts.owner_references()[0].uid, cc.uid().unwrap());
}

#[tokio::test]
async fn missing_nad_turns_network_ready_false_until_the_nad_and_interface_addresses_exist() {
    let Some(client) = cluster_client("missing NAD").await else {
        return;
    };
    let ns = test_ns(&client, "op-nad").await;
    let n = ns.0.as_str();
    create_cc(
        &client,
        n,
        "ib",
        json!({"ufs": {"uri": "file:///data"}, "worker": {"replicas": 2}, "fuse": {"enabled": false},
               "network": {"mode": "rdma", "attachments": [{"name": "ib-net", "interface": "ib0"}],
                           "rdma": {"resourceName": "rdma/hca_shared_devices_a"}}}),
    )
    .await
    .expect("create");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), n);
    let s = wait_condition(
        &api,
        "ib",
        "NetworkReady",
        "False",
        Some("NetworkAttachmentNotFound"),
    )
    .await;
    let msg = &condition(&s, "NetworkReady").unwrap().message;
    assert!(msg.contains(&format!("{n}/ib-net")), "{msg}");
    assert_eq!(condition(&s, "Ready").unwrap().status, "False");

    // Pods carry the Multus request annotation in JSON form with the interface.
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let pod = wait_for("ib-worker-0", || async {
        pods.get_opt("ib-worker-0").await.ok().flatten()
    })
    .await;
    let req: Value =
        serde_json::from_str(&pod.annotations()["k8s.v1.cni.cncf.io/networks"]).unwrap();
    assert_eq!(
        req,
        json!([{"name": "ib-net", "namespace": n, "interface": "ib0"}])
    );
    let limits = pod.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    assert!(limits.contains_key("rdma/hca_shared_devices_a"));

    // Create the NAD: the operator notices (NAD watch); addresses are still missing.
    let ar = nad_resource();
    let nad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "ib-net", "namespace": n},
        "spec": {"config": "{\"cniVersion\":\"0.3.1\",\"name\":\"ib-net\",\"type\":\"ib-sriov\",\"ipam\":{\"type\":\"whereabouts\",\"range\":\"192.168.50.0/24\"}}"}
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), n, &ar)
        .create(&PostParams::default(), &nad)
        .await
        .expect("create NAD");
    wait_condition(&api, "ib", "WorkersReady", "True", None).await;
    wait_condition(
        &api,
        "ib",
        "NetworkReady",
        "False",
        Some("InterfaceAddressMissing"),
    )
    .await;

    // Mock of Multus: write the network-status annotation it would set after attaching ib0.
    for i in 0..2 {
        let status = json!([
            {"name": "kindnet", "interface": "eth0", "ips": [format!("10.0.0.{}", 100 + i)], "default": true},
            {"name": format!("{n}/ib-net"), "interface": "ib0", "ips": [format!("192.168.50.{}", 10 + i)]}
        ]);
        let patch = json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": status.to_string()}}});
        pods.patch(
            &format!("ib-worker-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("annotate pod");
    }
    let s = wait_condition(&api, "ib", "Ready", "True", None).await;
    assert_eq!(s.transport, "ucx");
    let addrs: Vec<_> = s.members.iter().map(|m| m.data_address.clone()).collect();
    assert_eq!(addrs, ["192.168.50.10", "192.168.50.11"]);
    let members = wait_for("membership with ib0 addresses", || async {
        let m = members_json(&client, n, "ib").await?;
        (m["members"][1]["dataAddress"] == "192.168.50.11").then_some(m)
    })
    .await;
    assert_eq!(members["members"][0]["transport"], "ucx");
    assert_eq!(members["members"][0]["ready"], true);
}

#[tokio::test]
async fn a_device_plugin_resource_no_node_advertises_is_reported_not_allocatable() {
    let Some(client) = cluster_client("resource not allocatable").await else {
        return;
    };
    let ns = test_ns(&client, "op-res").await;
    create_cc(
        &client,
        &ns.0,
        "nores",
        json!({"ufs": {"uri": "file:///data"}, "fuse": {"enabled": false},
               "network": {"mode": "rdma", "hostNetwork": true, "bindDevice": "ib0",
                           "rdma": {"resourceName": "rdma/not_on_any_node"}}}),
    )
    .await
    .expect("create");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), &ns.0);
    let s = wait_condition(
        &api,
        "nores",
        "NetworkReady",
        "False",
        Some("ResourceNotAllocatable"),
    )
    .await;
    assert!(
        condition(&s, "NetworkReady")
            .unwrap()
            .message
            .contains("rdma/not_on_any_node")
    );
    assert_eq!(condition(&s, "Degraded").unwrap().status, "True");
}

#[tokio::test]
async fn scaling_updates_workers_and_membership_and_disabling_fuse_deletes_its_daemon_set() {
    let Some(client) = cluster_client("scaling").await else {
        return;
    };
    let ns = test_ns(&client, "op-scale").await;
    let n = ns.0.as_str();
    create_cc(&client, n, "sc", json!({"ufs": {"uri": "file:///data"}}))
        .await
        .expect("create");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), n);
    wait_condition(&api, "sc", "Ready", "True", None).await;

    let patch = |p: Value| {
        let api = api.clone();
        async move {
            api.patch("sc", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("patch")
        }
    };
    patch(json!({"spec": {"worker": {"replicas": 3}}})).await;
    wait_for("3/3 workers and 3 members", || async {
        let s = status(&api, "sc").await?;
        let m = members_json(&client, n, "sc").await?;
        (s.workers == "3/3" && s.members.len() == 3 && m["members"].as_array()?.len() == 3)
            .then_some(())
    })
    .await;
    wait_condition(&api, "sc", "Ready", "True", None).await;

    patch(json!({"spec": {"worker": {"replicas": 1}}})).await;
    wait_for("1/1 workers and 1 member", || async {
        let s = status(&api, "sc").await?;
        (s.workers == "1/1" && s.members.len() == 1).then_some(())
    })
    .await;

    assert!(exists::<DaemonSet>(&client, n, "sc-fuse").await);
    patch(json!({"spec": {"fuse": {"enabled": false}}})).await;
    wait_for("FUSE DaemonSet deleted", || async {
        (!exists::<DaemonSet>(&client, n, "sc-fuse").await).then_some(())
    })
    .await;
    let s = wait_condition(&api, "sc", "FuseReady", "True", Some("FuseDisabled")).await;
    assert_eq!(s.fuse, "0/0");
}

#[tokio::test]
async fn deleting_the_cluster_deletes_its_children() {
    let Some(client) = cluster_client("deletion").await else {
        return;
    };
    let ns = test_ns(&client, "op-del").await;
    let n = ns.0.as_str();
    create_cc(&client, n, "gone", json!({"ufs": {"uri": "file:///data"}}))
        .await
        .expect("create");
    wait_for("children", || async {
        (exists::<StatefulSet>(&client, n, "gone-worker").await
            && exists::<ConfigMap>(&client, n, "gone-membership").await
            && exists::<Secret>(&client, n, "gone-auth").await
            && exists::<NetworkPolicy>(&client, n, "gone-worker").await)
            .then_some(())
    })
    .await;
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), n);
    api.delete("gone", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("children garbage-collected", || async {
        let any = exists::<StatefulSet>(&client, n, "gone-worker").await
            || exists::<DaemonSet>(&client, n, "gone-fuse").await
            || exists::<ConfigMap>(&client, n, "gone-properties").await
            || exists::<ConfigMap>(&client, n, "gone-membership").await
            || exists::<Service>(&client, n, "gone-worker").await
            || exists::<PodDisruptionBudget>(&client, n, "gone-worker").await
            || exists::<Secret>(&client, n, "gone-auth").await
            || exists::<NetworkPolicy>(&client, n, "gone-worker").await;
        (!any).then_some(())
    })
    .await;
}

#[tokio::test]
async fn workers_the_scheduler_cannot_place_are_reported_with_the_schedulers_reason() {
    let Some(client) = cluster_client("unschedulable").await else {
        return;
    };
    let ns = test_ns(&client, "op-sched").await;
    // Nodes advertise 10 rdma/hca_shared_devices_a; asking 11 per pod can never fit.
    create_cc(
        &client,
        &ns.0,
        "greedy",
        json!({"ufs": {"uri": "file:///data"}, "fuse": {"enabled": false},
               "network": {"mode": "rdma", "hostNetwork": true, "bindDevice": "ib0",
                           "rdma": {"resourceName": "rdma/hca_shared_devices_a", "resourceCount": 11}}}),
    )
    .await
    .expect("create");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), &ns.0);
    let s = wait_condition(
        &api,
        "greedy",
        "WorkersReady",
        "False",
        Some("WorkersUnschedulable"),
    )
    .await;
    let msg = &condition(&s, "WorkersReady").unwrap().message;
    assert!(msg.contains("rdma/hca_shared_devices_a"), "{msg}");
    assert_eq!(condition(&s, "Ready").unwrap().status, "False");
    // The resource itself exists on two nodes, so the network is not blamed.
    assert_eq!(condition(&s, "NetworkReady").unwrap().status, "True");
}

fn cl_resource() -> ApiResource {
    ApiResource::erase::<rcache_operator::load::CacheLoad>(&())
}

async fn create_cl(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rcache.io/v1alpha1",
        "kind": "CacheLoad",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &cl_resource())
        .create(&PostParams::default(), &obj)
        .await
}

#[tokio::test]
async fn each_bad_cacheload_is_refused_at_apply_with_a_message_naming_the_field() {
    let Some(client) = cluster_client("bad cacheloads").await else {
        return;
    };
    let ns = test_ns(&client, "op-clbad").await;
    let cases = [
        (
            json!({"cacheClusterRef": "demo", "paths": ["/abs"]}),
            "spec.paths: each path is relative",
        ),
        (
            json!({"cacheClusterRef": "demo", "paths": ["a/../b"]}),
            "no .. segment",
        ),
        (
            json!({"cacheClusterRef": "demo", "paths": []}),
            "spec.paths",
        ),
        (
            json!({"cacheClusterRef": "demo", "paths": ["a"], "schedule": "0 2 * *"}),
            "spec.schedule must be a cron expression of five fields",
        ),
        (
            json!({"cacheClusterRef": "demo", "paths": ["a"], "bandwidth": "1.5Gi"}),
            "spec.bandwidth must be a whole number of bytes",
        ),
        (
            json!({"cacheClusterRef": "demo", "paths": ["a"], "concurrency": 0}),
            "spec.concurrency",
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let err = create_cl(&client, &ns.0, &format!("bad-{i}"), spec.clone())
            .await
            .expect_err(&format!("{spec} must be refused"));
        let text = err.to_string();
        assert!(text.contains(want), "{spec}: {text}");
    }
}

#[tokio::test]
async fn a_cacheload_waits_for_its_cluster_and_a_deleted_one_is_gone() {
    let Some(client) = cluster_client("cacheload pending").await else {
        return;
    };
    let ns = test_ns(&client, "op-cl").await;
    let n = ns.0.as_str();
    create_cl(
        &client,
        n,
        "warm",
        json!({"cacheClusterRef": "demo", "paths": ["datasets/**/*.bin"], "bandwidth": "500Mi"}),
    )
    .await
    .expect("create");
    let api: Api<rcache_operator::load::CacheLoad> = Api::namespaced(client.clone(), n);
    let reason = |cl: &rcache_operator::load::CacheLoad| {
        cl.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Progressing")
                .map(|c| (s.phase.clone(), c.reason.clone(), c.message.clone()))
        })
    };
    let (phase, _, msg) = wait_for("CacheClusterNotFound", || async {
        let cl = api.get_opt("warm").await.ok().flatten()?;
        reason(&cl).filter(|(_, r, _)| r == "CacheClusterNotFound")
    })
    .await;
    assert_eq!(phase, "Pending");
    assert!(msg.contains("spec.cacheClusterRef"), "{msg}");
    let cl = api.get("warm").await.unwrap();
    assert!(
        cl.finalizers().iter().any(|f| f == "rcache.io/cacheload"),
        "{:?}",
        cl.finalizers()
    );
    // kwok workers are Ready but no process listens: the load waits, naming why.
    create_cc(
        &client,
        n,
        "demo",
        json!({"ufs": {"uri": "file:///data"}, "worker": {"replicas": 1}, "fuse": {"enabled": false}}),
    )
    .await
    .expect("create cluster");
    let (phase, r, msg) = wait_for("NoWorkerReachable", || async {
        let cl = api.get_opt("warm").await.ok().flatten()?;
        reason(&cl).filter(|(_, r, _)| r == "NoWorkerReachable" || r == "NoReadyWorker")
    })
    .await;
    assert_eq!(phase, "Pending", "{r}: {msg}");
    api.delete("warm", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the CacheLoad is gone", || async {
        api.get_opt("warm")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
}

/// A real `rcache-worker serve` process on 127.0.0.1 (RCACHE_WORKER_BIN), killed on drop.
struct LocalWorker(std::process::Child, std::path::PathBuf);

impl Drop for LocalWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn a_cacheload_runs_on_a_real_worker_to_verified_completion_with_rising_progress() {
    let Some(client) = cluster_client("cacheload on a real worker").await else {
        return;
    };
    let bin = std::env::var("RCACHE_WORKER_BIN")
        .expect("RCACHE_WORKER_BIN (e2e/suites/20-operator.sh builds and sets it)");
    let dir = std::env::temp_dir().join(format!("rcache-e2e-load-{}", std::process::id()));
    let ufs = dir.join("ufs");
    std::fs::create_dir_all(ufs.join("tree/sub")).unwrap();
    let mut total = 0u64;
    for i in 0..40u64 {
        let b: Vec<u8> = (0..100_000 + i).map(|j| (j * 31 + i) as u8).collect();
        total += b.len() as u64;
        std::fs::write(ufs.join(format!("tree/sub/f{i}.bin")), b).unwrap();
    }
    let big: Vec<u8> = (0..6_000_000u64).map(|j| (j % 251) as u8).collect();
    total += big.len() as u64;
    std::fs::write(ufs.join("tree/big.bin"), big).unwrap();
    let (data, web) = (free_port(), free_port());
    let members = dir.join("members.json");
    std::fs::write(
        &members,
        json!({"cluster": "demo", "generation": 1, "members": [{"id": "demo-worker-0",
            "dataAddress": "127.0.0.1", "ports": {"data": data, "web": web},
            "transport": "tcp", "ready": true}]})
        .to_string(),
    )
    .unwrap();
    let props = dir.join("rcache.properties");
    std::fs::write(
        &props,
        format!(
            "rcache.cluster.name=demo\nrcache.ufs.uri=file://{}\nrcache.cluster.membership.file={}\n\
             rcache.worker.data.bind.host=127.0.0.1\nrcache.worker.data.port={data}\n\
             rcache.worker.web.port={web}\nrcache.worker.page.size=64KB\n\
             rcache.worker.page.store.mem.quota=64MB\n\
             rcache.network.rdma.data.buffer.pool.initial.size=4MB\n\
             rcache.network.rdma.data.buffer.pool.prewarm.size=0\n\
             rcache.network.rdma.data.buffer.pool.max.size=64MB\n",
            ufs.display(),
            members.display()
        ),
    )
    .unwrap();
    let ports = dir.join("ports.json");
    let child = std::process::Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&props)
        .arg("--ports-file")
        .arg(&ports)
        .stderr(std::fs::File::create(dir.join("worker.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let _worker = LocalWorker(child, dir.clone());
    wait_for("the local worker listens", || async {
        ports.exists().then_some(())
    })
    .await;

    let ns = test_ns(&client, "op-clrun").await;
    let n = ns.0.as_str();
    create_cc(
        &client,
        n,
        "demo",
        json!({"ufs": {"uri": "file:///data"}, "fuse": {"enabled": false},
               "worker": {"replicas": 1, "ports": {"data": data, "web": web, "rdma": free_port()},
                          "tiers": [{"medium": "MEM", "quota": "64Mi"}]}}),
    )
    .await
    .expect("create cluster");
    let api: Api<CacheCluster> = Api::namespaced(client.clone(), n);
    wait_condition(&api, "demo", "Ready", "True", None).await;
    // kwok runs no container: point the worker pod at the local process (what a CNI would do).
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    pods.patch_status(
        "demo-worker-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}})),
    )
    .await
    .expect("patch pod IP");

    create_cl(
        &client,
        n,
        "warm",
        json!({"cacheClusterRef": "demo", "paths": ["tree"], "bandwidth": "1Mi", "concurrency": 2}),
    )
    .await
    .expect("create load");
    let loads: Api<rcache_operator::load::CacheLoad> = Api::namespaced(client.clone(), n);
    wait_for("the first load runs", || async {
        let st = loads.get_opt("warm").await.ok().flatten()?.status?;
        (st.phase == "Running").then_some(())
    })
    .await;
    // A second load of the same cluster queues behind the first.
    create_cl(
        &client,
        n,
        "again",
        json!({"cacheClusterRef": "demo", "paths": ["tree/big.bin", "tree/sub/*.bin"]}),
    )
    .await
    .expect("create second load");
    let queued = wait_for("the second load queues", || async {
        let st = loads.get_opt("again").await.ok().flatten()?.status?;
        st.conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason == "Queued")
            .then_some(st)
    })
    .await;
    assert_eq!(queued.phase, "Pending");
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let st = loop {
        let st = loads
            .get("warm")
            .await
            .expect("get load")
            .status
            .unwrap_or_default();
        if seen.last() != Some(&st.progress) {
            seen.push(st.progress.clone());
        }
        if st.phase == "Complete" || st.phase == "Failed" {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "load never ended: {st:?}; progress seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(st.phase, "Complete", "{st:?}");
    assert_eq!((st.files_total, st.files_done), (41, 41));
    assert_eq!(st.bytes_total, total as i64);
    assert_eq!(st.bytes_done, total as i64);
    assert_eq!(st.bytes_resident, Some(total as i64));
    assert_eq!(st.bytes_evicted, Some(0));
    assert_eq!(st.progress, "100%");
    let complete = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .unwrap();
    assert_eq!(
        (complete.status.as_str(), complete.reason.as_str()),
        ("True", "AllResident")
    );
    assert!(
        seen.iter()
            .any(|p| p.ends_with('%') && p != "0%" && p != "100%"),
        "progress rises in between: {seen:?}"
    );
    // Then the queued one runs, finds everything cached and reads nothing.
    let again = wait_for("the second load completes", || async {
        let st = loads.get_opt("again").await.ok().flatten()?.status?;
        (st.phase == "Complete" || st.phase == "Failed").then_some(st)
    })
    .await;
    assert_eq!(again.phase, "Complete", "{again:?}");
    assert_eq!(again.bytes_already_cached, total as i64, "{again:?}");
    assert_eq!(again.bytes_loaded, 0);
    // The cluster's status says what the cache holds (the poller's 30 s window).
    let cache = wait_for("status.cache", || async {
        let c = status(&api, "demo").await?.cache?;
        (c.cached_bytes >= total as i64).then_some(c)
    })
    .await;
    assert_eq!(cache.capacity, "64Mi");
    assert_eq!(cache.workers_reporting, 1);
    assert!(cache.files_cached >= 41, "{cache:?}");
}
