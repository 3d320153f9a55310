//! Helpers of the process-level tests: start `rcache-worker serve` on loopback with port 0 and
//! temp dirs, read its `/metrics`, make deterministic files.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcache_worker::client::{CacheClient, ClientConfig, MembershipSource};
use rcache_worker::cluster::{Member, MemberPorts, MemberTransport};

pub const PAGE: u64 = 64 << 10;

/// Deterministic pseudo-random bytes and ranges.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    (0..len).map(|_| r.next() as u8).collect()
}

pub struct Worker {
    pub child: Option<Child>,
    pub data: u16,
    pub web: u16,
    pub rdma: Option<u16>,
    pub log: PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Worker {
    /// Starts a worker on `ufs` with extra properties; waits until it is ready.
    pub fn start(dir: &Path, name: &str, ufs: &Path, extra: &[(&str, &str)]) -> Worker {
        Self::start_env(dir, name, ufs, extra, &[])
    }

    /// Like `start` with extra environment variables (e.g. `UCX_TLS`).
    pub fn start_env(
        dir: &Path,
        name: &str,
        ufs: &Path,
        extra: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Worker {
        let uri = format!("file://{}", ufs.display());
        Self::start_uri(dir, name, &uri, extra, env)
    }

    /// Like `start_env` with any `rcache.ufs.uri` (e.g. `s3://bucket/prefix`).
    pub fn start_uri(
        dir: &Path,
        name: &str,
        uri: &str,
        extra: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Worker {
        let props = write_props(dir, name, uri, extra);
        let ports = dir.join(format!("{name}.ports.json"));
        let _ = std::fs::remove_file(&ports);
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
            .arg("serve")
            .arg("--config")
            .arg(&props)
            .arg("--ports-file")
            .arg(&ports)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn rcache-worker");
        let mut w = Worker {
            child: Some(child),
            data: 0,
            web: 0,
            rdma: None,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                w.data = v["data"].as_u64().expect("data port") as u16;
                w.web = v["web"].as_u64().expect("web port") as u16;
                w.rdma = v["rdma"].as_u64().map(|p| p as u16);
                break;
            }
            if let Some(status) = w.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("worker {name} exited with {status}: {}", w.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "worker {name} not ready: {}",
                w.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn member(&self, id: &str) -> Member {
        Member {
            id: id.into(),
            pod: None,
            node: None,
            data_address: "127.0.0.1".into(),
            ports: MemberPorts {
                data: self.data,
                rdma: None,
                web: Some(self.web),
            },
            transport: MemberTransport::Tcp,
            ready: true,
        }
    }

    pub fn http(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.web)).expect("connect web");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    /// A sample from `/metrics`, e.g. `rcache_cache_hits_total{tier="ssd"}`; 0 when absent.
    /// An HTTP request with a JSON body to the web port; returns (status, body).
    pub fn http_call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.web)).expect("connect web");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.http("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn ufs_bytes(&self) -> f64 {
        self.metric("rcache_ufs_read_bytes_total")
    }

    /// Waits until a metric reaches `at_least`.
    pub fn wait_metric(&self, sample: &str, at_least: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(sample) < at_least {
            assert!(Instant::now() < deadline, "{sample} stays below {at_least}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes the test worker's properties (loopback, port 0, small pages and pool) for `uri`.
pub fn write_props(dir: &Path, name: &str, uri: &str, extra: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let props = dir.join(format!("{name}.properties"));
    let mut text = format!(
        "rcache.cluster.name=test\nrcache.ufs.uri={uri}\nrcache.worker.data.port=0\n\
         rcache.worker.web.port=0\nrcache.worker.data.bind.host=127.0.0.1\n\
         rcache.worker.page.size=64KB\nrcache.cluster.placement.block.size=128KB\n\
         rcache.network.rdma.data.buffer.pool.initial.size=4MB\n\
         rcache.network.rdma.data.buffer.pool.prewarm.size=0\n\
         rcache.network.rdma.data.buffer.pool.max.size=32MB\n\
         rcache.worker.page.store.mem.quota=16MB\n"
    );
    for (k, v) in extra {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&props, text).expect("write props");
    props
}

pub async fn client(members: Vec<Member>, block_size: u64) -> CacheClient {
    CacheClient::new(ClientConfig {
        membership: MembershipSource::Fixed(members),
        block_size,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_request: 256 << 10,
        ..ClientConfig::default()
    })
    .await
    .expect("client")
}

pub fn ufs_with_file(dir: &Path, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let ufs = dir.join("ufs");
    std::fs::create_dir_all(ufs.join("sub")).expect("mkdir");
    let bytes = file_bytes(len, seed);
    std::fs::write(ufs.join("sub/data.bin"), &bytes).expect("write");
    (ufs, bytes)
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
