//! The SSD tier: one file per page under `<dir>/pages/<xx>/`, an in-memory LRU index with a
//! byte quota, and the on-disk page format that makes a torn page (crash mid-write) detectable.
//!
//! A page is written to `<dir>/tmp/`, fsynced, then renamed into place, so a visible page file is
//! complete unless the disk lies; the header and the data each carry a CRC32 and the file length
//! is checked, so a torn or corrupt file is dropped, never served. On start the directory is
//! scanned and every valid page is indexed again (warm restart). The header records the version
//! of the under-storage file the page belongs to (`meta::version_of`); a page is served only for
//! that version, and pages written by the older format without a version are dropped at the scan.
//! A slot (path, page index) holds one version at a time. This module does no UFS reads.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::PageKey;
use super::lru::Lru;
use crate::hash::hash_parts;

const MAGIC: &[u8; 4] = b"RCPG";
/// The page file format. 1 had no file version: such pages are dropped, never served.
const VERSION: u16 = 2;
const VERSION_WITHOUT_FILE_VERSION: u16 = 1;
/// magic 4 | format 2 | reserved 2 | index 8 | file_version 8 | data_len 4 | path_len 4 |
/// data_crc 4 | header_crc 4
pub const HEADER_LEN: usize = 40;

/// Why a page file was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PageFileError {
    Missing,
    Torn(String),
    /// A complete page of another version of the file (or of the format without versions).
    Stale,
}

/// What the index knows about a page slot for a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// The slot holds a page of another version of the file.
    Stale,
}

/// The header of a page file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageHeader {
    pub path: String,
    pub index: u64,
    /// The version of the under-storage file the data belongs to.
    pub file_version: u64,
    pub data_len: u32,
    pub data_crc: u32,
}

impl PageHeader {
    fn data_offset(&self) -> u64 {
        (HEADER_LEN + self.path.len()) as u64
    }

    fn file_len(&self) -> u64 {
        self.data_offset() + u64::from(self.data_len)
    }
}

/// Encodes header + path for `data` of version `file_version` of the file.
pub fn encode_header(path: &str, index: u64, file_version: u64, data: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN + path.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&index.to_le_bytes());
    h.extend_from_slice(&file_version.to_le_bytes());
    h.extend_from_slice(&(data.len() as u32).to_le_bytes());
    h.extend_from_slice(&(path.len() as u32).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(path.as_bytes());
    let header_crc = crc.finalize();
    h.extend_from_slice(&header_crc.to_le_bytes());
    h.extend_from_slice(path.as_bytes());
    h
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads and checks the header (and the file length) of an open page file. A page of the
/// format without a file version is `Stale`: nothing says which version of the file it holds.
pub fn read_header(file: &File) -> Result<PageHeader, PageFileError> {
    let torn = |why: &str| PageFileError::Torn(why.to_string());
    let len = file.metadata().map_err(|e| torn(&e.to_string()))?.len();
    let mut magic = [0u8; 6];
    file.read_exact_at(&mut magic, 0)
        .map_err(|_| torn("shorter than the header"))?;
    if &magic[0..4] != MAGIC {
        return Err(torn("bad magic"));
    }
    match u16::from_le_bytes([magic[4], magic[5]]) {
        VERSION => {}
        VERSION_WITHOUT_FILE_VERSION => return Err(PageFileError::Stale),
        _ => return Err(torn("unknown version")),
    }
    let mut fixed = [0u8; HEADER_LEN];
    file.read_exact_at(&mut fixed, 0)
        .map_err(|_| torn("shorter than the header"))?;
    let index = le_u64(&fixed, 8);
    let file_version = le_u64(&fixed, 16);
    let data_len = le_u32(&fixed, 24);
    let path_len = le_u32(&fixed, 28) as usize;
    let data_crc = le_u32(&fixed, 32);
    let header_crc = le_u32(&fixed, 36);
    if path_len > 64 << 10 {
        return Err(torn("path length out of range"));
    }
    let mut path = vec![0u8; path_len];
    file.read_exact_at(&mut path, HEADER_LEN as u64)
        .map_err(|_| torn("shorter than its path"))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fixed[..36]);
    crc.update(&path);
    if crc.finalize() != header_crc {
        return Err(torn("header checksum mismatch"));
    }
    let path = String::from_utf8(path).map_err(|_| torn("path not UTF-8"))?;
    let header = PageHeader {
        path,
        index,
        file_version,
        data_len,
        data_crc,
    };
    if len != header.file_len() {
        return Err(torn("file length does not match the header"));
    }
    Ok(header)
}

#[derive(Clone, Debug)]
struct DiskEntry {
    len: u32,
    file_version: u64,
}

/// The SSD tier.
pub struct DiskTier {
    dir: PathBuf,
    quota: u64,
    index: Mutex<Lru<PageKey, DiskEntry>>,
}

/// What a scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub pages: u64,
    pub bytes: u64,
    /// Torn or misplaced page files.
    pub dropped: u64,
    /// Pages of the format without a file version (cannot be matched to a version).
    pub stale: u64,
}

impl DiskTier {
    /// Opens (creating) the directory and indexes the pages already there. Blocking.
    pub fn open(dir: &Path, quota: u64) -> std::io::Result<(DiskTier, ScanReport)> {
        std::fs::create_dir_all(dir.join("pages"))?;
        let tmp = dir.join("tmp");
        // Leftovers in tmp/ are writes cut by a crash: never complete, never served.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            quota,
            index: Mutex::new(Lru::new()),
        };
        let report = tier.scan()?;
        Ok((tier, report))
    }

    fn scan(&self) -> std::io::Result<ScanReport> {
        let mut found: Vec<(std::time::SystemTime, PageKey, DiskEntry, u64)> = Vec::new();
        let mut report = ScanReport::default();
        for sub in std::fs::read_dir(self.dir.join("pages"))? {
            let sub = sub?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub)? {
                let path = f?.path();
                let checked = File::open(&path)
                    .map_err(|e| PageFileError::Torn(e.to_string()))
                    .and_then(|file| {
                        let h = read_header(&file)?;
                        let mtime = file
                            .metadata()
                            .and_then(|m| m.modified())
                            .map_err(|e| PageFileError::Torn(e.to_string()))?;
                        Ok((h, mtime))
                    });
                match checked {
                    Ok((h, mtime)) if self.file_for_parts(&h.path, h.index) == path => {
                        let file_len = h.file_len();
                        let entry = DiskEntry {
                            len: h.data_len,
                            file_version: h.file_version,
                        };
                        found.push((mtime, PageKey::new(&h.path, h.index), entry, file_len));
                    }
                    Err(PageFileError::Stale) => {
                        tracing::info!(file = %path.display(), "dropping cache page without a file version (older format)");
                        let _ = std::fs::remove_file(&path);
                        report.stale += 1;
                    }
                    Ok(_) | Err(_) => {
                        tracing::warn!(file = %path.display(), "dropping torn or misplaced cache page");
                        let _ = std::fs::remove_file(&path);
                        report.dropped += 1;
                    }
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let mut index = self.lock();
        for (_, key, entry, file_len) in found {
            index.insert(key, entry, file_len);
            report.pages += 1;
            report.bytes += file_len;
        }
        drop(index);
        // A smaller quota than before: trim now.
        self.evict_over_quota();
        Ok(report)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<PageKey, DiskEntry>> {
        // A panic while holding the lock cannot leave the LRU inconsistent in a way that matters
        // more than losing the cache; keep serving.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file_for_parts(&self, path: &str, index: u64) -> PathBuf {
        let h = hash_parts(&[path.as_bytes()]);
        self.dir
            .join("pages")
            .join(format!("{:02x}", h >> 56))
            .join(format!("{h:016x}-{index}.page"))
    }

    pub fn file_for(&self, key: &PageKey) -> PathBuf {
        self.file_for_parts(&key.path, key.index)
    }

    /// Whether the index holds the page of version `file_version` of the file (marks the slot
    /// recently used).
    pub fn lookup(&self, key: &PageKey, file_version: u64) -> Lookup {
        match self.lock().get(key) {
            Some(e) if e.file_version == file_version => Lookup::Hit,
            Some(_) => Lookup::Stale,
            None => Lookup::Miss,
        }
    }

    /// Whether the index holds the page of version `file_version`.
    pub fn holds(&self, key: &PageKey, file_version: u64) -> bool {
        self.lock()
            .peek(key)
            .is_some_and(|e| e.file_version == file_version)
    }

    /// The distinct file paths the tier holds pages of.
    pub fn paths(&self) -> std::collections::HashSet<std::sync::Arc<str>> {
        self.lock().keys().map(|k| k.path.clone()).collect()
    }

    pub fn contains(&self, key: &PageKey) -> bool {
        self.lock().contains(key)
    }

    /// Drops the slot's page when it belongs to another version than `keep`. Blocking. Returns
    /// whether a page was dropped.
    pub fn drop_stale(&self, key: &PageKey, keep: u64) -> bool {
        let stale = {
            let mut index = self.lock();
            match index.peek(key) {
                Some(e) if e.file_version != keep => index.remove(key).is_some(),
                _ => false,
            }
        };
        if stale {
            let _ = std::fs::remove_file(self.file_for(key));
        }
        stale
    }

    /// Drops every page of `path` that belongs to another version than `keep` (the file
    /// changed). Blocking; O(pages indexed). Returns how many pages were dropped.
    pub fn drop_versions_except(&self, path: &str, keep: u64) -> u64 {
        let victims = self
            .lock()
            .remove_where(|k, e| &*k.path == path && e.file_version != keep);
        for (k, _) in &victims {
            let _ = std::fs::remove_file(self.file_for(k));
        }
        victims.len() as u64
    }

    /// Reads the page of version `file_version` into `buf` (at least the page's length).
    /// Blocking. A torn, foreign or stale file is removed from the index and deleted.
    pub fn read_into(
        &self,
        key: &PageKey,
        file_version: u64,
        buf: &mut [u8],
    ) -> Result<usize, PageFileError> {
        let file_path = self.file_for(key);
        let res = (|| {
            let file = File::open(&file_path).map_err(|_| PageFileError::Missing)?;
            let h = read_header(&file)?;
            if h.path != *key.path || h.index != key.index {
                return Err(PageFileError::Missing);
            }
            if h.file_version != file_version {
                return Err(PageFileError::Stale);
            }
            let n = h.data_len as usize;
            if n > buf.len() {
                return Err(PageFileError::Torn("page larger than the page size".into()));
            }
            file.read_exact_at(&mut buf[..n], h.data_offset())
                .map_err(|_| PageFileError::Torn("short data".into()))?;
            if crc32fast::hash(&buf[..n]) != h.data_crc {
                return Err(PageFileError::Torn("data checksum mismatch".into()));
            }
            Ok(n)
        })();
        if let Err(e) = &res {
            self.lock().remove(key);
            match e {
                PageFileError::Torn(why) => {
                    tracing::warn!(file = %file_path.display(), reason = %why, "dropping torn cache page");
                    let _ = std::fs::remove_file(&file_path);
                }
                PageFileError::Stale => {
                    let _ = std::fs::remove_file(&file_path);
                }
                PageFileError::Missing => {}
            }
        }
        res
    }

    /// Writes the page of version `file_version` durably (temp + fsync + rename; it replaces a
    /// page of another version in the same slot) and indexes it. Blocking. Returns how many
    /// pages were evicted to stay under the quota.
    pub fn write(&self, key: &PageKey, file_version: u64, data: &[u8]) -> std::io::Result<u64> {
        let header = encode_header(&key.path, key.index, file_version, data);
        let file_len = (header.len() + data.len()) as u64;
        if file_len > self.quota {
            return Ok(0);
        }
        let target = self.file_for(key);
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.tmp",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("page"),
            std::process::id()
        ));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&header)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&tmp, &target)?;
        self.lock().insert(
            key.clone(),
            DiskEntry {
                len: data.len() as u32,
                file_version,
            },
            file_len,
        );
        Ok(self.evict_over_quota())
    }

    fn evict_over_quota(&self) -> u64 {
        let mut victims = Vec::new();
        {
            let mut index = self.lock();
            while index.weight() > self.quota {
                match index.pop_lru() {
                    Some((k, _, _)) => victims.push(k),
                    None => break,
                }
            }
        }
        for k in &victims {
            let _ = std::fs::remove_file(self.file_for(k));
        }
        victims.len() as u64
    }

    /// Page length recorded in the index.
    pub fn len_of(&self, key: &PageKey) -> Option<u32> {
        self.lock().peek(key).map(|e| e.len)
    }

    pub fn used_bytes(&self) -> u64 {
        self.lock().weight()
    }

    pub fn pages(&self) -> u64 {
        self.lock().len() as u64
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: u64 = 0x1111;
    const V2: u64 = 0x2222;

    fn key(p: &str, i: u64) -> PageKey {
        PageKey::new(p, i)
    }

    /// A page file in the format without a file version (what workers wrote before it).
    fn old_format_page(path: &str, index: u64, data: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&index.to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(path.len() as u32).to_le_bytes());
        h.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        crc.update(path.as_bytes());
        h.extend_from_slice(&crc.finalize().to_le_bytes());
        h.extend_from_slice(path.as_bytes());
        h.extend_from_slice(data);
        h
    }

    #[test]
    fn page_without_a_file_version_is_dropped_at_scan_never_served() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        let file = tier.file_for(&key("f", 0));
        drop(tier);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, old_format_page("f", 0, b"old bytes")).expect("write");
        let (tier, rep) = DiskTier::open(d.path(), 1 << 20).expect("reopen");
        assert_eq!((rep.pages, rep.dropped, rep.stale), (0, 0, 1));
        assert!(!file.exists());
        assert_eq!(tier.lookup(&key("f", 0), V1), Lookup::Miss);
    }

    #[test]
    fn page_of_another_file_version_is_stale_and_dropped() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        tier.write(&key("f", 0), V1, b"version one").expect("write");
        assert_eq!(tier.lookup(&key("f", 0), V2), Lookup::Stale);
        assert!(tier.holds(&key("f", 0), V1));
        let mut buf = vec![0u8; 64];
        assert_eq!(
            tier.read_into(&key("f", 0), V2, &mut buf),
            Err(PageFileError::Stale)
        );
        assert!(!tier.contains(&key("f", 0)));
        assert!(!tier.file_for(&key("f", 0)).exists());
    }

    #[test]
    fn new_version_replaces_the_slot_and_survives_reopen_with_its_version() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        tier.write(&key("f", 0), V1, b"one").expect("write");
        tier.write(&key("f", 0), V2, b"two!").expect("write");
        assert_eq!(tier.pages(), 1);
        drop(tier);
        let (tier, rep) = DiskTier::open(d.path(), 1 << 20).expect("reopen");
        assert_eq!(rep.pages, 1);
        assert_eq!(tier.lookup(&key("f", 0), V1), Lookup::Stale);
        let mut buf = vec![0u8; 64];
        assert_eq!(tier.read_into(&key("f", 0), V2, &mut buf), Ok(4));
        assert_eq!(&buf[..4], b"two!");
    }

    #[test]
    fn drop_versions_except_removes_only_other_versions_of_the_path() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        tier.write(&key("f", 0), V1, b"a").expect("write");
        tier.write(&key("f", 1), V2, b"b").expect("write");
        tier.write(&key("g", 0), V1, b"c").expect("write");
        assert_eq!(tier.drop_versions_except("f", V2), 1);
        assert!(!tier.file_for(&key("f", 0)).exists());
        assert!(tier.holds(&key("f", 1), V2));
        assert!(tier.holds(&key("g", 0), V1), "other paths are kept");
        assert!(tier.drop_stale(&key("g", 0), V2));
        assert!(!tier.contains(&key("g", 0)));
    }

    #[test]
    fn written_page_is_read_back_after_reopen() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, rep) = DiskTier::open(d.path(), 1 << 20).expect("open");
        assert_eq!(rep.pages, 0);
        tier.write(&key("a/b", 3), V1, b"page bytes")
            .expect("write");
        drop(tier);
        let (tier, rep) = DiskTier::open(d.path(), 1 << 20).expect("reopen");
        assert_eq!(rep.pages, 1);
        let mut buf = vec![0u8; 64];
        assert_eq!(tier.read_into(&key("a/b", 3), V1, &mut buf), Ok(10));
        assert_eq!(&buf[..10], b"page bytes");
    }

    #[test]
    fn truncated_page_is_dropped_at_scan() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        tier.write(&key("f", 0), V1, &[7u8; 1000]).expect("write");
        let file = tier.file_for(&key("f", 0));
        drop(tier);
        let f = OpenOptions::new().write(true).open(&file).expect("open");
        f.set_len(500).expect("truncate");
        let (tier, rep) = DiskTier::open(d.path(), 1 << 20).expect("reopen");
        assert_eq!((rep.pages, rep.dropped), (0, 1));
        assert!(!file.exists());
        assert!(!tier.contains(&key("f", 0)));
    }

    #[test]
    fn corrupt_data_is_detected_on_read_and_never_served() {
        let d = tempfile::tempdir().expect("tmp");
        let (tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        tier.write(&key("f", 1), V1, &[7u8; 1000]).expect("write");
        let file = tier.file_for(&key("f", 1));
        let f = OpenOptions::new().write(true).open(&file).expect("open");
        f.write_all_at(&[9u8], 600).expect("flip");
        let mut buf = vec![0u8; 1000];
        assert!(matches!(
            tier.read_into(&key("f", 1), V1, &mut buf),
            Err(PageFileError::Torn(_))
        ));
        assert!(!tier.contains(&key("f", 1)));
        assert!(!file.exists());
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("tmp")).expect("mkdir");
        std::fs::write(d.path().join("tmp/x.tmp"), b"half").expect("write");
        let (_tier, _) = DiskTier::open(d.path(), 1 << 20).expect("open");
        assert!(!d.path().join("tmp/x.tmp").exists());
    }

    #[test]
    fn quota_evicts_least_recently_used_pages() {
        let d = tempfile::tempdir().expect("tmp");
        let page = vec![1u8; 1000];
        let per = (HEADER_LEN + 1 + page.len()) as u64;
        let (tier, _) = DiskTier::open(d.path(), per * 3).expect("open");
        for i in 0..3 {
            tier.write(&key("p", i), V1, &page).expect("write");
        }
        assert_eq!(tier.lookup(&key("p", 0), V1), Lookup::Hit);
        let evicted = tier.write(&key("p", 3), V1, &page).expect("write");
        assert_eq!(evicted, 1);
        assert!(!tier.contains(&key("p", 1)), "LRU page 1 evicted");
        assert!(tier.contains(&key("p", 0)));
        assert!(!tier.file_for(&key("p", 1)).exists());
        assert!(tier.used_bytes() <= per * 3);
    }
}
