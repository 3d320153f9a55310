//! Worker metrics and the small web server on `rcache.worker.web.port`: `/metrics`
//! (Prometheus/OpenMetrics text), `/healthz` (the process answers) and `/readyz` (listeners up,
//! disk tier scanned). Request-path metrics are recorded here; cache, UFS and buffer-pool figures
//! are read from their counters at scrape time so those modules stay free of Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rcache_transport::BufferPool;

use crate::cache::PageStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: String,
    pub transport: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

type HistFamily = Family<OpLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 20 µs .. ~10 s
    Histogram::new(exponential_buckets(20e-6, 2.0, 20))
}

/// Request kinds with their own counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ping,
    Read,
    Stat,
    List,
    Bench,
    Load,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Ping, Op::Read, Op::Stat, Op::List, Op::Bench, Op::Load];

    pub fn name(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Read => "read",
            Op::Stat => "stat",
            Op::List => "list",
            Op::Bench => "bench",
            Op::Load => "load",
        }
    }
}

/// How a request was answered: the `result` label of `rcache_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    /// A pinned read of a file that changed since the client opened it (`ErrorCode::Stale`):
    /// an answer, not a failure, so it is not counted as `error`.
    Stale,
}

/// Counters of one operation on one transport.
#[derive(Clone)]
pub struct OpMetrics {
    ok: Counter,
    error: Counter,
    stale: Counter,
    latency: Histogram,
}

/// Counters of one transport.
#[derive(Clone)]
pub struct RequestMetrics {
    bytes: Counter,
    ops: [OpMetrics; 6],
}

impl RequestMetrics {
    pub fn record(&self, op: Op, outcome: Outcome, bytes: u64, took: Duration) {
        let m = &self.ops[op as usize];
        match outcome {
            Outcome::Ok => &m.ok,
            Outcome::Error => &m.error,
            Outcome::Stale => &m.stale,
        }
        .inc();
        if bytes > 0 {
            self.bytes.inc_by(bytes);
        }
        m.latency.observe(took.as_secs_f64());
    }
}

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    bytes_served: Family<TransportLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: HistFamily,
    ready: AtomicBool,
}

impl Metrics {
    /// Metrics with cache/UFS/pool figures read from `store` and `pool` at each scrape.
    pub fn new(store: Option<Arc<PageStore>>, pool: Option<BufferPool>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("rcache");
        let bytes_served = Family::<TransportLabel, Counter>::default();
        registry.register(
            "bytes_served",
            "Data bytes sent to clients, by transport",
            bytes_served.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by operation, transport and result",
            requests.clone(),
        );
        let latency: HistFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to handle a request in the worker, by operation",
            latency.clone(),
        );
        registry.register_collector(Box::new(StoreCollector { store, pool }));
        registry.register_collector(Box::new(FabricCollector));
        Arc::new(Metrics {
            registry,
            bytes_served,
            requests,
            latency,
            ready: AtomicBool::new(false),
        })
    }

    /// Pre-resolved counters for one transport, so the request path does no label lookups.
    pub fn handles(&self, transport: &str) -> RequestMetrics {
        let op = |op: &str| {
            let c = |result: &str| {
                self.requests
                    .get_or_create(&RequestLabels {
                        op: op.into(),
                        transport: transport.into(),
                        result: result.into(),
                    })
                    .clone()
            };
            OpMetrics {
                ok: c("ok"),
                error: c("error"),
                stale: c("stale"),
                latency: self
                    .latency
                    .get_or_create(&OpLabel { op: op.into() })
                    .clone(),
            }
        };
        RequestMetrics {
            bytes: self
                .bytes_served
                .get_or_create(&TransportLabel {
                    transport: transport.into(),
                })
                .clone(),
            ops: Op::ALL.map(|o| op(o.name())),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

struct StoreCollector {
    store: Option<Arc<PageStore>>,
    pool: Option<BufferPool>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let mut m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    if labels.is_empty() {
        c.encode(m)
    } else {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c.encode(m.encode_family(&labels)?)
    }
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (l, v) in values {
        let labels = vec![(label.to_string(), l.to_string())];
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (l, v) in values {
        let labels = vec![(label.to_string(), l.to_string())];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(store) = &self.store {
            let c = &store.counters;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            counter_family(
                &mut enc,
                "cache_hits",
                "Page lookups served from a tier",
                "tier",
                &[("mem", get(&c.hits_mem)), ("ssd", get(&c.hits_ssd))],
            )?;
            counter(
                &mut enc,
                "cache_misses",
                "Page lookups filled from the under-storage",
                &[],
                get(&c.misses),
            )?;
            counter_family(
                &mut enc,
                "cache_evictions",
                "Pages evicted to stay under a tier's quota",
                "tier",
                &[
                    ("mem", get(&c.evictions_mem)),
                    ("ssd", get(&c.evictions_ssd)),
                ],
            )?;
            counter(
                &mut enc,
                "cache_torn_pages_dropped",
                "Disk pages dropped because a checksum or length did not match",
                &[],
                get(&c.torn_dropped),
            )?;
            counter(
                &mut enc,
                "cache_stale_pages_dropped",
                "Pages dropped because their under-storage file changed (or, on disk, recorded no file version)",
                &[],
                get(&c.stale_dropped),
            )?;
            counter(
                &mut enc,
                "cache_ssd_writes",
                "Pages written to the SSD tier",
                &[],
                get(&c.ssd_writes),
            )?;
            counter(
                &mut enc,
                "cache_ssd_write_errors",
                "Pages that could not be written to the SSD tier",
                &[],
                get(&c.ssd_write_errors),
            )?;
            counter(
                &mut enc,
                "cache_pool_fallbacks",
                "Pages placed on the heap because the buffer pool was exhausted",
                &[],
                get(&c.pool_fallbacks),
            )?;
            counter(
                &mut enc,
                "cache_load_fills",
                "Pages filled from the under-storage by warm-up (Load), not by a reader",
                &[],
                get(&c.load_fills),
            )?;
            let u = store.tier_use();
            gauge_family(
                &mut enc,
                "cache_pages",
                "Pages held per tier",
                "tier",
                &[("mem", u.mem_pages as i64), ("ssd", u.ssd_pages as i64)],
            )?;
            gauge_family(
                &mut enc,
                "cache_bytes",
                "Bytes held per tier",
                "tier",
                &[("mem", u.mem_bytes as i64), ("ssd", u.ssd_bytes as i64)],
            )?;
            gauge_family(
                &mut enc,
                "cache_quota_bytes",
                "Quota per tier",
                "tier",
                &[("mem", u.mem_quota as i64), ("ssd", u.ssd_quota as i64)],
            )?;
            let ufs = store.ufs().counters();
            counter(
                &mut enc,
                "ufs_reads",
                "Range reads sent to the under-storage",
                &[],
                get(&ufs.reads),
            )?;
            counter(
                &mut enc,
                "ufs_read_bytes",
                "Bytes read from the under-storage",
                &[],
                get(&ufs.bytes),
            )?;
            counter(
                &mut enc,
                "ufs_stats",
                "Stat calls sent to the under-storage (metadata syncs)",
                &[],
                get(&ufs.stats),
            )?;
        }
        if let Some(pool) = &self.pool {
            let s = pool.stats();
            gauge_family(
                &mut enc,
                "buffer_pool_bytes",
                "Registered buffer pool: mapped, in use and maximum bytes",
                "state",
                &[
                    ("total", s.total_bytes as i64),
                    ("in_use", s.in_use_bytes as i64),
                    ("max", s.max_bytes as i64),
                ],
            )?;
        }
        Ok(())
    }
}

/// The transports and devices that really carried this process's bytes
/// (`rcache_transport::fabric`), read at each scrape. Any process with a registry (worker, FUSE
/// client) can register it.
#[derive(Debug)]
pub struct FabricCollector;

impl Collector for FabricCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = rcache_transport::fabric::report();
        {
            let mut m = enc.encode_descriptor(
                "transport_bytes",
                "Bytes carried, by observed transport (ucx/<tl> from the endpoint's lanes, or tcp), device and direction",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for l in &r.lanes {
                for (dir, v) in [("sent", l.bytes_sent), ("received", l.bytes_received)] {
                    let labels = vec![
                        ("transport".to_string(), l.transport.clone()),
                        ("device".to_string(), l.device.clone()),
                        ("direction".to_string(), dir.to_string()),
                    ];
                    ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        counter_family(
            &mut enc,
            "transport_ucx_endpoints",
            "UCX endpoints wired up, by the class of their data lanes",
            "class",
            &[
                ("rdma", r.endpoints_rdma),
                ("shared_memory", r.endpoints_shared_memory),
                ("tcp", r.endpoints_tcp),
            ],
        )?;
        {
            let mut m = enc.encode_descriptor(
                "transport_ucx_offered",
                "UCX transports and devices the UCP context offers (1 each)",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for o in &r.offered {
                let (t, d) = o.split_once(':').unwrap_or((o, ""));
                let labels = vec![
                    ("transport".to_string(), t.to_string()),
                    ("device".to_string(), d.to_string()),
                ];
                ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
            }
        }
        gauge_family(
            &mut enc,
            "transport_rdma_lane",
            "1 when UCX offers an RDMA transport and no endpoint fell back to tcp",
            "offered",
            &[("rdma", i64::from(r.rdma_lane()))],
        )
    }
}

/// What a process shows on its web port: its metrics text and whether it is ready.
pub trait WebEndpoints: Send + Sync + 'static {
    /// The OpenMetrics text for `/metrics`.
    fn encode(&self) -> String;
    /// `/readyz` answers 200 while true.
    fn is_ready(&self) -> bool;
    /// `/readyz`'s body while not ready.
    fn not_ready_text(&self) -> &'static str {
        "not ready\n"
    }
}

impl WebEndpoints for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
    fn is_ready(&self) -> bool {
        Metrics::is_ready(self)
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` on `addr` until the process ends. Returns the bound
/// address (port 0 picks a free one). Used by the worker and by `rcache-fuse`.
pub async fn serve_web<E: WebEndpoints>(
    endpoints: Arc<E>,
    addr: SocketAddr,
) -> std::io::Result<SocketAddr> {
    serve_web_with(endpoints, addr, Router::new()).await
}

/// [`serve_web`] with more routes beside the standard three (the worker's `/v1/...`).
pub async fn serve_web_with<E: WebEndpoints>(
    endpoints: Arc<E>,
    addr: SocketAddr,
    extra: Router,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (m, m2) = (endpoints.clone(), endpoints);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, m.not_ready_text()).into_response()
                    }
                }
            }),
        )
        .merge(extra);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "web server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metrics_are_exported_with_labels() {
        let m = Metrics::new(None, None);
        m.handles("tcp")
            .record(Op::Read, Outcome::Ok, 4096, Duration::from_micros(300));
        let text = m.encode();
        assert!(
            text.contains("rcache_bytes_served_total{transport=\"tcp\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("rcache_requests_total{op=\"read\",transport=\"tcp\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rcache_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn a_stale_answer_is_counted_as_stale_not_as_error() {
        let m = Metrics::new(None, None);
        let h = m.handles("tcp");
        h.record(Op::Read, Outcome::Stale, 0, Duration::from_micros(50));
        h.record(Op::Read, Outcome::Stale, 0, Duration::from_micros(50));
        let text = m.encode();
        assert!(
            text.contains(
                "rcache_requests_total{op=\"read\",transport=\"tcp\",result=\"stale\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "rcache_requests_total{op=\"read\",transport=\"tcp\",result=\"error\"} 0"
            ),
            "{text}"
        );
    }
}
