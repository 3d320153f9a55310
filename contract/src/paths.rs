//! Paths: the syntax of an absolute path in the contract (normalized, no whitespace or control
//! characters, so it survives the properties file and means one directory), and the system
//! directories that must never be a hostPath, a mount target or a cache directory.

/// What [`check_absolute`] accepts.
pub const ABSOLUTE_ACCEPTED: &str = "an absolute path such as /data: no `.` or `..` components, no `//`, no trailing `/`, printable ASCII without spaces, at most 4096 bytes";

/// Longest path accepted.
pub const MAX_PATH: usize = 4096;

/// The RE2 pattern of [`check_absolute`] without its `.`/`..` rule (the CRD checks that with
/// [`DOT_SEGMENT_PATTERN`]).
pub const ABSOLUTE_PATTERN: &str = r"^(/[\x21-\x2e\x30-\x7e]+)+$";

/// Matches a path with a `.` or `..` component.
pub const DOT_SEGMENT_PATTERN: &str = r"(^|/)\.\.?(/|$)";

/// System directories: a path equal to one, inside one, or a parent of one (`/`, `/var`) is
/// refused as a hostPath, a mount target in a container, a UFS root or a cache directory.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/kubelet",
    "/var/run",
];

/// An absolute, normalized path: `/` followed by components separated by single `/`, none `.`
/// or `..`, of printable ASCII without spaces, at most [`MAX_PATH`] bytes; `/` alone
/// is not one.
pub fn check_absolute(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not absolute (start it with /)"));
    };
    if path.len() > MAX_PATH {
        return Err(format!("longer than {MAX_PATH} bytes"));
    }
    for part in rest.split('/') {
        if part.is_empty() {
            return Err(format!(
                "{path:?} has an empty component (`//`, a trailing `/`, or is `/`)"
            ));
        }
        if part == "." || part == ".." {
            return Err(format!("{path:?} has a `{part}` component"));
        }
        if !part.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(format!(
                "{path:?} holds whitespace, a control or a non-ASCII character"
            ));
        }
    }
    Ok(())
}

/// Whether `a` and `b` are the same directory or one contains the other (both normalized).
pub fn overlaps(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || outer == "/"
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// The system directory that `path` is, is inside of, or contains; `None` when clear of them.
pub fn system_dir(path: &str) -> Option<&'static str> {
    if path == "/" {
        return Some("/");
    }
    SYSTEM_DIRS.iter().copied().find(|d| overlaps(path, d))
}

/// What [`check_safe_dir`] accepts.
pub const SAFE_DIR_ACCEPTED: &str = "an absolute path outside the system directories (/, /bin, /boot, /dev, /etc, /lib*, /proc, /run, /sbin, /sys, /usr, /var/lib/kubelet, /var/lib/containerd, /var/lib/docker, /var/run, and their parents such as /var), e.g. /mnt/rcache or /data";

/// [`check_absolute`] and clear of [`SYSTEM_DIRS`]: a directory that may be a hostPath, a
/// mount target or a cache directory.
pub fn check_safe_dir(path: &str) -> Result<(), String> {
    check_absolute(path)?;
    match system_dir(path) {
        Some(d) if d == path => Err(format!("{path} is a system directory")),
        Some(d) if overlaps(path, d) && path.len() > d.len() => {
            Err(format!("{path} is inside the system directory {d}"))
        }
        Some(d) => Err(format!("{path} contains the system directory {d}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_normalized_and_plain() {
        for ok in ["/data", "/mnt/rcache", "/tmp/.tmpAbC/ufs", "/a/b.c/d-e_f"] {
            assert_eq!(check_absolute(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/",
            "data",
            "//data",
            "/data/",
            "/data/./x",
            "/data/..",
            "/da ta",
            "/data\n",
            "/a\tb",
            "/caf\u{e9}",
            "/a\u{a0}",
        ] {
            assert!(check_absolute(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn system_dirs_their_insides_and_their_parents_are_refused() {
        for bad in [
            "/",
            "/etc",
            "/etc/cron.d",
            "/proc",
            "/sys/fs",
            "/dev/shm",
            "/var",
            "/var/lib",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods",
            "/usr/local/data",
            "/run/secrets",
        ] {
            assert!(check_safe_dir(bad).is_err(), "{bad}");
        }
        for ok in [
            "/mnt/rcache",
            "/data",
            "/var/cache/rcache",
            "/tmp/x",
            "/srv/datasets",
            "/etcd",
        ] {
            assert_eq!(check_safe_dir(ok), Ok(()), "{ok}");
        }
        assert!(check_safe_dir("/var").unwrap_err().contains("contains"));
        assert!(check_safe_dir("/etc/x").unwrap_err().contains("inside"));
    }

    #[test]
    fn overlap_is_equality_or_containment_by_components() {
        assert!(overlaps("/a", "/a"));
        assert!(overlaps("/a", "/a/b"));
        assert!(overlaps("/a/b", "/a"));
        assert!(!overlaps("/a", "/ab"));
        assert!(!overlaps("/a/b", "/a/c"));
    }
}
