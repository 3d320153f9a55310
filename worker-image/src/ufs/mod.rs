//! Under-storage (UFS): where the cache's pages come from. Owns path normalisation (paths are
//! relative to the UFS root, `/`-separated, `""` or `/` is the root) and refuses any path that
//! would leave the root (`..`). Backends serve range reads, stat and list; they cache no pages
//! and know nothing about pages (`cache` decides what to read).
//!
//! - [`file`]: `file://` — a local directory (hostPath, NFS or PVC mount).
//! - [`s3`]: `s3://bucket/prefix` — AWS S3 and S3-compatible object stores.
//!
//! [`UfsConfig`] (the contract crate's) is what `rcache.ufs.uri` and the `rcache.underfs.*` keys
//! say; [`open`] turns it into the backend.

pub mod file;
pub mod s3;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rcache_transport::{DirEntry, ErrorCode, FileStat};

pub use crate::config::{S3Config, UfsConfig};

pub use file::LocalUfs;
pub use s3::S3Ufs;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UfsError {
    #[error("{path}: no such file or directory in the under-storage")]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{path}: is a directory")]
    IsADirectory { path: String },
    #[error("{path}: refused: {reason}")]
    Refused { path: String, reason: String },
    #[error("{path}: under-storage I/O error: {reason}")]
    Io { path: String, reason: String },
}

impl UfsError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            UfsError::NotFound { .. } => ErrorCode::NotFound,
            UfsError::NotADirectory { .. } => ErrorCode::NotADirectory,
            UfsError::IsADirectory { .. } => ErrorCode::IsADirectory,
            UfsError::Refused { .. } => ErrorCode::InvalidRequest,
            UfsError::Io { .. } => ErrorCode::Io,
        }
    }

    fn from_io(path: &str, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => UfsError::NotFound { path: path.into() },
            std::io::ErrorKind::NotADirectory => UfsError::NotADirectory { path: path.into() },
            std::io::ErrorKind::IsADirectory => UfsError::IsADirectory { path: path.into() },
            _ => UfsError::Io {
                path: path.into(),
                reason: e.to_string(),
            },
        }
    }
}

/// Normalises a client path: strips leading/trailing `/`, collapses `//` and `.`, refuses `..`
/// and NUL bytes. The result is `""` for the root or `a/b/c`.
pub fn normalize(path: &str) -> Result<String, UfsError> {
    if path.contains('\0') {
        return Err(UfsError::Refused {
            path: path.escape_debug().to_string(),
            reason: "path contains a NUL byte".into(),
        });
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(UfsError::Refused {
                    path: path.into(),
                    reason: "`..` would leave the under-storage root".into(),
                });
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Counters of under-storage use (read by metrics and tests).
#[derive(Debug, Default)]
pub struct UfsCounters {
    pub reads: AtomicU64,
    pub bytes: AtomicU64,
    /// `stat` calls (metadata syncs of the cache; list is not counted).
    pub stats: AtomicU64,
}

/// What a range read read: the byte count and the stat of the file it was read from (taken on
/// the open file, so it names the version the bytes belong to even if the path was replaced
/// since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    pub len: usize,
    pub stat: FileStat,
}

/// The under-storage behind the cache. Paths given here are already normalised.
#[async_trait::async_trait]
pub trait UnderStorage: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset` into `buf`; fewer at EOF. Returns the stat of
    /// the file read (its version). Blocking: call from a blocking thread.
    fn read_at_blocking(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, UfsError>;
    async fn stat(&self, path: &str) -> Result<FileStat, UfsError>;
    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, UfsError>;
    fn counters(&self) -> &UfsCounters;
    /// For logs: `file:///data`.
    fn describe(&self) -> String;
}

/// Opens the under-storage and checks that it answers: a local root that exists, a bucket
/// that can be listed with these credentials. The error is one line naming what and the fix.
pub async fn open(cfg: &UfsConfig) -> Result<Arc<dyn UnderStorage>, String> {
    match cfg {
        UfsConfig::File(root) => Ok(LocalUfs::new(root).map_err(|e| e.to_string())?),
        UfsConfig::S3(s3) => {
            let ufs = S3Ufs::new(s3.clone()).map_err(|e| e.to_string())?;
            ufs.probe().await.map_err(|(_, msg)| msg)?;
            Ok(ufs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_slashes_and_refuses_dotdot() {
        assert_eq!(normalize("/").expect("ok"), "");
        assert_eq!(normalize("").expect("ok"), "");
        assert_eq!(normalize("/a//b/./c/").expect("ok"), "a/b/c");
        assert!(matches!(
            normalize("a/../../etc"),
            Err(UfsError::Refused { .. })
        ));
        assert!(matches!(normalize("a\0b"), Err(UfsError::Refused { .. })));
    }
}
