//! Fabric truth: which transports and devices really carry the bytes. UCX picks its transports
//! itself (`UCX_TLS`, `UCX_NET_DEVICES`, what the host has), so what the user asked for
//! (`mode: rdma`) is not what runs: a node without an RDMA device runs UCX over `tcp`.
//!
//! This module owns the process-wide record of what was observed: the transports a UCP context
//! offers (`ucp_context_print_info`), the lanes of every wired-up endpoint
//! (`ucp_ep_print_info`; `ucp_ep_query` cannot report transports before UCX 1.14), the bytes
//! each lane carried, and the tokio TCP transport's connections by local interface. It parses
//! UCX's text; it does not call UCX (the `ucx` module hands it the text).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What kind of link a transport is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkClass {
    /// Verbs: InfiniBand or RoCE (`rc_mlx5`, `rc_verbs`, `dc_mlx5`, `ud_verbs`, ...).
    Rdma,
    /// Same-host shared memory (`posix`, `sysv`, `cma`, `xpmem`, `knem`, `self`).
    SharedMemory,
    /// TCP sockets (UCX's `tcp`, or rcache's own TCP transport).
    Tcp,
    Other,
}

/// The class of a UCX transport name.
pub fn class_of(tl: &str) -> LinkClass {
    let t = tl.to_ascii_lowercase();
    if ["rc", "dc", "ud", "rc_", "dc_", "ud_"]
        .iter()
        .any(|p| t == *p || (p.ends_with('_') && t.starts_with(p)))
    {
        LinkClass::Rdma
    } else if matches!(
        t.as_str(),
        "posix" | "sysv" | "cma" | "xpmem" | "knem" | "self" | "mm" | "sm"
    ) {
        LinkClass::SharedMemory
    } else if t == "tcp" {
        LinkClass::Tcp
    } else {
        LinkClass::Other
    }
}

/// One lane of a UCP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// UCX transport (`tcp`, `posix`, `rc_mlx5`).
    pub tl: String,
    /// Device (`lo`, `eth0`, `memory`, `mlx5_0:1`).
    pub device: String,
    /// What UCX uses the lane for: `am`, `am_bw#0`, `rma_bw#0`, `wireup`, `keepalive`, ...
    pub roles: Vec<String>,
}

impl Lane {
    fn has_role(&self, prefix: &str) -> bool {
        self.roles
            .iter()
            .any(|r| r == prefix || r.starts_with(&format!("{prefix}#")))
    }

    /// Whether the lane carries data (not only connection set-up or keepalive).
    pub fn carries_data(&self) -> bool {
        ["am", "am_bw", "rma", "rma_bw", "tag", "amo"]
            .iter()
            .any(|r| self.has_role(r))
    }

    /// `ucx/<tl>`, the label of metrics and status.
    pub fn label(&self) -> String {
        format!("ucx/{}", self.tl)
    }
}

/// The lanes of one endpoint and the message size from which UCX switches active messages to
/// rendezvous (the payload then moves over the `rma_bw` lanes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointLanes {
    pub lanes: Vec<Lane>,
    pub rndv_from: Option<u64>,
}

impl EndpointLanes {
    /// Parses the text of `ucp_ep_print_info` (UCX 1.13 format):
    /// `lane[1]:  0:tcp/lo.0 md[0] -> md[0]/tcp/sysdev[255] rma_bw#0 am am_bw#0 wireup` and
    /// `am_send: 0..<egr/short>..8185..<egr/zcopy>..20553..<rndv>..(inf)`. Connection-manager
    /// lanes (`lane[0]: cm rdmacm`) are not data lanes and are skipped.
    pub fn parse(text: &str) -> EndpointLanes {
        let mut out = EndpointLanes::default();
        for line in text.lines() {
            let l = line.trim_start_matches('#').trim();
            if let Some(rest) = l.strip_prefix("lane[") {
                let Some((_, body)) = rest.split_once("]:") else {
                    continue;
                };
                let mut words = body.split_whitespace();
                let Some(first) = words.next() else { continue };
                // `<rsc>:<tl>/<dev>.<path>`; `cm <name>` lanes have no resource.
                let Some((_, res)) = first.split_once(':') else {
                    continue;
                };
                let Some((tl, dev)) = res.split_once('/') else {
                    continue;
                };
                let device = match dev.rsplit_once('.') {
                    Some((d, path)) if path.chars().all(|c| c.is_ascii_digit()) => d,
                    _ => dev,
                };
                let roles: Vec<String> = body
                    .split("->")
                    .nth(1)
                    .map(|after| after.split_whitespace().skip(1).map(String::from).collect())
                    .unwrap_or_default();
                out.lanes.push(Lane {
                    tl: tl.to_string(),
                    device: device.to_string(),
                    roles,
                });
            } else if let Some(rest) = l.strip_prefix("am_send:") {
                // The number right before `<rndv>`.
                if let Some(at) = rest.find("<rndv>") {
                    out.rndv_from = rest[..at]
                        .trim_end_matches('.')
                        .rsplit("..")
                        .next()
                        .and_then(|n| n.parse().ok());
                }
            }
        }
        out
    }

    pub fn data_lanes(&self) -> impl Iterator<Item = &Lane> {
        self.lanes.iter().filter(|l| l.carries_data())
    }

    /// The lane an active message of `len` bytes travels on: rendezvous payloads on the first
    /// `rma_bw` lane, others on the first `am_bw` lane, else the `am` lane.
    pub fn lane_for(&self, len: u64) -> Option<&Lane> {
        let find = |role: &str| self.lanes.iter().find(|l| l.has_role(role));
        let rndv = self.rndv_from.is_some_and(|t| len >= t);
        (if rndv { find("rma_bw") } else { None })
            .or_else(|| find("am_bw"))
            .or_else(|| find("am"))
    }

    /// The endpoint's class: RDMA when a data lane is verbs, shared memory when its active
    /// messages are (a peer on the same host), else TCP.
    pub fn class(&self) -> LinkClass {
        if self
            .data_lanes()
            .any(|l| class_of(&l.tl) == LinkClass::Rdma)
        {
            return LinkClass::Rdma;
        }
        match self.lanes.iter().find(|l| l.has_role("am")) {
            Some(l) if class_of(&l.tl) == LinkClass::SharedMemory => LinkClass::SharedMemory,
            Some(l) => class_of(&l.tl),
            None => LinkClass::Other,
        }
    }
}

/// The transports of a UCP context (`ucp_context_print_info`):
/// `resource 1  :  md 1  dev 1  flags -- tcp/lo`, as `(tl, device)`, `self` left out.
pub fn parse_context_resources(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.trim_start_matches('#').trim().starts_with("resource "))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|r| r.split_once('/'))
        .filter(|(tl, _)| *tl != "self")
        .map(|(tl, dev)| (tl.to_string(), dev.to_string()))
        .collect()
}

/// Bytes one lane (transport label + device) carried, both ways.
#[derive(Debug, Default)]
pub struct LaneBytes {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Endpoints (connections) that used this lane for data.
    pub endpoints: AtomicU64,
}

impl LaneBytes {
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
}

/// How an endpoint's bytes are counted: the lane of small messages, and the lane of
/// rendezvous-size ones from `rndv_from` bytes on.
#[derive(Clone, Debug)]
pub struct Route {
    small: Arc<LaneBytes>,
    large: Arc<LaneBytes>,
    rndv_from: u64,
}

impl Route {
    pub fn lane(&self, len: u64) -> &LaneBytes {
        if len >= self.rndv_from {
            &self.large
        } else {
            &self.small
        }
    }
}

/// One lane's numbers, for metrics and `/v1/stats`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaneUse {
    /// `ucx/tcp`, `ucx/posix`, `ucx/rc_mlx5`, or `tcp` (rcache's TCP transport).
    pub transport: String,
    pub device: String,
    pub class: LinkClass,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub endpoints: u64,
}

/// What this process observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FabricReport {
    /// UCX transports the UCP contexts offer, `ucx/<tl>:<device>` (empty without UCX).
    pub offered: Vec<String>,
    /// Whether a context offers an RDMA transport.
    pub rdma_offered: bool,
    /// Endpoints wired up, by class.
    pub endpoints_rdma: u64,
    pub endpoints_shared_memory: u64,
    pub endpoints_tcp: u64,
    /// Lanes that carried data, busiest first.
    pub lanes: Vec<LaneUse>,
}

impl FabricReport {
    /// The transports that carried data, busiest first, e.g. `ucx/tcp` or `ucx/posix,ucx/tcp`;
    /// without traffic yet, what the contexts offer (`ucx/tcp` for `ucx/tcp:lo`); empty when
    /// nothing is known.
    pub fn summary(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for l in &self.lanes {
            if !seen.contains(&l.transport) {
                seen.push(l.transport.clone());
            }
        }
        if seen.is_empty() {
            for o in &self.offered {
                let t = o.split(':').next().unwrap_or(o).to_string();
                if !seen.contains(&t) {
                    seen.push(t);
                }
            }
            // Offered only: what a peer on another host would get, the best class first;
            // shared memory only reaches peers on this host.
            let class = |t: &String| class_of(t.trim_start_matches("ucx/"));
            if seen
                .iter()
                .any(|t| matches!(class(t), LinkClass::Rdma | LinkClass::Tcp))
            {
                seen.retain(|t| matches!(class(t), LinkClass::Rdma | LinkClass::Tcp));
            }
            seen.sort_by_key(class);
        }
        seen.join(",")
    }

    /// Whether data over UCX can and does go over RDMA: a context offers an RDMA transport and
    /// no endpoint to another host fell back to TCP. Shared-memory endpoints (a client on the
    /// same host) do not count against it.
    pub fn rdma_lane(&self) -> bool {
        self.rdma_offered && self.endpoints_tcp == 0
    }
}

/// Lanes by (transport label, device).
type LaneMap = BTreeMap<(String, String), (LinkClass, Arc<LaneBytes>)>;

#[derive(Default)]
struct Registry {
    offered: Mutex<Vec<(String, String)>>,
    lanes: Mutex<LaneMap>,
    endpoints: Mutex<BTreeMap<LinkClass, u64>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The counters of lane `transport` on `device`, created on first use.
pub fn lane_bytes(transport: &str, device: &str, class: LinkClass) -> Arc<LaneBytes> {
    lock(&registry().lanes)
        .entry((transport.to_string(), device.to_string()))
        .or_insert_with(|| (class, Arc::new(LaneBytes::default())))
        .1
        .clone()
}

/// Records the transports a UCP context offers (its `ucp_context_print_info` text).
pub fn record_context(text: &str) {
    let mut offered = lock(&registry().offered);
    for r in parse_context_resources(text) {
        if !offered.contains(&r) {
            offered.push(r);
        }
    }
}

/// Records a wired-up endpoint (its `ucp_ep_print_info` text) and returns how to count its
/// bytes; `None` when the text names no data lane.
pub fn record_endpoint(text: &str) -> Option<Route> {
    let ep = EndpointLanes::parse(text);
    let small = ep.lane_for(0)?.clone();
    let large = ep
        .rndv_from
        .and_then(|t| ep.lane_for(t))
        .cloned()
        .unwrap_or_else(|| small.clone());
    *lock(&registry().endpoints).entry(ep.class()).or_default() += 1;
    let mut used: Vec<&Lane> = vec![&small];
    if large != small {
        used.push(&large);
    }
    for l in &used {
        lane_bytes(&l.label(), &l.device, class_of(&l.tl))
            .endpoints
            .fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        class = ?ep.class(),
        lanes = %ep.data_lanes().map(|l| format!("{}/{} {}", l.tl, l.device, l.roles.join(" "))).collect::<Vec<_>>().join("; "),
        "UCX endpoint wired up"
    );
    Some(Route {
        small: lane_bytes(&small.label(), &small.device, class_of(&small.tl)),
        large: lane_bytes(&large.label(), &large.device, class_of(&large.tl)),
        rndv_from: ep.rndv_from.unwrap_or(u64::MAX),
    })
}

/// Records a connection of rcache's TCP transport on local interface `device`.
pub fn record_tcp_connection(device: &str) -> Arc<LaneBytes> {
    let lane = lane_bytes("tcp", device, LinkClass::Tcp);
    lane.endpoints.fetch_add(1, Ordering::Relaxed);
    lane
}

/// What this process observed so far.
pub fn report() -> FabricReport {
    let r = registry();
    let offered = lock(&r.offered).clone();
    let endpoints = lock(&r.endpoints).clone();
    let mut lanes: Vec<LaneUse> = lock(&r.lanes)
        .iter()
        .map(|((t, d), (class, b))| LaneUse {
            transport: t.clone(),
            device: d.clone(),
            class: *class,
            bytes_sent: b.sent.load(Ordering::Relaxed),
            bytes_received: b.received.load(Ordering::Relaxed),
            endpoints: b.endpoints.load(Ordering::Relaxed),
        })
        .filter(|l| l.endpoints > 0)
        .collect();
    lanes.sort_by_key(|l| std::cmp::Reverse(l.bytes_sent + l.bytes_received));
    FabricReport {
        rdma_offered: offered
            .iter()
            .any(|(tl, _)| class_of(tl) == LinkClass::Rdma),
        offered: offered
            .iter()
            .map(|(tl, d)| format!("ucx/{tl}:{d}"))
            .collect(),
        endpoints_rdma: endpoints.get(&LinkClass::Rdma).copied().unwrap_or(0),
        endpoints_shared_memory: endpoints
            .get(&LinkClass::SharedMemory)
            .copied()
            .unwrap_or(0),
        endpoints_tcp: endpoints.get(&LinkClass::Tcp).copied().unwrap_or(0),
        lanes,
    }
}

/// Whether any of these `(tl, device)` resources is an RDMA transport.
pub fn rdma_offered(offered: &[(String, String)]) -> bool {
    offered
        .iter()
        .any(|(tl, _)| class_of(tl) == LinkClass::Rdma)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_EP: &str = "#
# UCP endpoint
#
#               peer: <no debug data>
#                 lane[0]: cm rdmacm
#                 lane[1]:  0:tcp/lo.0 md[0]                -> md[0]/tcp/sysdev[255] rma_bw#0 am am_bw#0 wireup
#
#                 am_send: 0..<egr/short>..8185..<egr/zcopy>..20553..<rndv>..(inf)
#
#                  rma_bw: mds [0] rndv_rkey_size 10
#";

    const SM_EP: &str = "#                 lane[0]: cm rdmacm
#                 lane[1]:  2:posix/memory.0 md[2]          -> md[2]/posix/sysdev[255] am am_bw#0 keepalive
#                 lane[2]:  1:tcp/lo.0 md[1]                -> md[1]/tcp/sysdev[255] rma_bw#0 wireup
#                 am_send: 0..<egr/short>..93..<egr/bcopy>..8256..<rndv>..(inf)";

    const RC_EP: &str = "#                 lane[0]:  1:rc_mlx5/mlx5_0:1.0 md[1]      -> md[1]/ib/sysdev[255] rma_bw#0 am am_bw#0 wireup{ud_mlx5/mlx5_0:1}
#                 am_send: 0..<egr/short>..2038..<egr/bcopy>..8246..<egr/zcopy>..19523..<rndv>..(inf)";

    #[test]
    fn ucx_tcp_endpoint_lanes_are_parsed_with_device_and_rendezvous_size() {
        let ep = EndpointLanes::parse(TCP_EP);
        assert_eq!(ep.lanes.len(), 1, "the cm lane is not a data lane");
        assert_eq!(
            (ep.lanes[0].tl.as_str(), ep.lanes[0].device.as_str()),
            ("tcp", "lo")
        );
        assert!(ep.lanes[0].carries_data());
        assert_eq!(ep.rndv_from, Some(20553));
        assert_eq!(ep.class(), LinkClass::Tcp);
        assert_eq!(ep.lane_for(1 << 20).map(|l| l.tl.as_str()), Some("tcp"));
    }

    #[test]
    fn shared_memory_endpoint_sends_small_messages_on_posix_and_rendezvous_on_its_rma_lane() {
        let ep = EndpointLanes::parse(SM_EP);
        assert_eq!(ep.class(), LinkClass::SharedMemory);
        assert_eq!(ep.lane_for(4096).map(|l| l.tl.as_str()), Some("posix"));
        assert_eq!(ep.lane_for(1 << 20).map(|l| l.tl.as_str()), Some("tcp"));
        assert_eq!(ep.lane_for(1 << 20).map(|l| l.device.as_str()), Some("lo"));
    }

    #[test]
    fn verbs_endpoint_is_rdma_with_the_port_in_the_device() {
        let ep = EndpointLanes::parse(RC_EP);
        assert_eq!(ep.class(), LinkClass::Rdma);
        assert_eq!(ep.lanes[0].device, "mlx5_0:1");
        assert_eq!(ep.lanes[0].label(), "ucx/rc_mlx5");
    }

    #[test]
    fn transport_classes() {
        for (tl, c) in [
            ("rc_mlx5", LinkClass::Rdma),
            ("rc_verbs", LinkClass::Rdma),
            ("dc_mlx5", LinkClass::Rdma),
            ("ud_verbs", LinkClass::Rdma),
            ("posix", LinkClass::SharedMemory),
            ("cma", LinkClass::SharedMemory),
            ("tcp", LinkClass::Tcp),
            ("cuda_ipc", LinkClass::Other),
        ] {
            assert_eq!(class_of(tl), c, "{tl}");
        }
    }

    #[test]
    fn context_resources_name_transport_and_device_without_self() {
        let text = "#      resource 0  :  md 0  dev 0  flags -- self/memory0
#      resource 1  :  md 1  dev 1  flags -- tcp/lo
#      resource 2  :  md 2  dev 2  flags -- posix/memory
#      resource 3  :  md 3  dev 3  flags -- rc_mlx5/mlx5_0:1";
        let r = parse_context_resources(text);
        assert_eq!(
            r,
            vec![
                ("tcp".to_string(), "lo".to_string()),
                ("posix".into(), "memory".into()),
                ("rc_mlx5".into(), "mlx5_0:1".into())
            ]
        );
        assert!(rdma_offered(&r));
        assert!(!rdma_offered(&r[..2]));
    }

    #[test]
    fn summary_is_the_busiest_lanes_or_else_the_best_offered_network_transport() {
        let mut r = FabricReport {
            offered: vec![
                "ucx/tcp:eth0".into(),
                "ucx/posix:memory".into(),
                "ucx/rc_mlx5:mlx5_0:1".into(),
            ],
            rdma_offered: true,
            ..Default::default()
        };
        assert_eq!(r.summary(), "ucx/rc_mlx5,ucx/tcp");
        assert!(r.rdma_lane());
        r.lanes.push(LaneUse {
            transport: "ucx/tcp".into(),
            device: "eth0".into(),
            class: LinkClass::Tcp,
            bytes_sent: 10,
            bytes_received: 0,
            endpoints: 1,
        });
        r.endpoints_tcp = 1;
        assert_eq!(r.summary(), "ucx/tcp");
        assert!(!r.rdma_lane(), "an endpoint fell back to tcp");
    }
}
