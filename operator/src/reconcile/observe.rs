//! Stage "observe": reads what the status needs from the API server and the watched workloads:
//! worker pods (membership, readiness, failures), FUSE pods while some are not ready, nodes
//! advertising the RDMA resource, the NetworkAttachmentDefinitions the spec names, and the
//! rollout state of the applied StatefulSet and DaemonSet. The result is an [`Observed`], the
//! input of the pure [`crate::status::compute`]. It only reads: no writes of any kind.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};

use super::apply::AppliedWorkloads;
use super::ns_api;
use super::plan::Desired;
use crate::Error;
use crate::build::{self, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_OWNER_UID};
use crate::status::{Observed, PodProblem};
use crate::validate::ClusterPlan;

/// The NetworkAttachmentDefinition resource (Multus CRD, not in k8s-openapi).
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// The worker pods of `plan` (by instance, component and owner uid), deleting ones included.
pub(super) async fn worker_pods(client: &Client, plan: &ClusterPlan) -> Result<Vec<Pod>, Error> {
    let ns = &plan.namespace;
    let selector = format!(
        "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={},{LABEL_OWNER_UID}={}",
        plan.name,
        build::COMPONENT_WORKER,
        plan.uid
    );
    Ok(ns_api::<Pod>(client, ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("list worker pods in {ns}")))?
        .items)
}

/// What the status of `plan` is computed from: the worker `pods` listed before applying, the
/// `desired` membership, the applied `workloads`, and what this reads (nodes advertising the RDMA
/// resource, FUSE pods while some are not ready, missing NetworkAttachmentDefinitions).
pub(super) async fn observe(
    client: &Client,
    plan: &ClusterPlan,
    generation: i64,
    pods: &[Pod],
    desired: &Desired,
    workloads: &AppliedWorkloads,
) -> Result<Observed, Error> {
    let ns = &plan.namespace;
    let (applied_sts, applied_ds) = workloads;
    let membership = &desired.membership;
    let resource = match &plan.spec.network.rdma.resource_name {
        Some(r) => Some((r.clone(), nodes_with_resource(client, r).await?)),
        None => None,
    };
    let live_pods: Vec<Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    let workers_ready = live_pods
        .iter()
        .filter(|p| build::membership::pod_ready(p))
        .count();
    let (fuse_desired, fuse_ready, ds_pending) = match applied_ds.first() {
        Some(ds) => {
            let s = ds.status.clone().unwrap_or_default();
            (
                s.desired_number_scheduled,
                s.number_ready,
                ds_rollout_pending(ds.as_ref()),
            )
        }
        None => (0, 0, false),
    };
    // FUSE pods are listed only while some are not ready: a healthy cluster costs no request.
    let fuse_failing = if plan.spec.fuse.enabled && fuse_ready < fuse_desired {
        let selector = format!(
            "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={},{LABEL_OWNER_UID}={}",
            plan.name,
            build::COMPONENT_FUSE,
            plan.uid
        );
        let fuse_pods: Vec<Pod> = ns_api::<Pod>(client, ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube(format!("list FUSE pods in {ns}")))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        failing_pods(&fuse_pods)
    } else {
        Vec::new()
    };
    Ok(Observed {
        generation,
        spec_error: None,
        apply_error: None,
        workers_desired: plan.spec.worker.replicas,
        workers_ready: i32::try_from(workers_ready).unwrap_or(i32::MAX),
        workers_unschedulable: unschedulable_reason(&live_pods),
        workers_failing: failing_pods(&live_pods),
        fuse_failing,
        fuse_enabled: plan.spec.fuse.enabled,
        fuse_desired,
        fuse_ready,
        rollout_pending: applied_sts.iter().any(|s| sts_rollout_pending(s)) || ds_pending,
        missing_nads: missing_nads(client, plan).await?,
        resource,
        missing_address: membership.missing_address.clone(),
        bind_device: plan.bind_device.clone(),
        transport: plan.transport.as_str().to_string(),
        // Filled in by the reconcile from the stored status (the cache-usage poller's).
        fabric: None,
        members: membership.members.clone(),
        membership_generation: desired.membership_generation,
    })
}

fn quantity_positive(q: &Quantity) -> bool {
    // Positive: a number (no sign) with a non-zero digit before its suffix.
    let number = q.0.trim();
    let digits = number
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(number, |end| &number[..end]);
    digits.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// Nodes advertising `resource` as allocatable (> 0).
async fn nodes_with_resource(client: &Client, resource: &str) -> Result<usize, Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list nodes"))?;
    Ok(nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(resource))
                .is_some_and(quantity_positive)
        })
        .count())
}

/// NADs referenced by the plan that do not exist, as `namespace/name`.
async fn missing_nads(client: &Client, plan: &ClusterPlan) -> Result<Vec<String>, Error> {
    let ar = nad_resource();
    let mut missing = Vec::new();
    for a in &plan.attachments {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &a.namespace, &ar);
        match api.get_opt(&a.name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(a.key()),
            // The Multus CRD itself is not installed: the NAD cannot exist.
            Err(kube::Error::Api(s)) if s.is_not_found() => missing.push(a.key()),
            Err(e) => {
                return Err(Error::kube(format!(
                    "get NetworkAttachmentDefinition {}",
                    a.key()
                ))(e));
            }
        }
    }
    Ok(missing)
}

fn unschedulable_reason(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|p| {
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find_map(|c| {
                (c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable"))
                .then(|| {
                    c.message
                        .clone()
                        .unwrap_or_else(|| "Unschedulable".to_string())
                })
            })
    })
}

/// Waiting reasons that mean the container cannot run (as opposed to `ContainerCreating`).
const FAILING_WAIT_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "Error",
    "CreateContainerConfigError",
    "ImagePullBackOff",
    "ErrImagePull",
];

/// Most characters of a pod's failure message kept for a condition.
pub const PROBLEM_MESSAGE_MAX: usize = 300;

/// A termination or waiting message made short and single-line for a condition. A message of
/// several lines is a log tail (terminationMessagePolicy FallbackToLogsOnError, e.g. a panic):
/// its last lines explain the exit, so the last ones fitting in [`PROBLEM_MESSAGE_MAX`] are kept.
/// A one-line message (what the rcache binaries write) keeps its start.
fn short_message(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let cut = |l: &str| -> String {
        if l.chars().count() <= PROBLEM_MESSAGE_MAX {
            l.to_string()
        } else {
            let head: String = l.chars().take(PROBLEM_MESSAGE_MAX - 3).collect();
            format!("{head}...")
        }
    };
    let Some(last) = lines.last() else {
        return String::new();
    };
    let mut kept = vec![cut(last)];
    let mut len = kept[0].chars().count();
    for l in lines.iter().rev().skip(1) {
        let n = l.chars().count() + 3;
        if len + n > PROBLEM_MESSAGE_MAX {
            break;
        }
        len += n;
        kept.insert(0, (*l).to_string());
    }
    kept.join(" | ")
}

/// Why a pod's container is failing, if it is: waiting with a failing reason, terminated
/// non-zero, or (not ready and) last terminated non-zero. The message is the termination message
/// (what the binary wrote, or the log tail) or else the waiting message, or the exit code.
pub fn pod_problem(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in statuses {
        let state = cs.state.as_ref();
        let last_term = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let term_text = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| match t
            .message
            .as_deref()
            .map(short_message)
        {
            Some(m) if !m.is_empty() => m,
            _ => format!("container {} exited with code {}", cs.name, t.exit_code),
        };
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if FAILING_WAIT_REASONS.contains(&reason) {
                let message = match last_term {
                    Some(t) if t.exit_code != 0 => term_text(t),
                    _ => w.message.as_deref().map(short_message).unwrap_or_default(),
                };
                return Some(PodProblem {
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    reason: reason.to_string(),
                    message,
                });
            }
        }
        let term = state
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
            .or(last_term.filter(|t| t.exit_code != 0 && !cs.ready));
        if let Some(t) = term {
            return Some(PodProblem {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                reason: t.reason.clone().unwrap_or_else(|| "Error".to_string()),
                message: term_text(t),
            });
        }
    }
    None
}

/// The failing pods among `pods`, sorted by name (a stable status across reconciles).
pub fn failing_pods(pods: &[Pod]) -> Vec<PodProblem> {
    let mut v: Vec<PodProblem> = pods.iter().filter_map(pod_problem).collect();
    v.sort_by(|a, b| a.pod.cmp(&b.pod));
    v
}

fn sts_rollout_pending(sts: &StatefulSet) -> bool {
    let generation = sts.metadata.generation;
    let Some(s) = &sts.status else { return true };
    s.observed_generation != generation
        || matches!((&s.current_revision, &s.update_revision), (Some(c), Some(u)) if c != u)
}

fn ds_rollout_pending(ds: &DaemonSet) -> bool {
    let Some(s) = &ds.status else { return true };
    s.observed_generation != ds.metadata.generation
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MEMLOCK: &str = "rcache.network.rdma.data.buffer.pool.max.size=8GB needs RLIMIT_MEMLOCK >= 8 GiB, have 64 KiB; set the container's memlock limit";

    fn pod(name: &str, statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": statuses},
        }))
        .expect("pod")
    }

    fn problem(pod: &str, reason: &str, message: &str) -> PodProblem {
        PodProblem {
            pod: pod.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_crash_loop_reports_the_last_termination_message() {
        let p = pod(
            "ipoib-worker-1",
            json!([{
                "name": "worker", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": format!("{MEMLOCK}\n")}},
            }]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem("ipoib-worker-1", "CrashLoopBackOff", MEMLOCK))
        );
    }

    #[test]
    fn an_image_pull_failure_reports_the_waiting_message() {
        let p = pod(
            "w-0",
            json!([{
                "name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"r/x:9\""}},
            }]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem(
                "w-0",
                "ImagePullBackOff",
                "Back-off pulling image \"r/x:9\""
            ))
        );
    }

    #[test]
    fn a_terminated_container_without_message_names_its_exit_code() {
        let p = pod(
            "w-0",
            json!([{
                "name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            }]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem(
                "w-0",
                "OOMKilled",
                "container worker exited with code 137"
            ))
        );
    }

    #[test]
    fn starting_running_and_recovered_pods_are_not_failing() {
        let creating = pod(
            "w-0",
            json!([{"name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}}]),
        );
        let recovered = pod(
            "w-1",
            json!([{"name": "worker", "ready": true, "restartCount": 1, "image": "i", "imageID": "",
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 2, "message": "old failure"}}}]),
        );
        let stopped_cleanly = pod(
            "w-2",
            json!([{"name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]),
        );
        let no_status: Pod = serde_json::from_value(json!({"metadata": {"name": "w-3"}})).unwrap();
        assert_eq!(
            failing_pods(&[creating, recovered, stopped_cleanly, no_status]),
            []
        );
    }

    #[test]
    fn a_running_but_unready_container_that_crashed_last_time_is_failing() {
        let p = pod(
            "w-0",
            json!([{"name": "worker", "ready": false, "restartCount": 4, "image": "i", "imageID": "",
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "no RDMA device on ib0"}}}]),
        );
        assert_eq!(
            pod_problem(&p),
            Some(problem("w-0", "Error", "no RDMA device on ib0"))
        );
    }

    #[test]
    fn failing_pods_are_sorted_by_name() {
        let crash = |name: &str| {
            pod(
                name,
                json!([{"name": "worker", "ready": false, "restartCount": 1, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 2, "message": "boom"}}}]),
            )
        };
        let names: Vec<String> = failing_pods(&[crash("w-2"), crash("w-0"), crash("w-1")])
            .into_iter()
            .map(|p| p.pod)
            .collect();
        assert_eq!(names, ["w-0", "w-1", "w-2"]);
    }

    #[test]
    fn long_one_line_messages_keep_their_start_and_log_tails_their_end() {
        let long = format!("{MEMLOCK} {}", "x".repeat(400));
        let short = short_message(&long);
        assert!(short.starts_with("rcache.network.rdma") && short.ends_with("..."));
        assert_eq!(short.chars().count(), PROBLEM_MESSAGE_MAX);

        let mut log = String::new();
        for i in 0..40 {
            log.push_str(&format!("2025-01-01T00:00:00Z INFO starting step {i}\n"));
        }
        log.push_str("thread 'main' panicked at src/main.rs:1:1:\nboom\n\n");
        let short = short_message(&log);
        assert!(
            short.ends_with("thread 'main' panicked at src/main.rs:1:1: | boom"),
            "{short}"
        );
        assert!(short.chars().count() <= PROBLEM_MESSAGE_MAX);
        assert_eq!(short_message(" \n "), "");
    }
}
