//! Stage "plan": the children a cluster wants, from its validated [`ClusterPlan`] and the
//! worker pods observed (whose secondary-network addresses are the membership the children
//! publish). Pure: no API calls and no clock, so the same plan and pods give the same objects.
//! The builders of each child live in [`crate::build`]; this stage only decides the membership
//! generation and calls them.

use k8s_openapi::api::core::v1::Pod;

use crate::build::{self, membership::Membership};
use crate::crd::CacheClusterStatus;
use crate::validate::ClusterPlan;

/// What the spec and the observed worker pods ask for.
pub struct Desired {
    /// The workers' data addresses, and the pods that have none yet.
    pub membership: Membership,
    /// Bumped when the members differ from those in the stored status (starts at 1).
    pub membership_generation: i64,
    /// Every child object to apply.
    pub children: build::Children,
}

/// The desired children of `plan`, given its worker `pods` and the status stored before.
pub fn desired(plan: &ClusterPlan, pods: &[Pod], prev: Option<&CacheClusterStatus>) -> Desired {
    let membership = build::membership::members(plan, pods);
    let (prev_generation, prev_members) = prev.map_or((0, &[][..]), |s| {
        (s.membership_generation, s.members.as_slice())
    });
    let mut membership_generation = prev_generation;
    if membership_generation == 0 || membership.members != prev_members {
        membership_generation += 1;
    }
    let members_json = build::membership::render(plan, membership_generation, &membership.members);
    let children = build::children(plan, &members_json);
    Desired {
        membership,
        membership_generation,
        children,
    }
}
