//! Process-level tests: real `rcache-worker serve` processes on loopback (port 0, temp dirs),
//! read through the client library; UFS use is counted through `/metrics`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{PAGE, Rng, Worker, client, ufs_with_file, walk};
use rcache_worker::client::{CacheClient, ClientConfig, ClientError, Fallback, MembershipSource};
use rcache_worker::cluster::{Member, MemberTransport};

async fn check_random_ranges(c: &CacheClient, bytes: &[u8], n: usize, seed: u64) {
    let mut r = Rng(seed);
    let total = bytes.len() as u64;
    for _ in 0..n {
        let off = r.below(total);
        let len = 1 + r.below((3 * PAGE).min(total - off)) as u32;
        let got = c.read("/sub/data.bin", off, len).await.expect("read");
        let start = (off as usize).min(bytes.len());
        let stop = (off as usize + len as usize).min(bytes.len());
        assert_eq!(got.len(), stop - start, "length of {off}+{len}");
        assert!(got[..] == bytes[start..stop], "bytes of {off}+{len}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_read_fills_from_ufs_and_hot_read_does_not_touch_it() {
    let d = tempfile::tempdir().expect("tmp");
    let len = (PAGE * 40 + 1234) as usize;
    let (ufs, bytes) = ufs_with_file(d.path(), len, 7);
    // The data listener binds to the bind device's address (here `lo`, in a pod `ib0`).
    let w = Worker::start(
        d.path(),
        "w0",
        &ufs,
        &[("rcache.worker.data.bind.device", "lo")],
    );
    assert!(w.http("/healthz").contains("200 OK"));
    assert!(w.http("/readyz").contains("200 OK"));
    let c = client(vec![w.member("w-0")], 128 << 10).await;

    let all = c
        .read("sub/data.bin", 0, len as u32 + 100)
        .await
        .expect("cold read");
    assert!(all[..] == bytes[..], "whole file");
    assert_eq!(w.ufs_bytes(), len as f64, "cold read fills each page once");
    assert_eq!(w.metric("rcache_cache_misses_total"), 41.0);

    check_random_ranges(&c, &bytes, 200, 99).await;
    assert_eq!(w.ufs_bytes(), len as f64, "hot reads do not touch the UFS");
    assert_eq!(
        w.metric("rcache_ufs_reads_total"),
        41.0,
        "no UFS read at all"
    );
    assert!(w.metric("rcache_cache_hits_total{tier=\"mem\"}") > 200.0);
    let tail = c
        .read("sub/data.bin", len as u64 - 10, 1000)
        .await
        .expect("eof");
    assert!(tail[..] == bytes[len - 10..], "short read at EOF");
    assert!(
        c.read("sub/data.bin", len as u64 + 5, 10)
            .await
            .expect("past eof")
            .is_empty()
    );
    assert!(w.metric("rcache_bytes_served_total{transport=\"tcp\"}") > len as f64);

    let st = c.stat("/sub/data.bin").await.expect("stat");
    assert_eq!(st.size, len as u64);
    let names: Vec<String> = c
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["sub"]);
    let e = c.stat("sub/missing").await.expect_err("missing");
    assert!(matches!(e, ClientError::NotFound { .. }), "{e}");
    assert_eq!(e.errno(), libc::ENOENT);
    let e = c.read("../etc/passwd", 0, 10).await.expect_err("traversal");
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_evict_under_their_quotas() {
    let d = tempfile::tempdir().expect("tmp");
    let pages = 24u64;
    let len = (PAGE * pages) as usize;
    let (ufs, bytes) = ufs_with_file(d.path(), len, 11);
    let ssd_quota = 8 * (PAGE + 64);
    let w = Worker::start(
        d.path(),
        "w0",
        &ufs,
        &[
            ("rcache.worker.page.store.mem.quota", "256KB"),
            (
                "rcache.worker.page.store.ssd.dir",
                &d.path().join("ssd").display().to_string(),
            ),
            ("rcache.worker.page.store.ssd.quota", &ssd_quota.to_string()),
        ],
    );
    let c = client(vec![w.member("w-0")], 128 << 10).await;
    for p in 0..pages {
        let got = c
            .read("sub/data.bin", p * PAGE, PAGE as u32)
            .await
            .expect("read");
        assert!(got[..] == bytes[(p * PAGE) as usize..((p + 1) * PAGE) as usize]);
    }
    w.wait_metric("rcache_cache_ssd_writes_total", pages as f64);
    assert_eq!(w.metric("rcache_cache_pages{tier=\"mem\"}"), 4.0);
    assert_eq!(
        w.metric("rcache_cache_evictions_total{tier=\"mem\"}"),
        (pages - 4) as f64
    );
    assert!(w.metric("rcache_cache_evictions_total{tier=\"ssd\"}") >= (pages - 8) as f64);
    assert!(w.metric("rcache_cache_bytes{tier=\"ssd\"}") <= ssd_quota as f64);
    let on_disk: u64 = walk(&d.path().join("ssd/pages"))
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        on_disk <= ssd_quota,
        "{on_disk} bytes on disk over the quota {ssd_quota}"
    );
    // The first pages were evicted from both tiers: reading them again goes to the UFS.
    let before = w.ufs_bytes();
    c.read("sub/data.bin", 0, PAGE as u32).await.expect("read");
    assert_eq!(w.ufs_bytes(), before + PAGE as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_restart_serves_from_disk_and_drops_a_torn_page() {
    let d = tempfile::tempdir().expect("tmp");
    let pages = 12u64;
    let len = (PAGE * pages - 100) as usize;
    let (ufs, bytes) = ufs_with_file(d.path(), len, 23);
    let ssd = d.path().join("ssd").display().to_string();
    let extra = [("rcache.worker.page.store.ssd.dir", ssd.as_str())];
    {
        let w = Worker::start(d.path(), "w0", &ufs, &extra);
        let c = client(vec![w.member("w-0")], 128 << 10).await;
        let got = c.read("sub/data.bin", 0, len as u32).await.expect("cold");
        assert!(got[..] == bytes[..]);
        w.wait_metric("rcache_cache_ssd_writes_total", pages as f64);
        // Drop (SIGKILL): a crash, not a graceful stop.
    }
    // Tear one page (as if the disk lost its tail) and leave a half-written temp file.
    let files = walk(&d.path().join("ssd/pages"));
    assert_eq!(files.len(), pages as usize);
    let torn = &files[0];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(torn)
        .expect("open page");
    f.set_len(f.metadata().expect("md").len() / 2)
        .expect("truncate");
    std::fs::write(d.path().join("ssd/tmp/half.tmp"), b"partial").expect("tmp");

    let w = Worker::start(d.path(), "w0-restarted", &ufs, &extra);
    let c = client(vec![w.member("w-0")], 128 << 10).await;
    let got = c.read("sub/data.bin", 0, len as u32).await.expect("warm");
    assert!(got[..] == bytes[..], "bytes after restart");
    assert_eq!(w.metric("rcache_cache_torn_pages_dropped_total"), 1.0);
    assert_eq!(
        w.metric("rcache_cache_hits_total{tier=\"ssd\"}"),
        (pages - 1) as f64
    );
    assert_eq!(
        w.metric("rcache_ufs_reads_total"),
        1.0,
        "only the torn page is read again"
    );
    assert!(!d.path().join("ssd/tmp/half.tmp").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_worker_killed_mid_loop() {
    let d = tempfile::tempdir().expect("tmp");
    let len = (PAGE * 64) as usize; // 4 MiB over 32 blocks of 128 KiB
    let (ufs, bytes) = ufs_with_file(d.path(), len, 42);
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| Worker::start(d.path(), &format!("w{i}"), &ufs, &[]))
        .collect();
    let members: Vec<Member> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| w.member(&format!("w-{i}")))
        .collect();
    let c = client(members, 128 << 10).await;
    let mut r = Rng(5);
    for i in 0..300 {
        if i == 100 {
            for (n, w) in workers.iter().enumerate() {
                assert!(
                    w.ufs_bytes() > 0.0,
                    "worker {n} got no blocks before the kill"
                );
            }
            workers[1].kill();
        }
        let off = r.below(len as u64);
        let l = 1 + r.below(400 << 10) as u32;
        let got = c
            .read("sub/data.bin", off, l)
            .await
            .unwrap_or_else(|e| panic!("read {i} ({off}+{l}) failed: {e}"));
        let stop = (off as usize + l as usize).min(len);
        assert!(got[..] == bytes[off as usize..stop], "read {i} bytes");
    }
    let served: f64 = [0, 2]
        .iter()
        .map(|&n| workers[n].metric("rcache_bytes_served_total{transport=\"tcp\"}"))
        .sum();
    assert!(served > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_is_hedged_around_well_before_the_request_timeout() {
    let d = tempfile::tempdir().expect("tmp");
    let len = (PAGE * 32) as usize;
    let (ufs, bytes) = ufs_with_file(d.path(), len, 8);
    let workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start(d.path(), &format!("w{i}"), &ufs, &[]))
        .collect();
    let members = vec![workers[0].member("w-0"), workers[1].member("w-1")];
    let c = CacheClient::new(ClientConfig {
        membership: MembershipSource::Fixed(members),
        block_size: 128 << 10,
        request_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(20),
        hedge_after: Some(Duration::from_millis(200)),
        ..ClientConfig::default()
    })
    .await
    .expect("client");
    let got = c
        .read("sub/data.bin", 0, len as u32)
        .await
        .expect("warm-up");
    assert!(got[..] == bytes[..]);
    // SIGSTOP: the process keeps its sockets open but answers nothing (a hung or slow worker).
    let pid = workers[0].child.as_ref().expect("child").id() as i32;
    // SAFETY: signalling a child process we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    for b in 0..16u64 {
        let off = b * (128 << 10);
        let got = c
            .read("sub/data.bin", off, 128 << 10)
            .await
            .unwrap_or_else(|e| panic!("block {b} failed: {e}"));
        assert!(
            got[..] == bytes[off as usize..off as usize + (128 << 10)],
            "block {b}"
        );
    }
    // The stalled worker costs one timeout, then is asked last for `down_for` (2 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // SAFETY: as above; SIGKILL in Drop works on a stopped process too.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_follows_the_membership_file_when_it_changes() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, bytes) = ufs_with_file(d.path(), (PAGE * 4) as usize, 19);
    let mut w0 = Worker::start(d.path(), "w0", &ufs, &[]);
    let w1 = Worker::start(d.path(), "w1", &ufs, &[]);
    let file = d.path().join("members.json");
    let publish = |generation: u64, members: Vec<Member>| {
        let m = rcache_worker::cluster::Membership {
            cluster: "test".into(),
            generation,
            members,
        };
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&m).expect("json")).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    publish(1, vec![w0.member("w-0")]);
    let c = CacheClient::new(ClientConfig {
        membership: MembershipSource::File {
            path: file.clone(),
            poll: Duration::from_millis(50),
        },
        block_size: 128 << 10,
        ..ClientConfig::default()
    })
    .await
    .expect("client");
    assert!(c.read("sub/data.bin", 0, 1000).await.expect("read")[..] == bytes[..1000]);
    assert!(w0.ufs_bytes() > 0.0);
    // The operator replaces w-0 by w-1 (w-0 not ready any more), then w-0 goes away.
    let mut gone = w0.member("w-0");
    gone.ready = false;
    publish(2, vec![gone, w1.member("w-1")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .members()
        .iter()
        .map(|m| m.id.as_str())
        .collect::<Vec<_>>()
        != ["w-1"]
    {
        assert!(Instant::now() < deadline, "membership change not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w0.kill();
    let got = c
        .read("sub/data.bin", 0, (PAGE * 4) as u32)
        .await
        .expect("read via w-1");
    assert!(got[..] == bytes[..]);
    assert_eq!(w1.ufs_bytes(), (PAGE * 4) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ucx_port_fails_naming_the_worker_or_falls_back_to_tcp() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, bytes) = ufs_with_file(d.path(), 1000, 3);
    let w = Worker::start(d.path(), "w0", &ufs, &[]);
    // A port nothing listens on: bind, note it, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut m = w.member("w-ucx");
    m.transport = MemberTransport::Ucx;
    m.ports.rdma = Some(closed);
    let mk = |fallback| {
        let m = m.clone();
        async move {
            CacheClient::new(ClientConfig {
                membership: MembershipSource::Fixed(vec![m]),
                fallback,
                connect_timeout: Duration::from_secs(3),
                request_timeout: Duration::from_secs(5),
                ..ClientConfig::default()
            })
            .await
            .expect("client")
        }
    };
    let e = mk(Fallback::None)
        .await
        .read("sub/data.bin", 0, 100)
        .await
        .expect_err("no fallback");
    let msg = e.to_string();
    assert!(
        msg.contains("w-ucx") && msg.contains("fallback=none"),
        "{msg}"
    );
    assert_eq!(e.errno(), libc::EIO);
    let got = mk(Fallback::Tcp)
        .await
        .read("sub/data.bin", 0, 100)
        .await
        .expect("tcp fallback");
    assert!(got[..] == bytes[..100]);
}

/// A bad property stops the worker with the key, the value and the accepted forms on stderr,
/// and the same error in the Kubernetes termination message (`RCACHE_TERMINATION_LOG`).
#[test]
fn bad_property_stops_the_worker_naming_key_value_and_accepted_forms() {
    let d = tempfile::tempdir().expect("tmp");
    let props = d.path().join("p.properties");
    std::fs::write(
        &props,
        "rcache.cluster.name=t\nrcache.ufs.uri=file:///tmp\nrcache.worker.page.size=12XB\n",
    )
    .expect("write");
    let log = d.path().join("termination-log");
    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .args(["serve", "--config"])
        .arg(&props)
        .env("RCACHE_TERMINATION_LOG", &log)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rcache.worker.page.size") && err.contains("12XB"),
        "{err}"
    );
    assert!(err.contains("accepted") && err.contains("MB"), "{err}");
    let msg = std::fs::read_to_string(&log).expect("termination log written");
    assert!(
        msg.contains("rcache.worker.page.size") && msg.contains("12XB"),
        "{msg}"
    );
    assert!(
        err.contains(msg.trim()),
        "the termination message is the stderr error: {msg} vs {err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .args(["serve", "--config"])
        .arg(&props)
        .env("RCACHE_WORKER_PAGE_SIZE", "1MB")
        .env("RCACHE_WORKER_DATA_PORT", "http")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("RCACHE_WORKER_DATA_PORT") && err.contains("rcache.worker.data.port"),
        "{err}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_worker_whose_secret_file_is_missing_refuses_to_start_naming_the_key() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, _) = ufs_with_file(d.path(), 4096, 1);
    let props = common::write_props(
        d.path(),
        "nosecret",
        &format!("file://{}", ufs.display()),
        &[("rcache.security.auth.secret.file", "/nonexistent/token")],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .arg("serve")
        .arg("--config")
        .arg(&props)
        .output()
        .expect("run rcache-worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rcache.security.auth.secret.file") && err.contains("/nonexistent/token"),
        "{err}"
    );
}
