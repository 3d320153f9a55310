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
pub fn desired(
    plan: &ClusterPlan,
    pods: &[Pod],
    prev: Option<&CacheClusterStatus>,
    auth_fingerprint: &str,
    policy_peers: Option<&build::network_policy::PolicyPeers>,
) -> Desired {
    let membership = build::membership::members(plan, pods);
    let (prev_generation, prev_members) = prev.map_or((0, &[][..]), |s| {
        (s.membership_generation, s.members.as_slice())
    });
    // Status members also carry what each worker observed; the membership file does not.
    let published: Vec<_> = prev_members
        .iter()
        .cloned()
        .map(|mut m| {
            m.observed_transport = None;
            m
        })
        .collect();
    let mut membership_generation = prev_generation;
    if membership_generation == 0 || membership.members != published {
        membership_generation += 1;
    }
    let members_json = build::membership::render(plan, membership_generation, &membership.members);
    let children = build::children(plan, &members_json, auth_fingerprint, policy_peers);
    Desired {
        membership,
        membership_generation,
        children,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Member, MemberPorts};
    use crate::testutil::plan_of;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            pod: id.into(),
            node: "node-0".into(),
            data_address: "10.0.0.1".into(),
            ports: MemberPorts {
                data: 29999,
                rdma: 59999,
                web: 30000,
            },
            transport: "tcp".into(),
            observed_transport: None,
            ready: true,
        }
    }

    #[test]
    fn the_membership_generation_starts_at_one_and_moves_only_when_the_members_change() {
        let plan = plan_of("ufs: {uri: 'file:///data'}\nworker: {replicas: 1}\n");
        let first = desired(&plan, &[], None, "fp", None);
        assert_eq!(first.membership_generation, 1, "a new cluster starts at 1");
        assert!(!first.children.stateful_sets.is_empty());

        let stored = CacheClusterStatus {
            membership_generation: 1,
            members: Vec::new(),
            ..CacheClusterStatus::default()
        };
        assert_eq!(
            desired(&plan, &[], Some(&stored), "fp", None).membership_generation,
            1,
            "same members: same generation"
        );

        let changed = CacheClusterStatus {
            membership_generation: 4,
            members: vec![member("demo-worker-0")],
            ..CacheClusterStatus::default()
        };
        assert_eq!(
            desired(&plan, &[], Some(&changed), "fp", None).membership_generation,
            5,
            "the members differ from the stored ones: bumped"
        );
    }
}
