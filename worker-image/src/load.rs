//! Warm-up jobs and the cache's numbers on the worker's web port, for the operator:
//!
//! - `GET /v1/stats`: bytes and capacity per tier, files cached, hits, misses, warm-up fills,
//!   under-storage reads ([`Stats`]).
//! - `POST /v1/loads` ([`LoadSpec`]): starts (or, with a known id, finds) a warm-up job on this
//!   worker, the coordinator. It lists the selection from the under-storage, sends the wire
//!   protocol's `Load` for every range of every file to the range's owner (placement decides; the
//!   client library fails over to the next owner), with bounded concurrency and a bandwidth
//!   limit, then verifies residency with `Load` checks that fill nothing.
//! - `GET /v1/loads/{id}`: its [`LoadProgress`]; `DELETE /v1/loads/{id}`: stops it.
//!
//! It owns the job's bookkeeping; the pages and their residency are the page store's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::cache::PageStore;
use crate::client::{CacheClient, ClientConfig, ClientError};
use crate::ufs::{UfsError, normalize};

/// What to warm up (the body of `POST /v1/loads`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoadSpec {
    /// The job's id, chosen by the caller (the operator: namespace, name, uid and run), so a
    /// caller that restarts finds its job again.
    pub id: String,
    /// Files or directories (everything below) relative to the UFS root, or globs (`*` within
    /// a path segment, `**` across segments, `?` one character).
    pub paths: Vec<String>,
    /// `Load` requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Bytes per second the job may read from the under-storage; 0 = unlimited.
    #[serde(default)]
    pub bandwidth_bytes_per_second: u64,
    /// Check residency after loading (Complete means verified).
    #[serde(default = "yes")]
    pub verify: bool,
}

fn default_concurrency() -> usize {
    8
}

fn yes() -> bool {
    true
}

/// Where a job is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum JobPhase {
    #[default]
    Listing,
    Loading,
    Verifying,
    Complete,
    Failed,
    Cancelled,
}

impl JobPhase {
    pub fn finished(self) -> bool {
        matches!(
            self,
            JobPhase::Complete | JobPhase::Failed | JobPhase::Cancelled
        )
    }
}

/// One file (or selection entry) that failed, with why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoadFailure {
    pub path: String,
    pub error: String,
}

/// Most failures a job keeps (the first ones).
pub const MAX_FAILURES: usize = 10;

/// A job's numbers (`GET /v1/loads/{id}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadProgress {
    pub id: String,
    pub phase: JobPhase,
    pub files_total: u64,
    pub bytes_total: u64,
    /// Files whose every range was loaded (or found resident).
    pub files_done: u64,
    /// Bytes of ranges loaded or found resident.
    pub bytes_done: u64,
    pub files_failed: u64,
    pub bytes_failed: u64,
    /// Bytes that were resident before this job asked.
    pub bytes_already_cached: u64,
    /// Bytes this job read from the under-storage into the tiers.
    pub bytes_loaded: u64,
    /// The first failures ([`MAX_FAILURES`]).
    pub failures: Vec<LoadFailure>,
    /// Bytes of the selection resident at verification (set once verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_resident: Option<u64>,
    /// Bytes of loaded files not resident at verification: evicted, the selection does not fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_evicted: Option<u64>,
    pub elapsed_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The cache's numbers (`GET /v1/stats`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub tiers: Vec<TierStats>,
    pub files_cached: u64,
    pub hits: u64,
    pub misses: u64,
    pub load_fills: u64,
    pub ufs_reads: u64,
    pub ufs_read_bytes: u64,
    /// Which transports really carried the data (`rcache_transport::fabric`).
    #[serde(default)]
    pub fabric: FabricStats,
}

/// The observed transport, as the operator reads it for `status.transport` and `NetworkReady`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FabricStats {
    /// The transports that carried data, busiest first (`ucx/tcp`, `ucx/rc_mlx5`, `tcp`); what
    /// UCX offers while nothing was carried yet; empty when nothing is known.
    pub observed: String,
    /// UCX is serving (`rcache.network.rdma.data.enabled`).
    pub ucx: bool,
    /// UCX offers an RDMA transport and no endpoint fell back to tcp.
    pub rdma_lane: bool,
    /// `ucx/<tl>:<device>` UCX offers.
    pub offered: Vec<String>,
    pub endpoints_rdma: u64,
    pub endpoints_shared_memory: u64,
    pub endpoints_tcp: u64,
    /// Lanes that carried data: `{transport, device, bytesSent, bytesReceived}`.
    pub lanes: Vec<LaneStats>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LaneStats {
    pub transport: String,
    pub device: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// What this process observed of its transports.
pub fn fabric_stats() -> FabricStats {
    let r = rcache_transport::fabric::report();
    FabricStats {
        observed: r.summary(),
        ucx: !r.offered.is_empty(),
        rdma_lane: r.rdma_lane(),
        offered: r.offered.clone(),
        endpoints_rdma: r.endpoints_rdma,
        endpoints_shared_memory: r.endpoints_shared_memory,
        endpoints_tcp: r.endpoints_tcp,
        lanes: r
            .lanes
            .iter()
            .map(|l| LaneStats {
                transport: l.transport.clone(),
                device: l.device.clone(),
                bytes_sent: l.bytes_sent,
                bytes_received: l.bytes_received,
            })
            .collect(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TierStats {
    /// `MEM` or `SSD`.
    pub tier: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub pages: u64,
}

/// The numbers of `store` now.
pub fn stats(store: &PageStore) -> Stats {
    let u = store.tier_use();
    let c = &store.counters;
    let ufs = store.ufs().counters();
    let mut tiers = vec![TierStats {
        tier: "MEM".into(),
        used_bytes: u.mem_bytes,
        capacity_bytes: u.mem_quota,
        pages: u.mem_pages,
    }];
    if u.ssd_quota > 0 {
        tiers.push(TierStats {
            tier: "SSD".into(),
            used_bytes: u.ssd_bytes,
            capacity_bytes: u.ssd_quota,
            pages: u.ssd_pages,
        });
    }
    Stats {
        tiers,
        files_cached: store.files_cached(),
        hits: c.hits_mem.load(Ordering::Relaxed) + c.hits_ssd.load(Ordering::Relaxed),
        misses: c.misses.load(Ordering::Relaxed),
        load_fills: c.load_fills.load(Ordering::Relaxed),
        ufs_reads: ufs.reads.load(Ordering::Relaxed),
        ufs_read_bytes: ufs.bytes.load(Ordering::Relaxed),
        fabric: fabric_stats(),
    }
}

/// Whether a selection entry is a glob rather than a path.
pub fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// Whether `path` matches `glob`: `*` any run within a segment, `**` any run of segments
/// (also none), `?` one character other than `/`, `[abc]`/`[a-z]` one of a set.
pub fn glob_match(glob: &str, path: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let p: Vec<char> = path.chars().collect();
    fn go(g: &[char], p: &[char]) -> bool {
        match g.first() {
            None => p.is_empty(),
            Some('*') if g.get(1) == Some(&'*') => {
                // `**/` also matches no directory at all.
                let rest = if g.get(2) == Some(&'/') {
                    &g[3..]
                } else {
                    &g[2..]
                };
                (0..=p.len()).any(|i| go(rest, &p[i..])) || go(&g[2..], p)
            }
            Some('*') => {
                for i in 0..=p.len() {
                    if go(&g[1..], &p[i..]) {
                        return true;
                    }
                    if i < p.len() && p[i] == '/' {
                        break;
                    }
                }
                false
            }
            Some('?') => !p.is_empty() && p[0] != '/' && go(&g[1..], &p[1..]),
            Some('[') => {
                let Some(close) = g.iter().skip(1).position(|&c| c == ']').map(|i| i + 1) else {
                    return !p.is_empty() && p[0] == '[' && go(&g[1..], &p[1..]);
                };
                let Some(&c) = p.first() else { return false };
                let set = &g[1..close];
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit && go(&g[close + 1..], &p[1..])
            }
            Some(&c) => !p.is_empty() && p[0] == c && go(&g[1..], &p[1..]),
        }
    }
    go(&g, &p)
}

/// The directory a glob's walk starts at: its segments before the first with a wildcard.
fn glob_root(glob: &str) -> String {
    glob.split('/')
        .take_while(|s| !is_glob(s))
        .collect::<Vec<_>>()
        .join("/")
}

/// One file of the selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub path: String,
    pub size: u64,
    pub version: rcache_transport::FileVersion,
}

/// The ranges a file is loaded in: cut at placement blocks and at `chunk` bytes.
pub fn ranges(size: u64, block: u64, chunk: u64) -> Vec<(u64, u64)> {
    let (block, chunk) = (block.max(1), chunk.max(1));
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let stop = size
            .min((pos / block + 1).saturating_mul(block))
            .min(pos.saturating_add(chunk));
        out.push((pos, stop - pos));
        pos = stop;
    }
    out
}

/// A token bucket: `take(n)` waits until `n` more bytes fit under `rate` bytes per second.
struct Limiter {
    rate: u64,
    start: Instant,
    taken: Mutex<u64>,
}

impl Limiter {
    fn new(rate: u64) -> Limiter {
        Limiter {
            rate,
            start: Instant::now(),
            taken: Mutex::new(0),
        }
    }

    async fn take(&self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let due = {
            let mut t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            *t += n;
            // One second's worth may go at once (burst).
            Duration::from_secs_f64(t.saturating_sub(self.rate) as f64 / self.rate as f64)
        };
        let now = self.start.elapsed();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
}

struct Job {
    progress: Arc<Mutex<LoadProgress>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// Most finished jobs a worker remembers.
const KEEP_FINISHED: usize = 32;

/// The warm-up service of one worker: its store, a client to the cluster, its jobs.
pub struct LoadService {
    store: Arc<PageStore>,
    client_cfg: Option<ClientConfig>,
    client: OnceCell<CacheClient>,
    jobs: Mutex<BTreeMap<String, Job>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LoadService {
    /// `client_cfg`: how to reach the cluster (the membership file); `None` loads into this
    /// worker only (a single worker, tests).
    pub fn new(store: Arc<PageStore>, client_cfg: Option<ClientConfig>) -> Arc<LoadService> {
        Arc::new(LoadService {
            store,
            client_cfg,
            client: OnceCell::new(),
            jobs: Mutex::new(BTreeMap::new()),
        })
    }

    async fn client(&self) -> Result<Option<CacheClient>, ClientError> {
        let Some(cfg) = &self.client_cfg else {
            return Ok(None);
        };
        self.client
            .get_or_try_init(|| CacheClient::new(cfg.clone()))
            .await
            .map(|c| Some(c.clone()))
    }

    /// Starts the job `spec.id` unless it exists; returns its progress.
    pub fn start(self: &Arc<Self>, spec: LoadSpec) -> LoadProgress {
        let mut jobs = lock(&self.jobs);
        if let Some(j) = jobs.get(&spec.id) {
            return snapshot(j);
        }
        let finished: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| lock(&j.progress).phase.finished())
            .map(|(k, _)| k.clone())
            .collect();
        for k in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            jobs.remove(k);
        }
        let progress = Arc::new(Mutex::new(LoadProgress {
            id: spec.id.clone(),
            ..LoadProgress::default()
        }));
        let me = self.clone();
        let p = progress.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let res = me.run(spec, p.clone()).await;
            let mut g = lock(&p);
            if let Err(e) = res {
                g.phase = JobPhase::Failed;
                g.message = Some(e);
            }
            // The job's own end, not when someone asks next.
            g.elapsed_seconds = started.elapsed().as_secs_f64();
        });
        let job = Job {
            progress,
            started,
            task,
        };
        let snap = snapshot(&job);
        jobs.insert(snap.id.clone(), job);
        snap
    }

    pub fn progress(&self, id: &str) -> Option<LoadProgress> {
        lock(&self.jobs).get(id).map(snapshot)
    }

    /// Stops the job; its progress stays readable as `Cancelled`.
    pub fn cancel(&self, id: &str) -> Option<LoadProgress> {
        let jobs = lock(&self.jobs);
        let j = jobs.get(id)?;
        j.task.abort();
        {
            let mut g = lock(&j.progress);
            if !g.phase.finished() {
                g.phase = JobPhase::Cancelled;
                g.message = Some("stopped on request".into());
            }
        }
        Some(snapshot(j))
    }

    /// Lists the selection: every file under each entry (or matching each glob).
    async fn select(&self, spec: &LoadSpec, p: &Mutex<LoadProgress>) -> Vec<Selected> {
        let mut files: BTreeMap<String, Selected> = BTreeMap::new();
        for entry in &spec.paths {
            let (root, glob) = if is_glob(entry) {
                let g = entry.trim_start_matches('/').to_string();
                (glob_root(&g), Some(g))
            } else {
                (entry.clone(), None)
            };
            let root = match normalize(&root) {
                Ok(r) => r,
                Err(e) => {
                    fail(p, entry, 0, &e.to_string());
                    continue;
                }
            };
            let before = files.len();
            match self.walk(&root, glob.as_deref(), &mut files).await {
                Ok(()) if files.len() == before => {
                    fail(p, entry, 0, "matches no file in the under-storage")
                }
                Ok(()) => {}
                Err(UfsError::NotFound { .. }) => {
                    fail(p, entry, 0, "not found in the under-storage")
                }
                Err(e) => fail(p, entry, 0, &e.to_string()),
            }
            let mut g = lock(p);
            g.files_total = files.len() as u64;
            g.bytes_total = files.values().map(|f| f.size).sum();
        }
        files.into_values().collect()
    }

    async fn walk(
        &self,
        root: &str,
        glob: Option<&str>,
        out: &mut BTreeMap<String, Selected>,
    ) -> Result<(), UfsError> {
        let stat = self.store.stat(root).await?;
        let mut dirs = Vec::new();
        let mut add = |path: String, st: &rcache_transport::FileStat| {
            if glob.is_none_or(|g| glob_match(g, &path)) {
                out.insert(
                    path.clone(),
                    Selected {
                        path,
                        size: st.size,
                        version: st.into(),
                    },
                );
            }
        };
        if !stat.is_dir {
            add(root.to_string(), &stat);
            return Ok(());
        }
        dirs.push(root.to_string());
        while let Some(dir) = dirs.pop() {
            for e in self.store.list(&dir).await? {
                let child = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                if e.stat.is_dir {
                    dirs.push(child);
                } else {
                    add(child, &e.stat);
                }
            }
        }
        Ok(())
    }

    /// One range: to its owner through the client, or to this worker's store.
    async fn load_range(
        &self,
        client: &Option<CacheClient>,
        f: &Selected,
        offset: u64,
        len: u64,
        fill: bool,
    ) -> Result<rcache_transport::LoadCounts, String> {
        match client {
            Some(c) => c
                .load(&f.path, Some(f.version), offset, len, fill)
                .await
                .map_err(|e| e.to_string()),
            None => self
                .store
                .load_range(&f.path, offset, len, fill, Some(f.version))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn run(
        self: Arc<Self>,
        spec: LoadSpec,
        p: Arc<Mutex<LoadProgress>>,
    ) -> Result<(), String> {
        let files: Vec<Arc<Selected>> = self
            .select(&spec, &p)
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
        lock(&p).phase = JobPhase::Loading;
        let client = self.client().await.map_err(|e| e.to_string())?;
        let page = self.store.page_size();
        let block = client.as_ref().map_or(u64::MAX, |c| c.config().block_size);
        let limiter = Arc::new(Limiter::new(spec.bandwidth_bytes_per_second));
        // Per file: ranges left and whether one failed.
        let left: Ranges = Arc::new(Mutex::new(
            files
                .iter()
                .enumerate()
                .map(|(i, f)| (i, (ranges(f.size, block, 4 * page).len(), false)))
                .collect(),
        ));
        // Empty files are done at once.
        lock(&p).files_done += files.iter().filter(|f| f.size == 0).count() as u64;
        let work: Vec<(usize, Arc<Selected>, u64, u64)> = files
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                ranges(f.size, block, 4 * page)
                    .into_iter()
                    .map(|(o, l)| (i, f.clone(), o, l))
                    .collect::<Vec<_>>()
            })
            .collect();
        let client = Arc::new(client);
        let tasks = work.into_iter().map(|(i, f, o, l)| {
            let (me, client, limiter, left, p) = (
                self.clone(),
                client.clone(),
                limiter.clone(),
                left.clone(),
                p.clone(),
            );
            async move {
                if lock(&left).get(&i).is_some_and(|(_, failed)| *failed) {
                    finish_range(&left, &p, i, &f, l, None);
                    return;
                }
                limiter.take(l).await;
                let res = me.load_range(&client, &f, o, l, true).await;
                finish_range(&left, &p, i, &f, l, Some(res));
            }
        });
        futures::stream::iter(tasks)
            .buffer_unordered(spec.concurrency.clamp(1, 256))
            .for_each(|()| async {})
            .await;
        if spec.verify {
            lock(&p).phase = JobPhase::Verifying;
            let ok: Vec<Arc<Selected>> = files
                .iter()
                .enumerate()
                .filter(|(i, _)| !lock(&left).get(i).is_some_and(|(_, failed)| *failed))
                .map(|(_, f)| f.clone())
                .collect();
            let (resident, want) = self.verify(client, ok, block, page).await;
            let mut g = lock(&p);
            g.bytes_resident = Some(resident);
            g.bytes_evicted = Some(want.saturating_sub(resident));
        }
        let mut g = lock(&p);
        g.phase = if g.files_failed > 0 {
            JobPhase::Failed
        } else {
            JobPhase::Complete
        };
        if let Some(ev) = g.bytes_evicted.filter(|&b| b > 0) {
            g.message = Some(format!(
                "{ev} of {} bytes were evicted again: the selection does not fit in the cache; {} bytes of it are resident",
                g.bytes_total,
                g.bytes_resident.unwrap_or(0)
            ));
        }
        Ok(())
    }

    /// The resident bytes of `files` and their total size; what is missing was evicted. SSD
    /// writes are behind the fills, so a shortfall is checked again after a pause.
    async fn verify(
        self: &Arc<Self>,
        client: Arc<Option<CacheClient>>,
        files: Vec<Arc<Selected>>,
        block: u64,
        page: u64,
    ) -> (u64, u64) {
        let want: u64 = files.iter().map(|f| f.size).sum();
        let checks: Vec<(Arc<Selected>, u64, u64)> = files
            .iter()
            .flat_map(|f| {
                ranges(f.size, block, 64 * page)
                    .into_iter()
                    .map(|(o, l)| (f.clone(), o, l))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut resident = 0;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let asks = checks.iter().cloned().map(|(f, o, l)| {
                let (me, client) = (self.clone(), client.clone());
                async move {
                    me.load_range(&client, &f, o, l, false)
                        .await
                        .map_or(0, |c| c.bytes)
                }
            });
            resident = futures::stream::iter(asks)
                .buffer_unordered(16)
                .fold(0u64, |a, b| async move { a + b })
                .await;
            if resident >= want {
                break;
            }
        }
        (resident, want)
    }
}

/// Per file of a job: ranges not finished yet, and whether one failed.
type Ranges = Arc<Mutex<HashMap<usize, (usize, bool)>>>;

/// Records a finished range (`None`: skipped because its file already failed).
fn finish_range(
    left: &Ranges,
    p: &Mutex<LoadProgress>,
    i: usize,
    f: &Selected,
    len: u64,
    res: Option<Result<rcache_transport::LoadCounts, String>>,
) {
    let mut left = lock(left);
    let Some(entry) = left.get_mut(&i) else {
        return;
    };
    entry.0 = entry.0.saturating_sub(1);
    let mut g = lock(p);
    match res {
        Some(Ok(c)) => {
            g.bytes_done += len;
            g.bytes_already_cached += c.resident_bytes;
            g.bytes_loaded += c.bytes.saturating_sub(c.resident_bytes);
        }
        Some(Err(e)) if !entry.1 => {
            entry.1 = true;
            g.files_failed += 1;
            g.bytes_failed += f.size;
            if g.failures.len() < MAX_FAILURES {
                g.failures.push(LoadFailure {
                    path: f.path.clone(),
                    error: e,
                });
            }
        }
        _ => {}
    }
    if entry.0 == 0 && !entry.1 {
        g.files_done += 1;
    }
}

/// Records a selection entry that failed as a whole.
fn fail(p: &Mutex<LoadProgress>, path: &str, bytes: u64, error: &str) {
    let mut g = lock(p);
    g.files_failed += 1;
    g.bytes_failed += bytes;
    if g.failures.len() < MAX_FAILURES {
        g.failures.push(LoadFailure {
            path: path.into(),
            error: error.into(),
        });
    }
}

fn snapshot(j: &Job) -> LoadProgress {
    let mut p = lock(&j.progress).clone();
    if !p.phase.finished() || p.elapsed_seconds == 0.0 {
        p.elapsed_seconds = j.started.elapsed().as_secs_f64();
        if p.phase.finished() {
            lock(&j.progress).elapsed_seconds = p.elapsed_seconds;
        }
    }
    p
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no load job {id:?} on this worker (it restarted, or the id is wrong)\n"),
    )
        .into_response()
}

/// The `/v1/...` routes.
pub fn router(svc: Arc<LoadService>) -> Router {
    let (s1, s2, s3, s4) = (svc.clone(), svc.clone(), svc.clone(), svc);
    Router::new()
        .route(
            "/v1/stats",
            get(move || {
                let s = s1.clone();
                async move { json(StatusCode::OK, &stats(&s.store)) }
            }),
        )
        .route(
            "/v1/loads",
            axum::routing::post(move |body: Bytes| {
                let s = s2.clone();
                async move {
                    match serde_json::from_slice::<LoadSpec>(&body) {
                        Ok(spec) if spec.id.is_empty() || spec.paths.is_empty() => (
                            StatusCode::BAD_REQUEST,
                            "a load needs an id and at least one path\n",
                        )
                            .into_response(),
                        Ok(spec) => json(StatusCode::OK, &s.start(spec)),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("bad load request: {e}\n"))
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/v1/loads/{id}",
            get(move |Path(id): Path<String>| {
                let s = s3.clone();
                async move {
                    match s.progress(&id) {
                        Some(p) => json(StatusCode::OK, &p),
                        None => not_found(&id),
                    }
                }
            })
            .delete(move |Path(id): Path<String>| {
                let s = s4.clone();
                async move {
                    match s.cancel(&id) {
                        Some(p) => json(StatusCode::OK, &p),
                        None => not_found(&id),
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_segments() {
        assert!(glob_match("data/*.bin", "data/a.bin"));
        assert!(!glob_match("data/*.bin", "data/sub/a.bin"));
        assert!(glob_match("data/**/*.bin", "data/sub/x/a.bin"));
        assert!(glob_match("data/**/*.bin", "data/a.bin"));
        assert!(glob_match("d/file-?[0-3].txt", "d/file-a2.txt"));
        assert!(!glob_match("d/file-?[0-3].txt", "d/file-a7.txt"));
        assert!(!glob_match("d/?", "d//"));
        assert_eq!(glob_root("data/sub/**/*.bin"), "data/sub");
        assert_eq!(glob_root("*.bin"), "");
    }

    #[test]
    fn ranges_are_cut_at_blocks_and_chunks_and_cover_the_file_once() {
        assert_eq!(ranges(0, 10, 4), vec![]);
        assert_eq!(ranges(10, 6, 4), vec![(0, 4), (4, 2), (6, 4)]);
        let r = ranges(1 << 30, 64 << 20, 4 << 20);
        assert_eq!(r.iter().map(|(_, l)| l).sum::<u64>(), 1 << 30);
        assert!(
            r.iter()
                .all(|(o, l)| o / (64 << 20) == (o + l - 1) / (64 << 20))
        );
    }

    #[tokio::test]
    async fn the_limiter_holds_a_job_to_its_bandwidth() {
        let l = Limiter::new(1000);
        let t = Instant::now();
        for _ in 0..4 {
            l.take(500).await;
        }
        // 2000 bytes at 1000 B/s with a 1000-byte burst: about one second.
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }
}
