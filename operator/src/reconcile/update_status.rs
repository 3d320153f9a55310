//! Stage "status": writes the status [`crate::status::compute`] made of what was observed (only
//! when it differs from the stored one, transition times carried over) and publishes Events:
//! when `Ready` or `NetworkReady` change, and once when a spec turns invalid. It must not compute
//! conditions itself (that is the pure [`crate::status`]) nor touch any child.
//!
//! `status.cache` belongs to the cache-usage poller (`load::usage`) and is kept as stored.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::{Context, ns_api};
use crate::Error;
use crate::build;
use crate::crd::{CacheCluster, CacheClusterStatus, NetworkMode};
use crate::status::{self, Observed};

/// The transport the spec asks for, for a status written before the spec was validated.
fn spec_transport(cc: &CacheCluster) -> &'static str {
    if cc.spec.network.mode == NetworkMode::Rdma {
        "ucx"
    } else {
        "tcp"
    }
}

/// What is known of a cluster whose reconcile stopped before observing anything: its spec.
fn not_reconciled(cc: &CacheCluster, generation: i64) -> Observed {
    Observed {
        generation,
        workers_desired: cc.spec.worker.replicas,
        transport: spec_transport(cc).to_string(),
        ..Observed::default()
    }
}

/// The spec is invalid (`err`): the status says why, and an `InvalidSpec` Event is published
/// when the cluster was not already invalid.
pub(super) async fn invalid_spec(
    ctx: &Context,
    cc: &CacheCluster,
    generation: i64,
    err: &Error,
) -> Result<(), Error> {
    let observed = Observed {
        spec_error: Some(err.to_string()),
        ..not_reconciled(cc, generation)
    };
    let prev = write_status(&ctx.client, cc, status::compute(&observed)).await?;
    let was_invalid = prev
        .as_ref()
        .and_then(|p| status::condition(p, status::READY))
        .is_some_and(|c| c.reason == status::reason::INVALID_SPEC);
    if !was_invalid {
        publish(
            ctx,
            cc,
            EventType::Warning,
            status::reason::INVALID_SPEC,
            err.to_string(),
        )
        .await;
    }
    Ok(())
}

/// The API server refused a child (`err`): the status says which and why; Events on transitions.
pub(super) async fn apply_refused(
    ctx: &Context,
    cc: &CacheCluster,
    generation: i64,
    err: &Error,
) -> Result<(), Error> {
    let observed = Observed {
        apply_error: Some(err.to_string()),
        ..not_reconciled(cc, generation)
    };
    let new_status = status::compute(&observed);
    let prev = write_status(&ctx.client, cc, new_status.clone()).await?;
    announce_transitions(ctx, cc, prev.as_ref(), &new_status).await;
    Ok(())
}

/// The status of what was `observed`, naming the claim application pods mount; Events on
/// transitions.
pub(super) async fn observed(
    ctx: &Context,
    cc: &CacheCluster,
    observed: &Observed,
    children: &build::Children,
) -> Result<(), Error> {
    let mut new_status = status::compute(observed);
    new_status.persistent_volume_claim = children
        .claims
        .first()
        .and_then(|c| c.metadata.name.clone());
    let prev = write_status(&ctx.client, cc, new_status.clone()).await?;
    announce_transitions(ctx, cc, prev.as_ref(), &new_status).await;
    Ok(())
}

/// The deleted cluster waits for its claim's pods (`message` names them); true when this is
/// news (Ready was not already waiting with this message), for the caller's Event.
pub(super) async fn deletion_waits(
    ctx: &Context,
    cc: &CacheCluster,
    message: &str,
) -> Result<bool, Error> {
    let new_status = status::deletion_waits(cc.status.as_ref(), message);
    let prev = write_status(&ctx.client, cc, new_status).await?;
    Ok(!prev
        .as_ref()
        .and_then(|p| status::condition(p, status::READY))
        .is_some_and(|c| {
            c.reason == status::reason::DELETION_WAITS_FOR_CLAIM && c.message == message
        }))
}

pub(super) async fn publish(
    ctx: &Context,
    cc: &CacheCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cc.object_ref(&())).await {
        warn!(cluster = %cc.name_any(), error = %e, "publishing event failed");
    }
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// Writes status if it changed; returns the previous status for event decisions.
async fn write_status(
    client: &Client,
    cc: &CacheCluster,
    mut new: CacheClusterStatus,
) -> Result<Option<CacheClusterStatus>, Error> {
    let prev = cc.status.clone();
    status::carry_transition_times(&mut new, prev.as_ref(), &now());
    // `status.cache` and `status.fabric` are the cache-usage poller's (`load::usage`); kept.
    new.cache = prev.as_ref().and_then(|p| p.cache.clone());
    new.fabric = prev.as_ref().and_then(|p| p.fabric.clone());
    if prev.as_ref() == Some(&new) {
        return Ok(prev);
    }
    let ns = cc.namespace().unwrap_or_default();
    let name = cc.name_any();
    ns_api::<CacheCluster>(client, &ns)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": new })),
        )
        .await
        .map_err(Error::kube(format!(
            "patch status of CacheCluster {ns}/{name}"
        )))?;
    Ok(prev)
}

/// Events when Ready or NetworkReady change status or reason.
async fn announce_transitions(
    ctx: &Context,
    cc: &CacheCluster,
    prev: Option<&CacheClusterStatus>,
    new: &CacheClusterStatus,
) {
    for type_ in [status::NETWORK_READY, status::READY] {
        let Some(c) = status::condition(new, type_) else {
            continue;
        };
        let before = prev.and_then(|p| status::condition(p, type_));
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let (kind, reason) = if c.status == "True" {
            (EventType::Normal, c.reason.clone())
        } else {
            (EventType::Warning, c.reason.clone())
        };
        info!(cluster = %cc.name_any(), condition = type_, status = %c.status, reason = %c.reason, message = %c.message, "condition changed");
        publish(
            ctx,
            cc,
            kind,
            &reason,
            format!("{type_}={}: {}", c.status, c.message),
        )
        .await;
    }
}
