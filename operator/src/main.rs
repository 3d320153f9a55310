//! `rcache-operator`: parses flags, sets up JSON logs, and runs [`rcache_operator::run`].

use std::net::SocketAddr;

use clap::Parser;
use rcache_operator::run::{Options, run};

/// Kubernetes operator for rcache CacheClusters.
#[derive(Parser, Debug)]
#[command(name = "rcache-operator", version, about)]
struct Args {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader on a coordination.k8s.io Lease before reconciling.
    #[arg(long, env = "RCACHE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "rcache-system")]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "rcache-operator")]
    lease_name: String,
    /// Reconcile CacheClusters only in this namespace (default: all namespaces).
    #[arg(long)]
    watch_namespace: Option<String>,
    /// Render a NetworkPolicy per CacheCluster that admits only its own pods, its labelled
    /// clients, this operator's namespace and the monitoring namespace to the workers' ports.
    #[arg(long, env = "RCACHE_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    network_policy: bool,
    /// Namespace allowed to scrape the workers' metrics port (the NetworkPolicy's peer).
    #[arg(long, env = "RCACHE_MONITORING_NAMESPACE")]
    monitoring_namespace: Option<String>,
}

/// Lease identity: the pod name in a cluster (unique per replica); elsewhere hostname plus pid,
/// so two local processes never share an identity (and so never both believe they lead).
fn identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()) {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rcache-operator".to_string());
    format!("{host}_{}", std::process::id())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let opts = Options {
        metrics_addr: args.metrics_addr,
        leader_elect: args.leader_elect,
        lease_namespace: args.leader_election_namespace.clone(),
        lease_name: args.lease_name,
        identity: identity(),
        policy_peers: args.network_policy.then(|| {
            rcache_operator::build::network_policy::PolicyPeers {
                operator_namespace: args.leader_election_namespace.clone(),
                monitoring_namespace: args.monitoring_namespace.filter(|s| !s.is_empty()),
            }
        }),
        watch_namespace: args.watch_namespace,
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), options = ?opts, "starting rcache-operator");
    match run(opts).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rcache-operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
