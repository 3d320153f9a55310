//! Mount tests over S3: the `rcache-fuse` binary mounts a cluster of worker processes whose
//! under-storage is `s3://` on the local S3 server (SeaweedFS, `e2e/s3/s3server`), and every
//! byte read through the mount equals the object; an object overwritten under an open file
//! reads `ESTALE` and a reopen reads the new bytes. Need root, /dev/fuse and the local S3
//! server; under `CI=true` a test that cannot run fails with the reason.

mod common;
#[path = "../../tests/common/s3.rs"]
mod s3env;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use common::cluster::{Cluster, run_worker_if_spawned};
use s3env::{BUCKET, S3, put, unique};

/// Not a test of its own: the entry point of the worker processes the tests spawn.
#[test]
fn worker_process_entry() {
    run_worker_if_spawned();
}

/// Uploads every file under `local` to `<prefix>/<relative path>`.
fn upload_tree(s3: &S3, local: &Path, prefix: &str) {
    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(local, &mut all);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = s3.store();
        for f in all {
            let rel = f.strip_prefix(local).unwrap().to_str().unwrap().to_string();
            put(
                &store,
                &format!("{prefix}/{rel}"),
                &std::fs::read(&f).unwrap(),
            )
            .await;
        }
    });
}

/// Workers on `s3://BUCKET/<prefix>`; the FUSE client reads the same properties.
fn s3_cluster(s3: &S3, dir: &Path, prefix: &str, n: usize, extra: &[(&str, &str)]) -> Cluster {
    let uri = format!("s3://{BUCKET}/{prefix}");
    let props = s3.props();
    let mut all: Vec<(&str, &str)> = vec![("rcache.ufs.uri", uri.as_str())];
    all.extend(props.iter().map(|(k, v)| (*k, v.as_str())));
    all.extend_from_slice(extra);
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Cluster::start_with_env(dir, &dir.join("unused-ufs"), n, "1MB", &all, &env)
}

#[test]
fn every_byte_of_an_s3_prefix_reads_back_through_the_mount() {
    require_fuse!();
    let s3 = require_s3!();
    let dir = tempfile::tempdir().unwrap();
    let (local, mnt) = (dir.path().join("local"), dir.path().join("mnt"));
    common::make_tree(&local);
    // An object store has no empty directories.
    std::fs::remove_dir(local.join("nested/empty-dir")).unwrap();
    let prefix = unique("fuse-tree");
    upload_tree(s3, &local, &prefix);
    let cluster = s3_cluster(s3, dir.path(), &prefix, 2, &[]);
    let fuse = common::FuseProcess::start(&cluster.config, &mnt, &dir.path().join("fuse.log"), &[]);
    let n = common::assert_same_tree(&local, &mnt);
    assert!(n > 5 << 20, "compared {n} bytes");
    // Again, from the workers' page caches.
    common::assert_same_tree(&local, &mnt);
    drop(fuse);
}

#[test]
fn an_object_overwritten_under_an_open_file_reads_estale_and_a_reopen_reads_the_new_bytes() {
    require_fuse!();
    let s3 = require_s3!();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let prefix = unique("fuse-stale");
    let key = format!("{prefix}/data.bin");
    let old = common::pattern(4 << 20, 7);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = s3.store();
    rt.block_on(put(&store, &key, &old));
    // The workers trust metadata for an hour and nothing prefetches: only the pinned read can
    // notice the overwrite (see mount_workers.rs for the file:// twin of this test).
    let cluster = s3_cluster(
        s3,
        dir.path(),
        &prefix,
        1,
        &[
            ("rcache.user.file.metadata.sync.interval", "1h"),
            (
                "rcache.user.position.reader.streaming.async.prefetch.max.part.number",
                "0",
            ),
        ],
    );
    let fuse = common::FuseProcess::start(&cluster.config, &mnt, &dir.path().join("fuse.log"), &[]);
    let f = std::fs::File::open(mnt.join("data.bin")).unwrap();
    // SAFETY: posix_fadvise on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0, "posix_fadvise");
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == old[..buf.len()]);

    // Same size: only the ETag (in the version) tells the objects apart.
    let new = common::pattern(4 << 20, 8);
    rt.block_on(put(&store, &key, &new));
    let err = f
        .read_exact_at(&mut buf, (3 << 20) + 4096)
        .expect_err("the object changed since it was opened");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ESTALE),
        "{err}\n{}",
        fuse.log_text()
    );
    drop(f);
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
    assert!(got == new, "exactly the new bytes");
}
