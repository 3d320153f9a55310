//! Mount tests over a local directory source: the filesystem layer (lookup, readdir, reads with
//! prefetch and whole-file fetch, EROFS) and the process lifecycle (SIGTERM, stale mounts)
//! without workers. Need root and /dev/fuse; skipped with a message otherwise.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use rcache_fuse::{FuseOptions, LocalDirSource};

fn mount_local(
    ufs: &std::path::Path,
    mnt: &std::path::Path,
    opts: FuseOptions,
) -> (tokio::runtime::Runtime, rcache_fuse::MountedFs) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = FuseOptions {
        mount_point: mnt.to_path_buf(),
        ..opts
    };
    let m = rcache_fuse::mount(
        LocalDirSource::new(ufs),
        &opts,
        rt.handle().clone(),
        rcache_fuse::FuseMetrics::new(),
    )
    .unwrap();
    (rt, m)
}

#[test]
fn readiness_follows_the_mount_and_reads_are_counted() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = rcache_fuse::FuseMetrics::new();
    assert!(!metrics.is_ready(), "not ready before the mount");
    let opts = FuseOptions {
        mount_point: mnt.clone(),
        ..FuseOptions::default()
    };
    let mut m = rcache_fuse::mount(
        LocalDirSource::new(ufs.clone()),
        &opts,
        rt.handle().clone(),
        metrics.clone(),
    )
    .unwrap();
    assert!(metrics.is_ready(), "ready once mounted");
    let got = std::fs::read(mnt.join("many-pages.bin")).unwrap();
    assert_eq!(got, std::fs::read(ufs.join("many-pages.bin")).unwrap());
    assert!(std::fs::File::open(mnt.join("missing")).is_err());
    let text = metrics.encode();
    assert!(metrics.reads.get() > 0, "{text}");
    assert!(metrics.read_bytes.get() >= got.len() as u64, "{text}");
    assert!(
        text.contains("rcache_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}"),
        "{text}"
    );
    // The kernel sends RELEASE after close returns.
    common::wait_until("every handle released", Duration::from_secs(5), || {
        metrics.open_files.get() == 0
    });
    m.unmount().unwrap();
    assert!(!metrics.is_ready(), "not ready after the unmount");
}

#[test]
fn every_byte_of_the_tree_reads_back_with_default_prefetch() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let (_rt, mut m) = mount_local(&ufs, &mnt, FuseOptions::default());
    let n = common::assert_same_tree(&ufs, &mnt);
    assert!(n > 5 << 20);
    // A second pass (page cache kept across opens of unchanged files) reads the same bytes.
    common::assert_same_tree(&ufs, &mnt);
    m.unmount().unwrap();
    assert_eq!(common::mount_type(&mnt), None);
}

#[test]
fn every_byte_reads_back_with_whole_file_fetch_stat_cache_and_small_parts() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let opts = FuseOptions {
        whole_file_threshold: 100_000,
        stat_cache_enabled: true,
        stat_cache_max: 3,
        part_size: 64 << 10,
        prefetch_parts: 2,
        ..FuseOptions::default()
    };
    let (_rt, mut m) = mount_local(&ufs, &mnt, opts);
    common::assert_same_tree(&ufs, &mnt);
    m.unmount().unwrap();
}

#[test]
fn missing_paths_are_enoent_and_writes_are_erofs() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let (_rt, mut m) = mount_local(&ufs, &mnt, FuseOptions::default());
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    assert_eq!(
        std::fs::metadata(mnt.join("no/such")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    erofs(std::fs::write(mnt.join("new.txt"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("small.txt"))
            .map(drop),
        "open for append",
    );
    erofs(std::fs::create_dir(mnt.join("d")), "mkdir");
    erofs(std::fs::remove_file(mnt.join("small.txt")), "unlink");
    erofs(
        std::fs::rename(mnt.join("small.txt"), mnt.join("s2")),
        "rename",
    );
    assert_eq!(
        std::fs::read(ufs.join("small.txt")).unwrap().len(),
        100,
        "UFS untouched"
    );
    m.unmount().unwrap();
}

#[test]
fn a_stale_mount_left_by_a_killed_client_is_recovered_and_sigterm_unmounts() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let config = dir.path().join("rcache.properties");
    std::fs::write(
        &config,
        "rcache.cluster.name=test\nrcache.ufs.uri=file:///unused\n",
    )
    .unwrap();
    let local = ["--local-dir", ufs.to_str().unwrap()];

    let mut first =
        common::FuseProcess::start(&config, &mnt, &dir.path().join("fuse1.log"), &local);
    first.signal_and_wait(libc::SIGKILL);
    // The dead client left its mount behind: "Transport endpoint is not connected" (once the
    // kernel's cached attributes of the root expire).
    common::wait_until(
        "ENOTCONN on the dead mount",
        Duration::from_secs(30),
        || std::fs::read_dir(&mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN),
    );
    assert_eq!(common::mount_type(&mnt).as_deref(), Some("fuse.rcache"));

    let mut second =
        common::FuseProcess::start(&config, &mnt, &dir.path().join("fuse2.log"), &local);
    assert!(
        second.log_text().contains("detaching"),
        "{}",
        second.log_text()
    );
    common::assert_same_tree(&ufs, &mnt);

    let status = second.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "exit {status}:\n{}", second.log_text());
    common::wait_until("the mount to go away", Duration::from_secs(30), || {
        common::mount_type(&mnt).is_none()
    });
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "plain empty dir again"
    );
}

#[test]
fn a_lazy_unmount_from_outside_like_the_prestop_hook_ends_the_client_cleanly() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let config = dir.path().join("rcache.properties");
    std::fs::write(&config, "rcache.cluster.name=test\n").unwrap();
    let local = ["--local-dir", ufs.to_str().unwrap()];
    let mut fuse = common::FuseProcess::start(&config, &mnt, &dir.path().join("fuse.log"), &local);
    // A reader holds a file open across the detach and keeps reading it.
    let open = std::fs::File::open(mnt.join("many-pages.bin")).unwrap();
    rcache_fuse::mount::lazy_unmount(&mnt).unwrap();
    assert_eq!(common::mount_type(&mnt), None);
    let mut buf = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    assert_eq!(open.read_at(&mut buf, 1 << 20).unwrap(), 4096);
    drop(open);
    let status = fuse.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "exit {status}:\n{}", fuse.log_text());
}

/// Mounts the fuse control filesystem at /sys/fs/fuse/connections when it is not (idempotent).
fn ensure_fusectl() {
    let dir = std::path::Path::new("/sys/fs/fuse/connections");
    if common::mount_type(dir).as_deref() == Some("fusectl") {
        return;
    }
    let st = std::process::Command::new("mount")
        .args(["-t", "fusectl", "fusectl"])
        .arg(dir)
        .status()
        .expect("run mount -t fusectl");
    assert!(
        st.success(),
        "mount -t fusectl fusectl {}: {st}",
        dir.display()
    );
}

#[test]
fn unmount_succeeds_after_an_outside_lazy_unmount_a_connection_abort_and_a_first_unmount() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);

    // `umount -l` from outside (the preStop hook), then our unmount, then a second one.
    let (_rt, mut m) = mount_local(&ufs, &mnt, FuseOptions::default());
    rcache_fuse::mount::lazy_unmount(&mnt).unwrap();
    m.unmount().expect("unmount after an outside lazy unmount");
    m.unmount().expect("a second unmount");
    assert_eq!(common::mount_type(&mnt), None);

    // The connection aborted through /sys/fs/fuse/connections (only this mount's): the
    // session ends with ECONNABORTED, which is a finished session; the dead mount is detached.
    ensure_fusectl();
    let (_rt2, mut m) = mount_local(&ufs, &mnt, FuseOptions::default());
    let conn = m.connection().expect("the mount's connection number");
    std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), "1")
        .expect("abort our own FUSE connection");
    common::wait_until(
        "the aborted session to end",
        Duration::from_secs(30),
        || !m.is_alive(),
    );
    m.unmount().expect("unmount after a connection abort");
    assert_eq!(common::mount_type(&mnt), None, "the dead mount is detached");
    m.unmount().expect("a second unmount after the abort");

    // A clean unmount, then a second one.
    let (_rt3, mut m) = mount_local(&ufs, &mnt, FuseOptions::default());
    m.unmount().expect("a clean unmount");
    m.unmount().expect("a second clean unmount");
    assert_eq!(common::mount_type(&mnt), None);
}

/// A local directory source that counts the stats asked of it for the file `f`.
struct CountingSource {
    inner: LocalDirSource,
    stats: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl rcache_fuse::FileSource for CountingSource {
    async fn stat(
        &self,
        path: &str,
    ) -> Result<rcache_transport::protocol::FileStat, rcache_fuse::SourceError> {
        if path == "f" {
            self.stats.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.stat(path).await
    }
    async fn list(
        &self,
        path: &str,
    ) -> Result<Vec<rcache_transport::protocol::DirEntry>, rcache_fuse::SourceError> {
        self.inner.list(path).await
    }
    async fn read(
        &self,
        path: &str,
        at: rcache_transport::protocol::FileVersion,
        offset: u64,
        len: u32,
    ) -> Result<bytes::Bytes, rcache_fuse::SourceError> {
        self.inner.read(path, at, offset, len).await
    }
}

#[test]
fn an_open_pins_the_stat_of_its_own_lookup_and_a_reopen_stats_the_file_again() {
    require_fuse!();
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    std::fs::create_dir_all(&ufs).unwrap();
    std::fs::write(ufs.join("f"), b"first version").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stats = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = CountingSource {
        inner: LocalDirSource::new(ufs.clone()),
        stats: stats.clone(),
    };
    let opts = FuseOptions {
        mount_point: mnt.clone(),
        ..FuseOptions::default()
    };
    let mut m = rcache_fuse::mount(
        source,
        &opts,
        rt.handle().clone(),
        rcache_fuse::FuseMetrics::new(),
    )
    .unwrap();
    // open + read, without the statx of `std::fs::read` (whose birth-time field makes the
    // kernel send a getattr).
    let read = |p: &std::path::Path| {
        use std::io::Read;
        let mut f = std::fs::File::open(p).unwrap();
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match f.read(&mut buf).unwrap() {
                0 => break out,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let before = stats.load(Ordering::SeqCst);
    // open(2) of a path the kernel does not know: a lookup, then an open; one stat for both.
    assert_eq!(read(&mnt.join("f")), b"first version");
    assert_eq!(stats.load(Ordering::SeqCst) - before, 1, "lookup + open");
    // The file changes (same length: the kernel bounds reads by the size it holds for a
    // second; a later mtime, whatever the clock's tick); the next open asks again, whether or
    // not the kernel looks the path up again, and reads the new version, not the one the
    // first lookup saw.
    std::fs::write(ufs.join("f"), b"other version").unwrap();
    std::fs::File::options()
        .write(true)
        .open(ufs.join("f"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(read(&mnt.join("f")), b"other version");
    assert_eq!(stats.load(Ordering::SeqCst) - before, 2, "the reopen");
    m.unmount().unwrap();
}
