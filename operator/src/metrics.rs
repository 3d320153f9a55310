//! Prometheus metrics of the operator (served on /metrics by [`crate::web`]): reconciles by
//! result, errors by kind, reconcile duration, server-side applies of children by kind (made and
//! skipped as no-ops, see [`crate::reconcile::SkipRule`]), and whether this replica leads.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

type Labels = Vec<(String, String)>;

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Histogram,
    applies: Family<Labels, Counter>,
    applies_skipped: Family<Labels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics under the `rcache_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rcache_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let leader = Gauge::default();
        let applies = Family::<Labels, Counter>::default();
        let applies_skipped = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "CacheCluster reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            duration.clone(),
        );
        registry.register(
            "applies",
            "Server-side applies of children sent to the API server, by kind",
            applies.clone(),
        );
        registry.register(
            "applies_skipped",
            "Applies of children skipped because nothing changed since the last one, by kind",
            applies_skipped.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            applies,
            applies_skipped,
            leader,
        }
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, err: Option<&Error>) {
        self.duration.observe(took.as_secs_f64());
        let result = if err.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        if let Some(e) = err {
            self.errors
                .get_or_create(&vec![("error".to_string(), e.metric_label().to_string())])
                .inc();
        }
    }

    /// Records one child of `kind` either applied or skipped (unchanged since the last apply).
    pub fn observe_apply(&self, kind: &str, skipped: bool) {
        let family = if skipped {
            &self.applies_skipped
        } else {
            &self.applies
        };
        family
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_errors_are_exported_with_labels() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(3), None);
        let err = Error::InvalidSpec {
            field: "spec.x".into(),
            message: "bad".into(),
        };
        m.observe_reconcile(Duration::from_millis(3), Some(&err));
        m.leader.set(1);
        m.observe_apply("StatefulSet", true);
        m.observe_apply("StatefulSet", false);
        m.observe_apply("ConfigMap", false);
        let text = m.render();
        assert!(
            text.contains("rcache_operator_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rcache_operator_reconcile_errors_total{error=\"invalid_spec\"} 1"),
            "{text}"
        );
        assert!(text.contains("rcache_operator_leader 1"), "{text}");
        assert!(
            text.contains("rcache_operator_applies_skipped_total{kind=\"StatefulSet\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rcache_operator_applies_total{kind=\"ConfigMap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rcache_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
    }
}
