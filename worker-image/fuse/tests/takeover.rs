//! FUSE takeover through a keeper process: a client killed with SIGKILL or stopped with SIGTERM
//! leaves its `/dev/fuse` connection with `rcache-fuse keeper`; the next client serves the same
//! connection, and a file the application holds open keeps reading the right bytes, with no
//! `ENOTCONN` and no remount. Need root and /dev/fuse.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct KeeperProcess {
    child: Child,
    log: PathBuf,
}

impl KeeperProcess {
    fn start_with(socket: &Path, log: &Path, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_rcache-fuse"))
            .args(["keeper", "--socket"])
            .arg(socket)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn rcache-fuse keeper");
        common::wait_until("the keeper socket", Duration::from_secs(30), || {
            socket.exists()
        });
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KeeperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `len` bytes at `off` on another thread (it blocks while no client serves).
fn read_in_background(
    f: &std::fs::File,
    off: u64,
    len: usize,
) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
    let f = f.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)?;
        Ok(buf)
    })
}

/// The client's properties file and a keeper on `<dir>/keeper.sock`, as both tests start them.
fn config_and_keeper(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, KeeperProcess) {
    config_and_keeper_with(dir, &[])
}

/// The same, the keeper started with `extra` arguments.
fn config_and_keeper_with(
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, KeeperProcess) {
    let config = dir.join("rcache.properties");
    std::fs::write(
        &config,
        "rcache.cluster.name=test\nrcache.ufs.uri=file:///unused\n",
    )
    .unwrap();
    let socket = dir.join("keeper.sock");
    let keeper = KeeperProcess::start_with(&socket, &dir.join("keeper.log"), extra);
    (config, socket, keeper)
}

/// The client's arguments: serve `ufs` and keep the connection with the keeper at `socket`.
fn client_args(ufs: &Path, socket: &Path) -> Vec<String> {
    [
        "--local-dir",
        ufs.to_str().unwrap(),
        "--keeper-socket",
        socket.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn an_open_file_reads_on_through_a_kill_9_and_a_sigterm_of_the_client() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let big_len = 24 << 20;
    let want = common::pattern(big_len, 99);
    std::fs::write(ufs.join("big.bin"), &want).unwrap();
    let (config, socket, keeper) = config_and_keeper(dir.path());
    let args = client_args(&ufs, &socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = |n: u32| dir.path().join(format!("fuse{n}.log"));

    let mut first = common::FuseProcess::start(&config, &mnt, &log(1), &args);
    let mut f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).unwrap();
    assert!(head == want[..1 << 20], "first MiB");
    // A close: the client answers FLUSH with ENOSYS, so the kernel sends no FLUSH on later
    // closes, such as this test's own fds closing when it execs the next client (O_CLOEXEC).
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).unwrap(),
        std::fs::read(ufs.join("small.txt")).unwrap()
    );

    // SIGKILL: nothing is unmounted; a read issued now waits in the kernel for the next client.
    assert!(!first.signal_and_wait(libc::SIGKILL).success());
    assert_eq!(common::mount_type(&mnt).as_deref(), Some("fuse.rcache"));
    let off = 16u64 << 20;
    let pending = read_in_background(&f, off, 1 << 20);
    std::thread::sleep(Duration::from_millis(300));

    let mut second = common::FuseProcess::start(&config, &mnt, &log(2), &args);
    assert!(
        second.log_text().contains("took over the FUSE connection"),
        "{}",
        second.log_text()
    );
    let got = pending
        .join()
        .unwrap()
        .expect("the read issued while no client served");
    assert!(got == want[off as usize..][..1 << 20], "bytes at {off}");
    // The same fd reads on sequentially, and new opens and listings work.
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert!(rest == want[1 << 20..], "the rest through the same fd");
    common::assert_same_tree(&ufs, &mnt);

    // SIGTERM behaves the same: the connection stays mounted for the next client.
    let status = second.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "exit {status}:\n{}", second.log_text());
    assert_eq!(common::mount_type(&mnt).as_deref(), Some("fuse.rcache"));
    let off = 3u64 << 20;
    // Drop what the kernel cached of the file, so the read below reaches the daemon.
    let pending = read_in_background(&f, off + 5, 4096);
    let mut third = common::FuseProcess::start(&config, &mnt, &log(3), &args);
    let got = pending.join().unwrap().expect("read across the SIGTERM");
    assert!(got == want[off as usize + 5..][..4096], "bytes at {off}+5");
    let mut again = vec![0u8; 1000];
    f.read_exact_at(&mut again, 7).unwrap();
    assert!(again == want[7..1007]);
    assert_eq!(
        std::fs::read(mnt.join("nested/a/sibling.txt")).unwrap(),
        std::fs::read(ufs.join("nested/a/sibling.txt")).unwrap()
    );
    for (n, p) in [(1, &first), (2, &second), (3, &third)] {
        assert!(
            !p.log_text().contains("ENOTCONN"),
            "client {n}:\n{}",
            p.log_text()
        );
    }

    // A real unmount ends the connection, and the keeper lets it go.
    drop(f);
    let status = third.signal_and_wait(libc::SIGTERM);
    assert!(status.success());
    rcache_fuse::mount::lazy_unmount(&mnt).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !keeper.log_text().contains("released") {
        assert!(
            Instant::now() < deadline,
            "keeper did not release the ended connection:\n{}",
            keeper.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reads_in_flight_when_the_client_is_killed_are_answered_by_the_next_one() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    std::fs::create_dir_all(&ufs).unwrap();
    let len = 8 << 20;
    let want = std::sync::Arc::new(common::pattern(len, 7));
    std::fs::write(ufs.join("f.bin"), &*want).unwrap();
    std::fs::write(ufs.join("small.txt"), b"x").unwrap();
    let (config, socket, keeper) = config_and_keeper(dir.path());
    let args = client_args(&ufs, &socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = |n: u32| dir.path().join(format!("fuse{n}.log"));
    // Every client stays in `clients` until the end: dropping a stopped one would unmount.
    let mut clients = vec![common::FuseProcess::start(&config, &mnt, &log(0), &args)];
    std::fs::read(mnt.join("small.txt")).unwrap(); // FLUSH answered ENOSYS once
    let f = std::fs::File::open(mnt.join("f.bin")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Readers that drop the page cache before every read, so each read reaches the client.
    let readers: Vec<_> = (0..4u64)
        .map(|r| {
            let (f, want, stop) = (f.try_clone().unwrap(), want.clone(), stop.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0u64;
                let mut off = r * 1_000_003;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    off = (off + 1_234_567) % (len as u64 - 70_000);
                    // SAFETY: advice on our own open fd.
                    unsafe {
                        libc::posix_fadvise(
                            std::os::fd::AsRawFd::as_raw_fd(&f),
                            0,
                            0,
                            libc::POSIX_FADV_DONTNEED,
                        )
                    };
                    let mut buf = vec![0u8; 65_536];
                    f.read_exact_at(&mut buf, off)
                        .map_err(|e| format!("read at {off}: {e}"))?;
                    if buf != want[off as usize..][..65_536] {
                        return Err(format!("wrong bytes at {off}"));
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(300));
        let sig = if round == 2 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        clients.last_mut().unwrap().signal_and_wait(sig);
        std::thread::sleep(Duration::from_millis(100));
        let next = common::FuseProcess::start(&config, &mnt, &log(round), &args);
        assert!(next.log_text().contains("took over"), "{}", next.log_text());
        clients.push(next);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let n = r.join().unwrap().unwrap_or_else(|e| {
            let logs: Vec<String> = (0..=3)
                .map(|i| std::fs::read_to_string(log(i)).unwrap_or_default())
                .collect();
            panic!(
                "{e}\nkeeper:\n{}\nclients:\n{}",
                keeper.log_text(),
                logs.join("\n---\n")
            )
        });
        assert!(n > 0);
    }
    drop(f);
}

#[test]
fn a_connection_no_client_comes_back_to_is_closed_and_its_mount_detached() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let (config, socket, keeper) = config_and_keeper_with(
        dir.path(),
        &[
            "--orphan-grace-secs",
            "1",
            "--sweep-root",
            dir.path().to_str().unwrap(),
        ],
    );
    let args = client_args(&ufs, &socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = common::FuseProcess::start(&config, &mnt, &dir.path().join("fuse.log"), &args);
    common::assert_same_tree(&ufs, &mnt);
    // Stopped as when its CacheCluster is deleted: the mount stays, held by the keeper...
    assert!(client.signal_and_wait(libc::SIGTERM).success());
    assert_eq!(common::mount_type(&mnt).as_deref(), Some("fuse.rcache"));
    // ...until the grace passes with no client back: then nothing is left on the node.
    common::wait_until(
        "the keeper detaches the mount",
        Duration::from_secs(30),
        || common::mount_type(&mnt).is_none(),
    );
    assert!(
        keeper
            .log_text()
            .contains("detached a dead rcache FUSE mount"),
        "{}",
        keeper.log_text()
    );
    assert!(
        std::fs::read_dir(&mnt).is_ok(),
        "the mount point is a plain directory again"
    );
}

#[test]
fn while_no_client_serves_the_mount_points_own_attributes_still_answer() {
    // The kubelet and the container runtime stat a FUSE pod's hostPath (the mount point) before
    // they start its next container: if that waited for a client, no client could ever start.
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let (ufs, mnt) = (dir.path().join("ufs"), dir.path().join("mnt"));
    common::make_tree(&ufs);
    let (config, socket, _keeper) = config_and_keeper(dir.path());
    let args = client_args(&ufs, &socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = common::FuseProcess::start(&config, &mnt, &dir.path().join("fuse1.log"), &args);
    assert!(std::fs::metadata(&mnt).unwrap().is_dir());
    assert!(!first.signal_and_wait(libc::SIGKILL).success());
    // Past the 1 s the kernel trusts other attributes for.
    std::thread::sleep(Duration::from_millis(1500));
    let (tx, rx) = std::sync::mpsc::channel();
    let m = mnt.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&m).map(|md| md.is_dir()));
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    // Serve again before asserting, so a failure cannot leave a stat stuck in the kernel.
    let _second = common::FuseProcess::start(&config, &mnt, &dir.path().join("fuse2.log"), &args);
    assert!(
        matches!(got, Ok(Ok(true))),
        "stat of the mount point with no client: {got:?} (it waited for a client)"
    );
}
