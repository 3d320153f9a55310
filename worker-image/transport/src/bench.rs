//! `bench`: the `rdmaBenchmark` equivalent. Owns the server (answers `BenchRead`/`BenchWrite`
//! from registered memory) and the client cases (basic, latency, stress-read/-write), their
//! flags (the seed's names and defaults) and their output (human text, or JSON with `--json`).
//! It measures the transports through the same `listen`/`connect` API the cache uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;

use crate::bufpool::{BufferPool, PoolConfig};
use crate::{
    ClientOptions, ErrorCode, Handler, Request, Response, ServerOptions, SharedConnection,
    TransportKind,
};

/// Payload sizes every case runs through.
pub const PAYLOADS: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];
/// Largest payload the bench server serves.
const SERVER_MAX: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    Basic,
    Latency,
    Stress,
    StressWrite,
    StressRead,
    All,
    /// Connection setup: connect + ping, or connect + authentication with
    /// `--auth-secret-file` (not part of `all`).
    Setup,
}

/// Flags of `bench` (names and defaults of Alluxio's `rdmaBenchmark`, plus `--transport`, `--json`).
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// server or client; inferred from --remote-ip when omitted.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Local IP the server binds to (default: all addresses).
    #[arg(long)]
    pub local_ip: Option<IpAddr>,
    /// Interface whose IPv4 address the server binds to (e.g. ib0); overrides --local-ip.
    #[arg(long)]
    pub bind_device: Option<String>,
    /// Local port of the server (0 picks a free one and prints it).
    #[arg(long, default_value_t = 20600)]
    pub local_port: u16,
    /// Simulated server-side processing delay in microseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_us: u64,
    /// Server address (client mode, required).
    #[arg(long)]
    pub remote_ip: Option<IpAddr>,
    #[arg(long, default_value_t = 20600)]
    pub remote_port: u16,
    #[arg(long = "case", value_enum, default_value_t = Case::All)]
    pub case: Case,
    /// Seconds per stress payload; the latency case splits it over its six runs.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent connections (-1: by payload size).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub numjobs: i64,
    /// In-flight requests per connection (-1: by payload size).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub iodepth: i64,
    /// Transport: ucx (RDMA, or UCX's tcp/shared-memory transports via UCX_TLS) or tcp.
    #[arg(long, value_enum, default_value_t = TransportKind::Ucx)]
    pub transport: TransportKind,
    /// Print results as JSON on stdout (human text goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// UCX: poll for replies this many microseconds before parking (0: never). Used by the
    /// latency case only; stress cases keep many requests in flight and never poll.
    #[arg(long, default_value_t = 50)]
    pub busy_poll_us: u64,
    /// TCP: SO_SNDBUF/SO_RCVBUF in bytes (0: kernel autotuning).
    #[arg(long, default_value_t = 0)]
    pub socket_buffer: usize,
    /// Only these payload sizes in bytes (comma separated; default 4096,65536,1048576).
    #[arg(long, value_delimiter = ',')]
    pub payloads: Vec<usize>,
    /// The shared secret's file (`rcache.security.auth.secret.file`): the server asks every
    /// connection to prove it, the client proves it.
    #[arg(long)]
    pub auth_secret_file: Option<std::path::PathBuf>,
    /// TCP server: serve TLS with this PEM certificate (and --tls-key-file).
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// TCP server: the PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// TCP client: speak TLS, verifying the server against this PEM CA.
    #[arg(long)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// TCP client: the name the server's certificate carries.
    #[arg(long, default_value = "rcache-worker")]
    pub tls_server_name: String,
}

fn tls_server(args: &BenchArgs) -> anyhow::Result<Option<crate::TlsServer>> {
    match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(c), Some(k)) => Ok(Some(
            crate::TlsServer::from_pem_files(c, k).map_err(|e| anyhow::anyhow!("--tls-*: {e}"))?,
        )),
        _ => Ok(None),
    }
}

fn tls_client(args: &BenchArgs) -> anyhow::Result<Option<crate::TlsClient>> {
    args.tls_ca_file
        .as_deref()
        .map(|ca| crate::TlsClient::from_ca_file(ca, &args.tls_server_name))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--tls-ca-file: {e}"))
}

fn auth_key(args: &BenchArgs) -> anyhow::Result<Option<crate::AuthKey>> {
    args.auth_secret_file
        .as_deref()
        .map(crate::AuthKey::from_file)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--auth-secret-file: {e}"))
}

/// The byte at `i` of every bench payload, so both sides can check what crossed the wire.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(pattern).collect()
}

/// Serves bench requests: reads come from one registered, pre-filled chunk (no copy).
pub struct BenchHandler {
    source: Bytes,
    delay: Duration,
}

impl BenchHandler {
    pub fn new(pool: &BufferPool, delay: Duration) -> anyhow::Result<BenchHandler> {
        let mut chunk = pool.alloc().context("bench buffer pool is empty")?;
        let n = chunk.capacity();
        for (i, b) in chunk.as_mut_slice().iter_mut().enumerate() {
            *b = pattern(i);
        }
        Ok(BenchHandler {
            source: chunk.freeze(n),
            delay,
        })
    }

    fn check(&self, p: &Bytes) -> bool {
        // Full check for small payloads; head and tail for large ones, so the stress-write
        // figure measures the transport, not memcmp.
        let n = p.len();
        if n > self.source.len() {
            return false;
        }
        if n <= 64 << 10 {
            return p[..] == self.source[..n];
        }
        p[..4096] == self.source[..4096] && p[n - 4096..] == self.source[n - 4096..n]
    }
}

#[async_trait::async_trait]
impl Handler for BenchHandler {
    async fn handle(&self, req: Request) -> Response {
        if !self.delay.is_zero() {
            if self.delay >= Duration::from_millis(1) {
                tokio::time::sleep(self.delay).await;
            } else {
                let t = Instant::now();
                while t.elapsed() < self.delay {
                    std::hint::spin_loop();
                }
            }
        }
        match req {
            Request::Ping => Response::Pong,
            Request::BenchRead { len } if len as usize <= self.source.len() => {
                Response::Data(self.source.slice(..len as usize))
            }
            Request::BenchRead { len } => Response::error(
                ErrorCode::TooLarge,
                format!(
                    "bench reads are at most {} bytes, asked {len}",
                    self.source.len()
                ),
            ),
            Request::BenchWrite { payload } if self.check(&payload) => Response::Ack,
            Request::BenchWrite { payload } => Response::error(
                ErrorCode::InvalidRequest,
                format!(
                    "bench write of {} bytes does not carry the bench pattern",
                    payload.len()
                ),
            ),
            _ => Response::error(
                ErrorCode::Unsupported,
                "the bench server answers only ping and bench requests",
            ),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) without a date crate (days-to-civil, H. Hinnant).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn out(json: bool, line: impl AsRef<str>) {
    if json {
        eprintln!("{}", line.as_ref());
    } else {
        println!("{}", line.as_ref());
    }
}

/// Runs `bench` as the flags say: a server until Ctrl+C/SIGTERM, or the client cases.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mode = args.mode.unwrap_or(if args.remote_ip.is_some() {
        Mode::Client
    } else {
        Mode::Server
    });
    match mode {
        Mode::Server => run_server(args).await,
        Mode::Client => run_client(args).await,
    }
}

async fn run_server(args: BenchArgs) -> anyhow::Result<()> {
    // One registered pool: the first chunk is the read source (up to the largest payload),
    // the others receive writes.
    let pool = BufferPool::new(PoolConfig {
        chunk_size: SERVER_MAX,
        initial: 8 * SERVER_MAX,
        prewarm: SERVER_MAX,
        max: 64 * SERVER_MAX,
    })?;
    let handler = Arc::new(BenchHandler::new(
        &pool,
        Duration::from_micros(args.delay_us),
    )?);
    let host = args.local_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let ip = crate::binding::listen_ip(args.bind_device.as_deref(), host)?;
    let addr = SocketAddr::new(ip, args.local_port);
    let opts = ServerOptions {
        pool: Some(pool.clone()),
        socket_buffer: (args.socket_buffer > 0).then_some(args.socket_buffer),
        auth: auth_key(&args)?,
        tls: tls_server(&args)?,
        ..Default::default()
    };
    let server = crate::listen(args.transport, addr, handler, opts).await?;
    println!(
        "[INFO] rcache bench server ({}) running on {} with Delay {} us. Press Ctrl+C to exit.",
        args.transport,
        server.local_addr(),
        args.delay_us
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

fn auto_jobs(payload: usize) -> (usize, usize) {
    match payload {
        p if p <= 4 << 10 => (2, 32),
        p if p <= 64 << 10 => (2, 16),
        _ => (1, 8),
    }
}

#[derive(serde::Serialize)]
struct LatencyResult {
    case: &'static str,
    op: &'static str,
    payload: usize,
    iterations: usize,
    min_us: f64,
    avg_us: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

#[derive(serde::Serialize)]
struct StressResult {
    case: &'static str,
    op: &'static str,
    payload: usize,
    threads: usize,
    in_flight_per_thread: usize,
    seconds: f64,
    ops_per_sec: f64,
    gbps: f64,
    bytes_per_sec: f64,
}

#[derive(serde::Serialize)]
struct Report {
    transport: TransportKind,
    remote: SocketAddr,
    basic: Option<bool>,
    latency: Vec<LatencyResult>,
    stress: Vec<StressResult>,
}

fn client_pool(bytes: usize) -> anyhow::Result<BufferPool> {
    Ok(BufferPool::new(PoolConfig {
        chunk_size: 1 << 20,
        initial: bytes,
        prewarm: bytes,
        max: bytes.max(64 << 20),
    })?)
}

async fn run_client(args: BenchArgs) -> anyhow::Result<()> {
    let Some(ip) = args.remote_ip else {
        bail!("--remote-ip is required in client mode")
    };
    let remote = SocketAddr::new(ip, args.remote_port);
    let json = args.json;
    let payloads: Vec<usize> = if args.payloads.is_empty() {
        PAYLOADS.to_vec()
    } else {
        args.payloads.clone()
    };
    if let Some(p) = payloads.iter().find(|&&p| p == 0 || p > SERVER_MAX) {
        bail!("--payloads: {p} is outside 1..={SERVER_MAX}");
    }
    let pool = client_pool(64 << 20)?;
    let opts = ClientOptions {
        pool: Some(pool),
        socket_buffer: (args.socket_buffer > 0).then_some(args.socket_buffer),
        auth: auth_key(&args)?,
        tls: tls_client(&args)?,
        ..Default::default()
    };
    out(
        json,
        "===============================================================",
    );
    out(
        json,
        format!(
            "               RCACHE {} BENCHMARK SUITE",
            args.transport.to_string().to_uppercase()
        ),
    );
    out(
        json,
        "===============================================================",
    );
    out(json, format!("[INFO] Test started at: {}", utc_now()));
    out(json, format!("[INFO] Connecting to {remote}..."));
    let conn = crate::connect(args.transport, remote, opts.clone())
        .await
        .with_context(|| format!("connecting to the bench server at {remote}"))?;
    let case_name = clap::ValueEnum::to_possible_value(&args.case)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    out(json, format!("\n[INFO] Test Case: {case_name}"));
    out(json, format!("[INFO] Duration: {} seconds", args.duration));
    let mut report = Report {
        transport: args.transport,
        remote,
        basic: None,
        latency: Vec::new(),
        stress: Vec::new(),
    };
    let case = args.case;
    if matches!(case, Case::Basic | Case::All) {
        basic(&conn, &payloads, json).await?;
        report.basic = Some(true);
    }
    if matches!(case, Case::Latency | Case::All) {
        out(json, "\n--- LATENCY TESTS (Sequential, Zero-Copy) ---");
        let per =
            Duration::from_secs_f64((args.duration as f64 / (2 * payloads.len()) as f64).max(0.2));
        let lconn = if args.busy_poll_us > 0 && args.transport == TransportKind::Ucx {
            let mut o = opts.clone();
            o.busy_poll = Some(Duration::from_micros(args.busy_poll_us));
            crate::connect(args.transport, remote, o).await?
        } else {
            conn.clone()
        };
        for &p in &payloads {
            report
                .latency
                .push(latency(&lconn, p, true, per, json).await?);
            report
                .latency
                .push(latency(&lconn, p, false, per, json).await?);
            out(json, "");
        }
    }
    if case == Case::Setup {
        out(
            json,
            "\n--- CONNECTION SETUP (sequential connects, each checked by a round trip) ---",
        );
        let per = Duration::from_secs(args.duration.max(1));
        report
            .latency
            .push(setup(args.transport, remote, &opts, per, json).await?);
    }
    let (w, r) = match case {
        Case::Stress | Case::All => (true, true),
        Case::StressWrite => (true, false),
        Case::StressRead => (false, true),
        _ => (false, false),
    };
    if w || r {
        out(
            json,
            "\n--- BANDWIDTH STRESS TESTS (Multi-Threaded Concurrent, Zero-Copy) ---",
        );
    }
    for (enabled, write) in [(w, true), (r, false)] {
        if !enabled {
            continue;
        }
        for &p in &payloads {
            let (aj, ad) = auto_jobs(p);
            let jobs = if args.numjobs > 0 {
                args.numjobs as usize
            } else {
                aj
            };
            let depth = if args.iodepth > 0 {
                args.iodepth as usize
            } else {
                ad
            };
            report.stress.push(
                stress(
                    args.transport,
                    remote,
                    &opts,
                    p,
                    write,
                    jobs,
                    depth,
                    Duration::from_secs(args.duration.max(1)),
                    json,
                )
                .await?,
            );
        }
    }
    out(
        json,
        "\n===============================================================",
    );
    out(json, "                   ALL TESTS COMPLETED");
    out(
        json,
        "===============================================================",
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn basic(conn: &SharedConnection, payloads: &[usize], json: bool) -> anyhow::Result<()> {
    out(
        json,
        "\n--- BASIC TESTS (ping, write and read with byte checks) ---",
    );
    match conn.call(Request::Ping).await? {
        Response::Pong => {}
        other => bail!("ping answered with {other:?}"),
    }
    for &p in payloads {
        let payload = Bytes::from(pattern_bytes(p));
        match conn.call(Request::BenchWrite { payload }).await? {
            Response::Ack => {}
            other => bail!("write of {p} bytes answered with {other:?}"),
        }
        match conn.call(Request::BenchRead { len: p as u32 }).await? {
            Response::Data(d) => {
                if d.len() != p {
                    bail!("read of {p} bytes returned {} bytes", d.len());
                }
                if let Some(i) = (0..p).find(|&i| d[i] != pattern(i)) {
                    bail!(
                        "read of {p} bytes: byte {i} is {} instead of {}",
                        d[i],
                        pattern(i)
                    );
                }
            }
            other => bail!("read of {p} bytes answered with {other:?}"),
        }
        out(
            json,
            format!("[BASIC] Payload: {p:<7} Bytes | write OK | read OK (bytes checked)"),
        );
    }
    Ok(())
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

async fn one_call(conn: &SharedConnection, req: Request, want: usize) -> anyhow::Result<()> {
    match conn.call(req).await? {
        Response::Ack => Ok(()),
        Response::Data(d) if d.len() == want => Ok(()),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Sequential connection setups for `per`: connect + ping, or connect + the authentication's
/// two round trips when `opts.auth` is set. The connection is closed outside the timing.
async fn setup(
    kind: TransportKind,
    remote: SocketAddr,
    opts: &ClientOptions,
    per: Duration,
    json: bool,
) -> anyhow::Result<LatencyResult> {
    for _ in 0..5 {
        drop(crate::connect(kind, remote, opts.clone()).await?);
    }
    let mut samples: Vec<u64> = Vec::with_capacity(10_000);
    let start = Instant::now();
    while (start.elapsed() < per || samples.len() < 10) && samples.len() < 20_000 {
        let t = Instant::now();
        let conn = crate::connect(kind, remote, opts.clone()).await?;
        samples.push(t.elapsed().as_nanos() as u64);
        drop(conn);
    }
    samples.sort_unstable();
    let avg = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    let r = LatencyResult {
        case: "setup",
        op: if opts.auth.is_some() {
            "connect+auth"
        } else {
            "connect"
        },
        payload: 0,
        iterations: samples.len(),
        min_us: pct(&samples, 0.0),
        avg_us: avg,
        p50_us: pct(&samples, 0.50),
        p99_us: pct(&samples, 0.99),
        p999_us: pct(&samples, 0.999),
        max_us: pct(&samples, 1.0),
    };
    out(
        json,
        format!(
            "[SETUP - {}] Iterations: {} | Min: {:.1} us | Avg: {:.1} us | P50: {:.1} us | P99: {:.1} us",
            r.op, r.iterations, r.min_us, r.avg_us, r.p50_us, r.p99_us
        ),
    );
    Ok(r)
}

async fn latency(
    conn: &SharedConnection,
    p: usize,
    write: bool,
    per: Duration,
    json: bool,
) -> anyhow::Result<LatencyResult> {
    let payload = Bytes::from(pattern_bytes(p));
    let req = || {
        if write {
            Request::BenchWrite {
                payload: payload.clone(),
            }
        } else {
            Request::BenchRead { len: p as u32 }
        }
    };
    for _ in 0..50 {
        one_call(conn, req(), p).await?;
    }
    let mut samples: Vec<u64> = Vec::with_capacity(100_000);
    let start = Instant::now();
    while start.elapsed() < per || samples.len() < 10 {
        let r = req();
        let t = Instant::now();
        one_call(conn, r, p).await?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let avg = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    let r = LatencyResult {
        case: "latency",
        op: if write { "write" } else { "read" },
        payload: p,
        iterations: samples.len(),
        min_us: pct(&samples, 0.0),
        avg_us: avg,
        p50_us: pct(&samples, 0.50),
        p99_us: pct(&samples, 0.99),
        p999_us: pct(&samples, 0.999),
        max_us: pct(&samples, 1.0),
    };
    out(
        json,
        format!(
            "[LATENCY - {}] Payload: {p:<7} Bytes | Iterations: {}",
            if write { "WRITE" } else { "READ " },
            r.iterations
        ),
    );
    out(
        json,
        format!(
            "  -> Min: {:>7.1} us | Avg: {:>7.1} us | P50: {:>7.1} us | P99: {:>7.1} us | P99.9: {:>7.1} us | Max: {:>7.1} us",
            r.min_us, r.avg_us, r.p50_us, r.p99_us, r.p999_us, r.max_us
        ),
    );
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn stress(
    kind: TransportKind,
    remote: SocketAddr,
    opts: &ClientOptions,
    p: usize,
    write: bool,
    jobs: usize,
    depth: usize,
    duration: Duration,
    json: bool,
) -> anyhow::Result<StressResult> {
    out(
        json,
        format!(
            "[BANDWIDTH - {}] Payload: {p:<7} Bytes | Duration: {} sec",
            if write { "WRITE" } else { "READ " },
            duration.as_secs()
        ),
    );
    out(
        json,
        format!("  -> Config: threads={jobs}, inFlightPerThread={depth}"),
    );
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(pattern_bytes(p));
    let mut conns = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let mut o = opts.clone();
        o.pool = Some(client_pool(
            (depth * p).next_multiple_of(1 << 20).max(8 << 20),
        )?);
        conns.push(crate::connect(kind, remote, o).await?);
    }
    // Warm up every connection (UCX wire-up, TCP windows) before the clock starts.
    for c in &conns {
        for _ in 0..4 {
            one_call(
                c,
                if write {
                    Request::BenchWrite {
                        payload: payload.clone(),
                    }
                } else {
                    Request::BenchRead { len: p as u32 }
                },
                p,
            )
            .await?;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for c in &conns {
        for _ in 0..depth {
            let c = c.clone();
            let ops = ops.clone();
            let stop = stop.clone();
            let payload = payload.clone();
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = if write {
                        Request::BenchWrite {
                            payload: payload.clone(),
                        }
                    } else {
                        Request::BenchRead { len: p as u32 }
                    };
                    one_call(&c, req, p).await?;
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut last = (start, 0u64);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut failed = None;
    while start.elapsed() < duration {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let n = ops.load(Ordering::Relaxed);
                let dt = now.duration_since(last.0).as_secs_f64();
                let rate = (n - last.1) as f64 / dt;
                out(json, format!("  -> [Live] {:>8.0} ops/s | {:>7.2} Gbps", rate, rate * p as f64 * 8.0 / 1e9));
                last = (now, n);
            }
            Some(res) = tasks.join_next() => {
                if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| r) {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    let total = ops.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| r)
            && failed.is_none()
        {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        return Err(e.context(format!(
            "stress {} of {p} bytes",
            if write { "write" } else { "read" }
        )));
    }
    let rate = total as f64 / secs;
    let r = StressResult {
        case: if write { "stress-write" } else { "stress-read" },
        op: if write { "write" } else { "read" },
        payload: p,
        threads: jobs,
        in_flight_per_thread: depth,
        seconds: secs,
        ops_per_sec: rate,
        gbps: rate * p as f64 * 8.0 / 1e9,
        bytes_per_sec: rate * p as f64,
    };
    out(
        json,
        format!(
            "  => Total: {:>8.0} ops/s | {:>7.2} Gbps | {:.2} GB/s\n",
            r.ops_per_sec,
            r.gbps,
            r.bytes_per_sec / 1e9
        ),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn flags_have_the_seed_defaults() {
        let a = Cli::parse_from(["bench"]).args;
        assert_eq!(
            (a.local_port, a.remote_port, a.duration, a.delay_us),
            (20600, 20600, 10, 0)
        );
        assert_eq!((a.numjobs, a.iodepth), (-1, -1));
        assert_eq!(a.case, Case::All);
        assert_eq!(a.transport, TransportKind::Ucx);
        assert_eq!(a.mode, None);
        let a = Cli::parse_from([
            "bench",
            "--remote-ip",
            "10.0.1.10",
            "--case",
            "stress-read",
            "--numjobs",
            "8",
            "--iodepth",
            "32",
            "--transport",
            "tcp",
        ])
        .args;
        assert_eq!(a.case, Case::StressRead);
        assert_eq!(
            (a.numjobs, a.iodepth, a.transport),
            (8, 32, TransportKind::Tcp)
        );
    }

    #[test]
    fn percentiles_pick_the_ceiling_rank() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(pct(&v, 0.0), 1.0);
        assert_eq!(pct(&v, 0.5), 500.0);
        assert_eq!(pct(&v, 0.99), 990.0);
        assert_eq!(pct(&v, 0.999), 999.0);
        assert_eq!(pct(&v, 1.0), 1000.0);
    }

    #[test]
    fn utc_dates_format_like_the_seed() {
        let s = utc_now();
        assert_eq!(s.len(), 19, "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
