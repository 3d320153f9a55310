//! Shared helpers of the mount tests: FUSE availability, a test tree, tree comparison, and a
//! guard around a running `rcache-fuse` process that always unmounts.
#![allow(dead_code)]

pub mod cluster;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `Err(reason)` when this machine cannot mount FUSE (not root, no /dev/fuse).
pub fn fuse_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    None
}

/// When FUSE is unavailable: under `CI=true` fails the calling test with the reason (CI runs as
/// root with /dev/fuse, so a skip there would hide a broken machine); elsewhere returns from it
/// printing `skipped: <why>`.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if let Some(why) = common::fuse_unavailable() {
            let why = format!("FUSE mount tests need root and /dev/fuse ({why})");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and this test cannot run: {why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The tree every mount test reads: small, exactly a page, many pages (not aligned), empty,
/// nested directories, an empty directory.
pub fn make_tree(root: &Path) {
    let files: &[(&str, usize)] = &[
        ("small.txt", 100),
        ("page.bin", 4096),
        ("many-pages.bin", 3 * 1024 * 1024 + 123),
        ("empty", 0),
        ("nested/a/b/deep.bin", 70_000),
        ("nested/a/sibling.txt", 5),
        ("nested/two-parts.bin", 2 * 1024 * 1024),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pattern(*len, i as u64 + 1)).unwrap();
    }
    std::fs::create_dir_all(root.join("nested/empty-dir")).unwrap();
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Walks `ufs` and asserts `mnt` has the same names, types, sizes and every byte; also reads
/// each file at a few unaligned offsets (the random-read path). Returns the bytes compared.
pub fn assert_same_tree(ufs: &Path, mnt: &Path) -> u64 {
    let mut total = 0;
    assert_eq!(
        sorted_names(ufs),
        sorted_names(mnt),
        "listing of {}",
        mnt.display()
    );
    for name in sorted_names(ufs) {
        let (u, m) = (ufs.join(&name), mnt.join(&name));
        let (um, mm) = (
            std::fs::metadata(&u).unwrap(),
            std::fs::metadata(&m).unwrap(),
        );
        assert_eq!(um.is_dir(), mm.is_dir(), "type of {}", m.display());
        if um.is_dir() {
            total += assert_same_tree(&u, &m);
            continue;
        }
        assert_eq!(um.len(), mm.len(), "size of {}", m.display());
        let want = std::fs::read(&u).unwrap();
        let mut got = Vec::new();
        std::fs::File::open(&m)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("read {}: {e}", m.display()));
        assert!(got == want, "content of {} differs", m.display());
        let f = std::fs::File::open(&m).unwrap();
        for off in [want.len() / 2 + 1, want.len().saturating_sub(10), 4095, 1] {
            let mut buf = vec![0u8; 5000];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            let end = want.len().min(off + 5000).max(off.min(want.len()));
            assert_eq!(
                &buf[..n],
                &want[off.min(want.len())..end],
                "pread {} at {off}",
                m.display()
            );
        }
        total += want.len() as u64;
    }
    total
}

/// `GET path` on `addr` over HTTP/1.1: (status code, body). Bounded by 10 s timeouts.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the unlabelled sample `name` in OpenMetrics text (0 when absent).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The filesystem type mounted exactly at `path`, if any.
pub fn mount_type(path: &Path) -> Option<String> {
    rcache_fuse::mount::mounted_fs_type(path)
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A running `rcache-fuse mount`; dropping it stops the process and detaches the mount.
pub struct FuseProcess {
    pub child: Option<Child>,
    pub mount_point: PathBuf,
    pub log: PathBuf,
}

impl FuseProcess {
    /// Starts `rcache-fuse mount` with `args` appended and waits until the mount is up. Its web
    /// endpoints listen on a free loopback port ([`web_addr`](Self::web_addr)), never on the
    /// fixed `rcache.fuse.web.port`, so tests run side by side.
    pub fn start(config: &Path, mount_point: &Path, log: &Path, args: &[&str]) -> Self {
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rcache-fuse"))
            .arg("mount")
            .arg("--config")
            .arg(config)
            .arg("--mount-point")
            .arg(mount_point)
            .args(["--web-listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn rcache-fuse");
        let mut p = Self {
            child: Some(child),
            mount_point: mount_point.to_path_buf(),
            log: log.to_path_buf(),
        };
        // Ready means mounted and set up (the client reports it on /readyz once the session
        // serves); only then does the test touch the mount.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "rcache-fuse exited with {st} before mounting:\n{}",
                    p.log_text()
                );
            }
            if p.log_text().contains("web server listening on ")
                && http_get(p.web_addr(), "/readyz").0 == 200
                && mount_type(mount_point).as_deref() == Some("fuse.rcache")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rcache-fuse did not become ready in 60s:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of the web endpoints, from the log line `web server listening on ADDR`
    /// (start it with `--web-listen 127.0.0.1:0`).
    pub fn web_addr(&self) -> std::net::SocketAddr {
        let log = self.log_text();
        let marker = "web server listening on ";
        let at = log
            .find(marker)
            .unwrap_or_else(|| panic!("no `{marker}` line in the log:\n{log}"));
        let rest = &log[at + marker.len()..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest[..end]
            .parse()
            .unwrap_or_else(|e| panic!("bad web address {:?}: {e}", &rest[..end]))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` and waits for the exit; returns the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process already stopped");
        // SAFETY: kill with our child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rcache-fuse did not exit within 15s of signal {sig}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for FuseProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with our child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if mount_type(&self.mount_point).is_some() {
            let _ = rcache_fuse::mount::lazy_unmount(&self.mount_point);
        }
    }
}
