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
    let n = common::assert_same_tree(&ufs, &mnt);
    assert!(n > 5 << 20, "compared {n} bytes");
    // Again, now from the workers' page caches.
    common::assert_same_tree(&ufs, &mnt);
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
    std::thread::sleep(Duration::from_millis(100));
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

#[test]
fn a_file_replaced_under_an_open_handle_reads_estale_and_a_reopen_reads_the_new_bytes() {
    use std::os::unix::fs::FileExt;
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    std::fs::create_dir_all(&ufs).unwrap();
    let file = ufs.join("data.bin");
    let old = common::pattern(16 << 20, 7);
    replace(&file, &old, 1_000);
    // The workers trust a file's metadata for an hour: only the pinned reads and the version
    // check on reopen can notice the change.
    let cluster = Cluster::start_with(
        dir.path(),
        &ufs,
        3,
        "1MB",
        &[("rcache.user.file.metadata.sync.interval", "1h")],
    );
    let fuse = common::FuseProcess::start(&cluster.config, &mnt, &dir.path().join("fuse.log"), &[]);

    let f = std::fs::File::open(mnt.join("data.bin")).unwrap();
    let mut buf = vec![0u8; 256 << 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == old[..buf.len()]);

    let new = common::pattern((12 << 20) + 4096, 8);
    replace(&file, &new, 2_000);
    // Far from what was read and prefetched: the bytes must come from the workers now.
    let err = f
        .read_exact_at(&mut buf, 14 << 20)
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
    // trust the old one for an hour: the open checks the version the handle found stale. (The
    // new file is shorter, so the kernel's cached size, valid for 1 s, cannot cut it short.)
    let got = std::fs::read(mnt.join("data.bin"))
        .unwrap_or_else(|e| panic!("reopen failed: {e}\n{}", fuse.log_text()));
    assert_eq!(got.len(), new.len(), "the new size");
    assert!(got == new, "exactly the new bytes");
}
