//! Stage "auth": the cluster's `<name>-auth` Secret (its data-path token and TLS certificates,
//! made by [`crate::build::auth`]). Kept while it was made for the rotation value the
//! CacheCluster asks for; made anew (and applied) when missing or when a rotation is asked for,
//! with an `AuthSecretChanged` Event. Its fingerprint goes into the pods' config hash, so they
//! roll onto new material. It must not build or apply any other child.

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;
use tracing::info;

use super::{Context, apply, ns_api, update_status};
use crate::Error;
use crate::build;
use crate::crd::CacheCluster;
use crate::validate::ClusterPlan;

/// The cluster's authentication token and TLS certificates: those in `<name>-auth` while they
/// were made for the rotation value the CacheCluster asks for (`build::auth`), else new ones
/// written to the Secret (and an Event says so).
pub(super) async fn material(
    ctx: &Context,
    cc: &CacheCluster,
    plan: &ClusterPlan,
) -> Result<build::auth::AuthMaterial, Error> {
    let api = ns_api::<Secret>(&ctx.client, &plan.namespace);
    let name = build::names::auth(&plan.name);
    let rotation = build::auth::wanted_rotation(cc.metadata.annotations.as_ref());
    let existing = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("get Secret {}/{name}", plan.namespace)))?;
    if let Some(m) = existing
        .as_ref()
        .and_then(|s| build::auth::current_material(s, &rotation))
    {
        return Ok(m);
    }
    let m = build::auth::new_material(plan).map_err(Error::Auth)?;
    apply::apply(
        &ctx.client,
        &plan.namespace,
        &build::auth::secret(plan, &m, &rotation),
    )
    .await?;
    let what = if existing.is_some() {
        "rotated"
    } else {
        "created"
    };
    info!(cluster = %plan.name, namespace = %plan.namespace, secret = %name, "authentication secret {what}");
    update_status::publish(
        ctx,
        cc,
        EventType::Normal,
        "AuthSecretChanged",
        format!("authentication secret {name} {what}; worker and FUSE pods roll onto it"),
    )
    .await;
    Ok(m)
}
