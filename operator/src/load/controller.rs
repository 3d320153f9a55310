//! The CacheLoad controller: starts a run on a coordinator worker (`POST /v1/loads` on its web
//! port), polls it every [`POLL`] and writes the status (server-side apply of `status`, skipped
//! when unchanged), restarts a run whose coordinator was lost on another worker, queues the loads
//! of one cluster (one runs at a time), runs scheduled loads again, and stops the run when the
//! CacheLoad is deleted (a finalizer). The arithmetic is `progress`'s; the wire is `http`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::crd::{CacheLoad, CacheLoadStatus, phase};
use super::http;
use super::progress::{self, JobProgress, set_condition};
use super::schedule::Schedule;
use crate::crd::CacheCluster;

/// How often a running load is polled (and its status written at most).
pub const POLL: Duration = Duration::from_secs(2);
/// Coordinators lost in one run before it is failed.
pub const MAX_RESTARTS: i64 = 3;
/// The finalizer that stops a run when its CacheLoad is deleted.
pub const FINALIZER: &str = "rcache.io/cacheload";
/// Field manager of the status.
pub const MANAGER: &str = "rcache-operator-cacheload";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the CacheLoad controller.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(String),
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> LoadError {
    let action = action.into();
    move |source| LoadError::Kube { action, source }
}

/// Shared state: the API client and which load holds each cluster.
pub struct Ctx {
    pub client: Client,
    /// `namespace/cluster` → uid of the CacheLoad running on it.
    active: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> Timestamp {
    let t = Timestamp::now();
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// The cluster's cache capacity: workers times the quotas of their tiers.
pub fn capacity(cc: &CacheCluster) -> u64 {
    match crate::validate::plan(cc) {
        Ok(p) => {
            let per = p.mem_quota + p.ssd.as_ref().map_or(0, |s| s.quota);
            per.saturating_mul(u64::try_from(cc.spec.worker.replicas).unwrap_or(0))
        }
        Err(_) => 0,
    }
}

/// A ready worker's web address: its pod IP (the web port listens on every interface), else
/// its data address.
async fn web_address(client: &Client, ns: &str, m: &crate::crd::Member) -> (String, u16) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ip = match pods.get_opt(&m.pod).await {
        Ok(Some(p)) => p.status.and_then(|s| s.pod_ip),
        _ => None,
    };
    (
        ip.unwrap_or_else(|| m.data_address.clone()),
        u16::try_from(m.ports.web).unwrap_or(30000),
    )
}

fn split_addr(a: &str) -> Option<(String, u16)> {
    let (h, p) = a.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    ns: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<CacheLoad> = match &ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Without the CRD (an install from before it) the controller would error forever.
    if let Err(e) = api.list(&kube::api::ListParams::default().limit(1)).await {
        warn!(error = %e, "CacheLoads cannot be listed (CRD not installed?); warm-up is off");
        return;
    }
    let ctx = Arc::new(Ctx {
        client,
        active: Mutex::new(HashMap::new()),
    });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "cacheload controller event");
            }
        })
        .await;
}

fn error_policy(_: Arc<CacheLoad>, e: &LoadError, _: Arc<Ctx>) -> Action {
    warn!(error = %e, "cacheload reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn reconcile(cl: Arc<CacheLoad>, ctx: Arc<Ctx>) -> Result<Action, LoadError> {
    let ns = cl.namespace().unwrap_or_default();
    let api: Api<CacheLoad> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, cl, |ev| async {
        match ev {
            Finalizer::Apply(cl) => drive(&ctx, &cl).await,
            Finalizer::Cleanup(cl) => stop(&ctx, &cl).await,
        }
    })
    .await
    .map_err(|e| LoadError::Finalizer(e.to_string()))
}

fn cluster_key(cl: &CacheLoad) -> String {
    format!(
        "{}/{}",
        cl.namespace().unwrap_or_default(),
        cl.spec.cache_cluster_ref
    )
}

fn release(ctx: &Ctx, cl: &CacheLoad) {
    let uid = cl.uid().unwrap_or_default();
    let mut a = lock(&ctx.active);
    if a.get(&cluster_key(cl)) == Some(&uid) {
        a.remove(&cluster_key(cl));
    }
}

/// Deleted: stop the run on its coordinator (best effort) and free the cluster.
async fn stop(ctx: &Ctx, cl: &CacheLoad) -> Result<Action, LoadError> {
    let st = cl.status.clone().unwrap_or_default();
    if let (Some(job), Some((host, port))) = (
        st.job_id.as_deref(),
        st.coordinator_address.as_deref().and_then(split_addr),
    ) && st.phase == phase::RUNNING
    {
        match http::call(
            &host,
            port,
            "DELETE",
            &format!("/v1/loads/{job}"),
            None,
            HTTP_TIMEOUT,
        )
        .await
        {
            Ok(_) => info!(load = %cl.name_any(), job, "stopped the run of a deleted CacheLoad"),
            Err(e) => warn!(load = %cl.name_any(), error = %e, "could not stop the run"),
        }
    }
    release(ctx, cl);
    Ok(Action::await_change())
}

async fn write(ctx: &Ctx, cl: &CacheLoad, st: &CacheLoadStatus) -> Result<(), LoadError> {
    if cl.status.as_ref() == Some(st) {
        return Ok(());
    }
    let ns = cl.namespace().unwrap_or_default();
    let api: Api<CacheLoad> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": "rcache.io/v1alpha1",
        "kind": "CacheLoad",
        "status": st,
    });
    api.patch_status(
        &cl.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(kube_err(format!(
        "patch status of CacheLoad {ns}/{}",
        cl.name_any()
    )))?;
    Ok(())
}

/// Why a load may not start now.
fn invalid(cl: &CacheLoad) -> Option<String> {
    if let Some(b) = &cl.spec.bandwidth
        && let Err(e) = rcache_contract::values::parse_quantity(b)
    {
        return Some(format!("spec.bandwidth: {e}"));
    }
    if let Some(s) = &cl.spec.schedule
        && let Err(e) = Schedule::parse(s)
    {
        return Some(format!("spec.schedule: {e}"));
    }
    None
}

async fn drive(ctx: &Ctx, cl: &CacheLoad) -> Result<Action, LoadError> {
    let mut st = cl.status.clone().unwrap_or_default();
    let generation = cl.metadata.generation;
    let t = now();
    let stamp = t.to_string();
    if let Some(msg) = invalid(cl) {
        st.phase = phase::FAILED.into();
        set_condition(
            &mut st.conditions,
            "Complete",
            false,
            "InvalidSpec",
            msg,
            generation,
            &stamp,
        );
        st.observed_generation = generation;
        write(ctx, cl, &st).await?;
        return Ok(Action::await_change());
    }
    if st.phase == phase::RUNNING && st.job_id.is_some() {
        lock(&ctx.active).insert(cluster_key(cl), cl.uid().unwrap_or_default());
        return poll(ctx, cl, st, &stamp).await;
    }
    let schedule = cl
        .spec
        .schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s).ok());
    let changed = st.observed_generation != generation;
    let due = match (&schedule, st.next_schedule_time.as_deref()) {
        (Some(_), Some(next)) => next.parse::<Timestamp>().is_ok_and(|n| n <= t),
        _ => false,
    };
    if !(st.runs == 0 || changed || due) {
        // Idle until the schedule fires (or the spec changes).
        let Some(s) = &schedule else {
            return Ok(Action::await_change());
        };
        let next = match st
            .next_schedule_time
            .as_deref()
            .map(str::parse::<Timestamp>)
        {
            Some(Ok(n)) => Some(n),
            _ => s.next_after(t),
        };
        st.next_schedule_time = next.map(|n| n.to_string());
        write(ctx, cl, &st).await?;
        return Ok(match next {
            Some(n) => Action::requeue(Duration::from_secs(
                u64::try_from(n.as_second() - t.as_second())
                    .unwrap_or(0)
                    .max(1),
            )),
            None => Action::await_change(),
        });
    }
    start(ctx, cl, st, &stamp, t, schedule).await
}

/// Starts a run (or says why it waits).
async fn start(
    ctx: &Ctx,
    cl: &CacheLoad,
    mut st: CacheLoadStatus,
    stamp: &str,
    t: Timestamp,
    schedule: Option<Schedule>,
) -> Result<Action, LoadError> {
    let ns = cl.namespace().unwrap_or_default();
    let generation = cl.metadata.generation;
    let pending = |st: &mut CacheLoadStatus, reason: &str, msg: String| {
        st.phase = phase::PENDING.into();
        st.progress = String::new();
        st.eta = String::new();
        set_condition(
            &mut st.conditions,
            "Progressing",
            false,
            reason,
            msg,
            generation,
            stamp,
        );
    };
    let ccs: Api<CacheCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cc = ccs
        .get_opt(&cl.spec.cache_cluster_ref)
        .await
        .map_err(kube_err("get CacheCluster"))?;
    let Some(cc) = cc else {
        pending(
            &mut st,
            "CacheClusterNotFound",
            format!(
                "CacheCluster {ns}/{} does not exist; create it or fix spec.cacheClusterRef",
                cl.spec.cache_cluster_ref
            ),
        );
        write(ctx, cl, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(15)));
    };
    // One load per cluster at a time.
    let uid = cl.uid().unwrap_or_default();
    let queued = {
        let mut active = lock(&ctx.active);
        match active.get(&cluster_key(cl)) {
            Some(other) if *other != uid => true,
            _ => {
                active.insert(cluster_key(cl), uid.clone());
                false
            }
        }
    };
    if queued {
        pending(
            &mut st,
            "Queued",
            format!(
                "another CacheLoad is loading CacheCluster {}; this one starts when it ends",
                cl.spec.cache_cluster_ref
            ),
        );
        write(ctx, cl, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let members: Vec<_> = cc
        .status
        .as_ref()
        .map(|s| s.members.iter().filter(|m| m.ready).cloned().collect())
        .unwrap_or_default();
    if members.is_empty() {
        release(ctx, cl);
        pending(
            &mut st,
            "NoReadyWorker",
            format!(
                "CacheCluster {} has no ready worker yet",
                cl.spec.cache_cluster_ref
            ),
        );
        write(ctx, cl, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let cap = capacity(&cc);
    let run = st.runs + 1;
    match launch(ctx, cl, &ns, &members, run, 0, None).await {
        Ok((pod, addr, job)) => {
            st = CacheLoadStatus {
                observed_generation: generation,
                phase: phase::RUNNING.into(),
                progress: "0%".into(),
                files: "0/0".into(),
                capacity_bytes: Some(i64::try_from(cap).unwrap_or(i64::MAX)),
                start_time: Some(stamp.to_string()),
                runs: run,
                coordinator: Some(pod.clone()),
                coordinator_address: Some(addr),
                job_id: Some(job),
                next_schedule_time: schedule
                    .as_ref()
                    .and_then(|s| s.next_after(t))
                    .map(|n| n.to_string()),
                conditions: st.conditions,
                ..CacheLoadStatus::default()
            };
            set_condition(
                &mut st.conditions,
                "Progressing",
                true,
                "Started",
                format!("run {run} started on worker {pod}: listing the selection"),
                generation,
                stamp,
            );
            st.conditions.retain(|c| c.type_ != "Complete");
            write(ctx, cl, &st).await?;
            Ok(Action::requeue(POLL))
        }
        Err(e) => {
            release(ctx, cl);
            pending(&mut st, "NoWorkerReachable", e);
            write(ctx, cl, &st).await?;
            Ok(Action::requeue(Duration::from_secs(10)))
        }
    }
}

/// Posts the job to the first worker that takes it (starting after `avoid`); returns the
/// coordinator pod, its address and the job id.
async fn launch(
    ctx: &Ctx,
    cl: &CacheLoad,
    ns: &str,
    members: &[crate::crd::Member],
    run: i64,
    restart: i64,
    avoid: Option<&str>,
) -> Result<(String, String, String), String> {
    let job = format!("{}-{run}-{restart}", cl.uid().unwrap_or_default());
    let body = json!({
        "id": job,
        "paths": cl.spec.paths,
        "concurrency": cl.spec.concurrency.max(1),
        "bandwidthBytesPerSecond": cl.spec.bandwidth.as_deref()
            .and_then(|b| rcache_contract::values::parse_quantity(b).ok()).unwrap_or(0),
        "verify": cl.spec.verify,
    })
    .to_string();
    // Spread coordinators: start at the run's turn, skip the one just lost.
    let n = members.len();
    let first = usize::try_from(run + restart).unwrap_or(0) % n;
    let mut last = String::from("no worker tried");
    for i in 0..n {
        let m = &members[(first + i) % n];
        if n > 1 && avoid == Some(m.pod.as_str()) {
            continue;
        }
        let (host, port) = web_address(&ctx.client, ns, m).await;
        match http::call(&host, port, "POST", "/v1/loads", Some(&body), HTTP_TIMEOUT).await {
            Ok((200, _)) => {
                let addr = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                return Ok((m.pod.clone(), addr, job));
            }
            Ok((code, text)) => last = format!("worker {} answered {code}: {}", m.pod, text.trim()),
            Err(e) => last = format!("worker {}: {e}", m.pod),
        }
    }
    Err(format!("no worker accepted the load; last: {last}"))
}

/// Polls the running job and writes its numbers; restarts it when its coordinator is lost.
async fn poll(
    ctx: &Ctx,
    cl: &CacheLoad,
    mut st: CacheLoadStatus,
    stamp: &str,
) -> Result<Action, LoadError> {
    let generation = st.observed_generation;
    let cap = u64::try_from(st.capacity_bytes.unwrap_or(0)).unwrap_or(0);
    let job = st.job_id.clone().unwrap_or_default();
    let answer = match st.coordinator_address.as_deref().and_then(split_addr) {
        Some((host, port)) => {
            http::call(
                &host,
                port,
                "GET",
                &format!("/v1/loads/{job}"),
                None,
                HTTP_TIMEOUT,
            )
            .await
        }
        None => Err("no coordinator address".into()),
    };
    let lost = match answer {
        Ok((200, text)) => match serde_json::from_str::<JobProgress>(&text) {
            Ok(p) => {
                progress::apply(&mut st, &p, cap, generation, stamp);
                if p.finished() {
                    release(ctx, cl);
                }
                write(ctx, cl, &st).await?;
                return Ok(if p.finished() {
                    match st
                        .next_schedule_time
                        .as_deref()
                        .and_then(|n| n.parse::<Timestamp>().ok())
                    {
                        Some(n) => Action::requeue(Duration::from_secs(
                            u64::try_from(n.as_second() - now().as_second())
                                .unwrap_or(0)
                                .max(1),
                        )),
                        None => Action::await_change(),
                    }
                } else {
                    Action::requeue(POLL)
                });
            }
            Err(e) => format!("unreadable progress: {e}"),
        },
        Ok((code, text)) => format!("answered {code}: {}", text.trim()),
        Err(e) => e,
    };
    // The coordinator is gone (killed, restarted): run again elsewhere; pages already loaded
    // are found resident and not read again.
    let coordinator = st.coordinator.clone().unwrap_or_default();
    st.restarts += 1;
    let ns = cl.namespace().unwrap_or_default();
    if st.restarts > MAX_RESTARTS {
        release(ctx, cl);
        st.phase = phase::FAILED.into();
        st.eta.clear();
        st.completion_time = Some(stamp.to_string());
        set_condition(
            &mut st.conditions,
            "Complete",
            false,
            "CoordinatorLost",
            format!(
                "the run lost its coordinator {} times; last: {coordinator}: {lost}",
                st.restarts
            ),
            generation,
            stamp,
        );
        set_condition(
            &mut st.conditions,
            "Progressing",
            false,
            "RunEnded",
            "the run was given up".into(),
            generation,
            stamp,
        );
        write(ctx, cl, &st).await?;
        return Ok(Action::await_change());
    }
    let ccs: Api<CacheCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let members: Vec<_> = ccs
        .get_opt(&cl.spec.cache_cluster_ref)
        .await
        .map_err(kube_err("get CacheCluster"))?
        .and_then(|cc| cc.status)
        .map(|s| s.members.into_iter().filter(|m| m.ready).collect())
        .unwrap_or_default();
    let relaunch = if members.is_empty() {
        Err("no ready worker".to_string())
    } else {
        launch(
            ctx,
            cl,
            &ns,
            &members,
            st.runs,
            st.restarts,
            Some(&coordinator),
        )
        .await
    };
    let msg = match relaunch {
        Ok((pod, addr, job)) => {
            st.coordinator = Some(pod.clone());
            st.coordinator_address = Some(addr);
            st.job_id = Some(job);
            format!(
                "coordinator {coordinator} lost ({lost}); the run goes on from worker {pod}, skipping what is cached"
            )
        }
        Err(e) => format!("coordinator {coordinator} lost ({lost}); restarting failed: {e}"),
    };
    warn!(load = %cl.name_any(), "{msg}");
    set_condition(
        &mut st.conditions,
        "Progressing",
        true,
        "CoordinatorRestarted",
        msg,
        generation,
        stamp,
    );
    write(ctx, cl, &st).await?;
    Ok(Action::requeue(POLL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_workers_times_tier_quotas() {
        let cc = crate::testutil::cluster(
            r#"
ufs: {uri: "file:///data"}
worker:
  replicas: 3
  tiers:
  - {medium: MEM, quota: 1Gi}
  - {medium: SSD, path: /cache, hostPath: /mnt/cache, quota: 3Gi}
"#,
        );
        assert_eq!(capacity(&cc), 3 * (4 << 30));
    }

    #[test]
    fn coordinator_addresses_split_back_into_host_and_port() {
        assert_eq!(
            split_addr("10.0.0.5:30000"),
            Some(("10.0.0.5".into(), 30000))
        );
        assert_eq!(
            split_addr("[fd00::1]:30000"),
            Some(("fd00::1".into(), 30000))
        );
        assert_eq!(split_addr("nope"), None);
    }

    #[test]
    fn bad_bandwidth_or_schedule_is_named_with_its_field() {
        let mut cl = CacheLoad::new(
            "l",
            serde_yaml::from_str("{cacheClusterRef: demo, paths: [a]}").unwrap(),
        );
        assert_eq!(invalid(&cl), None);
        cl.spec.bandwidth = Some("1.5Gi".into());
        assert!(invalid(&cl).unwrap().starts_with("spec.bandwidth: "));
        cl.spec.bandwidth = None;
        cl.spec.schedule = Some("0 25 * * *".into());
        assert!(invalid(&cl).unwrap().contains("spec.schedule: hour: 25"));
    }
}
