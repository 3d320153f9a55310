//! Mount tests against running workers: the `rcache-fuse` binary mounts a 3-worker cluster
//! (worker processes serving a UFS directory over TCP) and every byte read through the mount
//! must equal the under-storage copy, also when a worker dies in the middle of a read. Need
//! root and /dev/fuse; skipped with a message otherwise.

mod common;

use std::io::Read;
use std::time::Duration;

use common::cluster::{Cluster, run_worker_if_spawned};

/// Not a test of its own: the entry point of the worker processes the tests spawn (this binary
/// re-executed with the worker environment). Returns at once in a normal test run.
#[test]
fn worker_process_entry() {
    run_worker_if_spawned();
}

#[test]
fn every_byte_of_the_tree_reads_back_through_three_workers() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    // Small placement blocks, so files spread over all three workers.
    let cluster = Cluster::start(dir.path(), &ufs, 3, "1MB");
    let mut fuse =
        common::FuseProcess::start(&cluster.config, &mnt, &dir.path().join("fuse.log"), &[]);
    let web = fuse.web_addr();
    assert_eq!(common::http_get(web, "/readyz").0, 200, "mounted: ready");
    let n = common::assert_same_tree(&ufs, &mnt);
    assert!(n > 5 << 20, "compared {n} bytes");
    // Again, now from the workers' page caches.
    common::assert_same_tree(&ufs, &mnt);
    // What the reads above did shows on the FUSE web port.
    let (status, metrics) = common::http_get(web, "/metrics");
    assert_eq!(status, 200);
    let reads = common::metric_value(&metrics, "rcache_fuse_reads_total");
    let bytes = common::metric_value(&metrics, "rcache_fuse_read_bytes_total");
    assert!(reads > 0.0, "{metrics}");
    assert!(
        bytes >= n as f64,
        "at least the {n} bytes compared:\n{metrics}"
    );
    assert!(
        common::metric_value(&metrics, "rcache_fuse_read_seconds_count") >= reads,
        "{metrics}"
    );
    assert!(
        common::metric_value(&metrics, "rcache_fuse_prefetch_parts_fetched_total") > 0.0,
        "{metrics}"
    );
    assert_eq!(common::http_get(web, "/healthz").0, 200);
    assert_eq!(common::http_get(web, "/readyz").0, 200);
    assert!(
        fuse.signal_and_wait(libc::SIGTERM).success(),
        "{}",
        fuse.log_text()
    );
    assert_eq!(common::mount_type(&mnt), None);
}

#[test]
fn a_worker_killed_in_the_middle_of_a_read_does_not_fail_the_read() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    std::fs::create_dir_all(&ufs).unwrap();
    let want = common::pattern(32 << 20, 42);
    std::fs::write(ufs.join("big.bin"), &want).unwrap();
    let mut cluster = Cluster::start(dir.path(), &ufs, 3, "1MB");
    let fuse = common::FuseProcess::start(&cluster.config, &mnt, &dir.path().join("fuse.log"), &[]);

    let mut f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut got = Vec::with_capacity(want.len());
    let mut buf = vec![0u8; 256 << 10];
    let mut killed = false;
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "read failed at {} after a worker died: {e}\n{}",
                got.len(),
                fuse.log_text()
            )
        });
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !killed && got.len() >= 4 << 20 {
            // Blocks are spread over all workers, so the rest of the file needs this one's share.
            cluster.workers[1].kill9();
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "content differs after failover");
    // New opens keep working on the two survivors.
    let again = std::fs::read(mnt.join("big.bin")).unwrap();
    assert!(again == want);
}

/// Replaces `path` with `bytes` and an explicit mtime, so the new version differs from the old
/// one whatever the filesystem's clock granularity.
fn replace(path: &std::path::Path, bytes: &[u8], secs: u64) {
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// The first placement block of `path` (1 MiB blocks) whose owner is not block 0's owner, which
/// answers `stat` and the reopen's version check.
fn a_block_not_owned_by_block_0s_owner(members: &std::path::Path, path: &str, blocks: u64) -> u64 {
    let m = rcache_worker::cluster::Membership::load(members).unwrap();
    let ring = rcache_worker::cluster::Ring::from_membership(&m);
    let key = rcache_worker::ufs::normalize(path).unwrap();
    let owner = |b: u64| ring.owners(&key, b)[0].id.clone();
    // From block 2 on: nothing near block 0 is read before the file changes.
    (2..blocks)
        .find(|&b| owner(b) != owner(0))
        .expect("three workers share the blocks")
}

#[test]
fn a_file_replaced_under_an_open_handle_reads_estale_and_a_reopen_reads_the_new_bytes() {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    std::fs::create_dir_all(&ufs).unwrap();
    let file = ufs.join("data.bin");
    let old = common::pattern(16 << 20, 7);
    replace(&file, &old, 1_000);
    // The workers trust a file's metadata for an hour: only the pinned reads and the version
    // check on reopen can notice the change. No prefetch: a part fetched in the background after
    // the change would teach block 0's owner the new version, and the reopen would then be
    // right without its version check; this test is about that check.
    let cluster = Cluster::start_with(
        dir.path(),
        &ufs,
        3,
        "1MB",
        &[
            ("rcache.user.file.metadata.sync.interval", "1h"),
            (
                "rcache.user.position.reader.streaming.async.prefetch.max.part.number",
                "0",
            ),
        ],
    );
    let fuse = common::FuseProcess::start(&cluster.config, &mnt, &dir.path().join("fuse.log"), &[]);
    // The stale read goes to a worker other than block 0's, so only the check can teach block
    // 0's owner (which answers the reopen's stat) the new version.
    let block =
        a_block_not_owned_by_block_0s_owner(&dir.path().join("members.json"), "data.bin", 16);

    let f = std::fs::File::open(mnt.join("data.bin")).unwrap();
    // No kernel readahead either: nothing but this one page is asked of the workers.
    // SAFETY: posix_fadvise on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0, "posix_fadvise");
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == old[..buf.len()]);

    let new = common::pattern((12 << 20) + 4096, 8);
    replace(&file, &new, 2_000);
    // Far from what was read: the bytes must come from another worker now.
    let err = f
        .read_exact_at(&mut buf, (block << 20) + 4096)
        .expect_err("the file changed since it was opened");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ESTALE),
        "{err}\n{}",
        fuse.log_text()
    );
    drop(f);
    let log = fuse.log_text();
    assert!(
        log.contains("data.bin changed since it was opened"),
        "the reason is logged:\n{log}"
    );

    // The first new open sees the new version, although the worker answering its stat would
    // trust the old one for an hour: the lookup and the open check the version the handle
    // found stale. Right away, within the kernel's attribute TTL (1 s): the ESTALE also told
    // the kernel to drop the file's cached size and pages (FUSE_NOTIFY_INVAL_INODE), so its
    // readahead cannot run past the new end and zero-fill the tail. That notification is sent
    // from another thread just after the reply: wait until the kernel has taken it.
    let web = fuse.web_addr();
    common::wait_until(
        "the kernel invalidation after ESTALE",
        Duration::from_secs(10),
        || {
            let (_, m) = common::http_get(web, "/metrics");
            common::metric_value(&m, "rcache_fuse_kernel_invalidations_total") >= 1.0
        },
    );
    let got = std::fs::read(mnt.join("data.bin"))
        .unwrap_or_else(|e| panic!("reopen failed: {e}\n{}", fuse.log_text()));
    assert_eq!(got.len(), new.len(), "the new size");
    assert!(got == new, "exactly the new bytes");
}
