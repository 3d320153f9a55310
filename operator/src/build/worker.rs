//! The worker StatefulSet and its headless Service. Workers get stable names (`<name>-worker-N`)
//! that serve as consistent-hash identities, the properties and membership files through one
//! projected volume at /etc/rcache, the cache tier volumes, and the fabric wiring.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, KeyToPath,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SecretEnvSource,
    SecretProjection, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::auth;
use super::properties::PROPERTIES_KEY;
use super::{
    COMPONENT_WORKER, CONFIG_DIR, PROPERTIES_PATH, child_meta, fabric, labels, membership, names,
    selector_labels,
};
use crate::validate::{ClusterPlan, Transport};

/// Worker container name.
pub const CONTAINER: &str = "worker";
/// terminationMessagePolicy of the rcache containers: the binaries write their fatal error to
/// the default terminationMessagePath (`/dev/termination-log`); when they die before writing it
/// (a panic, the shell wrapper failing) the kubelet uses the log tail instead. The operator
/// reads the message back into the `WorkersReady`/`FuseReady` conditions.
pub const TERMINATION_MESSAGE_POLICY: &str = "FallbackToLogsOnError";
/// Command the worker container runs (the `rcache-worker` binary of the image).
pub fn command() -> String {
    format!("rcache-worker serve --config {PROPERTIES_PATH}")
}

/// The projected config volume: properties file, membership/members.json, and under `auth/`
/// the cluster's authentication token and TLS CA (`build::auth`); with `server_key` (worker
/// pods) also the workers' certificate and private key.
pub fn config_volume(plan: &ClusterPlan, server_key: bool) -> Volume {
    let mut auth_files = vec![auth::TOKEN_KEY, auth::CA_KEY];
    if server_key {
        auth_files.extend([auth::CERT_KEY, auth::KEY_KEY]);
    }
    Volume {
        name: "rcache-config".to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: names::properties(&plan.name),
                        items: Some(vec![KeyToPath {
                            key: PROPERTIES_KEY.to_string(),
                            path: "rcache.properties".to_string(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: names::membership(&plan.name),
                        items: Some(vec![KeyToPath {
                            key: membership::MEMBERS_KEY.to_string(),
                            path: format!("membership/{}", membership::MEMBERS_KEY),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: names::auth(&plan.name),
                        items: Some(
                            auth_files
                                .iter()
                                .map(|k| KeyToPath {
                                    key: k.to_string(),
                                    path: format!("auth/{k}"),
                                    mode: None,
                                })
                                .collect(),
                        ),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

/// Mount of the config volume.
pub fn config_mount() -> VolumeMount {
    VolumeMount {
        name: "rcache-config".to_string(),
        mount_path: CONFIG_DIR.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Environment from the downward API.
pub fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: p,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("web".to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// The worker StatefulSet. `config_hash` rolls pods when the properties change.
pub fn stateful_set(plan: &ClusterPlan, config_hash: &str) -> StatefulSet {
    let w = &plan.spec.worker;
    let mut volumes = vec![config_volume(plan, true)];
    let mut mounts = vec![config_mount()];
    if let Some(ssd) = &plan.ssd {
        volumes.push(Volume {
            name: "tier-ssd".to_string(),
            host_path: ssd.host_path.as_ref().map(|p| HostPathVolumeSource {
                path: p.clone(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            empty_dir: ssd.host_path.is_none().then(|| EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity(ssd.quota.to_string())),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "tier-ssd".to_string(),
            mount_path: ssd.path.clone(),
            ..VolumeMount::default()
        });
    }
    if let (Some(host), Some(path)) = (
        &plan.spec.ufs.host_path,
        plan.spec.ufs.uri.strip_prefix("file://"),
    ) {
        volumes.push(Volume {
            name: "ufs".to_string(),
            host_path: Some(HostPathVolumeSource {
                path: host.clone(),
                type_: Some("Directory".to_string()),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "ufs".to_string(),
            mount_path: path.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let mut ports = vec![port("data", w.ports.data)];
    if plan.transport == Transport::Ucx {
        ports.push(port("rdma", w.ports.rdma));
    }
    ports.push(port("web", w.ports.web));
    let mut container = Container {
        name: CONTAINER.to_string(),
        image: Some(w.image.clone()),
        image_pull_policy: Some(w.image_pull_policy.as_str().to_string()),
        command: Some(fabric::entrypoint(plan, &command())),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_IP", "status.podIP"),
            // rcache.worker.hostname defaults to the pod IP (docs/contracts.md); a bind device,
            // when set, takes precedence inside the worker.
            field_env("RCACHE_WORKER_HOSTNAME", "status.podIP"),
        ]),
        env_from: plan.spec.ufs.credentials_secret_ref.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.name.clone(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }]
        }),
        ports: Some(ports),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", 2)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        termination_message_policy: Some(TERMINATION_MESSAGE_POLICY.to_string()),
        ..Container::default()
    };
    fabric::wire_container(plan, &mut container, w.resources.as_ref());
    let mut pod = PodSpec {
        init_containers: tier_owner_init(plan),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!w.node_selector.is_empty()).then(|| w.node_selector.clone()),
        tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
        affinity: w.affinity.clone(),
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    fabric::wire_pod(plan, &mut pod);
    StatefulSet {
        metadata: child_meta(plan, names::worker(&plan.name), COMPONENT_WORKER),
        spec: Some(StatefulSetSpec {
            replicas: Some(w.replicas),
            service_name: Some(names::worker(&plan.name)),
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(plan, COMPONENT_WORKER)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(plan, COMPONENT_WORKER)),
                    annotations: Some(fabric::pod_annotations(plan, config_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// A hostPath disk tier is created by the kubelet as root (mode 0755), and fsGroup does not apply
/// to hostPath volumes: an init container (root, only CAP_CHOWN) gives the directory to the
/// worker's user before the worker starts. Not needed for an emptyDir tier (world-writable).
fn tier_owner_init(plan: &ClusterPlan) -> Option<Vec<Container>> {
    let ssd = plan.ssd.as_ref()?;
    ssd.host_path.as_ref()?;
    let owner = format!("{}:{}", fabric::IMAGE_USER, fabric::IMAGE_USER);
    Some(vec![Container {
        name: "tier-owner".to_string(),
        image: Some(plan.spec.worker.image.clone()),
        image_pull_policy: Some(plan.spec.worker.image_pull_policy.as_str().to_string()),
        command: Some(vec!["chown".to_string(), owner, ssd.path.clone()]),
        volume_mounts: Some(vec![VolumeMount {
            name: "tier-ssd".to_string(),
            mount_path: ssd.path.clone(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["CHOWN".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some(TERMINATION_MESSAGE_POLICY.to_string()),
        ..Container::default()
    }])
}

/// Headless Service giving workers stable DNS names; not-ready workers are published too
/// because membership, not DNS, decides who serves.
pub fn headless_service(plan: &ClusterPlan) -> Service {
    let p = &plan.spec.worker.ports;
    let sp = |name: &str, port: i32| ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    };
    Service {
        metadata: child_meta(plan, names::worker(&plan.name), COMPONENT_WORKER),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(plan, COMPONENT_WORKER)),
            ports: Some(vec![
                sp("data", p.data),
                sp("rdma", p.rdma),
                sp("web", p.web),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    fn pod(spec: &str) -> PodTemplateSpec {
        stateful_set(&plan_of(spec), "abc").spec.unwrap().template
    }

    #[test]
    fn stateful_set_has_replicas_service_name_selector_and_image() {
        let sts = stateful_set(
            &plan_of("ufs: {uri: 'file:///data'}\nworker: {replicas: 3, image: 'r/x:1'}"),
            "abc",
        );
        assert_eq!(sts.metadata.name.as_deref(), Some("demo-worker"));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("demo-worker"));
        let sel = spec.selector.match_labels.unwrap();
        assert_eq!(sel["app.kubernetes.io/component"], "worker");
        assert!(!sel.contains_key("rcache.io/owner-uid"));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("r/x:1"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.command.as_ref().unwrap()[2],
            "exec rcache-worker serve --config /etc/rcache/rcache.properties"
        );
    }

    #[test]
    fn config_hash_and_multus_annotation_land_on_the_pod_template() {
        let t = pod(
            "ufs: {uri: 'file:///data'}\nnetwork: {mode: ipoib, attachments: [{name: ipoib, interface: ib0}]}",
        );
        let a = t.metadata.unwrap().annotations.unwrap();
        assert_eq!(a["rcache.io/config-hash"], "abc");
        assert!(a["k8s.v1.cni.cncf.io/networks"].contains("\"interface\":\"ib0\""));
    }

    #[test]
    fn config_is_mounted_as_one_projected_volume_with_membership_and_auth_token() {
        let spec = pod("ufs: {uri: 'file:///data'}").spec.unwrap();
        let v = &spec.volumes.unwrap()[0];
        let sources = v.projected.as_ref().unwrap().sources.as_ref().unwrap();
        let paths: Vec<_> = sources
            .iter()
            .map(|s| {
                let items = match (&s.config_map, &s.secret) {
                    (Some(cm), None) => cm.items.as_ref().unwrap(),
                    (None, Some(secret)) => {
                        assert_eq!(secret.name, "demo-auth");
                        secret.items.as_ref().unwrap()
                    }
                    _ => panic!("one source per projection"),
                };
                items[0].path.clone()
            })
            .collect();
        assert_eq!(
            paths,
            ["rcache.properties", "membership/members.json", "auth/token"]
        );
        let auth = sources[2].secret.as_ref().unwrap().items.as_ref().unwrap();
        let files: Vec<&str> = auth.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            files,
            ["auth/token", "auth/ca.crt", "auth/tls.crt", "auth/tls.key"],
            "worker pods hold the TLS key"
        );
        assert_eq!(
            spec.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
            "/etc/rcache"
        );
    }

    #[test]
    fn ssd_tier_uses_empty_dir_with_quota_or_the_host_path() {
        let spec = pod("ufs: {uri: 'file:///data'}\nworker: {tiers: [{medium: SSD, path: /cache, quota: 1Gi}]}").spec.unwrap();
        let v = &spec.volumes.unwrap()[1];
        assert_eq!(
            v.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity((1u64 << 30).to_string()))
        );
        let spec = pod("ufs: {uri: 'file:///data'}\nworker: {tiers: [{medium: SSD, path: /cache, hostPath: /nvme/rcache, quota: 1Gi}]}").spec.unwrap();
        assert_eq!(
            spec.volumes.unwrap()[1].host_path.as_ref().unwrap().path,
            "/nvme/rcache"
        );
    }

    #[test]
    fn file_ufs_with_host_path_is_mounted_read_only_at_the_uri_path() {
        let spec = pod("ufs: {uri: 'file:///data', hostPath: /srv/data}")
            .spec
            .unwrap();
        let m = spec.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "ufs")
            .cloned()
            .unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), ("/data", Some(true)));
    }

    #[test]
    fn credentials_secret_becomes_env_from() {
        let spec = pod("ufs: {uri: 'file:///data', credentialsSecretRef: {name: s3-creds}}")
            .spec
            .unwrap();
        let ef = spec.containers[0].env_from.as_ref().unwrap();
        assert_eq!(ef[0].secret_ref.as_ref().unwrap().name, "s3-creds");
    }

    #[test]
    fn rdma_mode_exposes_the_rdma_port_and_requests_the_device() {
        let spec = pod("ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, rdma: {resourceName: rdma/hca_shared_devices_a}}").spec.unwrap();
        let c = &spec.containers[0];
        let names: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["data", "rdma", "web"]);
        assert!(
            c.resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()
                .contains_key("rdma/hca_shared_devices_a")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            sc.capabilities.as_ref().unwrap().add.as_deref(),
            Some(&["IPC_LOCK".to_string()][..])
        );
    }

    #[test]
    fn worker_runs_as_the_image_user_without_privileges() {
        let spec = pod("ufs: {uri: 'file:///data'}").spec.unwrap();
        let sc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(caps.add, None, "no capability without RDMA");
        assert_eq!(sc.privileged, None);
    }

    #[test]
    fn a_host_path_disk_tier_is_given_to_the_worker_user_by_an_init_container() {
        let spec = pod(
            "ufs: {uri: 'file:///data'}\nworker: {tiers: [{medium: MEM, quota: 1Gi}, {medium: SSD, path: /cache/ssd, hostPath: /var/lib/rcache/ssd, quota: 10Gi}]}",
        )
        .spec
        .unwrap();
        let init = spec
            .init_containers
            .expect("init container for the hostPath tier");
        assert_eq!(
            init[0].command.as_ref().unwrap(),
            &["chown", "65532:65532", "/cache/ssd"]
        );
        let sc = init[0].security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().add.as_deref(),
            Some(&["CHOWN".to_string()][..])
        );
        let no_host = pod(
            "ufs: {uri: 'file:///data'}\nworker: {tiers: [{medium: MEM, quota: 1Gi}, {medium: SSD, path: /cache/ssd, quota: 10Gi}]}",
        )
        .spec
        .unwrap();
        assert_eq!(
            no_host.init_containers, None,
            "an emptyDir tier is writable as is"
        );
    }

    #[test]
    fn worker_container_falls_back_to_logs_for_its_termination_message() {
        let spec = pod("ufs: {uri: 'file:///data'}").spec.unwrap();
        let c = &spec.containers[0];
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(
            c.termination_message_path, None,
            "the default /dev/termination-log is what the worker writes"
        );
    }

    #[test]
    fn headless_service_publishes_not_ready_addresses() {
        let svc = headless_service(&plan_of("ufs: {uri: 'file:///data'}"));
        let s = svc.spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.publish_not_ready_addresses, Some(true));
        let ports: Vec<_> = s.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [29999, 59999, 30000]);
    }
}
