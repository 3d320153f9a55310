//! The FUSE DaemonSet: one privileged client per selected node that mounts the cache at
//! /mnt/rcache inside the container, a hostPath with `Bidirectional` propagation so the mount
//! appears at spec.fuse.hostMountPath on the node.
//!
//! Stopping without breaking readers: the preStop hook lazily unmounts (`umount -l`), so new
//! opens fail over to whatever the node does next but files already open keep reading, then it
//! waits up to [`DRAIN_SECONDS`] while the client keeps serving them before SIGTERM arrives. The
//! update strategy is `OnDelete` for the same reason: a spec change never restarts a mount under
//! running readers; an operator (human) deletes FUSE pods when the node is drained.
//!
//! Restarts keep open files: the CSI node plugin (`rcache-csi`, chart `csi.enabled`) serves a
//! FUSE keeper on [`KEEPER_SOCKET`] (a hostPath shared with these pods); the client hands it
//! its `/dev/fuse` connection under `<namespace>/<name>` and a restarted client takes it back,
//! so neither SIGTERM nor a crash unmounts. With a keeper the preStop hook does nothing; without
//! one (no CSI plugin on the node) it unmounts lazily as described above.
//!
//! The client serves `/metrics`, `/healthz`, `/readyz` on [`WEB_PORT`] (container port `web`,
//! rendered as `rcache.fuse.web.port`).

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, ExecAction, HostPathVolumeSource, Lifecycle,
    LifecycleHandler, PodSpec, PodTemplateSpec, Probe, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::worker::{TERMINATION_MESSAGE_POLICY, config_mount, config_volume, field_env};
use super::{
    COMPONENT_FUSE, FUSE_MOUNT_POINT, PROPERTIES_PATH, child_meta, fabric, labels, names,
    selector_labels,
};
use crate::validate::ClusterPlan;

/// Seconds preStop lets open files drain after the lazy unmount.
pub const DRAIN_SECONDS: i64 = 30;
/// FUSE container name.
pub const CONTAINER: &str = "fuse";
/// Port of the FUSE client's `/metrics`, `/healthz`, `/readyz` (`rcache.fuse.web.port`).
pub const WEB_PORT: i32 = rcache_contract::keys::DEFAULT_FUSE_WEB_PORT as i32;

/// The CSI node plugin's directory on every node (host path, same path in the containers).
pub const CSI_PLUGIN_DIR: &str = "/var/lib/kubelet/plugins/csi.rcache.io";
/// The FUSE keeper's socket the CSI node plugin serves.
pub const KEEPER_SOCKET: &str = "/var/lib/kubelet/plugins/csi.rcache.io/keeper.sock";

/// Command the FUSE container runs.
pub fn command() -> String {
    format!("rcache-fuse mount --config {PROPERTIES_PATH}")
}

/// The FUSE DaemonSet.
pub fn daemon_set(plan: &ClusterPlan, config_hash: &str) -> DaemonSet {
    let f = &plan.spec.fuse;
    let mut container = Container {
        name: CONTAINER.to_string(),
        image: Some(
            f.image
                .clone()
                .unwrap_or_else(|| plan.spec.worker.image.clone()),
        ),
        image_pull_policy: Some(plan.spec.worker.image_pull_policy.as_str().to_string()),
        command: Some(fabric::entrypoint(plan, &command())),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("NODE_NAME", "spec.nodeName"),
            EnvVar {
                name: "RCACHE_FUSE_KEEPER_SOCKET".to_string(),
                value: Some(KEEPER_SOCKET.to_string()),
                ..EnvVar::default()
            },
            EnvVar {
                name: "RCACHE_FUSE_TAKEOVER_ID".to_string(),
                value: Some(format!("{}/{}", plan.namespace, plan.name)),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("web".to_string()),
            container_port: WEB_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![
            config_mount(),
            VolumeMount {
                name: "dev-fuse".to_string(),
                mount_path: "/dev/fuse".to_string(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "mount".to_string(),
                mount_path: FUSE_MOUNT_POINT.to_string(),
                mount_propagation: Some("Bidirectional".to_string()),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "csi-plugin-dir".to_string(),
                mount_path: CSI_PLUGIN_DIR.to_string(),
                ..VolumeMount::default()
            },
        ]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "mountpoint".to_string(),
                    "-q".to_string(),
                    FUSE_MOUNT_POINT.to_string(),
                ]),
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        format!(
                            "[ -S {KEEPER_SOCKET} ] && exit 0; umount -l {FUSE_MOUNT_POINT} 2>/dev/null || fusermount3 -u -z {FUSE_MOUNT_POINT} 2>/dev/null || true; sleep {DRAIN_SECONDS}"
                        ),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        termination_message_policy: Some(TERMINATION_MESSAGE_POLICY.to_string()),
        ..Container::default()
    };
    fabric::wire_container(plan, &mut container, f.resources.as_ref());
    // Mounting FUSE with Bidirectional propagation requires a privileged container, and
    // mount(2) needs CAP_SYS_ADMIN in the effective set, which only root gets: the image's user is
    // 65532, so the FUSE container says root explicitly.
    container.security_context = Some(SecurityContext {
        privileged: Some(true),
        run_as_user: Some(0),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        ..SecurityContext::default()
    });
    let host = |name: &str, path: &str, type_: &str| Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(type_.to_string()),
        }),
        ..Volume::default()
    };
    let mut pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            config_volume(plan, false),
            host("dev-fuse", "/dev/fuse", "CharDevice"),
            host("mount", &f.host_mount_path, "DirectoryOrCreate"),
            host("csi-plugin-dir", CSI_PLUGIN_DIR, "DirectoryOrCreate"),
        ]),
        node_selector: (!f.node_selector.is_empty()).then(|| f.node_selector.clone()),
        tolerations: (!f.tolerations.is_empty()).then(|| f.tolerations.clone()),
        termination_grace_period_seconds: Some(DRAIN_SECONDS + 30),
        ..PodSpec::default()
    };
    fabric::wire_pod(plan, &mut pod);
    DaemonSet {
        metadata: child_meta(plan, names::fuse(&plan.name), COMPONENT_FUSE),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(plan, COMPONENT_FUSE)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(plan, COMPONENT_FUSE)),
                    annotations: Some(fabric::pod_annotations(plan, config_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    fn pod(spec: &str) -> PodSpec {
        daemon_set(&plan_of(spec), "h")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn fuse_pods_get_the_token_and_the_ca_but_never_the_workers_tls_key() {
        let spec = pod("ufs: {uri: 'file:///data'}\nnetwork: {tls: true}");
        let volumes = spec.volumes.unwrap();
        let sources = volumes[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap();
        let secret = sources.iter().find_map(|s| s.secret.as_ref()).unwrap();
        let files: Vec<&str> = secret
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| i.path.as_str())
            .collect();
        assert_eq!(files, ["auth/token", "auth/ca.crt"]);
    }

    #[test]
    fn fuse_is_privileged_with_dev_fuse_and_bidirectional_host_mount() {
        let p = pod("ufs: {uri: 'file:///data'}\nfuse: {hostMountPath: /mnt/data-cache}");
        let c = &p.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(true));
        assert_eq!(
            sc.run_as_user,
            Some(0),
            "mount(2) needs root's effective caps"
        );
        let vols = p.volumes.unwrap();
        let mount = vols.iter().find(|v| v.name == "mount").unwrap();
        assert_eq!(mount.host_path.as_ref().unwrap().path, "/mnt/data-cache");
        let dev = vols.iter().find(|v| v.name == "dev-fuse").unwrap();
        assert_eq!(
            dev.host_path.as_ref().unwrap().type_.as_deref(),
            Some("CharDevice")
        );
        let m = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "mount")
            .unwrap();
        assert_eq!(m.mount_propagation.as_deref(), Some("Bidirectional"));
        assert_eq!(m.mount_path, "/mnt/rcache");
    }

    #[test]
    fn fuse_container_exposes_its_web_port_for_metrics() {
        let p = pod("ufs: {uri: 'file:///data'}");
        let ports = p.containers[0].ports.clone().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("web"));
        assert_eq!(ports[0].container_port, 30001);
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn fuse_container_runs_rcache_fuse_mount_with_the_properties_file() {
        let p = pod("ufs: {uri: 'file:///data'}");
        let cmd = p.containers[0].command.clone().unwrap();
        assert_eq!(
            cmd[2],
            "exec rcache-fuse mount --config /etc/rcache/rcache.properties"
        );
    }

    #[test]
    fn pre_stop_unmounts_lazily_and_drains_within_the_grace_period() {
        let p = pod("ufs: {uri: 'file:///data'}");
        let cmd = p.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .clone()
            .unwrap();
        assert!(cmd[2].contains("umount -l /mnt/rcache"), "{cmd:?}");
        assert!(p.termination_grace_period_seconds.unwrap() > DRAIN_SECONDS);
    }

    #[test]
    fn fuse_hands_its_connection_to_the_csi_keeper_under_namespace_and_name() {
        let ds = daemon_set(&plan_of("ufs: {uri: 'file:///data'}"), "h");
        let pod = ds.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let env = c.env.as_ref().unwrap();
        let get = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            get("RCACHE_FUSE_KEEPER_SOCKET").as_deref(),
            Some(KEEPER_SOCKET)
        );
        assert_eq!(
            get("RCACHE_FUSE_TAKEOVER_ID").as_deref(),
            Some("demo-ns/demo")
        );
        let m = c.volume_mounts.as_ref().unwrap();
        assert!(m.iter().any(|m| m.mount_path == CSI_PLUGIN_DIR));
        let v = pod.volumes.unwrap();
        let dir = v.iter().find(|v| v.name == "csi-plugin-dir").unwrap();
        assert_eq!(dir.host_path.as_ref().unwrap().path, CSI_PLUGIN_DIR);
        // With a keeper, stopping must not unmount (the next client takes the connection).
        let pre = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        let cmd = pre.exec.as_ref().unwrap().command.as_ref().unwrap();
        assert!(
            cmd[2].starts_with(&format!("[ -S {KEEPER_SOCKET} ] && exit 0;")),
            "{cmd:?}"
        );
    }

    #[test]
    fn fuse_container_falls_back_to_logs_for_its_termination_message() {
        let p = pod("ufs: {uri: 'file:///data'}");
        let c = &p.containers[0];
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(c.termination_message_path, None);
    }

    #[test]
    fn fuse_uses_on_delete_updates_and_its_own_scheduling() {
        let ds = daemon_set(
            &plan_of(
                "ufs: {uri: 'file:///data'}\nfuse: {nodeSelector: {gpu: 'true'}, image: 'r/fuse:2'}",
            ),
            "h",
        );
        let spec = ds.spec.unwrap();
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let p = spec.template.spec.unwrap();
        assert_eq!(p.node_selector.unwrap()["gpu"], "true");
        assert_eq!(p.containers[0].image.as_deref(), Some("r/fuse:2"));
    }

    #[test]
    fn fuse_pods_get_the_fabric_too() {
        let ds = daemon_set(
            &plan_of(
                "ufs: {uri: 'file:///data'}\nnetwork: {mode: rdma, attachments: [{name: ib, interface: ib0}], rdma: {resourceName: rdma/x}}",
            ),
            "h",
        );
        let t = ds.spec.unwrap().template;
        assert!(
            t.metadata
                .unwrap()
                .annotations
                .unwrap()
                .contains_key("k8s.v1.cni.cncf.io/networks")
        );
        let c = &t.spec.unwrap().containers[0];
        assert!(
            c.resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()
                .contains_key("rdma/x")
        );
    }
}
