//! Process-level tests of warm-up: real `rcache-worker serve` processes sharing a membership
//! file; a load job started on one worker (`POST /v1/loads`) fills every worker with the pages
//! it owns, and reads afterwards touch the under-storage not at all.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{PAGE, Worker, client, file_bytes};
use rcache_worker::load::{JobPhase, LoadProgress, Stats};

/// A tree of `small` files of 10 KB and two large ones; returns the UFS root and total bytes.
fn tree(dir: &Path, small: usize, large: usize) -> (std::path::PathBuf, u64) {
    let ufs = dir.join("ufs");
    std::fs::create_dir_all(ufs.join("tree")).expect("mkdir");
    let mut total = 0;
    for i in 0..small {
        let d = ufs.join(format!("tree/dir{}", i % 7));
        std::fs::create_dir_all(&d).expect("mkdir");
        let b = file_bytes(10_000 + i, i as u64 + 1);
        total += b.len() as u64;
        std::fs::write(d.join(format!("small-{i}.bin")), b).expect("write");
    }
    for i in 0..2 {
        let b = file_bytes(large + i * 777, 100 + i as u64);
        total += b.len() as u64;
        std::fs::write(ufs.join(format!("tree/large-{i}.bin")), b).expect("write");
    }
    std::fs::write(ufs.join("outside.bin"), b"not selected").expect("write");
    (ufs, total)
}

fn start_cluster(dir: &Path, ufs: &Path, n: usize, extra: &[(&str, &str)]) -> Vec<Worker> {
    let members = dir.join("members.json");
    let m = members.display().to_string();
    let mut props: Vec<(&str, &str)> = vec![("rcache.cluster.membership.file", &m)];
    props.extend_from_slice(extra);
    let workers: Vec<Worker> = (0..n)
        .map(|i| Worker::start(dir, &format!("w{i}"), ufs, &props))
        .collect();
    let list: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| w.member(&format!("w-{i}")))
        .collect();
    let text = serde_json::json!({"cluster": "test", "generation": 1, "members": list});
    std::fs::write(&members, text.to_string()).expect("members");
    workers
}

fn start_load(w: &Worker, body: serde_json::Value) -> LoadProgress {
    let (status, text) = w.http_call("POST", "/v1/loads", &body.to_string());
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("progress")
}

fn progress(w: &Worker, id: &str) -> LoadProgress {
    let (status, text) = w.http_call("GET", &format!("/v1/loads/{id}"), "");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("progress")
}

/// Polls until the job finishes; returns every progress seen.
fn wait(w: &Worker, id: &str) -> Vec<LoadProgress> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let p = progress(w, id);
        let done = p.phase.finished();
        seen.push(p);
        if done {
            return seen;
        }
        assert!(Instant::now() < deadline, "load {id} never ends: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stats(w: &Worker) -> Stats {
    let (status, text) = w.http_call("GET", "/v1/stats", "");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("stats")
}

fn ufs_bytes(ws: &[Worker]) -> f64 {
    ws.iter().map(|w| w.ufs_bytes()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_tree_is_complete_verified_and_then_read_without_any_ufs_read() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, total) = tree(d.path(), 120, (PAGE * 30) as usize);
    let ws = start_cluster(d.path(), &ufs, 3, &[]);
    // Slow enough (8 MB/s) that progress is seen between start and end.
    start_load(
        &ws[0],
        serde_json::json!({"id": "t1", "paths": ["tree"], "concurrency": 4,
                           "bandwidthBytesPerSecond": 8 << 20}),
    );
    let seen = wait(&ws[0], "t1");
    let last = seen.last().expect("progress");
    assert_eq!(last.phase, JobPhase::Complete, "{last:?}");
    assert_eq!(last.files_total, 122);
    assert_eq!(last.bytes_total, total);
    assert_eq!((last.files_done, last.bytes_done), (122, total));
    assert_eq!((last.files_failed, last.bytes_failed), (0, 0));
    assert_eq!(last.bytes_loaded, total, "{last:?}");
    assert_eq!(last.bytes_resident, Some(total));
    assert_eq!(last.bytes_evicted, Some(0));
    assert!(
        seen.iter()
            .any(|p| p.phase == JobPhase::Loading && p.bytes_done > 0 && p.bytes_done < total),
        "progress rises in between: {seen:?}"
    );
    // Each page was read from the UFS once, by its owner; every worker got a share.
    assert_eq!(ufs_bytes(&ws), total as f64);
    for w in &ws {
        assert!(stats(w).load_fills > 0, "every worker owns some pages");
        assert_eq!(stats(w).misses, 0, "warm-up fills are not misses");
    }

    // Reading the whole tree through the client library makes zero UFS reads.
    let c = client(
        ws.iter()
            .enumerate()
            .map(|(i, w)| w.member(&format!("w-{i}")))
            .collect(),
        128 << 10,
    )
    .await;
    for e in common::walk(&ufs.join("tree")) {
        let rel = e.strip_prefix(&ufs).expect("rel").display().to_string();
        let want = std::fs::read(&e).expect("read");
        let got = c.read(&rel, 0, want.len() as u32 + 10).await.expect("read");
        assert!(got[..] == want[..], "{rel}");
    }
    assert_eq!(ufs_bytes(&ws), total as f64, "no UFS read after the load");
    let (hits, misses): (u64, u64) = ws
        .iter()
        .map(stats)
        .fold((0, 0), |(h, m), s| (h + s.hits, m + s.misses));
    assert!(hits > 0);
    assert_eq!(misses, 0, "hit ratio 1.0");
    let files: u64 = ws.iter().map(|w| stats(w).files_cached).sum();
    assert!(files >= 122, "files cached over the workers: {files}");

    // Loading again finds everything resident and reads nothing.
    start_load(
        &ws[1],
        serde_json::json!({"id": "t2", "paths": ["tree/**/*.bin"]}),
    );
    let again = wait(&ws[1], "t2").pop().expect("progress");
    assert_eq!(again.phase, JobPhase::Complete, "{again:?}");
    assert_eq!((again.bytes_already_cached, again.bytes_loaded), (total, 0));
    assert_eq!(ufs_bytes(&ws), total as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_path_fails_naming_it_and_the_rest_still_loads() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, total) = tree(d.path(), 10, PAGE as usize);
    let ws = start_cluster(d.path(), &ufs, 2, &[]);
    start_load(
        &ws[0],
        serde_json::json!({"id": "m", "paths": ["tree", "no/such/dir", "tree/*.txt"]}),
    );
    let last = wait(&ws[0], "m").pop().expect("progress");
    assert_eq!(last.phase, JobPhase::Failed, "{last:?}");
    assert_eq!((last.files_done, last.bytes_done), (12, total));
    assert_eq!(last.files_failed, 2);
    let paths: Vec<&str> = last.failures.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["no/such/dir", "tree/*.txt"]);
    assert!(last.failures[0].error.contains("not found"), "{last:?}");
    assert!(
        last.failures[1].error.contains("matches no file"),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_bigger_than_the_cache_completes_saying_how_much_was_evicted() {
    let d = tempfile::tempdir().expect("tmp");
    // Two workers of 1 MB MEM each, no SSD; the tree is about 4 MB.
    let (ufs, total) = tree(d.path(), 0, (PAGE * 32) as usize);
    let ws = start_cluster(
        d.path(),
        &ufs,
        2,
        &[("rcache.worker.page.store.mem.quota", "1MB")],
    );
    start_load(&ws[0], serde_json::json!({"id": "big", "paths": ["tree"]}));
    let last = wait(&ws[0], "big").pop().expect("progress");
    assert_eq!(last.phase, JobPhase::Complete, "{last:?}");
    assert_eq!(last.bytes_done, total);
    let resident = last.bytes_resident.expect("verified");
    assert!(resident <= 2 << 20, "{last:?}");
    assert_eq!(last.bytes_evicted, Some(total - resident));
    let msg = last.message.expect("says so");
    assert!(msg.contains("does not fit"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_load_has_its_pages_loaded_by_the_next_owner() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, total) = tree(d.path(), 20, (PAGE * 40) as usize);
    let mut ws = start_cluster(d.path(), &ufs, 3, &[]);
    start_load(
        &ws[0],
        serde_json::json!({"id": "k", "paths": ["tree"], "concurrency": 2,
                           "bandwidthBytesPerSecond": 4 << 20}),
    );
    std::thread::sleep(Duration::from_millis(400));
    ws[2].kill();
    let last = wait(&ws[0], "k").pop().expect("progress");
    assert_eq!(last.phase, JobPhase::Complete, "{last:?}");
    assert_eq!((last.files_done, last.bytes_done), (22, total));
    assert_eq!(last.bytes_resident, Some(total), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_load_stops_and_says_so() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, total) = tree(d.path(), 0, (PAGE * 64) as usize);
    let ws = start_cluster(d.path(), &ufs, 1, &[]);
    start_load(
        &ws[0],
        serde_json::json!({"id": "c", "paths": ["tree"], "concurrency": 1,
                           "bandwidthBytesPerSecond": 1 << 20}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = ws[0].http_call("DELETE", "/v1/loads/c", "");
    assert_eq!(status, 200);
    let p = progress(&ws[0], "c");
    assert_eq!(p.phase, JobPhase::Cancelled);
    let read = ws[0].ufs_bytes();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ws[0].ufs_bytes(), read, "nothing read after the cancel");
    assert!((read as u64) < total);
    let (status, text) = ws[0].http_call("GET", "/v1/loads/nope", "");
    assert_eq!(status, 404, "{text}");
}
