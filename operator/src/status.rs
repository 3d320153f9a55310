//! The status stage of the reconcile, the pure part (written by
//! [`crate::reconcile::update_status`]): from what was applied and observed ([`Observed`]) to the
//! CacheCluster status, with conditions `Ready`, `WorkersReady`, `FuseReady`, `NetworkReady`,
//! `Progressing` and `Degraded`. Transition times are carried over from the previous status when a
//! condition's status did not change, so recomputing an unchanged world yields an equal status and
//! the writer can skip the patch.
//!
//! Failing pods ([`PodProblem`], read from container states by the reconcile) turn
//! `WorkersReady`/`FuseReady` False with `WorkerPodsFailing`/`FusePodsFailing` and the
//! container's termination message, so `kubectl describe rcc` shows why a worker crash-loops.
//! Messages hold no timestamps or counters, so an unchanged crash loop keeps an equal status.
//! A worker that stops because its under-storage check failed writes
//! `under-storage <uri> (<where>): <Fault>: <fix>; the store answered: ...`; that turns
//! `UfsReady` False with the fault as the reason (`AccessDenied`, `BucketNotFound`,
//! `Unreachable`, `UfsError`).

use crate::crd::{CacheClusterStatus, ClusterCondition, FabricStatus, Member};

/// Condition types.
pub const READY: &str = "Ready";
/// All workers ready.
pub const WORKERS_READY: &str = "WorkersReady";
/// All FUSE pods ready (or FUSE disabled).
pub const FUSE_READY: &str = "FuseReady";
/// Attachments exist, resources allocatable, addresses found.
pub const NETWORK_READY: &str = "NetworkReady";
/// A rollout or scale is under way.
pub const PROGRESSING: &str = "Progressing";
/// Something needs the user's attention.
pub const DEGRADED: &str = "Degraded";
/// The workers reach the under-storage (`Unknown` until a worker is ready or fails its check).
pub const UFS_READY: &str = "UfsReady";

/// The faults a worker names in its under-storage termination message (the reasons of
/// `UfsReady False`).
pub const UFS_FAULTS: &[&str] = &["AccessDenied", "BucketNotFound", "Unreachable", "UfsError"];

/// Reasons a user can act on.
pub mod reason {
    /// A referenced NetworkAttachmentDefinition does not exist.
    pub const NAD_NOT_FOUND: &str = "NetworkAttachmentNotFound";
    /// No node advertises the device-plugin resource.
    pub const RESOURCE_NOT_ALLOCATABLE: &str = "ResourceNotAllocatable";
    /// Ready workers have no IP on the bound interface.
    pub const INTERFACE_ADDRESS_MISSING: &str = "InterfaceAddressMissing";
    /// Network is usable.
    pub const NETWORK_AVAILABLE: &str = "NetworkAvailable";
    /// `mode: rdma`, yet a worker's UCX offers no RDMA transport or an endpoint fell back to
    /// tcp: the data crosses the network over TCP.
    pub const NO_RDMA_LANE: &str = "NoRdmaLane";
    /// The spec failed validation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Applying children failed.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Worker containers crash, fail to start or cannot pull their image (message: the pod's
    /// termination message or waiting message).
    pub const WORKER_PODS_FAILING: &str = "WorkerPodsFailing";
    /// FUSE containers crash, fail to start or cannot pull their image.
    pub const FUSE_PODS_FAILING: &str = "FusePodsFailing";
    /// Progressing is False: failing pods keep the rollout from completing.
    pub const PODS_FAILING: &str = "PodsFailing";
    /// Ready is False: the cluster is being deleted and waits while pods mount its claim.
    pub const DELETION_WAITS_FOR_CLAIM: &str = "DeletionWaitsForClaim";
}

/// Failing pods named in a condition message; the rest are counted ("and N more").
pub const FAILING_PODS_SHOWN: usize = 2;

/// A pod whose container is failing: crash-looping, exited non-zero, or cannot start.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct PodProblem {
    /// Pod name.
    pub pod: String,
    /// The waiting reason (`CrashLoopBackOff`, `ImagePullBackOff`, ...) or the terminated
    /// reason (`Error`, `OOMKilled`).
    pub reason: String,
    /// Why, short: the container's termination message (what `rcache-worker` / `rcache-fuse`
    /// wrote on its fatal error, or the log tail) or the waiting message.
    pub message: String,
}

/// `pod reason: message; pod reason: message; and N more` for the first
/// [`FAILING_PODS_SHOWN`] problems.
fn describe_failing(problems: &[PodProblem]) -> String {
    let mut parts: Vec<String> = problems
        .iter()
        .take(FAILING_PODS_SHOWN)
        .map(|p| {
            if p.message.is_empty() {
                format!("{} {}", p.pod, p.reason)
            } else {
                format!("{} {}: {}", p.pod, p.reason, p.message)
            }
        })
        .collect();
    if problems.len() > FAILING_PODS_SHOWN {
        parts.push(format!("and {} more", problems.len() - FAILING_PODS_SHOWN));
    }
    parts.join("; ")
}

/// What the reconcile saw, input of [`compute`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// metadata.generation.
    pub generation: i64,
    /// A validation error (field: message); when set, nothing was applied.
    pub spec_error: Option<String>,
    /// The API server refused a child (its message); when set, applying stopped there.
    pub apply_error: Option<String>,
    /// spec.worker.replicas.
    pub workers_desired: i32,
    /// Ready worker pods.
    pub workers_ready: i32,
    /// Why workers are not scheduled, from a pending pod's PodScheduled condition.
    pub workers_unschedulable: Option<String>,
    /// Worker pods whose container is failing, sorted by pod name.
    pub workers_failing: Vec<PodProblem>,
    /// spec.fuse.enabled.
    pub fuse_enabled: bool,
    /// DaemonSet desiredNumberScheduled.
    pub fuse_desired: i32,
    /// DaemonSet numberReady.
    pub fuse_ready: i32,
    /// FUSE pods whose container is failing, sorted by pod name.
    pub fuse_failing: Vec<PodProblem>,
    /// The StatefulSet or DaemonSet has not caught up with its spec yet.
    pub rollout_pending: bool,
    /// Missing NADs, as `namespace/name`.
    pub missing_nads: Vec<String>,
    /// Device-plugin resource name and how many nodes have it allocatable (> 0).
    pub resource: Option<(String, usize)>,
    /// Ready workers without an address on the bound interface.
    pub missing_address: Vec<String>,
    /// The bound interface name (for messages).
    pub bind_device: Option<String>,
    /// ucx or tcp.
    pub transport: String,
    /// What the workers observed of their transports (`status.fabric`, from the usage poller).
    pub fabric: Option<FabricStatus>,
    /// Members as published.
    pub members: Vec<Member>,
    /// membership generation as published.
    pub membership_generation: i64,
}

fn cond(type_: &str, ok: bool, reason: &str, message: String) -> ClusterCondition {
    ClusterCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

/// The fault and the message of the first failing worker whose termination message is an
/// under-storage check failure.
fn ufs_failure(problems: &[PodProblem]) -> Option<(&'static str, String)> {
    problems.iter().find_map(|p| {
        let at = p.message.find("under-storage ")?;
        let text = &p.message[at..];
        let after = &text[text.find("): ")? + 3..];
        let fault = UFS_FAULTS
            .iter()
            .find(|f| after.starts_with(&format!("{f}:")))?;
        Some((*fault, format!("{}: {text}", p.pod)))
    })
}

fn ufs_condition(o: &Observed) -> ClusterCondition {
    if let Some((fault, msg)) = ufs_failure(&o.workers_failing) {
        return cond(UFS_READY, false, fault, msg);
    }
    if o.workers_ready > 0 {
        return cond(
            UFS_READY,
            true,
            "UfsReachable",
            "the ready workers passed their under-storage check".to_string(),
        );
    }
    ClusterCondition {
        status: "Unknown".to_string(),
        ..cond(
            UFS_READY,
            false,
            "NoWorkerReady",
            "no worker has checked the under-storage yet".to_string(),
        )
    }
}

fn network_condition(o: &Observed) -> ClusterCondition {
    if !o.missing_nads.is_empty() {
        return cond(
            NETWORK_READY,
            false,
            reason::NAD_NOT_FOUND,
            format!(
                "NetworkAttachmentDefinition {} not found; create it or fix spec.network.attachments",
                o.missing_nads.join(", ")
            ),
        );
    }
    if let Some((name, 0)) = &o.resource {
        return cond(
            NETWORK_READY,
            false,
            reason::RESOURCE_NOT_ALLOCATABLE,
            format!(
                "no node advertises allocatable {name}; install the RDMA device plugin on the fabric nodes or fix spec.network.rdma.resourceName"
            ),
        );
    }
    if !o.missing_address.is_empty() {
        return cond(
            NETWORK_READY,
            false,
            reason::INTERFACE_ADDRESS_MISSING,
            format!(
                "pods {} have no IP on interface {} in k8s.v1.cni.cncf.io/network-status; check Multus and the NetworkAttachmentDefinition's IPAM",
                o.missing_address.join(", "),
                o.bind_device.as_deref().unwrap_or("?")
            ),
        );
    }
    if let Some(msg) = no_rdma_lane(o) {
        return cond(NETWORK_READY, false, reason::NO_RDMA_LANE, msg);
    }
    let mut msg = match &o.resource {
        Some((name, n)) => format!("network attachments found; {n} node(s) advertise {name}"),
        None => "network attachments found (or none needed)".to_string(),
    };
    if let Some(f) = o.fabric.as_ref().filter(|f| !f.observed.is_empty()) {
        msg.push_str(&format!("; workers observe {}", f.observed));
    }
    cond(NETWORK_READY, true, reason::NETWORK_AVAILABLE, msg)
}

/// With `mode: rdma` (transport `ucx`), the workers that reported UCX without an RDMA lane,
/// as the `NoRdmaLane` message with the fix; `None` when every reporting worker has one (or
/// none reported yet).
fn no_rdma_lane(o: &Observed) -> Option<String> {
    if o.transport != "ucx" {
        return None;
    }
    let f = o.fabric.as_ref()?;
    let lacking: Vec<String> = f
        .workers
        .iter()
        .filter(|w| w.ucx && !w.rdma_lane)
        .map(|w| {
            let what = if w.observed.is_empty() {
                "nothing".to_string()
            } else {
                w.observed.clone()
            };
            format!("{} carries data over {what}", w.pod)
        })
        .collect();
    if lacking.is_empty() {
        return None;
    }
    Some(format!(
        "mode rdma, but no RDMA lane: {}; give the worker and client pods an RDMA device (spec.network.rdma.resourceName and a device plugin, or spec.network.rdma.device such as mlx5_0:1; for RoCE the GID index rcache.network.rdma.data.gid.index), or use mode ipoib/tcp; set rcache.network.rdma.data.strict=true to refuse to serve without RDMA",
        lacking.join("; ")
    ))
}

/// `status.transport`: what the workers observed, else the requested transport.
fn transport_shown(o: &Observed) -> String {
    match o.fabric.as_ref().filter(|f| !f.observed.is_empty()) {
        Some(f) => f.observed.clone(),
        None => o.transport.clone(),
    }
}

/// The members with what each worker observed (status only).
fn members_shown(o: &Observed) -> Vec<Member> {
    let mut members = o.members.clone();
    if let Some(f) = &o.fabric {
        for m in &mut members {
            m.observed_transport = f
                .workers
                .iter()
                .find(|w| w.pod == m.pod && !w.observed.is_empty())
                .map(|w| w.observed.clone());
        }
    }
    members
}

/// Computes the status (transition times still empty; see [`carry_transition_times`]).
pub fn compute(o: &Observed) -> CacheClusterStatus {
    let mut conditions = Vec::new();
    let blocked = match (&o.spec_error, &o.apply_error) {
        (Some(err), _) => Some((reason::INVALID_SPEC, format!("invalid spec: {err}"))),
        (None, Some(err)) => Some((
            reason::APPLY_FAILED,
            format!("{err}; change the spec so the child is valid (retried with backoff)"),
        )),
        (None, None) => None,
    };
    if let Some((why, message)) = blocked {
        conditions.push(cond(READY, false, why, message.clone()));
        conditions.push(cond(DEGRADED, true, why, message));
        return CacheClusterStatus {
            observed_generation: Some(o.generation),
            conditions,
            workers: format!("0/{}", o.workers_desired),
            fuse: "0/0".to_string(),
            desired_workers: o.workers_desired,
            transport: o.transport.clone(),
            ..CacheClusterStatus::default()
        };
    }
    let workers_ok = o.workers_ready >= o.workers_desired;
    let workers = if workers_ok {
        cond(
            WORKERS_READY,
            true,
            "AllWorkersReady",
            format!("{}/{} workers ready", o.workers_ready, o.workers_desired),
        )
    } else if !o.workers_failing.is_empty() {
        let mut msg = format!(
            "{}/{} workers ready; {}",
            o.workers_ready,
            o.workers_desired,
            describe_failing(&o.workers_failing)
        );
        if let Some(why) = &o.workers_unschedulable {
            msg.push_str(&format!("; pending worker cannot be scheduled: {why}"));
        }
        cond(WORKERS_READY, false, reason::WORKER_PODS_FAILING, msg)
    } else if let Some(why) = &o.workers_unschedulable {
        cond(
            WORKERS_READY,
            false,
            "WorkersUnschedulable",
            format!(
                "{}/{} workers ready; pending worker cannot be scheduled: {why}",
                o.workers_ready, o.workers_desired
            ),
        )
    } else {
        cond(
            WORKERS_READY,
            false,
            "WorkersNotReady",
            format!("{}/{} workers ready", o.workers_ready, o.workers_desired),
        )
    };
    let fuse_ok = !o.fuse_enabled || o.fuse_ready >= o.fuse_desired;
    let fuse = if !o.fuse_enabled {
        cond(
            FUSE_READY,
            true,
            "FuseDisabled",
            "spec.fuse.enabled is false".to_string(),
        )
    } else if fuse_ok {
        cond(
            FUSE_READY,
            true,
            "AllFusePodsReady",
            format!("{}/{} FUSE pods ready", o.fuse_ready, o.fuse_desired),
        )
    } else if !o.fuse_failing.is_empty() {
        cond(
            FUSE_READY,
            false,
            reason::FUSE_PODS_FAILING,
            format!(
                "{}/{} FUSE pods ready; {}",
                o.fuse_ready,
                o.fuse_desired,
                describe_failing(&o.fuse_failing)
            ),
        )
    } else {
        cond(
            FUSE_READY,
            false,
            "FusePodsNotReady",
            format!("{}/{} FUSE pods ready", o.fuse_ready, o.fuse_desired),
        )
    };
    let network = network_condition(o);
    let network_ok = network.status == "True";
    let ufs = ufs_condition(o);
    let ufs_failed = ufs.status == "False";
    let ready = if workers_ok && fuse_ok && network_ok {
        cond(
            READY,
            true,
            "ClusterReady",
            "workers, FUSE and network are ready".to_string(),
        )
    } else {
        // The under-storage fault first among the pod problems: it says what to fix.
        let ufs_failing = ufs_failed.then_some(&ufs);
        let failing: Vec<&ClusterCondition> =
            [Some(&network), ufs_failing, Some(&workers), Some(&fuse)]
                .into_iter()
                .flatten()
                .filter(|c| c.status == "False")
                .collect();
        let first = failing
            .first()
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        let details: Vec<String> = failing
            .iter()
            .map(|c| format!("{}: {}", c.type_, c.message))
            .collect();
        cond(
            READY,
            false,
            &first,
            format!("not ready: {}", details.join("; ")),
        )
    };
    let stalled = (!workers_ok && !o.workers_failing.is_empty())
        || (o.fuse_enabled && !fuse_ok && !o.fuse_failing.is_empty());
    let progressing = if stalled {
        // Like a Deployment past its progress deadline: waiting longer will not help, the
        // failing pods need the user (their messages are in WorkersReady / FuseReady).
        cond(
            PROGRESSING,
            false,
            reason::PODS_FAILING,
            "the rollout cannot complete: pods are failing; see WorkersReady and FuseReady"
                .to_string(),
        )
    } else if o.rollout_pending || !workers_ok || !fuse_ok {
        cond(
            PROGRESSING,
            true,
            "RollingOut",
            "workers or FUSE pods are being created or updated".to_string(),
        )
    } else {
        cond(
            PROGRESSING,
            false,
            "Stable",
            "all pods are up to date".to_string(),
        )
    };
    // Degraded names one problem: the network first (a broken fabric usually makes the pods
    // fail too), then failing worker pods, then failing FUSE pods. Pods that are merely not
    // ready yet (starting, rolling) are Progressing, not Degraded.
    let pods_failing = [&workers, &fuse]
        .into_iter()
        .find(|c| c.reason == reason::WORKER_PODS_FAILING || c.reason == reason::FUSE_PODS_FAILING);
    let degraded = if !network_ok {
        cond(DEGRADED, true, &network.reason, network.message.clone())
    } else if ufs_failed {
        cond(DEGRADED, true, &ufs.reason, ufs.message.clone())
    } else if let Some(c) = pods_failing {
        cond(DEGRADED, true, &c.reason, c.message.clone())
    } else {
        cond(
            DEGRADED,
            false,
            "AsExpected",
            "no problem detected".to_string(),
        )
    };
    conditions.extend([ready, workers, fuse, network, ufs, progressing, degraded]);
    CacheClusterStatus {
        observed_generation: Some(o.generation),
        conditions,
        workers: format!("{}/{}", o.workers_ready, o.workers_desired),
        fuse: if o.fuse_enabled {
            format!("{}/{}", o.fuse_ready, o.fuse_desired)
        } else {
            "0/0".to_string()
        },
        ready_workers: o.workers_ready,
        desired_workers: o.workers_desired,
        ready_fuse: if o.fuse_enabled { o.fuse_ready } else { 0 },
        desired_fuse: if o.fuse_enabled { o.fuse_desired } else { 0 },
        transport: transport_shown(o),
        // Written by the cache-usage poller (`load::usage`) with `cache`.
        fabric: None,
        membership_generation: o.membership_generation,
        members: members_shown(o),
        // Written by the cache-usage poller (`load::usage`), not computed here.
        cache: None,
        // Set by the reconcile from what it applied (build::volume).
        persistent_volume_claim: None,
    }
}

/// The status of a deleted cluster that waits for its claim's pods: the stored status with
/// `Ready` False, reason [`reason::DELETION_WAITS_FOR_CLAIM`] and `message`.
pub fn deletion_waits(previous: Option<&CacheClusterStatus>, message: &str) -> CacheClusterStatus {
    let mut s = previous.cloned().unwrap_or_default();
    let ready = cond(
        READY,
        false,
        reason::DELETION_WAITS_FOR_CLAIM,
        message.to_string(),
    );
    match s.conditions.iter_mut().find(|c| c.type_ == READY) {
        Some(c) => *c = ready,
        None => s.conditions.push(ready),
    }
    s
}

/// Fills in lastTransitionTime and observedGeneration: kept from `previous` when the condition's
/// status is unchanged, `now` otherwise.
pub fn carry_transition_times(
    status: &mut CacheClusterStatus,
    previous: Option<&CacheClusterStatus>,
    now: &str,
) {
    let generation = status.observed_generation;
    for c in &mut status.conditions {
        c.observed_generation = generation;
        let prev = previous.and_then(|p| p.conditions.iter().find(|pc| pc.type_ == c.type_));
        c.last_transition_time = match prev {
            Some(pc) if pc.status == c.status && !pc.last_transition_time.is_empty() => {
                pc.last_transition_time.clone()
            }
            _ => now.to_string(),
        };
    }
}

/// Condition of a type, if present.
pub fn condition<'a>(status: &'a CacheClusterStatus, type_: &str) -> Option<&'a ClusterCondition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_waiting_for_the_claim_turns_only_ready_false() {
        let prev = CacheClusterStatus {
            conditions: vec![
                cond(READY, true, "Ready", "ok".into()),
                cond(WORKERS_READY, true, "WorkersReady", "2/2".into()),
            ],
            ready_workers: 2,
            ..CacheClusterStatus::default()
        };
        let s = deletion_waits(Some(&prev), "deletion waits: pod(s) a mount ...");
        let ready = condition(&s, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::DELETION_WAITS_FOR_CLAIM)
        );
        assert_eq!(
            condition(&s, WORKERS_READY),
            condition(&prev, WORKERS_READY)
        );
        assert_eq!(s.ready_workers, 2);
        assert_eq!(
            condition(&deletion_waits(None, "m"), READY)
                .unwrap()
                .message,
            "m"
        );
    }

    fn observed(yaml: &str) -> Observed {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase", default)]
        struct O {
            workers_desired: i32,
            workers_ready: i32,
            workers_unschedulable: Option<String>,
            workers_failing: Vec<PodProblem>,
            fuse_failing: Vec<PodProblem>,
            fuse_enabled: bool,
            fuse_desired: i32,
            fuse_ready: i32,
            rollout_pending: bool,
            missing_nads: Vec<String>,
            resource: Option<(String, usize)>,
            missing_address: Vec<String>,
            spec_error: Option<String>,
            apply_error: Option<String>,
        }
        let o: O = serde_yaml::from_str(yaml).unwrap();
        Observed {
            generation: 2,
            spec_error: o.spec_error,
            apply_error: o.apply_error,
            workers_desired: o.workers_desired,
            workers_ready: o.workers_ready,
            workers_unschedulable: o.workers_unschedulable,
            workers_failing: o.workers_failing,
            fuse_failing: o.fuse_failing,
            fuse_enabled: o.fuse_enabled,
            fuse_desired: o.fuse_desired,
            fuse_ready: o.fuse_ready,
            rollout_pending: o.rollout_pending,
            missing_nads: o.missing_nads,
            resource: o.resource,
            missing_address: o.missing_address,
            bind_device: Some("ib0".into()),
            transport: "ucx".into(),
            ..Observed::default()
        }
    }

    fn get<'a>(s: &'a CacheClusterStatus, t: &str) -> (&'a str, &'a str) {
        let c = condition(s, t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn with_fabric(mut o: Observed, observed: &str, rdma_lane: bool) -> Observed {
        o.members = vec![member("w-0")];
        o.fabric = Some(FabricStatus {
            observed: observed.into(),
            rdma_lane,
            workers: vec![crate::crd::WorkerFabric {
                pod: "w-0".into(),
                observed: observed.into(),
                ucx: true,
                rdma_lane,
                offered: vec![],
            }],
        });
        o
    }

    fn member(pod: &str) -> Member {
        Member {
            id: pod.into(),
            pod: pod.into(),
            node: String::new(),
            data_address: "10.0.0.1".into(),
            ports: crate::crd::MemberPorts {
                data: 29999,
                rdma: 59999,
                web: 30000,
            },
            transport: "ucx".into(),
            observed_transport: None,
            ready: true,
        }
    }

    #[test]
    fn mode_rdma_over_ucx_tcp_is_network_not_ready_no_rdma_lane_with_the_fix() {
        let o = with_fabric(
            observed("{workersDesired: 1, workersReady: 1}"),
            "ucx/tcp",
            false,
        );
        let s = compute(&o);
        assert_eq!(get(&s, NETWORK_READY), ("False", reason::NO_RDMA_LANE));
        let msg = &condition(&s, NETWORK_READY).unwrap().message;
        assert!(msg.contains("w-0 carries data over ucx/tcp"), "{msg}");
        assert!(
            msg.contains("resourceName") && msg.contains("strict"),
            "{msg}"
        );
        assert_eq!(get(&s, READY), ("False", reason::NO_RDMA_LANE));
        assert_eq!(get(&s, DEGRADED), ("True", reason::NO_RDMA_LANE));
        assert_eq!(s.transport, "ucx/tcp", "the column shows what was observed");
        assert_eq!(s.members[0].observed_transport.as_deref(), Some("ucx/tcp"));
    }

    #[test]
    fn mode_rdma_over_an_rdma_lane_is_network_ready_and_shows_the_verbs_transport() {
        let o = with_fabric(
            observed("{workersDesired: 1, workersReady: 1}"),
            "ucx/rc_mlx5",
            true,
        );
        let s = compute(&o);
        assert_eq!(get(&s, NETWORK_READY), ("True", reason::NETWORK_AVAILABLE));
        assert_eq!(s.transport, "ucx/rc_mlx5");
        assert!(
            condition(&s, NETWORK_READY)
                .unwrap()
                .message
                .contains("ucx/rc_mlx5")
        );
    }

    #[test]
    fn mode_tcp_is_not_judged_on_rdma_and_nothing_observed_shows_the_requested_transport() {
        let mut o = with_fabric(
            observed("{workersDesired: 1, workersReady: 1}"),
            "tcp",
            false,
        );
        o.transport = "tcp".into();
        assert_eq!(get(&compute(&o), NETWORK_READY).0, "True");
        let o = observed("{workersDesired: 1, workersReady: 1}");
        let s = compute(&o);
        assert_eq!(s.transport, "ucx", "no worker reported yet");
        assert_eq!(get(&s, NETWORK_READY).0, "True");
    }

    #[test]
    fn all_ready_makes_ready_true_and_not_progressing() {
        let s = compute(&observed(
            "{workersDesired: 3, workersReady: 3, fuseEnabled: true, fuseDesired: 2, fuseReady: 2}",
        ));
        assert_eq!(get(&s, READY), ("True", "ClusterReady"));
        assert_eq!(get(&s, PROGRESSING), ("False", "Stable"));
        assert_eq!(get(&s, DEGRADED), ("False", "AsExpected"));
        assert_eq!((s.workers.as_str(), s.fuse.as_str()), ("3/3", "2/2"));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.conditions.len(), 7);
        assert_eq!(get(&s, UFS_READY), ("True", "UfsReachable"));
    }

    #[test]
    fn missing_nad_makes_network_ready_false_and_degraded() {
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, missingNads: [demo/ib-net]}",
        ));
        assert_eq!(get(&s, NETWORK_READY), ("False", reason::NAD_NOT_FOUND));
        assert!(
            condition(&s, NETWORK_READY)
                .unwrap()
                .message
                .contains("demo/ib-net")
        );
        assert_eq!(get(&s, READY), ("False", reason::NAD_NOT_FOUND));
        assert_eq!(get(&s, DEGRADED), ("True", reason::NAD_NOT_FOUND));
    }

    #[test]
    fn resource_on_no_node_is_not_allocatable() {
        let s = compute(&observed(
            "{workersDesired: 1, resource: [rdma/hca_shared_devices_a, 0]}",
        ));
        assert_eq!(
            get(&s, NETWORK_READY),
            ("False", reason::RESOURCE_NOT_ALLOCATABLE)
        );
        assert!(
            condition(&s, NETWORK_READY)
                .unwrap()
                .message
                .contains("rdma/hca_shared_devices_a")
        );
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, resource: [rdma/hca_shared_devices_a, 2]}",
        ));
        assert_eq!(get(&s, NETWORK_READY), ("True", reason::NETWORK_AVAILABLE));
    }

    #[test]
    fn workers_not_ready_is_progressing_and_names_the_count() {
        let s = compute(&observed("{workersDesired: 3, workersReady: 1}"));
        assert_eq!(get(&s, WORKERS_READY), ("False", "WorkersNotReady"));
        assert_eq!(get(&s, READY), ("False", "WorkersNotReady"));
        assert_eq!(get(&s, PROGRESSING), ("True", "RollingOut"));
        assert_eq!(s.workers, "1/3");
    }

    #[test]
    fn unschedulable_workers_say_why() {
        let s = compute(&observed(
            "{workersDesired: 2, workersReady: 1, workersUnschedulable: 'Insufficient rdma/x'}",
        ));
        assert_eq!(get(&s, WORKERS_READY), ("False", "WorkersUnschedulable"));
        assert!(
            condition(&s, WORKERS_READY)
                .unwrap()
                .message
                .contains("Insufficient rdma/x")
        );
    }

    const MEMLOCK: &str = "rcache.network.rdma.data.buffer.pool.max.size=8GB needs RLIMIT_MEMLOCK >= 8 GiB, have 64 KiB";

    fn message<'a>(s: &'a CacheClusterStatus, t: &str) -> &'a str {
        condition(s, t).unwrap().message.as_str()
    }

    #[test]
    fn a_crash_looping_worker_shows_its_termination_message_in_workers_ready_and_degraded() {
        let s = compute(&observed(&format!(
            "{{workersDesired: 2, workersReady: 1, workersFailing: [{{pod: ipoib-worker-1, reason: CrashLoopBackOff, message: '{MEMLOCK}'}}]}}"
        )));
        assert_eq!(
            get(&s, WORKERS_READY),
            ("False", reason::WORKER_PODS_FAILING)
        );
        assert_eq!(
            message(&s, WORKERS_READY),
            format!("1/2 workers ready; ipoib-worker-1 CrashLoopBackOff: {MEMLOCK}")
        );
        assert_eq!(get(&s, READY), ("False", reason::WORKER_PODS_FAILING));
        assert!(message(&s, READY).contains(MEMLOCK));
        assert_eq!(get(&s, DEGRADED), ("True", reason::WORKER_PODS_FAILING));
        assert_eq!(message(&s, DEGRADED), message(&s, WORKERS_READY));
        assert_eq!(get(&s, PROGRESSING), ("False", reason::PODS_FAILING));
    }

    #[test]
    fn a_worker_stopped_by_its_under_storage_check_turns_ufs_ready_false_with_the_fault() {
        let term = "under-storage s3://datasets/train (endpoint http://s3.local:8333): AccessDenied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in spec.ufs.credentialsSecretRef; the store answered: 403 Forbidden";
        let s = compute(&observed(&format!(
            "{{workersDesired: 2, workersFailing: [{{pod: demo-worker-0, reason: CrashLoopBackOff, message: '{term}'}}]}}"
        )));
        assert_eq!(get(&s, UFS_READY), ("False", "AccessDenied"));
        assert_eq!(message(&s, UFS_READY), format!("demo-worker-0: {term}"));
        assert!(message(&s, UFS_READY).contains("datasets"));
        assert_eq!(get(&s, READY), ("False", "AccessDenied"));
        assert_eq!(get(&s, DEGRADED), ("True", "AccessDenied"));
        assert_eq!(
            get(&s, WORKERS_READY),
            ("False", reason::WORKER_PODS_FAILING)
        );
        // A log tail (FallbackToLogsOnError) names it too.
        let s = compute(&observed(
            "{workersDesired: 1, workersFailing: [{pod: w-0, reason: Error, message: 'rcache-worker: under-storage s3://b/p (AWS): BucketNotFound: check the bucket name'}]}",
        ));
        assert_eq!(get(&s, UFS_READY), ("False", "BucketNotFound"));
        // Other crashes say nothing about the under-storage, and no worker checked it yet.
        let s = compute(&observed(&format!(
            "{{workersDesired: 1, workersFailing: [{{pod: w-0, reason: Error, message: '{MEMLOCK}'}}]}}"
        )));
        assert_eq!(get(&s, UFS_READY), ("Unknown", "NoWorkerReady"));
        assert_eq!(get(&s, READY), ("False", reason::WORKER_PODS_FAILING));
    }

    #[test]
    fn progressing_is_false_while_pods_fail_and_true_again_while_they_only_start() {
        let fuse_failing = compute(&observed(
            "{workersDesired: 1, workersReady: 1, fuseEnabled: true, fuseDesired: 2, fuseReady: 1, fuseFailing: [{pod: f-1, reason: Error, message: m}]}",
        ));
        assert_eq!(
            get(&fuse_failing, PROGRESSING),
            ("False", reason::PODS_FAILING)
        );
        let starting = compute(&observed("{workersDesired: 2, workersReady: 1}"));
        assert_eq!(get(&starting, PROGRESSING), ("True", "RollingOut"));
    }

    #[test]
    fn failing_pods_beyond_two_are_counted_not_listed() {
        let s = compute(&observed(
            "{workersDesired: 4, workersReady: 0, workersFailing: [{pod: w-0, reason: Error, message: m0}, {pod: w-1, reason: ImagePullBackOff}, {pod: w-2, reason: Error, message: m2}, {pod: w-3, reason: Error, message: m3}]}",
        ));
        assert_eq!(
            message(&s, WORKERS_READY),
            "0/4 workers ready; w-0 Error: m0; w-1 ImagePullBackOff; and 2 more"
        );
    }

    #[test]
    fn failing_workers_come_before_the_unschedulable_one_and_both_are_named() {
        let s = compute(&observed(
            "{workersDesired: 2, workersReady: 0, workersUnschedulable: 'Insufficient rdma/x', workersFailing: [{pod: w-0, reason: Error, message: boom}]}",
        ));
        assert_eq!(
            get(&s, WORKERS_READY),
            ("False", reason::WORKER_PODS_FAILING)
        );
        assert!(message(&s, WORKERS_READY).contains("w-0 Error: boom"));
        assert!(message(&s, WORKERS_READY).contains("Insufficient rdma/x"));
    }

    #[test]
    fn failing_pods_are_ignored_once_every_pod_is_ready() {
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, workersFailing: [{pod: w-0, reason: Error, message: old}], fuseEnabled: true, fuseDesired: 1, fuseReady: 1, fuseFailing: [{pod: f-0, reason: Error}]}",
        ));
        assert_eq!(get(&s, WORKERS_READY), ("True", "AllWorkersReady"));
        assert_eq!(get(&s, FUSE_READY), ("True", "AllFusePodsReady"));
        assert_eq!(get(&s, DEGRADED), ("False", "AsExpected"));
    }

    #[test]
    fn a_failing_fuse_pod_shows_its_message_in_fuse_ready_and_degraded() {
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, fuseEnabled: true, fuseDesired: 2, fuseReady: 1, fuseFailing: [{pod: demo-fuse-x2k, reason: CrashLoopBackOff, message: 'rcache.worker.page.size=1KB is invalid'}]}",
        ));
        assert_eq!(get(&s, FUSE_READY), ("False", reason::FUSE_PODS_FAILING));
        assert_eq!(
            message(&s, FUSE_READY),
            "1/2 FUSE pods ready; demo-fuse-x2k CrashLoopBackOff: rcache.worker.page.size=1KB is invalid"
        );
        assert_eq!(get(&s, READY), ("False", reason::FUSE_PODS_FAILING));
        assert_eq!(get(&s, DEGRADED), ("True", reason::FUSE_PODS_FAILING));
    }

    #[test]
    fn network_problems_keep_precedence_in_degraded_over_failing_pods() {
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 0, missingNads: [demo/ib-net], workersFailing: [{pod: w-0, reason: Error, message: no RDMA device}]}",
        ));
        assert_eq!(get(&s, DEGRADED), ("True", reason::NAD_NOT_FOUND));
        assert_eq!(
            get(&s, WORKERS_READY),
            ("False", reason::WORKER_PODS_FAILING)
        );
        assert_eq!(get(&s, READY), ("False", reason::NAD_NOT_FOUND));
    }

    #[test]
    fn an_unchanged_crash_loop_recomputes_to_an_equal_status() {
        let o = observed(
            "{workersDesired: 2, workersReady: 1, workersFailing: [{pod: w-1, reason: CrashLoopBackOff, message: boom}]}",
        );
        let mut first = compute(&o);
        carry_transition_times(&mut first, None, "t1");
        let mut again = compute(&o);
        carry_transition_times(&mut again, Some(&first), "t2");
        assert_eq!(again, first);
    }

    #[test]
    fn fuse_disabled_counts_as_ready() {
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, fuseEnabled: false, fuseDesired: 3}",
        ));
        assert_eq!(get(&s, FUSE_READY), ("True", "FuseDisabled"));
        assert_eq!(s.fuse, "0/0");
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, fuseEnabled: true, fuseDesired: 3, fuseReady: 1}",
        ));
        assert_eq!(get(&s, FUSE_READY), ("False", "FusePodsNotReady"));
    }

    #[test]
    fn ready_workers_without_interface_address_fail_network_ready() {
        let s = compute(&observed(
            "{workersDesired: 1, workersReady: 1, missingAddress: [demo-worker-0]}",
        ));
        assert_eq!(
            get(&s, NETWORK_READY),
            ("False", reason::INTERFACE_ADDRESS_MISSING)
        );
        assert!(
            condition(&s, NETWORK_READY)
                .unwrap()
                .message
                .contains("ib0")
        );
    }

    #[test]
    fn invalid_spec_reports_ready_false_and_degraded() {
        let s = compute(&observed(
            "{workersDesired: 1, specError: 'spec.ufs.uri: bad'}",
        ));
        assert_eq!(get(&s, READY), ("False", reason::INVALID_SPEC));
        assert_eq!(get(&s, DEGRADED), ("True", reason::INVALID_SPEC));
    }

    #[test]
    fn a_refused_child_reports_apply_failed_with_the_apis_message() {
        let msg = "the API server refused Service demo-ns/demo-worker: Service \"demo-worker\" is invalid: spec.ports[1]: Duplicate value";
        let s = compute(&observed(&format!(
            "{{workersDesired: 2, applyError: '{msg}'}}"
        )));
        assert_eq!(get(&s, READY), ("False", reason::APPLY_FAILED));
        assert_eq!(get(&s, DEGRADED), ("True", reason::APPLY_FAILED));
        let ready = condition(&s, READY).unwrap();
        assert!(
            ready.message.contains("spec.ports[1]: Duplicate value"),
            "{}",
            ready.message
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.workers, "0/2");
    }

    #[test]
    fn an_invalid_spec_takes_precedence_over_an_apply_error() {
        let s = compute(&observed(
            "{workersDesired: 1, specError: 'spec.ufs.uri: bad', applyError: 'refused'}",
        ));
        assert_eq!(get(&s, READY), ("False", reason::INVALID_SPEC));
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let o = observed("{workersDesired: 1, workersReady: 0}");
        let mut first = compute(&o);
        carry_transition_times(&mut first, None, "t1");
        let mut again = compute(&o);
        carry_transition_times(&mut again, Some(&first), "t2");
        assert_eq!(
            again, first,
            "recomputing an unchanged world must give an equal status"
        );
        let mut ready = compute(&observed("{workersDesired: 1, workersReady: 1}"));
        carry_transition_times(&mut ready, Some(&first), "t3");
        let c = condition(&ready, WORKERS_READY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.as_str()),
            ("True", "t3")
        );
        assert_eq!(
            condition(&ready, NETWORK_READY)
                .unwrap()
                .last_transition_time,
            "t1"
        );
    }
}
