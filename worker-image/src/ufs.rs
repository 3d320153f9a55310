//! Under-storage (UFS): where the cache's pages come from. Owns path normalisation (paths are
//! relative to the UFS root, `/`-separated, `""` or `/` is the root) and refuses any path that
//! would leave the root (`..`, symlinks pointing outside). Serves range reads, stat and list.
//! It caches nothing and knows nothing about pages; `cache` decides what to read.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcache_transport::{DirEntry, ErrorCode, FileStat};

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

/// `file://` under-storage: a local directory (hostPath, NFS or PVC mount).
pub struct LocalUfs {
    roots: Arc<Roots>,
    counters: UfsCounters,
}

/// The root paths; cloned into blocking threads.
struct Roots {
    root: PathBuf,
    canonical_root: PathBuf,
}

impl LocalUfs {
    pub fn new(root: &Path) -> Result<Arc<Self>, UfsError> {
        let canonical_root = root.canonicalize().map_err(|e| UfsError::Io {
            path: root.display().to_string(),
            reason: format!("cannot open the under-storage root ({e}); check rcache.ufs.uri and the volume mount"),
        })?;
        if !canonical_root.is_dir() {
            return Err(UfsError::NotADirectory {
                path: root.display().to_string(),
            });
        }
        Ok(Arc::new(LocalUfs {
            roots: Arc::new(Roots {
                root: root.to_path_buf(),
                canonical_root,
            }),
            counters: UfsCounters::default(),
        }))
    }
}

impl Roots {
    /// Resolves a normalised path to a filesystem path inside the root, following symlinks and
    /// refusing ones that leave the root.
    fn resolve(&self, path: &str) -> Result<PathBuf, UfsError> {
        let joined = if path.is_empty() {
            self.canonical_root.clone()
        } else {
            self.canonical_root.join(path)
        };
        let real = joined
            .canonicalize()
            .map_err(|e| UfsError::from_io(path, e))?;
        if !real.starts_with(&self.canonical_root) {
            return Err(UfsError::Refused {
                path: path.into(),
                reason: "resolves (through a symlink) outside the under-storage root".into(),
            });
        }
        Ok(real)
    }

    fn stat_blocking(&self, path: &str) -> Result<FileStat, UfsError> {
        let real = self.resolve(path)?;
        let md = std::fs::metadata(&real).map_err(|e| UfsError::from_io(path, e))?;
        Ok(to_stat(&md))
    }

    fn list_blocking(&self, path: &str) -> Result<Vec<DirEntry>, UfsError> {
        let real = self.resolve(path)?;
        let md = std::fs::metadata(&real).map_err(|e| UfsError::from_io(path, e))?;
        if !md.is_dir() {
            return Err(UfsError::NotADirectory { path: path.into() });
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(|e| UfsError::from_io(path, e))? {
            let entry = entry.map_err(|e| UfsError::from_io(path, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not representable on the wire; skip rather than fail the listing
            };
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            // Symlinks are followed; ones leaving the root or dangling are left out.
            match self.stat_blocking(&child) {
                Ok(stat) => out.push(DirEntry { name, stat }),
                Err(_) => continue,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn to_stat(md: &std::fs::Metadata) -> FileStat {
    FileStat {
        size: if md.is_dir() { 0 } else { md.len() },
        is_dir: md.is_dir(),
        mode: md.mode(),
        mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
    }
}

#[async_trait::async_trait]
impl UnderStorage for LocalUfs {
    fn read_at_blocking(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, UfsError> {
        let real = self.roots.resolve(path)?;
        let file = File::open(&real).map_err(|e| UfsError::from_io(path, e))?;
        let md = file.metadata().map_err(|e| UfsError::from_io(path, e))?;
        if md.is_dir() {
            return Err(UfsError::IsADirectory { path: path.into() });
        }
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UfsError::from_io(path, e)),
            }
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(done as u64, Ordering::Relaxed);
        Ok(ReadOutcome {
            len: done,
            stat: to_stat(&md),
        })
    }

    async fn stat(&self, path: &str) -> Result<FileStat, UfsError> {
        self.counters.stats.fetch_add(1, Ordering::Relaxed);
        let this = self.roots.clone();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || this.stat_blocking(&path))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, UfsError> {
        let this = self.roots.clone();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || this.list_blocking(&path))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
    }

    fn counters(&self) -> &UfsCounters {
        &self.counters
    }

    fn describe(&self) -> String {
        format!("file://{}", self.roots.root.display())
    }
}

fn join_error(e: tokio::task::JoinError) -> UfsError {
    UfsError::Io {
        path: String::new(),
        reason: format!("blocking task failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Arc<LocalUfs>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("root/sub")).expect("mkdir");
        std::fs::write(dir.path().join("root/a.bin"), b"0123456789").expect("write");
        std::fs::write(dir.path().join("root/sub/b.txt"), b"hello").expect("write");
        std::fs::write(dir.path().join("secret"), b"outside").expect("write");
        let ufs = LocalUfs::new(&dir.path().join("root")).expect("ufs");
        (dir, ufs)
    }

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

    #[test]
    fn range_read_is_short_at_eof_and_counted() {
        let (_d, ufs) = tree();
        let mut buf = [0u8; 8];
        let got = ufs.read_at_blocking("a.bin", 6, &mut buf).expect("read");
        assert_eq!(got.len, 4);
        assert_eq!(&buf[..4], b"6789");
        assert_eq!(got.stat.size, 10, "the stat of the file read");
        assert_eq!(
            ufs.read_at_blocking("a.bin", 20, &mut buf)
                .expect("read")
                .len,
            0
        );
        assert_eq!(ufs.counters().bytes.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn symlink_leaving_the_root_is_refused() {
        let (d, ufs) = tree();
        std::os::unix::fs::symlink(d.path().join("secret"), d.path().join("root/escape"))
            .expect("symlink");
        let mut buf = [0u8; 8];
        let err = ufs
            .read_at_blocking("escape", 0, &mut buf)
            .expect_err("refused");
        assert!(matches!(err, UfsError::Refused { .. }), "{err}");
    }

    #[tokio::test]
    async fn stat_and_list_report_files_and_dirs() {
        let (_d, ufs) = tree();
        let st = ufs.stat("a.bin").await.expect("stat");
        assert_eq!(st.size, 10);
        assert!(!st.is_dir);
        assert!(ufs.stat("").await.expect("root").is_dir);
        let names: Vec<String> = ufs
            .list("")
            .await
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["a.bin", "sub"]);
        assert!(matches!(
            ufs.list("a.bin").await,
            Err(UfsError::NotADirectory { .. })
        ));
        assert!(matches!(
            ufs.stat("nope").await,
            Err(UfsError::NotFound { .. })
        ));
    }
}
