//! Mounting and unmounting. Before mounting, a mount left at the path by a dead client (reads
//! fail with ENOTCONN "Transport endpoint is not connected", mkdir fails with EEXIST) is lazily
//! detached instead of failing the start. After mounting, the kernel readahead of the new mount
//! is raised so sequential reads arrive as large requests. Unmounting tries a clean unmount and
//! falls back to a lazy one when files are still open. This module owns the mount point's
//! lifecycle, nothing about file contents.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use tokio::runtime::Handle;

use crate::fs::{MAX_READ, RcacheFs};
use crate::metrics::FuseMetrics;
use crate::options::FuseOptions;
use crate::source::FileSource;

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
fn unescape_mountinfo(s: &str) -> String {
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

/// The filesystem type mounted exactly at `path`, if any (the topmost mount wins).
pub fn mounted_fs_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let mount_point = unescape_mountinfo(fields.nth(4)?);
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?.to_owned();
        (mount_point == want).then_some(fstype)
    })
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

/// Raises the kernel readahead of the FUSE mount at `path` (the kernel starts it at 128 KiB and
/// only sysfs can raise it), so sequential reads reach us as `MAX_READ`-sized requests and the
/// kernel keeps several in flight. Best effort: a read-only /sys only costs throughput.
fn raise_readahead(path: &Path, kib: u64) {
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    let dev = md.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&bdi, kib.to_string()) {
        Ok(()) => tracing::info!(bdi, kib, "raised kernel readahead of the mount"),
        Err(e) => {
            tracing::warn!(bdi, error = %e, "cannot raise kernel readahead; sequential reads stay at 128 KiB requests")
        }
    }
}

/// A mounted filesystem; unmounted by [`MountedFs::unmount`] or on drop.
pub struct MountedFs {
    session: Option<BackgroundSession>,
    mount_point: PathBuf,
    metrics: Arc<FuseMetrics>,
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
    let mount_point = opts.mount_point.clone();
    let state = clear_stale_mount(&mount_point)?;
    tracing::info!(mount_point = %mount_point.display(), ?state, "mount point ready");
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
    config.clone_fd = true;
    let fs = RcacheFs::new(source, opts.clone(), rt, metrics.clone());
    let kernel = fs.kernel_notifier_slot();
    let session = fuser::Session::new(fs, &mount_point, &config).with_context(|| {
        format!(
            "cannot mount FUSE at {} (needs root or fusermount3, and /dev/fuse)",
            mount_point.display()
        )
    })?;
    let _ = kernel.set(session.notifier());
    let session = session
        .spawn()
        .context("cannot start the FUSE session threads")?;
    // Readahead covers the prefetch window, so the kernel asks far enough ahead.
    let ra_kib =
        (u64::from(MAX_READ) / 1024).max(opts.part_size * opts.prefetch_parts.max(1) as u64 / 1024);
    raise_readahead(&mount_point, ra_kib);
    metrics.set_mounted(&mount_point, true);
    Ok(MountedFs {
        session: Some(session),
        mount_point,
        metrics,
    })
}

impl MountedFs {
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// False once the session ended (e.g. someone unmounted the path from outside).
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts (lazily when files are still open) and waits for the session threads.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let mp = self.mount_point.clone();
        self.metrics.set_mounted(&mp, false);
        if session.guard.is_finished() {
            // Unmounted from outside; only collect the session's result.
            return session
                .join()
                .map_err(|e| anyhow::anyhow!("FUSE session at {} ended with {e}", mp.display()));
        }
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Files are still open: detach now; the kernel ends the session (and our
                // threads) when the last one closes.
                tracing::warn!(mount_point = %mp.display(), "mount busy; detaching lazily");
                lazy_unmount(&mp).with_context(|| format!("cannot unmount {}", mp.display()))
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
                // Already detached (the DaemonSet's preStop runs `umount -l`); files still open
                // lose their mount when we exit.
                tracing::info!(mount_point = %mp.display(), "already unmounted");
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("cannot unmount {}", mp.display())),
        }
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
