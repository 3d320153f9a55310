//! The `<name>-properties` ConfigMap: `rcache.properties` with the keys of the contract crate
//! (`rcache_contract::keys`, docs/contracts.md), rendered from the plan in a fixed order so
//! identical specs give byte-identical files. Sizes are rendered with the contract's
//! `format_size`, which the worker's `parse_size` reads back exactly.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{FUSE_MOUNT_POINT, MEMBERSHIP_PATH, child_meta, names};
use crate::validate::{ClusterPlan, Transport};
use rcache_contract::keys as k;
use rcache_contract::values::format_size as contract_size;

/// Key of the properties file in the ConfigMap.
pub const PROPERTIES_KEY: &str = "rcache.properties";

/// Renders the properties file.
pub fn render(plan: &ClusterPlan) -> String {
    let s = &plan.spec;
    let mut kv: Vec<(&str, String)> = vec![
        (k::CLUSTER_NAME, plan.name.clone()),
        (k::MEMBERSHIP_FILE, MEMBERSHIP_PATH.to_string()),
        (k::UFS_URI, s.ufs.uri.clone()),
        (
            k::METADATA_SYNC_INTERVAL,
            s.ufs.metadata_sync_interval.clone(),
        ),
        (k::WORKER_DATA_PORT, s.worker.ports.data.to_string()),
        (k::WORKER_WEB_PORT, s.worker.ports.web.to_string()),
        // Always: the operator keeps the Secret and mounts it (build::auth).
        (k::AUTH_SECRET_FILE, super::auth::TOKEN_PATH.to_string()),
    ];
    if s.network.tls {
        let file = |key: &str| format!("{}/{key}", super::auth::AUTH_DIR);
        kv.push((k::TLS_ENABLED, "true".to_string()));
        kv.push((k::TLS_CERT_FILE, file(super::auth::CERT_KEY)));
        kv.push((k::TLS_KEY_FILE, file(super::auth::KEY_KEY)));
        kv.push((k::TLS_CA_FILE, file(super::auth::CA_KEY)));
        kv.push((k::TLS_SERVER_NAME, super::auth::SERVER_NAME.to_string()));
    }
    if let Some(s3) = &s.ufs.s3 {
        // Where the store is; the credentials come from the Secret's environment, never here.
        if let Some(ep) = &s3.endpoint {
            kv.push((k::S3_ENDPOINT, ep.clone()));
        }
        if let Some(region) = &s3.region {
            kv.push((k::S3_REGION, region.clone()));
        }
        kv.push((k::S3_PATH_STYLE, s3.path_style.to_string()));
    }
    if let Some(dev) = &plan.bind_device {
        kv.push((k::WORKER_BIND_DEVICE, dev.clone()));
        kv.push((k::USER_BIND_DEVICE, dev.clone()));
    }
    kv.push((k::PAGE_SIZE, contract_size(plan.page_size)));
    kv.push((k::MEM_QUOTA, contract_size(plan.mem_quota)));
    if let Some(ssd) = &plan.ssd {
        kv.push((k::SSD_DIR, ssd.path.clone()));
        kv.push((k::SSD_QUOTA, contract_size(ssd.quota)));
    }
    let rdma = &s.network.rdma;
    kv.push((
        k::RDMA_ENABLED,
        (plan.transport == Transport::Ucx).to_string(),
    ));
    if let Some(dev) = &rdma.device {
        kv.push((k::RDMA_BIND_DEVICE, dev.clone()));
    }
    kv.push((k::RDMA_PORT, s.worker.ports.rdma.to_string()));
    kv.push((k::POOL_INITIAL, contract_size(plan.pool_initial)));
    kv.push((k::POOL_PREWARM, contract_size(plan.pool_prewarm)));
    kv.push((k::POOL_MAX, contract_size(plan.pool_max)));
    kv.push((k::OP_TIMEOUT, rdma.operation_timeout.clone()));
    kv.push((k::RDMA_STRICT, rdma.strict.to_string()));
    if let Some(gid) = rdma.gid_index {
        kv.push((k::RDMA_GID_INDEX, gid.to_string()));
    }
    if let Some(port) = rdma.ib_port {
        kv.push((k::RDMA_IB_PORT, port.to_string()));
    }
    kv.push((
        k::FALLBACK,
        match s.network.fallback {
            crate::crd::Fallback::None => "none",
            crate::crd::Fallback::Tcp => "tcp",
        }
        .to_string(),
    ));
    kv.push((k::PREFETCH_PARTS, s.fuse.prefetch_parts.to_string()));
    kv.push((
        k::PREFETCH_THRESHOLD,
        contract_size(plan.small_file_threshold),
    ));
    kv.push((
        k::FUSE_STATUS_CACHE,
        s.fuse.open_status_cache.enabled.to_string(),
    ));
    kv.push((
        k::FUSE_STATUS_CACHE_SIZE,
        s.fuse.open_status_cache.max_size.to_string(),
    ));
    kv.push((k::FUSE_MOUNT_POINT, FUSE_MOUNT_POINT.to_string()));
    kv.push((k::FUSE_WEB_PORT, super::fuse::WEB_PORT.to_string()));

    let mut out = format!(
        "# Rendered by rcache-operator for CacheCluster {}/{}; edit the CacheCluster, not this file.\n",
        plan.namespace, plan.name
    );
    for (k, v) in kv {
        out.push_str(k);
        out.push('=');
        out.push_str(&v);
        out.push('\n');
    }
    out
}

/// The properties ConfigMap.
pub fn config_map(plan: &ClusterPlan, rendered: String) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(plan, names::properties(&plan.name), "properties"),
        data: Some(BTreeMap::from([(PROPERTIES_KEY.to_string(), rendered)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    fn props(spec: &str) -> BTreeMap<String, String> {
        render(&plan_of(spec))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn network_tls_renders_the_tls_keys_pointing_at_the_mounted_secret_and_the_worker_accepts_them()
    {
        let spec = "ufs: {uri: 'file:///data'}\nnetwork: {tls: true}";
        let p = props(spec);
        assert_eq!(p["rcache.security.tls.enabled"], "true");
        assert_eq!(
            p["rcache.security.tls.cert.file"],
            "/etc/rcache/auth/tls.crt"
        );
        assert_eq!(
            p["rcache.security.tls.key.file"],
            "/etc/rcache/auth/tls.key"
        );
        assert_eq!(p["rcache.security.tls.ca.file"], "/etc/rcache/auth/ca.crt");
        assert_eq!(p["rcache.security.tls.server.name"], "rcache-worker");
        let w = rcache_contract::worker::accept(&render(&plan_of(spec)), "t").expect("accepted");
        assert!(w.tls.is_some());
    }

    #[test]
    fn tcp_defaults_render_contract_keys_and_sizes() {
        let p = props("ufs: {uri: 'file:///data'}");
        assert_eq!(p["rcache.cluster.name"], "demo");
        assert_eq!(
            p["rcache.cluster.membership.file"],
            "/etc/rcache/membership/members.json"
        );
        assert_eq!(p["rcache.ufs.uri"], "file:///data");
        assert_eq!(p["rcache.user.file.metadata.sync.interval"], "10s");
        assert_eq!(p["rcache.worker.data.port"], "29999");
        assert_eq!(p["rcache.worker.web.port"], "30000");
        assert_eq!(
            p["rcache.security.auth.secret.file"],
            "/etc/rcache/auth/token"
        );
        assert!(
            !p.contains_key("rcache.security.tls.enabled"),
            "TLS off by default"
        );
        assert_eq!(p["rcache.network.rdma.data.port"], "59999");
        assert_eq!(p["rcache.worker.page.size"], "1MB");
        assert_eq!(p["rcache.worker.page.store.mem.quota"], "1GB");
        assert_eq!(p["rcache.network.rdma.data.enabled"], "false");
        assert_eq!(
            p["rcache.network.rdma.data.buffer.pool.initial.size"],
            "256MB"
        );
        assert_eq!(p["rcache.network.rdma.data.buffer.pool.max.size"], "8GB");
        assert_eq!(p["rcache.network.rdma.data.operation.timeout.ms"], "30s");
        assert_eq!(p["rcache.network.rdma.data.fallback"], "none");
        assert_eq!(p["rcache.fuse.mount.point"], "/mnt/rcache");
        assert_eq!(p["rcache.fuse.web.port"], "30001");
        assert!(!p.contains_key("rcache.worker.data.bind.device"));
        assert!(!p.contains_key("rcache.worker.page.store.ssd.dir"));
    }

    #[test]
    fn s3_settings_render_underfs_keys_and_never_the_credentials() {
        let p = props(
            "ufs: {uri: 's3://data-set/train', credentialsSecretRef: {name: s3-creds}, s3: {endpoint: 'http://10.0.0.5:8333', region: eu-west-1, pathStyle: true}}",
        );
        assert_eq!(p["rcache.ufs.uri"], "s3://data-set/train");
        assert_eq!(p["rcache.underfs.s3.endpoint"], "http://10.0.0.5:8333");
        assert_eq!(p["rcache.underfs.s3.region"], "eu-west-1");
        assert_eq!(p["rcache.underfs.s3.path.style"], "true");
        assert!(
            p.keys()
                .filter(|key| key.as_str() != k::AUTH_SECRET_FILE)
                .all(|key| !key.contains("secret") && !key.contains("access")),
            "{p:?}"
        );
        let p = props("ufs: {uri: 's3://data-set'}");
        assert!(!p.keys().any(|k| k.starts_with("rcache.underfs.")), "{p:?}");
    }

    #[test]
    fn rdma_with_attachment_renders_bind_devices_and_pool() {
        let p = props(
            "ufs: {uri: 'file:///data'}\nnetwork:\n  mode: rdma\n  fallback: tcp\n  attachments: [{name: ib-net, interface: ib0}]\n  rdma: {resourceName: rdma/hca_shared_devices_a, device: 'mlx5_0:1', bufferPool: {initial: 1Gi, prewarm: 512Mi, max: 16Gi}}",
        );
        assert_eq!(p["rcache.network.rdma.data.enabled"], "true");
        assert_eq!(p["rcache.worker.data.bind.device"], "ib0");
        assert_eq!(p["rcache.user.network.data.bind.device"], "ib0");
        assert_eq!(p["rcache.network.rdma.data.bind.device"], "mlx5_0:1");
        assert_eq!(
            p["rcache.network.rdma.data.buffer.pool.initial.size"],
            "1GB"
        );
        assert_eq!(
            p["rcache.network.rdma.data.buffer.pool.prewarm.size"],
            "512MB"
        );
        assert_eq!(p["rcache.network.rdma.data.buffer.pool.max.size"], "16GB");
        assert_eq!(p["rcache.network.rdma.data.fallback"], "tcp");
        assert_eq!(p["rcache.network.rdma.data.strict"], "false");
        assert!(!p.contains_key("rcache.network.rdma.data.gid.index"));
    }

    #[test]
    fn strict_gid_index_and_ib_port_render_for_worker_and_client() {
        let p = props(
            "ufs: {uri: 'file:///data'}\nnetwork:\n  mode: rdma\n  attachments: [{name: roce, interface: net1}]\n  rdma: {resourceName: rdma/hca_shared_devices_a, strict: true, gidIndex: 3, ibPort: 1}",
        );
        assert_eq!(p["rcache.network.rdma.data.strict"], "true");
        assert_eq!(p["rcache.network.rdma.data.gid.index"], "3");
        assert_eq!(p["rcache.network.rdma.data.ib.port"], "1");
        let text = p
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>();
        let w = rcache_contract::accept(&text, "rendered").expect("the worker accepts it");
        assert_eq!(
            (w.rdma.gid_index, w.rdma.ib_port, w.rdma_strict),
            (Some(3), Some(1), true)
        );
    }

    #[test]
    fn tiers_and_fuse_options_render() {
        let p = props(
            "ufs: {uri: 'file:///data'}\nworker: {pageSize: 4Mi, tiers: [{medium: MEM, quota: 2Gi}, {medium: SSD, path: /cache, quota: 100Gi}]}\nfuse: {prefetchParts: 16, smallFilePrefetchThreshold: 4Mi, openStatusCache: {enabled: true, maxSize: 500}}",
        );
        assert_eq!(p["rcache.worker.page.size"], "4MB");
        assert_eq!(p["rcache.worker.page.store.mem.quota"], "2GB");
        assert_eq!(p["rcache.worker.page.store.ssd.dir"], "/cache");
        assert_eq!(p["rcache.worker.page.store.ssd.quota"], "100GB");
        assert_eq!(
            p["rcache.user.position.reader.streaming.async.prefetch.max.part.number"],
            "16"
        );
        assert_eq!(
            p["rcache.user.position.reader.streaming.async.prefetch.file.length.threshold"],
            "4MB"
        );
        assert_eq!(p["rcache.fuse.open.read.status.cache.enabled"], "true");
        assert_eq!(p["rcache.fuse.open.read.status.cache.max.size"], "500");
    }

    #[test]
    fn ssd_only_tier_disables_the_memory_tier() {
        let p = props(
            "ufs: {uri: 'file:///data'}\nworker: {tiers: [{medium: SSD, path: /cache, quota: 1Gi}]}",
        );
        assert_eq!(p["rcache.worker.page.store.mem.quota"], "0B");
    }

    #[test]
    fn config_map_holds_the_rendered_file_under_its_key() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let cm = config_map(&plan, render(&plan));
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-properties"));
        assert!(cm.data.unwrap()[PROPERTIES_KEY].contains("rcache.cluster.name=demo"));
    }
}
