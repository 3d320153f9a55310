//! Mounting and unmounting. Before mounting, a mount left at the path by a dead client (reads
//! fail with ENOTCONN "Transport endpoint is not connected", mkdir fails with EEXIST) is lazily
//! detached instead of failing the start. After mounting, the kernel readahead of the new mount
//! is raised so sequential reads arrive as large requests. Unmounting tries a clean unmount and
//! falls back to a lazy one when files are still open. This module owns the mount point's
//! lifecycle, nothing about file contents.

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use tokio::runtime::Handle;

use crate::fs::{MAX_READ, RcacheFs};
use crate::metrics::FuseMetrics;
use crate::options::FuseOptions;
use crate::source::FileSource;
use crate::takeover::{self, KeeperLink, KeeperOpts, Offer};

/// The filesystem type name in /proc/mounts (`fuse.rcache`).
pub const FS_SUBTYPE: &str = "rcache";

/// What [`clear_stale_mount`] found at the path.
#[derive(Debug, PartialEq, Eq)]
pub enum MountPointState {
    /// A directory with nothing mounted on it.
    Ready,
    /// Created because it was missing.
    Created,
    /// A mount was there (broken or left behind) and was detached.
    Cleared,
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Detaches whatever is mounted at `path` now, even if it is busy or its server is gone
/// (`umount -l`). Falls back to `fusermount3 -uz` when not permitted (not root).
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    match umount2(path, libc::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg("--")
                .arg(path)
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -uz {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// Unescapes a /proc/self/mountinfo path (`\040` for space and friends).
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What /proc/self/mountinfo says of the mount exactly at a path (the topmost one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem type, e.g. `fuse.rcache`.
    pub fs_type: String,
    /// The device (`major`, `minor`) of the mount: for FUSE, the minor is the connection's
    /// number under /sys/fs/fuse/connections and /sys/class/bdi.
    pub dev: (u32, u32),
}

/// The mount exactly at `path`, if any (the topmost mount wins). Reads only mountinfo, never
/// the mount itself, so it cannot block on a FUSE server that does not answer.
pub fn mount_entry(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let mount_point = unescape_mountinfo(fields.nth(1)?);
        if mount_point != want {
            return None;
        }
        let (major, minor) = dev.split_once(':')?;
        let fs_type = line.split(" - ").nth(1)?.split(' ').next()?.to_owned();
        Some(MountEntry {
            fs_type,
            dev: (major.parse().ok()?, minor.parse().ok()?),
        })
    })
}

/// The filesystem type mounted exactly at `path`, if any (the topmost mount wins).
pub fn mounted_fs_type(path: &Path) -> Option<String> {
    mount_entry(path).map(|e| e.fs_type)
}

/// Makes `path` a plain directory ready to mount on: creates it when missing, and detaches a
/// FUSE mount left there by a previous client (dead or alive: the DaemonSet runs one client per
/// node, so a mount at our path is a leftover).
pub fn clear_stale_mount(path: &Path) -> anyhow::Result<MountPointState> {
    let mut state = MountPointState::Ready;
    let broken = match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => false,
        Ok(_) => anyhow::bail!(
            "mount point {} exists and is not a directory; remove it or set rcache.fuse.mount.point",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A missing directory can still be a broken mount seen through a dangling entry;
            // fall through to the mountinfo check below before creating it.
            false
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => true,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot inspect mount point {}", path.display()));
        }
    };
    let leftover = mounted_fs_type(path).is_some_and(|t| t == "fuse" || t.starts_with("fuse."));
    if broken || leftover {
        tracing::warn!(
            mount_point = %path.display(),
            broken,
            "a FUSE mount from a previous client is at the mount point; detaching it (umount -l)"
        );
        lazy_unmount(path).with_context(|| {
            format!(
                "cannot detach the stale mount at {}; run `umount -l {}` on the node",
                path.display(),
                path.display()
            )
        })?;
        state = MountPointState::Cleared;
    }
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => anyhow::bail!("mount point {} is not a directory", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("cannot create mount point {}", path.display()))?;
            if state == MountPointState::Ready {
                state = MountPointState::Created;
            }
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "mount point {} still unusable after detaching",
                    path.display()
                )
            });
        }
    }
    Ok(state)
}

/// Raises the kernel readahead of the FUSE mount with device `dev` (the kernel starts it at
/// 128 KiB and only sysfs can raise it), so sequential reads reach us as `MAX_READ`-sized
/// requests and the kernel keeps several in flight. Best effort: a read-only /sys only costs
/// throughput. The device comes from mountinfo: the client never stats its own mount, since a
/// thread blocked on its own mount cannot be killed if the session stops answering.
fn raise_readahead(dev: (u32, u32), kib: u64) {
    let bdi = format!("/sys/class/bdi/{}:{}/read_ahead_kb", dev.0, dev.1);
    match std::fs::write(&bdi, kib.to_string()) {
        Ok(()) => tracing::info!(bdi, kib, "raised kernel readahead of the mount"),
        Err(e) => {
            tracing::warn!(bdi, error = %e, "cannot raise kernel readahead; sequential reads stay at 128 KiB requests")
        }
    }
}

/// Errors with which a FUSE session ends when its connection is already gone: unmounted
/// (`ENODEV`), aborted through /sys/fs/fuse/connections (`ECONNABORTED`), or not connected.
/// For a read-only cache that is a finished session, not a failure.
pub fn is_finished_session(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ECONNABORTED | libc::ENOTCONN)
    )
}

/// How long [`MountedFs::unmount`] waits for the session threads once the mount is detached.
/// They end when the kernel ends the connection, which a lazily detached mount delays until its
/// last open file closes; past this the process may exit and those files see `ENOTCONN`.
const SESSION_END_WAIT: Duration = Duration::from_secs(10);

/// A mounted filesystem; unmounted by [`MountedFs::unmount`] or on drop.
pub struct MountedFs {
    session: Option<BackgroundSession>,
    mount_point: PathBuf,
    /// Our mount's device, to tell it from another mount at the same path.
    dev: Option<(u32, u32)>,
    metrics: Arc<FuseMetrics>,
    /// A keeper holds the connection: stopping leaves it to the next client, unmounted.
    kept: bool,
}

/// Mounts `source` at `opts.mount_point` (clearing a stale mount first); requests are served by
/// `opts.threads` FUSE threads answering from tasks on `rt` and recorded in `metrics`, which
/// reads ready from the moment the mount is up until it is unmounted.
pub fn mount<S: FileSource>(
    source: S,
    opts: &FuseOptions,
    rt: Handle,
    metrics: Arc<FuseMetrics>,
) -> anyhow::Result<MountedFs> {
    mount_with_keeper(source, opts, rt, metrics, None)
}

fn session_config(opts: &FuseOptions, kept: bool) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("rcache".into()),
        // A kernel option (not `Subtype`, which only fusermount applies): /proc/mounts shows
        // `fuse.rcache` whichever way we mounted.
        MountOption::CUSTOM(format!("subtype={FS_SUBTYPE}")),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    // Application pods read as any uid.
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    // Cloned fds would be this process's alone: when it dies the kernel fails the requests
    // read through them (ECONNABORTED). With a keeper every thread reads the fd the keeper
    // also holds, so unanswered requests survive the process and are resent to the next one.
    config.clone_fd = !kept;
    config
}

/// Like [`mount`], but with a keeper at `keeper` (see [`takeover`]): when the keeper holds a
/// live connection for the mount point, the client serves it (no new mount; files open through
/// it keep reading); otherwise it mounts afresh and hands the connection to the keeper.
pub fn mount_with_keeper<S: FileSource>(
    source: S,
    opts: &FuseOptions,
    rt: Handle,
    metrics: Arc<FuseMetrics>,
    keeper: Option<&KeeperOpts>,
) -> anyhow::Result<MountedFs> {
    let mount_point = opts.mount_point.clone();
    let ours = format!("fuse.{FS_SUBTYPE}");
    let offer = match keeper {
        Some(k) => match KeeperLink::connect(&k.socket, &k.key) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no FUSE keeper; a restart of this client will not keep open files");
                None
            }
        },
        None => None,
    };
    let config = session_config(opts, offer.is_some());
    let fs = RcacheFs::new(source, opts.clone(), rt, metrics.clone());
    let kernel = fs.kernel_notifier_slot();
    let journal = fs.journal_slot();
    let link = match offer {
        Some(Offer::TakeOver { link, fd, state }) => {
            match mount_entry(&mount_point).filter(|e| e.fs_type == ours) {
                Some(entry) => {
                    fs.restore(&state);
                    let _ = journal.set(link.into_journal());
                    let session = takeover::session_over(fs, fd, config)?;
                    let _ = kernel.set(session.notifier());
                    let session = session
                        .spawn()
                        .context("cannot start the FUSE session threads")?;
                    tracing::info!(
                        mount_point = %mount_point.display(),
                        inodes = state.inodes.len(),
                        open_files = state.files.len(),
                        "took over the FUSE connection from the keeper"
                    );
                    metrics.set_mounted(&mount_point, true);
                    return Ok(MountedFs {
                        session: Some(session),
                        mount_point,
                        dev: Some(entry.dev),
                        metrics,
                        kept: true,
                    });
                }
                None => {
                    tracing::warn!(
                        mount_point = %mount_point.display(),
                        "the keeper holds a connection that is no longer mounted here; mounting afresh"
                    );
                    drop(fd);
                    Some(link)
                }
            }
        }
        Some(Offer::Fresh(link)) => Some(link),
        None => None,
    };
    let state = clear_stale_mount(&mount_point)?;
    tracing::info!(mount_point = %mount_point.display(), ?state, "mount point ready");
    let session = fuser::Session::new(fs, &mount_point, &config).with_context(|| {
        format!(
            "cannot mount FUSE at {} (needs root or fusermount3, and /dev/fuse)",
            mount_point.display()
        )
    })?;
    let _ = kernel.set(session.notifier());
    let kept = match link {
        Some(link) => {
            let j = link
                .adopt(session.as_fd())
                .context("cannot hand the FUSE connection to the keeper")?;
            let _ = journal.set(j);
            true
        }
        None => false,
    };
    let session = session
        .spawn()
        .context("cannot start the FUSE session threads")?;
    let dev = mount_entry(&mount_point)
        .filter(|e| e.fs_type == ours)
        .map(|e| e.dev);
    // Readahead covers the prefetch window, so the kernel asks far enough ahead.
    let ra_kib =
        (u64::from(MAX_READ) / 1024).max(opts.part_size * opts.prefetch_parts.max(1) as u64 / 1024);
    match dev {
        Some(dev) => raise_readahead(dev, ra_kib),
        None => {
            tracing::warn!(mount_point = %mount_point.display(), "our mount is not in mountinfo; readahead left at the kernel default")
        }
    }
    metrics.set_mounted(&mount_point, true);
    Ok(MountedFs {
        session: Some(session),
        mount_point,
        dev,
        metrics,
        kept,
    })
}

impl MountedFs {
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// True when a keeper holds the connection (see [`takeover`]): the process should then
    /// stop with [`MountedFs::leave_to_keeper`], not unmount.
    pub fn is_kept(&self) -> bool {
        self.kept
    }

    /// Ends this process and leaves the mounted connection to the keeper, exactly as a crash
    /// would (nothing is unmounted, unanswered requests are resent to the next client). Pending
    /// replies are not dropped (that would answer them `EIO`): the process exits at once.
    pub fn leave_to_keeper(&self) -> ! {
        self.metrics.set_mounted(&self.mount_point, false);
        tracing::info!(mount_point = %self.mount_point.display(), "leaving the FUSE connection to the keeper for the next client");
        std::process::exit(0)
    }

    /// False once the session ended (e.g. someone unmounted the path from outside).
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts (lazily when files are still open) and waits, bounded, for the session threads.
    /// Idempotent: a mount already detached from outside (`umount -l`, the preStop hook), a
    /// connection aborted through /sys/fs/fuse/connections, or a second call all return `Ok`.
    pub fn unmount(&mut self) -> anyhow::Result<()> {
        self.unmount_inner()
    }

    /// The FUSE connection's number under /sys/fs/fuse/connections (the mount's minor).
    pub fn connection(&self) -> Option<u32> {
        self.dev.map(|d| d.1)
    }

    /// True while the mount at our path is ours (same device as when we mounted).
    fn still_mounted_here(&self) -> bool {
        let ours = format!("fuse.{FS_SUBTYPE}");
        mount_entry(&self.mount_point)
            .is_some_and(|e| e.fs_type == ours && (self.dev.is_none() || self.dev == Some(e.dev)))
    }

    fn unmount_inner(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let mp = self.mount_point.clone();
        self.metrics.set_mounted(&mp, false);
        if self.still_mounted_here() {
            match umount2(&mp, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Files are still open: detach now; the kernel ends the session (and our
                    // threads) when the last one closes.
                    tracing::warn!(mount_point = %mp.display(), "mount busy; detaching lazily");
                    lazy_unmount(&mp)
                        .with_context(|| format!("cannot unmount {}", mp.display()))?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    lazy_unmount(&mp)
                        .with_context(|| format!("cannot unmount {}", mp.display()))?;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOENT | libc::ENOTCONN | libc::ECONNABORTED)
                    ) =>
                {
                    tracing::info!(mount_point = %mp.display(), "already unmounted");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot unmount {}", mp.display()));
                }
            }
        } else {
            // Unmounted from outside (the DaemonSet's preStop runs `umount -l`).
            tracing::info!(mount_point = %mp.display(), "already unmounted");
        }
        // The session's threads end once the kernel ends the connection; wait for them with a
        // deadline (a detached mount with open files keeps the connection until they close).
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::Builder::new()
            .name("fuse-unmount-join".into())
            .spawn(move || {
                let _ = tx.send(session.join());
            })
            .context("cannot start a thread to wait for the FUSE session")?;
        match rx.recv_timeout(SESSION_END_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_finished_session(&e) => {
                tracing::info!(mount_point = %mp.display(), error = %e, "FUSE connection was already gone");
            }
            Ok(Err(e)) => {
                return Err(anyhow::anyhow!(
                    "FUSE session at {} ended with {e}",
                    mp.display()
                ));
            }
            Err(_) => {
                tracing::warn!(
                    mount_point = %mp.display(),
                    "files are still open on the detached mount after {SESSION_END_WAIT:?}; they see ENOTCONN once this process exits"
                );
                return Ok(());
            }
        }
        let _ = joiner.join();
        Ok(())
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\0"), r"/x\0");
    }

    #[test]
    fn a_missing_mount_point_is_created_and_an_existing_directory_is_ready() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        assert_eq!(clear_stale_mount(&p).unwrap(), MountPointState::Created);
        assert_eq!(clear_stale_mount(&p).unwrap(), MountPointState::Ready);
    }

    #[test]
    fn a_file_at_the_mount_point_is_refused_naming_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let err = clear_stale_mount(&p).unwrap_err().to_string();
        assert!(err.contains("rcache.fuse.mount.point"), "{err}");
    }
}
