//! Where file metadata and bytes come from. The filesystem talks only to [`FileSource`]; the
//! production implementation is the cache client of `rcache-worker` (placement per block, worker
//! failover), and [`LocalDirSource`] serves a local directory for tests and development. This
//! module owns the errno mapping of source errors; it does no caching.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rcache_transport::protocol::{DirEntry, FileStat, FileVersion};

/// An error from a [`FileSource`], already mapped to the errno the kernel should see.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// POSIX errno (`libc::ENOENT`, `libc::EIO`, ...).
    pub errno: i32,
    /// What failed, naming the path and, for I/O errors, the worker.
    pub message: String,
}

impl SourceError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }

    /// Errors worth another attempt: a worker went away or timed out. `ENOENT` and friends are
    /// answers, not failures.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.errno,
            libc::EIO
                | libc::EAGAIN
                | libc::ETIMEDOUT
                | libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::EHOSTUNREACH
                | libc::ENOTCONN
                | libc::EPIPE
        )
    }

    fn from_io(err: &io::Error, what: &str, path: &str) -> Self {
        Self::new(
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("{what} {path:?}: {err}"),
        )
    }
}

/// Read-only access to the under-storage namespace. Paths are relative to the UFS root, `/`
/// separated, without a leading `/`; the root itself is `""`.
pub trait FileSource: Send + Sync + 'static {
    fn stat(&self, path: &str) -> impl Future<Output = Result<FileStat, SourceError>> + Send;
    fn list(&self, path: &str) -> impl Future<Output = Result<Vec<DirEntry>, SourceError>> + Send;
    /// Up to `len` bytes at `offset` of version `at` of the file (the one it was opened at);
    /// shorter only at end of file. `ESTALE` when the file is at another version now: no byte
    /// of another version is returned. With `len` 0 it checks the version against the
    /// under-storage itself, whatever the workers' metadata sync interval.
    fn read(
        &self,
        path: &str,
        at: FileVersion,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, SourceError>> + Send;
}

impl<S: FileSource> FileSource for Arc<S> {
    fn stat(&self, path: &str) -> impl Future<Output = Result<FileStat, SourceError>> + Send {
        (**self).stat(path)
    }
    fn list(&self, path: &str) -> impl Future<Output = Result<Vec<DirEntry>, SourceError>> + Send {
        (**self).list(path)
    }
    fn read(
        &self,
        path: &str,
        at: FileVersion,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, SourceError>> + Send {
        (**self).read(path, at, offset, len)
    }
}

/// Serves a local directory: for tests of the filesystem layer and for development without
/// workers. Blocking file I/O runs on tokio's blocking pool.
#[derive(Clone, Debug)]
pub struct LocalDirSource {
    root: PathBuf,
}

impl LocalDirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, SourceError> {
        if path.split('/').any(|c| c == "..") {
            return Err(SourceError::new(
                libc::EINVAL,
                format!("path {path:?} escapes the source root"),
            ));
        }
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }
}

fn file_stat(md: &std::fs::Metadata) -> FileStat {
    use std::os::unix::fs::MetadataExt;
    FileStat {
        size: if md.is_dir() { 0 } else { md.len() },
        is_dir: md.is_dir(),
        mode: md.mode(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::new(libc::EIO, format!("local source task failed: {e}")))?
}

fn read_at(
    p: &Path,
    at: FileVersion,
    offset: u64,
    len: u32,
    path: &str,
) -> Result<Bytes, SourceError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(p).map_err(|e| SourceError::from_io(&e, "open", path))?;
    // The version of the file this descriptor reads; checked again after reading, so a file
    // replaced in place while being read is caught too.
    let version = |file: &std::fs::File| {
        file.metadata()
            .map(|md| FileVersion::of(&file_stat(&md)))
            .map_err(|e| SourceError::from_io(&e, "stat", path))
    };
    let stale = |now: FileVersion| {
        SourceError::new(
            libc::ESTALE,
            format!(
                "{path} changed since it was opened: size {} -> {}, mtime_ns {} -> {}; reopen it",
                at.size, now.size, at.mtime_ns, now.mtime_ns
            ),
        )
    };
    let now = version(&file)?;
    if now != at {
        return Err(stale(now));
    }
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SourceError::from_io(&e, "read", path)),
        }
    }
    let now = version(&file)?;
    if now != at {
        return Err(stale(now));
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

impl FileSource for LocalDirSource {
    async fn stat(&self, path: &str) -> Result<FileStat, SourceError> {
        let p = self.resolve(path)?;
        let path = path.to_owned();
        blocking(move || {
            std::fs::metadata(&p)
                .map(|md| file_stat(&md))
                .map_err(|e| SourceError::from_io(&e, "stat", &path))
        })
        .await
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, SourceError> {
        let p = self.resolve(path)?;
        let path = path.to_owned();
        blocking(move || {
            let rd = std::fs::read_dir(&p).map_err(|e| SourceError::from_io(&e, "list", &path))?;
            let mut out = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| SourceError::from_io(&e, "list", &path))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // not representable in the protocol; the workers skip it too
                };
                let md = std::fs::metadata(entry.path())
                    .map_err(|e| SourceError::from_io(&e, "stat", &name))?;
                out.push(DirEntry {
                    name,
                    stat: file_stat(&md),
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn read(
        &self,
        path: &str,
        at: FileVersion,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, SourceError> {
        let p = self.resolve(path)?;
        let path = path.to_owned();
        blocking(move || read_at(&p, at, offset, len, &path)).await
    }
}
