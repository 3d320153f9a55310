//! What each CacheCluster's cache holds, in its status (`status.cache`): every [`EVERY`] the
//! operator asks each ready worker for `GET /v1/stats`, sums them, and computes the hit ratio and
//! the under-storage bytes read over the window since the last poll. The status is patched only
//! when a number changed, so an idle cluster is not written at all and a busy one at most once
//! per window. The same answers carry what each worker observed of its transports
//! (`status.fabric`), from which the reconcile shows the Transport column and `NoRdmaLane`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

use super::http;
use super::progress::human_bytes;
use crate::crd::{CacheCluster, CacheUsage, FabricStatus, TierUsage, WorkerFabric};

/// How often the workers are asked (and the status written at most).
pub const EVERY: Duration = Duration::from_secs(30);

/// One worker's `/v1/stats` answer (see `rcache_worker::load::Stats`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkerStats {
    pub tiers: Vec<WorkerTier>,
    pub files_cached: u64,
    pub hits: u64,
    pub misses: u64,
    pub load_fills: u64,
    pub ufs_reads: u64,
    pub ufs_read_bytes: u64,
    /// What the worker observed of its transports (`rcache_worker::load::FabricStats`).
    pub fabric: WorkerFabricStats,
}

/// The part of a worker's `fabric` the status shows.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkerFabricStats {
    pub observed: String,
    pub ucx: bool,
    pub rdma_lane: bool,
    pub offered: Vec<String>,
}

/// `status.fabric` from the workers' answers: the transports observed across them (each
/// worker's list is busiest first; the cluster's keeps the first seen order), and whether
/// every worker running UCX has an RDMA lane.
pub fn fabric_of(stats: &[(String, WorkerStats)]) -> FabricStatus {
    let mut observed: Vec<String> = Vec::new();
    for (_, s) in stats {
        for t in s.fabric.observed.split(',').filter(|t| !t.is_empty()) {
            if !observed.iter().any(|o| o == t) {
                observed.push(t.to_string());
            }
        }
    }
    let mut workers: Vec<WorkerFabric> = stats
        .iter()
        .map(|(pod, s)| WorkerFabric {
            pod: pod.clone(),
            observed: s.fabric.observed.clone(),
            ucx: s.fabric.ucx,
            rdma_lane: s.fabric.rdma_lane,
            offered: s.fabric.offered.clone(),
        })
        .collect();
    workers.sort_by(|a, b| a.pod.cmp(&b.pod));
    FabricStatus {
        observed: observed.join(","),
        rdma_lane: workers.iter().all(|w| !w.ucx || w.rdma_lane),
        workers,
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkerTier {
    pub tier: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

/// Counters of the previous poll of a cluster (per worker, since workers restart).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: Option<Instant>,
    pub per_worker: HashMap<String, (u64, u64, u64)>,
    pub hit_ratio: Option<String>,
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sums the workers' answers; window numbers are deltas against `prev` (a worker that restarted,
/// its counters lower than before, counts from zero). Returns the usage and the new sample.
pub fn summarize(
    stats: &[(String, WorkerStats)],
    prev: &Sample,
    now: Instant,
) -> (CacheUsage, Sample) {
    let mut tiers: Vec<TierUsage> = Vec::new();
    let (mut files, mut dh, mut dm, mut du) = (0u64, 0u64, 0u64, 0u64);
    let mut per_worker = HashMap::new();
    for (name, s) in stats {
        for t in &s.tiers {
            match tiers.iter_mut().find(|x| x.tier == t.tier) {
                Some(x) => {
                    x.cached_bytes += i(t.used_bytes);
                    x.capacity_bytes += i(t.capacity_bytes);
                }
                None => tiers.push(TierUsage {
                    tier: t.tier.clone(),
                    cached_bytes: i(t.used_bytes),
                    capacity_bytes: i(t.capacity_bytes),
                }),
            }
        }
        files += s.files_cached;
        let (h0, m0, u0) = prev.per_worker.get(name).copied().unwrap_or_default();
        let d = |now: u64, before: u64| if now >= before { now - before } else { now };
        dh += d(s.hits, h0);
        dm += d(s.misses, m0);
        du += d(s.ufs_read_bytes, u0);
        per_worker.insert(name.clone(), (s.hits, s.misses, s.ufs_read_bytes));
    }
    let cached: i64 = tiers.iter().map(|t| t.cached_bytes).sum();
    let capacity: i64 = tiers.iter().map(|t| t.capacity_bytes).sum();
    // No lookups in the window: the ratio of the last window that had some stands.
    let hit_ratio = if dh + dm > 0 {
        Some(format!("{:.2}", dh as f64 / (dh + dm) as f64))
    } else {
        prev.hit_ratio.clone()
    };
    let window = prev.at.map_or(0, |a| now.duration_since(a).as_secs());
    let usage = CacheUsage {
        cached: human_bytes(u64::try_from(cached).unwrap_or(0)),
        capacity: human_bytes(u64::try_from(capacity).unwrap_or(0)),
        cached_bytes: cached,
        capacity_bytes: capacity,
        tiers,
        files_cached: i(files),
        hit_ratio: hit_ratio.clone().unwrap_or_default(),
        ufs_bytes_read: i(du),
        window_seconds: i(window),
        workers_reporting: i32::try_from(stats.len()).unwrap_or(i32::MAX),
    };
    (
        usage,
        Sample {
            at: Some(now),
            per_worker,
            hit_ratio,
        },
    )
}

/// Polls every cluster every [`EVERY`] until `stop` turns true.
pub async fn run(client: Client, ns: Option<String>, mut stop: watch::Receiver<bool>) {
    let api: Api<CacheCluster> = match &ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut samples: HashMap<String, Sample> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {},
            _ = stop.wait_for(|s| *s) => return,
        }
        let list = match api.list(&Default::default()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing CacheClusters for cache usage failed");
                continue;
            }
        };
        for cc in list.items {
            let ns = cc.namespace().unwrap_or_default();
            let key = format!("{ns}/{}", cc.name_any());
            let members: Vec<_> = cc
                .status
                .as_ref()
                .map(|s| s.members.iter().filter(|m| m.ready).cloned().collect())
                .unwrap_or_default();
            if members.is_empty() {
                continue;
            }
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
            let mut stats = Vec::new();
            for m in &members {
                let ip = match pods.get_opt(&m.pod).await {
                    Ok(Some(p)) => p.status.and_then(|s| s.pod_ip),
                    _ => None,
                }
                .unwrap_or_else(|| m.data_address.clone());
                let port = u16::try_from(m.ports.web).unwrap_or(30000);
                match http::call(&ip, port, "GET", "/v1/stats", None, Duration::from_secs(5)).await
                {
                    Ok((200, text)) => match serde_json::from_str::<WorkerStats>(&text) {
                        Ok(s) => stats.push((m.pod.clone(), s)),
                        Err(e) => warn!(worker = %m.pod, error = %e, "unreadable /v1/stats"),
                    },
                    Ok((code, _)) => warn!(worker = %m.pod, code, "/v1/stats refused"),
                    Err(e) => tracing::debug!(worker = %m.pod, error = %e, "/v1/stats unreachable"),
                }
            }
            if stats.is_empty() {
                continue;
            }
            let prev = samples.get(&key).cloned().unwrap_or_default();
            let (usage, sample) = summarize(&stats, &prev, Instant::now());
            samples.insert(key.clone(), sample);
            let fabric = fabric_of(&stats);
            if cc.status.as_ref().and_then(|s| s.cache.as_ref()) == Some(&usage)
                && cc.status.as_ref().and_then(|s| s.fabric.as_ref()) == Some(&fabric)
            {
                continue;
            }
            let api: Api<CacheCluster> = Api::namespaced(client.clone(), &ns);
            if let Err(e) = api
                .patch_status(
                    &cc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": { "cache": usage, "fabric": fabric } })),
                )
                .await
            {
                warn!(cluster = %key, error = %e, "writing status.cache failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fabric(observed: &str, ucx: bool, rdma_lane: bool) -> WorkerStats {
        WorkerStats {
            fabric: WorkerFabricStats {
                observed: observed.into(),
                ucx,
                rdma_lane,
                offered: Vec::new(),
            },
            ..WorkerStats::default()
        }
    }

    #[test]
    fn fabric_joins_the_workers_observed_transports_and_needs_every_ucx_worker_on_rdma() {
        let f = fabric_of(&[
            ("w-1".into(), fabric("ucx/rc_mlx5", true, true)),
            ("w-0".into(), fabric("ucx/rc_mlx5,ucx/tcp", true, false)),
        ]);
        assert_eq!(f.observed, "ucx/rc_mlx5,ucx/tcp");
        assert!(!f.rdma_lane, "w-0 fell back to tcp");
        assert_eq!(f.workers[0].pod, "w-0", "sorted by pod");
        let f = fabric_of(&[("w-0".into(), fabric("tcp", false, false))]);
        assert!(f.rdma_lane, "a worker without UCX is not judged on RDMA");
    }

    fn worker(hits: u64, misses: u64, ufs: u64) -> WorkerStats {
        WorkerStats {
            tiers: vec![
                WorkerTier {
                    tier: "MEM".into(),
                    used_bytes: 1 << 30,
                    capacity_bytes: 2 << 30,
                },
                WorkerTier {
                    tier: "SSD".into(),
                    used_bytes: 0,
                    capacity_bytes: 10 << 30,
                },
            ],
            files_cached: 7,
            hits,
            misses,
            ufs_read_bytes: ufs,
            ..WorkerStats::default()
        }
    }

    #[test]
    fn tiers_and_files_sum_over_workers_and_the_window_counts_only_new_lookups() {
        let t0 = Instant::now();
        let first = vec![
            ("w0".into(), worker(10, 10, 100)),
            ("w1".into(), worker(0, 0, 0)),
        ];
        let (u, s) = summarize(&first, &Sample::default(), t0);
        assert_eq!((u.cached.as_str(), u.capacity.as_str()), ("2.0Gi", "24Gi"));
        assert_eq!(u.tiers[0].capacity_bytes, 4 << 30);
        assert_eq!(u.files_cached, 14);
        assert_eq!(u.hit_ratio, "0.50");
        let second = vec![
            ("w0".into(), worker(110, 10, 100)),
            ("w1".into(), worker(50, 0, 0)),
        ];
        let (u, s) = summarize(&second, &s, t0 + Duration::from_secs(30));
        assert_eq!(u.hit_ratio, "1.00", "150 hits, no miss in the window");
        assert_eq!(u.ufs_bytes_read, 0);
        assert_eq!(u.window_seconds, 30);
        // An idle window keeps the last ratio; an unchanged usage is equal (no write).
        let (u2, _) = summarize(&second, &s, t0 + Duration::from_secs(60));
        assert_eq!(u2.hit_ratio, "1.00");
        assert_eq!(u2.window_seconds, 30);
    }

    #[test]
    fn a_restarted_worker_counts_from_zero() {
        let t0 = Instant::now();
        let (_, s) = summarize(
            &[("w0".into(), worker(100, 0, 5000))],
            &Sample::default(),
            t0,
        );
        let (u, _) = summarize(&[("w0".into(), worker(3, 1, 10))], &s, t0);
        assert_eq!(u.hit_ratio, "0.75");
        assert_eq!(u.ufs_bytes_read, 10);
    }
}
