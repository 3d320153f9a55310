//! `rcache-worker read-bench`: reads a file through the client library (placement, failover,
//! the worker's page cache) and prints ops/s, Gbps and latency percentiles, so
//! `scripts/bench-worker.sh` can set them against the transport's own `bench` figures taken in
//! the same run. A measuring tool, not a test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{CacheClient, ClientConfig, Fallback, MembershipSource};
use crate::cluster::{Member, MemberPorts, MemberTransport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Uniformly random offsets aligned to the I/O size.
    Random,
    /// Each task reads its own stretch of the file front to back, wrapping.
    Sequential,
}

/// Flags of `read-bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct ReadBenchArgs {
    /// Worker TCP data address `host:port` (repeat for several; ignored with --membership).
    #[arg(long)]
    pub worker: Vec<SocketAddr>,
    /// Transport the --worker members announce (ucx: reached on --rdma-port).
    #[arg(long, value_enum, default_value_t = rcache_transport::TransportKind::Tcp)]
    pub transport: rcache_transport::TransportKind,
    /// UCX port of the --worker members.
    #[arg(long, default_value_t = 59999)]
    pub rdma_port: u16,
    /// Membership file (as the operator publishes it) instead of --worker.
    #[arg(long)]
    pub membership: Option<PathBuf>,
    /// File to read, relative to the UFS root.
    #[arg(long)]
    pub path: String,
    #[arg(long, value_enum, default_value_t = Pattern::Random)]
    pub pattern: Pattern,
    /// Bytes per read.
    #[arg(long, default_value_t = 4096)]
    pub io_size: u32,
    /// Reads in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Read the whole file once before measuring (hot cache).
    #[arg(long)]
    pub warm: bool,
    /// Placement block size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub block_size: u64,
    /// Connections per worker.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct ReadBenchResult {
    pub pattern: Pattern,
    pub io_size: u32,
    pub concurrency: usize,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub gbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

pub async fn run(args: ReadBenchArgs) -> anyhow::Result<()> {
    let membership = match &args.membership {
        Some(path) => MembershipSource::File {
            path: path.clone(),
            poll: Duration::from_secs(2),
        },
        None => {
            anyhow::ensure!(
                !args.worker.is_empty(),
                "give --worker host:port or --membership FILE"
            );
            MembershipSource::Fixed(
                args.worker
                    .iter()
                    .enumerate()
                    .map(|(i, a)| Member {
                        id: format!("worker-{i}"),
                        pod: None,
                        node: None,
                        data_address: a.ip().to_string(),
                        ports: MemberPorts {
                            data: a.port(),
                            rdma: Some(args.rdma_port),
                            web: None,
                        },
                        transport: match args.transport {
                            rcache_transport::TransportKind::Tcp => MemberTransport::Tcp,
                            rcache_transport::TransportKind::Ucx => MemberTransport::Ucx,
                        },
                        ready: true,
                    })
                    .collect(),
            )
        }
    };
    let client = CacheClient::new(ClientConfig {
        membership,
        block_size: args.block_size,
        fallback: Fallback::None,
        max_request: args.io_size.max(1 << 20),
        connections_per_member: args.connections,
        ..ClientConfig::default()
    })
    .await?;
    let size = client.stat(&args.path).await.context("stat")?.size;
    anyhow::ensure!(
        size >= u64::from(args.io_size),
        "{} is smaller than --io-size",
        args.path
    );
    if args.warm {
        let step = 4u64 << 20;
        let mut off = 0;
        while off < size {
            client.read(&args.path, off, step as u32).await?;
            off += step;
        }
    }
    let io = u64::from(args.io_size);
    let slots = size / io;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..args.concurrency.max(1) {
        let client = client.clone();
        let stop = stop.clone();
        let path = args.path.clone();
        let pattern = args.pattern;
        let jobs = args.concurrency.max(1) as u64;
        tasks.spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1).wrapping_mul(0xff51_afd7);
            let mut slot = slots * t as u64 / jobs;
            while !stop.load(Ordering::Relaxed) {
                let off = match pattern {
                    Pattern::Random => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        (rng % slots) * io
                    }
                    Pattern::Sequential => {
                        slot = (slot + 1) % slots;
                        slot * io
                    }
                };
                let t0 = Instant::now();
                let b = client.read(&path, off, io as u32).await?;
                lat.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                anyhow::ensure!(b.len() as u64 == io, "short read at {off}");
            }
            anyhow::Ok(lat)
        });
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration.max(1))).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ops = lat.len() as u64;
    let res = ReadBenchResult {
        pattern: args.pattern,
        io_size: args.io_size,
        concurrency: args.concurrency,
        seconds,
        ops,
        ops_per_sec: ops as f64 / seconds,
        gbps: ops as f64 * io as f64 * 8.0 / seconds / 1e9,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
    };
    if args.json {
        println!("{}", serde_json::to_string(&res)?);
    } else {
        println!(
            "{:?} {} B x{}: {:.0} ops/s, {:.2} Gbps, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
            res.pattern,
            res.io_size,
            res.concurrency,
            res.ops_per_sec,
            res.gbps,
            res.p50_us,
            res.p99_us,
            res.p999_us
        );
    }
    Ok(())
}
