//! The operator process: web endpoints, leader election, and the controller with its watches
//! (CacheClusters; owned ConfigMaps, Services, StatefulSets, DaemonSets, PDBs; worker pods;
//! NetworkAttachmentDefinitions; Nodes). Shuts down gracefully on SIGTERM/SIGINT: in-flight
//! reconciles finish, the Lease is released, the web server stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::build::{
    COMPONENT_FUSE, COMPONENT_WORKER, FIELD_MANAGER, LABEL_COMPONENT, LABEL_INSTANCE,
    LABEL_MANAGED_BY,
};
use crate::crd::CacheCluster;
use crate::leader::{LeaderElector, RENEW_DEADLINE, RETRY_PERIOD};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, nad_resource};
use crate::web::{self, WebState};

/// Runtime options (flags/env of the binary).
#[derive(Clone, Debug)]
pub struct Options {
    /// Address of /metrics, /healthz, /readyz.
    pub metrics_addr: SocketAddr,
    /// Run leader election.
    pub leader_elect: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Lease name.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Only this namespace (None: all namespaces).
    pub watch_namespace: Option<String>,
    /// Who each CacheCluster's NetworkPolicy lets in; `None`: render no NetworkPolicy.
    pub policy_peers: Option<crate::build::network_policy::PolicyPeers>,
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Runs until SIGTERM/SIGINT (Ok) or until leadership is lost (Err, so the pod restarts as a
/// fresh candidate).
pub async fn run(opts: Options) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = Client::try_default().await.map_err(|e| {
        format!("cannot build a Kubernetes client (KUBECONFIG or in-cluster service account): {e}")
    })?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(WebState {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutdown signal received");
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let web_task = tokio::spawn(web::serve(
        opts.metrics_addr,
        state.clone(),
        stopped(stop_rx.clone()),
    ));
    info!(addr = %opts.metrics_addr, "serving /metrics /healthz /readyz");

    client
        .apiserver_version()
        .await
        .map_err(|e| format!("API server not reachable: {e}"))?;
    state.ready.store(true, Ordering::Relaxed);

    let elector = opts.leader_elect.then(|| {
        LeaderElector::new(
            client.clone(),
            &opts.lease_namespace,
            &opts.lease_name,
            &opts.identity,
        )
    });
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut renewer = None;
    if let Some(elector) = &elector {
        info!(lease = %format!("{}/{}", opts.lease_namespace, opts.lease_name), identity = %opts.identity, "waiting for leadership");
        loop {
            if *stop_rx.borrow() {
                let _ = web_task.await;
                return Ok(());
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election round failed"),
            }
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PERIOD) => {},
                _ = rx.changed() => {},
            }
        }
        metrics.leader.set(1);
        info!("became leader");
        // Renew in the background; stop the controller when renewal fails past the deadline.
        let elector2 = LeaderElector::new(
            client.clone(),
            &opts.lease_namespace,
            &opts.lease_name,
            &opts.identity,
        );
        let stop_tx = stop_tx.clone();
        let lost = lost.clone();
        let metrics = metrics.clone();
        let mut rx = stop_rx.clone();
        renewer = Some(tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PERIOD) => {},
                    _ = rx.changed() => return,
                }
                match elector2.try_acquire_or_renew().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        error!("leader Lease taken by another replica; stopping");
                        break;
                    }
                    Err(e) => warn!(error = %e, "renewing leader Lease failed"),
                }
                if last_ok.elapsed() > RENEW_DEADLINE {
                    error!("could not renew leader Lease within the deadline; stopping");
                    break;
                }
            }
            metrics.leader.set(0);
            lost.store(true, Ordering::Relaxed);
            let _ = stop_tx.send(true);
        }));
    }

    // CacheLoads and the caches' usage run beside the CacheCluster controller, while leading.
    tokio::join!(
        run_controller(
            client.clone(),
            &opts,
            metrics.clone(),
            stopped(stop_rx.clone()),
        ),
        crate::load::run(
            client.clone(),
            opts.watch_namespace.clone(),
            stop_rx.clone()
        )
    );
    info!("controller stopped");
    // The renewal task must be done before the release: a renewal in flight would bump the
    // Lease's resourceVersion under the release (a conflict, and the Lease kept until expiry).
    let _ = stop_tx.send(true);
    if let Some(r) = renewer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), r).await;
    }
    if let Some(elector) = &elector
        && !lost.load(Ordering::Relaxed)
    {
        if let Err(e) = elector.release().await {
            warn!(error = %e, "releasing leader Lease failed");
        }
        metrics.leader.set(0);
    }
    let _ = stop_tx.send(true);
    let _ = web_task.await;
    if lost.load(Ordering::Relaxed) {
        return Err("lost leadership".into());
    }
    Ok(())
}

/// Fingerprint of the allocatable resources of a node (what the resource check reads).
fn allocatable_fingerprint(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|a| a.iter().map(|(k, v)| format!("{k}={};", v.0)).collect())
        .unwrap_or_default()
}

/// Drops `metadata.managedFields` (what the stores of children need not keep).
fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
}

async fn run_controller(
    client: Client,
    opts: &Options,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = &opts.watch_namespace;
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
    // Worker pods (membership, readiness) and FUSE pods (their failures: a crash loop changes
    // no DaemonSet status field, so without this watch FuseReady would wait for the resync).
    let worker_pods = watcher::Config::default().labels(&format!(
        "{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_COMPONENT} in ({COMPONENT_WORKER},{COMPONENT_FUSE})"
    ));
    let controller = Controller::new(api::<CacheCluster>(&client, ns), watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(std::time::Duration::from_millis(500)));
    let store = controller.store();
    // Owned children: one watch per kind, as `owns` would make, but of whole objects reflected
    // into stores the reconcile reads to skip no-op applies. The store is updated before the
    // event triggers the owner's reconcile (`owns_stream` needs kube-runtime's
    // `unstable-runtime-stream-control`; a second, separate watch could lag the trigger).
    // managedFields (and ConfigMap data) are dropped before the store: nothing reads them, and
    // they are most of an object's size.
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (sts_store, sts_writer) = reflector::store::<StatefulSet>();
    let (ds_store, ds_writer) = reflector::store::<DaemonSet>();
    let (pdb_store, pdb_writer) = reflector::store::<PodDisruptionBudget>();
    let (np_store, np_writer) = reflector::store::<NetworkPolicy>();
    let children = reconcile::ChildStores {
        config_maps: cm_store,
        services: svc_store,
        stateful_sets: sts_store,
        daemon_sets: ds_store,
        pdbs: pdb_store,
        network_policies: np_store,
    };
    let mut controller = controller
        .owns_stream(
            watcher(api::<ConfigMap>(&client, ns), owned.clone())
                .modify(|cm: &mut ConfigMap| {
                    // The skip rule of ConfigMaps reads only metadata.
                    cm.managed_fields_mut().clear();
                    cm.data = None;
                    cm.binary_data = None;
                })
                .reflect(cm_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(api::<Service>(&client, ns), owned.clone())
                .modify(strip_managed_fields)
                .reflect(svc_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(api::<StatefulSet>(&client, ns), owned.clone())
                .modify(strip_managed_fields)
                .reflect(sts_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(api::<DaemonSet>(&client, ns), owned.clone())
                .modify(strip_managed_fields)
                .reflect(ds_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(api::<PodDisruptionBudget>(&client, ns), owned.clone())
                .modify(strip_managed_fields)
                .reflect(pdb_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(api::<NetworkPolicy>(&client, ns), owned.clone())
                .modify(strip_managed_fields)
                .reflect(np_writer)
                .touched_objects(),
        )
        .watches(api::<Pod>(&client, ns), worker_pods, |pod: Pod| {
            let ns = pod.namespace();
            pod.labels().get(LABEL_INSTANCE).map(|name| {
                ObjectRef::<CacheCluster>::new(name).within(ns.as_deref().unwrap_or_default())
            })
        });

    // NADs: only watched when the Multus CRD exists (otherwise the watch would error forever;
    // the reconcile still reports the attachment as missing).
    let ar = nad_resource();
    let nad_api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    match nad_api.list(&ListParams::default().limit(1)).await {
        Ok(_) => {
            let store = store.clone();
            controller = controller.watches_with(
                nad_api,
                ar,
                watcher::Config::default(),
                move |nad: DynamicObject| {
                    let nad_ns = nad.namespace().unwrap_or_default();
                    let nad_name = nad.name_any();
                    store
                        .state()
                        .into_iter()
                        .filter(|cc| {
                            let cc_ns = cc.namespace().unwrap_or_default();
                            cc.spec.network.attachments.iter().any(|a| {
                                a.name == nad_name
                                    && a.namespace.as_deref().unwrap_or(&cc_ns) == nad_ns
                            })
                        })
                        .map(|cc| ObjectRef::from_obj(&*cc))
                        .collect::<Vec<_>>()
                },
            );
        }
        Err(e) => {
            warn!(error = %e, "NetworkAttachmentDefinitions cannot be listed (Multus CRD missing?); not watching them")
        }
    }

    // Nodes: only allocatable changes matter (heartbeats would otherwise re-trigger constantly).
    let seen: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let node_store = store.clone();
    controller = controller.watches(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        move |node: Node| {
            let fp = allocatable_fingerprint(&node);
            let changed = match seen.lock() {
                Ok(mut m) => m.insert(node.name_any(), fp.clone()).as_ref() != Some(&fp),
                Err(_) => true,
            };
            if !changed {
                return Vec::new();
            }
            node_store
                .state()
                .into_iter()
                .filter(|cc| cc.spec.network.rdma.resource_name.is_some())
                .map(|cc| ObjectRef::from_obj(&*cc))
                .collect::<Vec<_>>()
        },
    );

    let reporter = Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: Some(opts.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        swept: reconcile::Swept::default(),
        children,
        applied: reconcile::AppliedChildren::default(),
        failures: reconcile::Failures::default(),
        policy_peers: opts.policy_peers.clone(),
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => {
                    tracing::debug!(cluster = %obj.name, namespace = ?obj.namespace, "reconciled")
                }
                Err(e) => warn!(error = %e, "controller event"),
            }
        })
        .await;
}
