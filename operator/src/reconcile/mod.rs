//! The reconcile of one CacheCluster, as stages that each own one file, so "where is status
//! written" or "where are orphans deleted" is answered by the file list:
//!
//! | stage | where | API server |
//! | --- | --- | --- |
//! | validate | [`crate::validate`] | none (pure) |
//! | observe the worker pods (their addresses are the membership) | [`observe`] | reads |
//! | the auth Secret (token, TLS certificates; rotation) | [`auth`] | get, apply |
//! | plan the desired children | [`plan`] (builders in [`crate::build`]) | none (pure) |
//! | apply the children | [`apply`] | server-side apply |
//! | sweep orphans | [`sweep`] | lists, deletes |
//! | observe pods, nodes, NADs, workloads | [`observe`] | reads |
//! | compute and write status, publish Events | [`crate::status`] (pure), [`update_status`] | writes status |
//! | deletion: wait for the claim's pods, then claim, volume, finalizer | [`delete`] | reads, deletes |
//!
//! This module owns the order of the stages, the shared [`Context`] and the retry policy
//! ([`error_policy`], [`backoff`]). It must not build objects or call the API server itself:
//! each call belongs to the stage that needs it.
//!
//! Apply uses server-side apply with one field manager (`rcache-operator`, forced) so
//! re-applying an unchanged spec is a no-op for the apiserver (no resourceVersion bump); children
//! the spec no longer wants are found by `app.kubernetes.io/instance` + `rcache.io/owner-uid`
//! and deleted. Status is patched only when it differs from what is stored.
//!
//! Even a no-op apply costs the apiserver a full request (decode, merge of managed fields,
//! compare): at 200 clusters they were ~60% of its requests. So a child is applied only when it
//! may differ from what this process last applied ([`decide`], per kind [`SkipRule`]), read
//! from reflector stores of the children ([`ChildStores`]) that feed the controller's triggers.

pub mod apply;
pub mod auth;
pub mod delete;
pub mod observe;
pub mod plan;
pub mod sweep;
pub mod update_status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

use crate::Error;
use crate::build;
use crate::crd::CacheCluster;
use crate::metrics::Metrics;
use crate::validate;

pub use apply::{
    Applied, AppliedChildren, ChildStores, Decision, Live, SkipRule, decide, refused_or_kube,
};
pub use observe::{PROBLEM_MESSAGE_MAX, failing_pods, nad_resource, pod_problem};
pub use sweep::Swept;

/// How often a healthy cluster is re-checked without any watch event.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Retry delay after the first failed reconcile of a cluster; it doubles with each further
/// failure in a row, up to [`MAX_BACKOFF`] (see [`backoff`]).
pub const RETRY: Duration = Duration::from_secs(5);

/// Longest delay between retries of a failing cluster.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Most CacheClusters whose sweep generation [`Context`] remembers.
pub const SWEPT_MAX: usize = 65_536;

/// Shared state of reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on CacheClusters.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Which clusters' orphaned children this process already swept, at which generation.
    pub swept: Swept,
    /// The children as the controller's watches last saw them.
    pub children: ChildStores,
    /// What this process last applied, per cluster and child.
    pub applied: AppliedChildren,
    /// Failed reconciles in a row, per cluster (the retry backoff).
    pub failures: Failures,
    /// Who the rendered NetworkPolicies let in; `None`: render none (chart value).
    pub policy_peers: Option<crate::build::network_policy::PolicyPeers>,
}

/// The delay before retrying a cluster whose last `failures` reconciles in a row failed:
/// [`RETRY`] doubled per earlier failure, at most [`MAX_BACKOFF`], so a child the API server
/// keeps refusing is not re-applied hot.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// CacheCluster uid → failed reconciles in a row (reset by a successful one). Bounded like
/// [`Swept`]; forgetting only restarts a backoff.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of cluster `uid`; returns the count in a row.
    pub fn record(&self, uid: &str) -> u32 {
        let Ok(mut m) = self.0.lock() else { return 1 };
        if m.len() >= SWEPT_MAX && !m.contains_key(uid) {
            m.clear();
        }
        let n = m.entry(uid.to_string()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Cluster `uid` reconciled: its next failure starts the backoff again.
    pub fn reset(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

/// Entry point for the controller: one reconcile, timed and counted.
pub async fn reconcile(cc: Arc<CacheCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = reconcile_cluster(&cc, &ctx).await;
    ctx.metrics
        .observe_reconcile(start.elapsed(), result.as_ref().err());
    if result.is_ok() {
        ctx.failures.reset(&cc.uid().unwrap_or_default());
    }
    result
}

/// What the controller does after a failed reconcile: an invalid spec waits for a change; a
/// refused child or a transient error is retried with [`backoff`].
pub fn error_policy(cc: Arc<CacheCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %cc.name_any(), namespace = cc.namespace().unwrap_or_default(), error = %err, "reconcile failed");
    match err {
        Error::InvalidSpec { .. } => Action::await_change(),
        _ => Action::requeue(backoff(ctx.failures.record(&cc.uid().unwrap_or_default()))),
    }
}

fn ns_api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

async fn reconcile_cluster(cc: &CacheCluster, ctx: &Context) -> Result<Action, Error> {
    if cc.metadata.deletion_timestamp.is_some() {
        // Children carry controller owner references; the garbage collector removes them once
        // the delete stage lets the cluster go (no pod mounts its claim).
        if let Some(uid) = &cc.metadata.uid {
            ctx.swept.forget(uid);
            ctx.applied.forget(uid);
        }
        return delete::finish(ctx, cc).await;
    }
    let generation = cc.metadata.generation.unwrap_or_default();
    // 0. a cluster with a claim is not deleted under the pods that mount it
    delete::ensure_finalizer(ctx, cc).await?;

    // 1. validate
    let plan = match validate::plan(cc) {
        Ok(p) => p,
        Err(err) => {
            update_status::invalid_spec(ctx, cc, generation, &err).await?;
            return Err(err);
        }
    };

    // 2. observe the worker pods (membership and readiness)
    let pods = observe::worker_pods(&ctx.client, &plan).await?;

    // 3. plan the children
    let material = auth::material(ctx, cc, &plan).await?;
    let desired = plan::desired(
        &plan,
        &pods,
        cc.status.as_ref(),
        &build::auth::fingerprint(&material),
        ctx.policy_peers.as_ref(),
    );

    // 4. apply (children unchanged since this process applied them are skipped)
    let uid = plan.uid.as_str();
    let workloads = match apply::apply_children(ctx, uid, &plan.namespace, &desired.children).await
    {
        Ok(applied) => applied,
        Err(err @ Error::ApplyRefused { .. }) => {
            update_status::apply_refused(ctx, cc, generation, &err).await?;
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    apply::forget_unwanted(ctx, uid, &desired.children);

    // 5. sweep the children the spec no longer wants
    sweep::orphans(ctx, cc, &plan, &desired.children, generation).await?;

    // 6. observe
    let mut observed =
        observe::observe(&ctx.client, &plan, generation, &pods, &desired, &workloads).await?;
    // What the workers observed on the fabric is the cache-usage poller's (`load::usage`).
    observed.fabric = cc.status.as_ref().and_then(|s| s.fabric.clone());

    // 7. status
    update_status::observed(ctx, cc, &observed, &desired.children).await?;
    sweep::released_volumes(&ctx.client).await?;
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_retry_and_is_capped() {
        assert_eq!(backoff(1), RETRY);
        assert_eq!(backoff(2), RETRY * 2);
        assert_eq!(backoff(3), RETRY * 4);
        assert_eq!(backoff(7), MAX_BACKOFF.min(RETRY * 64));
        assert_eq!(backoff(40), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_count_in_a_row_per_cluster_until_a_success() {
        let f = Failures::default();
        assert_eq!(f.record("a"), 1);
        assert_eq!(f.record("a"), 2);
        assert_eq!(f.record("b"), 1);
        f.reset("a");
        assert_eq!(f.record("a"), 1);
    }
}
