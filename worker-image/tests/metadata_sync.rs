//! Process-level tests of `rcache.user.file.metadata.sync.interval`: a real `rcache-worker serve`
//! on loopback follows a file replaced in the under-storage (new bytes, new size), within the
//! interval, and after a restart never serves a disk page of a file changed while it was down;
//! reads pinned to the version a client opened are stale, not mixed, once the file changes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::{PAGE, Worker, client, file_bytes, ufs_with_file};

const FILE: &str = "sub/data.bin";

/// Overwrites the UFS file with `bytes` and an explicit mtime, so the new version differs from
/// the old one whatever the filesystem's clock granularity.
fn overwrite(ufs: &Path, bytes: &[u8], secs: u64) {
    let path = ufs.join(FILE);
    std::fs::write(&path, bytes).expect("overwrite");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_zero_serves_the_new_bytes_and_size_right_after_an_overwrite() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, old) = ufs_with_file(d.path(), (PAGE * 3 + 100) as usize, 21);
    let w = Worker::start(
        d.path(),
        "w0",
        &ufs,
        &[("rcache.user.file.metadata.sync.interval", "0")],
    );
    let c = client(vec![w.member("w-0")], 128 << 10).await;
    let got = c.read(FILE, 0, (PAGE * 4) as u32).await.expect("cold");
    assert!(got[..] == old[..], "cold read");

    let new = file_bytes((PAGE * 2 + 7) as usize, 22);
    overwrite(&ufs, &new, 1_000_000);
    let got = c.read(FILE, 0, (PAGE * 4) as u32).await.expect("changed");
    assert_eq!(got.len(), new.len(), "the new size");
    assert!(got[..] == new[..], "exactly the new bytes");
    assert_eq!(c.stat(FILE).await.expect("stat").size, new.len() as u64);
    let listed = c.list("sub").await.expect("list");
    assert_eq!(listed[0].stat.size, new.len() as u64);
    assert!(w.metric("rcache_cache_stale_pages_dropped_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_interval_old_bytes_are_served_only_until_it_passes() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, old) = ufs_with_file(d.path(), (PAGE * 2) as usize, 31);
    let w = Worker::start(
        d.path(),
        "w0",
        &ufs,
        &[("rcache.user.file.metadata.sync.interval", "200ms")],
    );
    let c = client(vec![w.member("w-0")], 128 << 10).await;
    c.read(FILE, 0, (PAGE * 2) as u32).await.expect("cold");

    let new = file_bytes((PAGE * 3) as usize, 32);
    overwrite(&ufs, &new, 1_000_000);
    // One placement block (one request): a worker answers it from one version of the file.
    // (A client read spanning blocks is several requests and may meet both versions.)
    let block = (PAGE * 2) as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = c.read(FILE, 0, block as u32).await.expect("read");
        if got[..] == new[..block] {
            break;
        }
        assert!(got[..] == old[..], "either all old or all new bytes");
        assert!(Instant::now() < deadline, "still the old version after 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.stat(FILE).await.expect("stat").size, new.len() as u64);
    let got = c.read(FILE, 0, (PAGE * 4) as u32).await.expect("whole");
    assert!(got[..] == new[..], "the whole new file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_restart_does_not_serve_a_page_of_a_file_changed_while_down() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, old) = ufs_with_file(d.path(), (PAGE * 2) as usize, 41);
    let ssd = d.path().join("ssd").display().to_string();
    let props = [("rcache.worker.page.store.ssd.dir", ssd.as_str())];
    let mut w = Worker::start(d.path(), "w0", &ufs, &props);
    {
        let c = client(vec![w.member("w-0")], 128 << 10).await;
        let got = c.read(FILE, 0, (PAGE * 2) as u32).await.expect("cold");
        assert!(got[..] == old[..]);
    }
    w.wait_metric("rcache_cache_ssd_writes_total", 2.0);
    w.kill();

    let new = file_bytes((PAGE * 2) as usize, 42);
    overwrite(&ufs, &new, 1_000_000);
    let w = Worker::start(d.path(), "w1", &ufs, &props);
    let c = client(vec![w.member("w-1")], 128 << 10).await;
    let got = c
        .read(FILE, 0, (PAGE * 2) as u32)
        .await
        .expect("after restart");
    assert!(got[..] == new[..], "the new bytes, not the disk pages");
    assert_eq!(w.metric("rcache_cache_hits_total{tier=\"ssd\"}"), 0.0);
    assert_eq!(w.metric("rcache_cache_stale_pages_dropped_total"), 2.0);
    assert_eq!(w.ufs_bytes(), new.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_pinned_to_the_opened_version_is_stale_on_any_worker_never_mixed() {
    let d = tempfile::tempdir().expect("tmp");
    // 16 placement blocks of 128 KiB over two workers.
    let len = (PAGE * 32) as usize;
    let (ufs, old) = ufs_with_file(d.path(), len, 51);
    overwrite(&ufs, &old, 1_000);
    let long = [("rcache.user.file.metadata.sync.interval", "1h")];
    let w0 = Worker::start(d.path(), "w0", &ufs, &long);
    let w1 = Worker::start(d.path(), "w1", &ufs, &long);
    let c = client(vec![w0.member("w-0"), w1.member("w-1")], 128 << 10).await;
    let opened = c.stat(FILE).await.expect("stat");
    let block = (PAGE * 2) as usize;
    let got = c
        .read_at_version(FILE, &opened, 0, block as u32)
        .await
        .expect("block 0");
    assert!(got[..] == old[..block]);

    let new = file_bytes(len + 100, 52);
    overwrite(&ufs, &new, 2_000);
    // The rest of the file lives on both workers, whose metadata would trust the old version
    // for an hour: pinned to the opened version, the read is stale instead of mixed.
    let e = c
        .read_at_version(FILE, &opened, block as u64, (len - block) as u32)
        .await
        .expect_err("the file changed between two reads of one open");
    assert_eq!(e.errno(), libc::ESTALE, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(FILE)
            && msg.contains(&format!("size {} -> {}", len, new.len()))
            && msg.contains("reopen"),
        "{msg}"
    );
    // Pinned to the new version (as a client that stat'ed later would be), every worker checks
    // the under-storage at once and serves exactly the new bytes.
    let now = std::fs::metadata(ufs.join(FILE)).expect("stat ufs");
    let reopened = rcache_transport::FileVersion {
        size: now.len(),
        mtime_ns: 2_000 * 1_000_000_000,
    };
    let got = c
        .read_at_version(FILE, reopened, 0, (len * 2) as u32)
        .await
        .expect("new version");
    assert!(got[..] == new[..], "exactly the new bytes");
}
