//! A local rcache cluster for the mount tests: N worker processes serving a UFS directory over
//! TCP on loopback, and the membership file that names them. Each worker is this test binary
//! re-executed into `rcache_worker::server::serve` (the function `rcache-worker serve` runs), so
//! the workers always run the code under test, never a stale binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcache_worker::cluster::{Member, MemberPorts, MemberTransport, Membership};
use rcache_worker::server::BoundPorts;

pub const WORKER_CONFIG_ENV: &str = "RCACHE_FUSE_TEST_WORKER_CONFIG";
pub const WORKER_PORTS_ENV: &str = "RCACHE_FUSE_TEST_WORKER_PORTS";
/// The test function that turns the re-executed test binary into a worker.
pub const WORKER_ENTRY_TEST: &str = "worker_process_entry";

/// Runs a worker when this process was spawned as one; returns otherwise.
pub fn run_worker_if_spawned() {
    let Ok(config) = std::env::var(WORKER_CONFIG_ENV) else {
        return;
    };
    let ports = std::env::var(WORKER_PORTS_ENV).expect("ports file env");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let res = rt.block_on(async {
        let props = rcache_worker::config::Properties::load(Path::new(&config))?;
        let cfg = rcache_worker::config::WorkerConfig::from_properties(&props)?;
        rcache_worker::server::serve(
            cfg,
            rcache_worker::server::ServeOptions {
                ports_file: Some(PathBuf::from(ports)),
                ..Default::default()
            },
        )
        .await
    });
    match res {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("worker: {e:#}");
            std::process::exit(1)
        }
    }
}

pub struct Worker {
    pub id: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Worker {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub workers: Vec<Worker>,
    pub config: PathBuf,
    pub ufs: PathBuf,
}

/// Properties shared by the workers and the FUSE client.
fn properties(ufs: &Path, membership: &Path, block_size: &str) -> String {
    format!(
        "rcache.cluster.name=fuse-test\n\
         rcache.ufs.uri=file://{ufs}\n\
         rcache.cluster.membership.file={membership}\n\
         rcache.cluster.placement.block.size={block_size}\n\
         rcache.worker.hostname=127.0.0.1\n\
         rcache.worker.data.bind.host=127.0.0.1\n\
         rcache.worker.data.port=0\n\
         rcache.worker.web.port=0\n\
         rcache.worker.page.size=1MB\n\
         rcache.worker.page.store.mem.quota=64MB\n\
         rcache.network.rdma.data.buffer.pool.initial.size=16MB\n\
         rcache.network.rdma.data.buffer.pool.prewarm.size=0\n\
         rcache.network.rdma.data.buffer.pool.max.size=128MB\n\
         rcache.network.rdma.data.operation.timeout.ms=5s\n",
        ufs = ufs.display(),
        membership = membership.display(),
    )
}

impl Cluster {
    /// Starts `n` workers over `ufs` with placement blocks of `block_size`; returns once every
    /// worker listens and the membership file names them all.
    pub fn start(dir: &Path, ufs: &Path, n: usize, block_size: &str) -> Cluster {
        Self::start_with(dir, ufs, n, block_size, &[])
    }

    /// Like `start`, with extra properties for the workers and the FUSE client.
    pub fn start_with(
        dir: &Path,
        ufs: &Path,
        n: usize,
        block_size: &str,
        extra: &[(&str, &str)],
    ) -> Cluster {
        Self::start_with_env(dir, ufs, n, block_size, extra, &[])
    }

    /// Like `start_with`, with extra environment variables for the workers (e.g. the S3
    /// credentials; an `rcache.ufs.uri` in `extra` overrides the `file://` one of `ufs`).
    pub fn start_with_env(
        dir: &Path,
        ufs: &Path,
        n: usize,
        block_size: &str,
        extra: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Cluster {
        let membership_path = dir.join("members.json");
        let config = dir.join("rcache.properties");
        let mut text = properties(ufs, &membership_path, block_size);
        for (k, v) in extra {
            text.push_str(&format!("{k}={v}\n"));
        }
        std::fs::write(&config, text).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut workers = Vec::new();
        let mut ports_files = Vec::new();
        for i in 0..n {
            let ports = dir.join(format!("worker-{i}.ports.json"));
            let log = dir.join(format!("worker-{i}.log"));
            let child = Command::new(&exe)
                .args([
                    "--exact",
                    WORKER_ENTRY_TEST,
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WORKER_CONFIG_ENV, &config)
                .env(WORKER_PORTS_ENV, &ports)
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn worker");
            workers.push(Worker {
                id: format!("worker-{i}"),
                child: Some(child),
                log,
            });
            ports_files.push(ports);
        }
        let mut members = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (w, ports) in workers.iter_mut().zip(&ports_files) {
            let bound: BoundPorts = loop {
                if let Ok(text) = std::fs::read(ports)
                    && let Ok(b) = serde_json::from_slice(&text)
                {
                    break b;
                }
                if let Some(st) = w.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "{} exited with {st}:\n{}",
                        w.id,
                        std::fs::read_to_string(&w.log).unwrap_or_default()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not listen within 30s",
                    w.id
                );
                std::thread::sleep(Duration::from_millis(25));
            };
            members.push(Member {
                id: w.id.clone(),
                pod: None,
                node: None,
                data_address: "127.0.0.1".into(),
                ports: MemberPorts {
                    data: bound.data,
                    rdma: None,
                    web: Some(bound.web),
                },
                transport: MemberTransport::Tcp,
                ready: true,
            });
        }
        let m = Membership {
            cluster: "fuse-test".into(),
            generation: 1,
            members,
        };
        let tmp = membership_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        std::fs::rename(&tmp, &membership_path).unwrap();
        Cluster {
            workers,
            config,
            ufs: ufs.to_path_buf(),
        }
    }
}
