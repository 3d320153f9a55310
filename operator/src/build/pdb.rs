//! The worker PodDisruptionBudget: voluntary disruptions (drains) take at most one worker at a
//! time, so the consistent hash only ever loses one owner at once.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{COMPONENT_WORKER, child_meta, names, selector_labels};
use crate::validate::ClusterPlan;

/// The worker PDB.
pub fn pod_disruption_budget(plan: &ClusterPlan) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(plan, names::worker(&plan.name), COMPONENT_WORKER),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(plan, COMPONENT_WORKER)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    #[test]
    fn pdb_allows_one_worker_down_and_selects_workers() {
        let pdb = pod_disruption_budget(&plan_of(
            "ufs: {uri: 'file:///data'}\nworker: {replicas: 3}",
        ));
        assert_eq!(pdb.metadata.name.as_deref(), Some("demo-worker"));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let sel = spec.selector.unwrap().match_labels.unwrap();
        assert_eq!(sel["app.kubernetes.io/component"], "worker");
        assert_eq!(sel["app.kubernetes.io/instance"], "demo");
    }
}
