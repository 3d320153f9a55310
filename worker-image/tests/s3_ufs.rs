//! Process-level tests of the S3 under-storage (`rcache.ufs.uri=s3://bucket/prefix`) against a
//! real S3 server on loopback: SeaweedFS, started (once per machine, idempotently) by
//! `e2e/s3/s3server up`. A real `rcache-worker serve` reads objects with ranged GETs, follows an
//! overwritten object (pinned reads answer Stale), lists past S3's 1,000-key pages, and stops at
//! start with a one-line termination message on bad credentials, a missing bucket or an
//! endpoint that does not answer, never showing a secret value.
//!
//! Under `CI=true` a test that cannot reach its S3 server fails with the reason; elsewhere it
//! prints `skipped: <why>`.

mod common;

#[path = "common/s3.rs"]
mod s3env;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PAGE, Worker, client, file_bytes, write_props};
use futures::StreamExt;
use rcache_worker::client::ClientError;
use s3env::{BUCKET, S3, put, unique};

const BLOCK: u64 = 128 << 10;

/// Starts a worker on `s3://BUCKET/<prefix>` of the local server.
fn start(s3: &S3, dir: &Path, prefix: &str, extra: &[(&str, &str)]) -> Worker {
    let mut props = s3.props();
    props.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Worker::start_uri(dir, "w0", &format!("s3://{BUCKET}/{prefix}"), &props, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_through_the_worker_equal_the_objects_and_listings_show_the_tree() {
    let s3 = require_s3!();
    let d = tempfile::tempdir().expect("tmp");
    let prefix = unique("bytes");
    let store = s3.store();
    let big = file_bytes((PAGE * 5 + 123) as usize, 7);
    put(&store, &format!("{prefix}/data/big.bin"), &big).await;
    put(&store, &format!("{prefix}/data/small.txt"), b"hello").await;
    put(&store, &format!("{prefix}/data/sub/x.bin"), b"x").await;
    put(&store, &format!("{prefix}/empty.bin"), b"").await;

    let w = start(s3, d.path(), &prefix, &[]);
    let c = client(vec![w.member("w-0")], BLOCK).await;

    let got = c
        .read("data/big.bin", 0, big.len() as u32 + 1000)
        .await
        .expect("whole object");
    assert_eq!(got.len(), big.len(), "short at the end of the object");
    assert!(got[..] == big[..], "every byte equals the object");
    let off = PAGE + 17;
    let got = c
        .read("data/big.bin", off, (PAGE * 3) as u32)
        .await
        .expect("unaligned range");
    assert!(got[..] == big[off as usize..(off + PAGE * 3) as usize]);
    let cold = w.ufs_bytes();
    assert!(cold >= big.len() as f64, "read from S3: {cold}");
    let again = c
        .read("data/big.bin", 0, big.len() as u32)
        .await
        .expect("hot");
    assert!(again[..] == big[..]);
    assert_eq!(w.ufs_bytes(), cold, "a hot read sends no GET");

    assert_eq!(
        &c.read("data/small.txt", 0, 100).await.expect("small")[..],
        b"hello"
    );
    assert!(c.read("empty.bin", 0, 100).await.expect("empty").is_empty());
    let past = c
        .read("data/big.bin", big.len() as u64 + PAGE, 10)
        .await
        .expect("past the end");
    assert!(past.is_empty(), "nothing past the end");

    assert_eq!(
        c.stat("data/big.bin").await.expect("stat").size,
        big.len() as u64
    );
    assert!(
        c.stat("data").await.expect("dir").is_dir,
        "a prefix is a directory"
    );
    assert!(c.stat("").await.expect("root").is_dir);
    assert!(matches!(
        c.stat("data/nope").await,
        Err(ClientError::NotFound { .. })
    ));
    let listed = c.list("data").await.expect("list");
    let names: Vec<(&str, bool)> = listed
        .iter()
        .map(|e| (e.name.as_str(), e.stat.is_dir))
        .collect();
    assert_eq!(
        names,
        vec![("big.bin", false), ("small.txt", false), ("sub", true)]
    );
    assert_eq!(listed[0].stat.size, big.len() as u64);
    let root: Vec<String> = c
        .list("")
        .await
        .expect("root")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, vec!["data", "empty.bin"]);
    assert!(c.list("nope").await.is_err(), "a missing directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_overwritten_under_a_pinned_read_is_stale_and_a_reopen_reads_the_new_bytes() {
    let s3 = require_s3!();
    let d = tempfile::tempdir().expect("tmp");
    let prefix = unique("stale");
    let store = s3.store();
    let key = format!("{prefix}/f.bin");
    let len = (BLOCK * 3) as usize;
    let old = file_bytes(len, 1);
    put(&store, &key, &old).await;
    // An hour's interval: only the pinned read's own check can notice the overwrite.
    let w = start(
        s3,
        d.path(),
        &prefix,
        &[("rcache.user.file.metadata.sync.interval", "1h")],
    );
    let c = client(vec![w.member("w-0")], BLOCK).await;
    let listed = c.list("").await.expect("list before");
    let opened = c.stat("f.bin").await.expect("open");
    assert_eq!(
        (listed[0].stat.size, listed[0].stat.mtime_ns),
        (opened.size, opened.mtime_ns),
        "listing and stat agree"
    );
    let first = c
        .read_at_version("f.bin", &opened, 0, BLOCK as u32)
        .await
        .expect("first block");
    assert!(first[..] == old[..BLOCK as usize]);

    // Same size, most likely the same Last-Modified second: only the ETag tells them apart.
    let new = file_bytes(len, 2);
    put(&store, &key, &new).await;
    let err = c
        .read_at_version("f.bin", &opened, BLOCK, (BLOCK * 2) as u32)
        .await
        .expect_err("a pinned read of the overwritten object");
    assert!(matches!(err, ClientError::Stale { .. }), "{err}");
    assert_eq!(err.errno(), libc::ESTALE);
    assert!(matches!(
        c.check_version("f.bin", &opened).await,
        Err(ClientError::Stale { .. })
    ));

    let reopened = c.stat("f.bin").await.expect("reopen");
    assert_ne!(
        (reopened.size, reopened.mtime_ns),
        (opened.size, opened.mtime_ns),
        "a new version"
    );
    let got = c
        .read_at_version("f.bin", &reopened, 0, len as u32)
        .await
        .expect("new bytes");
    assert!(got[..] == new[..], "exactly the new object");
    // The listing cached before the overwrite does not bring the old version back.
    let listed = c.list("").await.expect("list after");
    assert_eq!(
        (listed[0].stat.size, listed[0].stat.mtime_ns),
        (reopened.size, reopened.mtime_ns),
        "the listing names the new version"
    );
    let again = c.stat("f.bin").await.expect("stat after the listing");
    assert_eq!(
        again.mtime_ns, reopened.mtime_ns,
        "no step back to the old version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_2500_keys_is_complete() {
    let s3 = require_s3!();
    let d = tempfile::tempdir().expect("tmp");
    let prefix = unique("many");
    let store = s3.store();
    let names: Vec<String> = (0..2500).map(|i| format!("k{i:05}")).collect();
    let t = Instant::now();
    futures::stream::iter(names.iter())
        .for_each_concurrent(32, |n| {
            let store = &store;
            let key = format!("{prefix}/many/{n}");
            async move { put(store, &key, n.as_bytes()).await }
        })
        .await;
    eprintln!("uploaded 2500 keys in {:?}", t.elapsed());
    let w = start(s3, d.path(), &prefix, &[]);
    let c = client(vec![w.member("w-0")], BLOCK).await;
    let listed = c.list("many").await.expect("list");
    let got: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(got.len(), 2500, "every key, past S3's 1,000-key pages");
    assert!(
        got.iter().zip(&names).all(|(a, b)| a == b),
        "sorted, each once"
    );
    assert!(listed.iter().all(|e| e.stat.size == 6 && !e.stat.is_dir));
    let last = c
        .read("many/k02499", 0, 100)
        .await
        .expect("read a listed key");
    assert_eq!(&last[..], b"k02499");
}

/// Runs a worker that must stop at start; returns its termination message, its log and how
/// long it ran.
fn failed_start(
    dir: &Path,
    uri: &str,
    extra: &[(&str, String)],
    env: &[(&str, String)],
) -> (String, String, Duration) {
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let props = write_props(dir, "bad", uri, &extra);
    let term = dir.join("termination-log");
    std::fs::write(&term, "").expect("termination log");
    let log = dir.join("bad.log");
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .arg("serve")
        .arg("--config")
        .arg(&props)
        .env("RCACHE_TERMINATION_LOG", &term)
        .env("RUST_LOG", "debug")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn rcache-worker");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the worker did not stop within 60s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    assert!(!status.success(), "the worker must refuse to start");
    let mut message = String::new();
    std::fs::File::open(&term)
        .expect("termination log")
        .read_to_string(&mut message)
        .expect("read");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("stopped after {took:?}: {message}");
    (message, log, took)
}

#[test]
fn bad_credentials_stop_the_worker_with_access_denied_naming_the_bucket_and_no_secret() {
    let s3 = require_s3!();
    let d = tempfile::tempdir().expect("tmp");
    let wrong = "not-the-secret-5f3a9c17e2";
    let mut env = s3.env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", wrong.into()));
    let (msg, log, took) = failed_start(
        d.path(),
        &format!("s3://{BUCKET}/whatever"),
        &s3.props(),
        &env,
    );
    assert!(
        msg.contains("AccessDenied")
            && msg.contains(BUCKET)
            && msg.contains("credentialsSecretRef"),
        "names the fault, the bucket and the fix: {msg}"
    );
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(took < Duration::from_secs(20), "promptly: {took:?}");
    for text in [&msg, &log] {
        assert!(!text.contains(wrong), "the secret leaked: {text}");
        assert!(!text.contains(&s3.secret), "a secret leaked: {text}");
    }
}

#[test]
fn a_missing_bucket_stops_the_worker_promptly_with_bucket_not_found() {
    let s3 = require_s3!();
    let d = tempfile::tempdir().expect("tmp");
    let (msg, _log, took) = failed_start(
        d.path(),
        "s3://rcache-no-such-bucket-9d2e/x",
        &s3.props(),
        &s3.env(),
    );
    assert!(
        msg.contains("BucketNotFound") && msg.contains("rcache-no-such-bucket-9d2e"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(20), "promptly: {took:?}");
}

#[test]
fn an_endpoint_that_never_answers_stops_the_worker_within_its_deadline_as_unreachable() {
    // Needs no S3 server: a listener that accepts connections and never answers, and one
    // port with nothing behind it.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_port = hole.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            held.push(s); // keep it open, say nothing
        }
    });
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let env = [
        ("AWS_ACCESS_KEY_ID", "rcache-test-access".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "rcache-test-secret-key".to_string(),
        ),
    ];
    // https too: the TLS client (rustls with ring) is built and fails like the others.
    for (scheme, port) in [
        ("http", hole_port),
        ("http", closed_port),
        ("https", closed_port),
    ] {
        let d = tempfile::tempdir().expect("tmp");
        let props = [
            (
                "rcache.underfs.s3.endpoint",
                format!("{scheme}://127.0.0.1:{port}"),
            ),
            ("rcache.underfs.s3.path.style", "true".to_string()),
            ("rcache.underfs.s3.region", "us-east-1".to_string()),
            ("rcache.underfs.s3.request.timeout", "1s".to_string()),
            ("rcache.underfs.s3.retry.max", "1".to_string()),
        ];
        let (msg, _log, took) = failed_start(d.path(), "s3://some-bucket/p", &props, &env);
        assert!(
            msg.contains("Unreachable") && msg.contains("some-bucket") && msg.contains("endpoint"),
            "{scheme} port {port}: {msg}"
        );
        // Two attempts of 1s each, the backoff between, and the process start.
        assert!(
            took < Duration::from_secs(10),
            "{scheme} port {port}: {took:?}"
        );
    }
}

/// A TCP forwarder to the S3 server that can be made to swallow everything (a store that
/// stops answering mid-flight: connections stay open, no byte comes back).
struct Blackhole {
    port: u16,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    fn to(upstream: &str) -> Blackhole {
        use std::sync::atomic::Ordering;
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = silent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 << 10];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                // Silent: swallow the bytes, keep the connection open.
                                Ok(_) if flag.load(Ordering::SeqCst) => continue,
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        Blackhole { port, silent }
    }

    fn go_silent(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_gives_readers_an_io_error_within_the_deadline_and_cached_pages_are_still_served()
 {
    let s3 = require_s3!();
    let d = tempfile::tempdir().expect("tmp");
    let prefix = unique("silent");
    let store = s3.store();
    let bytes = file_bytes((BLOCK * 2) as usize, 5);
    put(&store, &format!("{prefix}/cached.bin"), &bytes).await;
    put(&store, &format!("{prefix}/cold.bin"), &bytes).await;
    let hole = Blackhole::to(&s3.endpoint);
    let endpoint = format!("http://127.0.0.1:{}", hole.port);
    let w = start(
        s3,
        d.path(),
        &prefix,
        &[
            ("rcache.underfs.s3.endpoint", endpoint.as_str()),
            ("rcache.underfs.s3.request.timeout", "1s"),
            ("rcache.underfs.s3.retry.max", "1"),
            ("rcache.user.file.metadata.sync.interval", "1h"),
        ],
    );
    let c = client(vec![w.member("w-0")], BLOCK).await;
    let got = c
        .read("cached.bin", 0, bytes.len() as u32)
        .await
        .expect("warm");
    assert!(got[..] == bytes[..]);
    assert_eq!(
        c.stat("cold.bin").await.expect("stat").size,
        bytes.len() as u64
    );

    hole.go_silent();
    let t = Instant::now();
    let err = c
        .read("cold.bin", 0, 4096)
        .await
        .expect_err("no answer from the store");
    // The property proven is "an error, never a hang". The worker answers within its deadline,
    // (retry.max + 1) x 1 s + 1 s = 3 s, with an Unreachable I/O error; the client treats that as
    // this owner's failure and, every owner having failed, asks once more after 50 ms (one more
    // round rides out a restarting worker). So the caller waits 2 x 3 s plus scheduling: 6.1 s
    // idle, 8.5 s seen on the loaded 2-core CI machine. The bound is the hang bound.
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(
        err.to_string().contains("Unreachable"),
        "the store's fault: {err}"
    );
    let again = c
        .read("cached.bin", 0, bytes.len() as u32)
        .await
        .expect("cached pages are served without the store");
    assert!(again[..] == bytes[..]);
}
