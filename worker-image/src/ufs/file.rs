//! `file://` under-storage: a local directory (hostPath, NFS or PVC mount). Refuses symlinks
//! that leave the root. A file's version is its size and mtime.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rcache_transport::{DirEntry, FileStat};

use super::{ReadOutcome, UfsCounters, UfsError, UnderStorage};

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
