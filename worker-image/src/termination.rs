//! The Kubernetes termination message of the rcache binaries: on a fatal error `rcache-worker`
//! and `rcache-fuse` write the error text to the container's terminationMessagePath, so the
//! kubelet puts it into the pod's `lastState.terminated.message` and the operator can show it
//! in the CacheCluster's conditions (`kubectl describe rcc`).
//!
//! The path is `$RCACHE_TERMINATION_LOG`, default `/dev/termination-log` (the Kubernetes
//! default, which the kubelet creates). Outside Kubernetes that file does not exist; the default
//! path is never created (it would land in `/dev`) and any write failure is ignored: stderr
//! keeps the full message either way.

use std::io::Write;
use std::path::PathBuf;

/// Environment variable overriding the termination-message path.
pub const ENV: &str = "RCACHE_TERMINATION_LOG";
/// Kubernetes' default terminationMessagePath.
pub const DEFAULT_PATH: &str = "/dev/termination-log";
/// Most bytes written (the kubelet keeps at most 4096 per container).
pub const MAX_BYTES: usize = 4096;

/// `message` cut to at most [`MAX_BYTES`] bytes on a character boundary.
pub fn truncate(message: &str) -> &str {
    if message.len() <= MAX_BYTES {
        return message;
    }
    let mut end = MAX_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Writes `message` (truncated to [`MAX_BYTES`]) as the termination message; best effort.
pub fn write(message: &str) {
    let (path, create) = match std::env::var_os(ENV) {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_PATH), false),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(&path);
    if let Ok(mut f) = file {
        let _ = f.write_all(truncate(message.trim_end()).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_to_4096_bytes_on_a_char_boundary() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(3000);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_BYTES && cut.len() >= MAX_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
