//! `s3://bucket/prefix` under-storage: AWS S3 and S3-compatible object stores, through the
//! `object_store` crate (ranged GETs, delimiter listings paginated past 1,000 keys, credentials
//! from the environment: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a web-identity token,
//! or the instance/pod identity).
//!
//! - A file's version is its size and an mtime that carries its ETag: the object's
//!   Last-Modified in whole seconds plus, as the nanoseconds, a hash of the ETag. An object
//!   overwritten within the same second with the same size still gets a new version, so pinned
//!   reads answer `Stale` and cached pages of the old object are never served.
//! - A read is one ranged GET; the version comes from the GET's own answer, so the bytes and
//!   the version always belong together.
//! - At most `rcache.underfs.s3.threads.max` GETs are in flight per worker; every request has a
//!   timeout and is retried with backoff on 5xx, SlowDown and timeouts, and every operation has
//!   a deadline after which it fails with an I/O error: nothing waits forever.
//! - Directory listings are cached for `rcache.user.file.metadata.sync.interval`.
//! - No secret reaches a message: the store's error texts have the credential values of the
//!   environment replaced before they are returned.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt,
    RetryConfig,
};
use rcache_transport::{DirEntry, FileStat};
use tokio::sync::Semaphore;

use super::{ReadOutcome, UfsCounters, UfsError, UnderStorage};
use crate::config::{S3Config, SyncInterval};

/// `S_IFREG | 0644` and `S_IFDIR | 0755`: objects are read-only files to readers.
const FILE_MODE: u32 = 0o100_644;
const DIR_MODE: u32 = 0o040_755;

/// The endpoint object_store is given: virtual-hosted style puts the bucket in the host.
fn store_endpoint(cfg: &S3Config) -> Option<String> {
    let ep = cfg.endpoint.as_deref()?.trim_end_matches('/');
    if cfg.path_style {
        return Some(ep.to_string());
    }
    match ep.split_once("://") {
        Some((scheme, host)) => Some(format!("{scheme}://{}.{host}", cfg.bucket)),
        None => Some(format!("https://{}.{ep}", cfg.bucket)),
    }
}

/// The whole-operation deadline: every retry with its backoff fits in it.
fn op_deadline(cfg: &S3Config) -> Duration {
    cfg.request_timeout * (cfg.max_retries as u32 + 1) + Duration::from_secs(1)
}

/// Why an S3 request failed, for the message and its fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Fault {
    NotFound,
    BucketNotFound,
    AccessDenied,
    Unreachable,
    Other,
}

impl S3Fault {
    /// The reason word a status condition uses (`UfsReady False <reason>`; the operator reads
    /// it back from the termination message, see `operator/src/status.rs`).
    pub fn reason(self) -> &'static str {
        match self {
            S3Fault::NotFound => "NotFound",
            S3Fault::BucketNotFound => "BucketNotFound",
            S3Fault::AccessDenied => "AccessDenied",
            S3Fault::Unreachable => "Unreachable",
            S3Fault::Other => "UfsError",
        }
    }
}

/// The S3 under-storage.
pub struct S3Ufs {
    cfg: S3Config,
    store: Arc<AmazonS3>,
    runtime: tokio::runtime::Handle,
    gets: Arc<Semaphore>,
    listings: Mutex<HashMap<String, Listing>>,
    /// Credential values of the environment; never shown in a message.
    secrets: Vec<String>,
    counters: UfsCounters,
}

/// A directory listing and when it was taken.
type Listing = (Instant, Arc<Vec<DirEntry>>);

/// Listings kept at most; the cache is cleared when it grows past this.
const MAX_LISTINGS: usize = 4096;

impl S3Ufs {
    /// Builds the client (credentials from the environment). Call inside a tokio runtime: the
    /// blocking reads run their requests on it. Sends no request; see [`S3Ufs::probe`].
    pub fn new(cfg: S3Config) -> Result<Arc<Self>, UfsError> {
        // reqwest's rustls has no built-in provider here: ring is the one in the tree.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| UfsError::Io {
            path: String::new(),
            reason: format!("the S3 under-storage needs a tokio runtime: {e}"),
        })?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_virtual_hosted_style_request(!cfg.path_style && cfg.endpoint.is_none())
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(cfg.request_timeout)
                    .with_connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
                    .with_allow_http(
                        cfg.endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: cfg.max_retries,
                retry_timeout: op_deadline(&cfg),
            });
        if let Some(ep) = store_endpoint(&cfg) {
            b = b.with_endpoint(ep);
        }
        let region = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        let secrets = secret_values();
        let store = b.build().map_err(|e| UfsError::Io {
            path: String::new(),
            reason: format!(
                "cannot configure the S3 client for bucket {}: {}; check rcache.ufs.uri and \
                 rcache.underfs.s3.*",
                cfg.bucket,
                redact(&e.to_string(), &secrets)
            ),
        })?;
        Ok(Arc::new(S3Ufs {
            gets: Arc::new(Semaphore::new(cfg.max_concurrent_gets.max(1))),
            cfg,
            store: Arc::new(store),
            runtime,
            listings: Mutex::new(HashMap::new()),
            secrets,
            counters: UfsCounters::default(),
        }))
    }

    /// Checks at start that the bucket answers a listing of the prefix with these credentials.
    /// The error names the bucket, the store's answer and the fix, on one line.
    pub async fn probe(&self) -> Result<(), (S3Fault, String)> {
        let prefix = self.store_path("");
        let store = self.store.clone();
        let res = self
            .deadline(async move {
                let mut s = store.list(prefix.as_ref());
                s.next().await.transpose()
            })
            .await;
        match res {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let fault = classify(&e);
                Err((
                    fault,
                    self.explain(fault, &redact(&e.to_string(), &self.secrets)),
                ))
            }
            Err(elapsed) => Err((
                S3Fault::Unreachable,
                self.explain(S3Fault::Unreachable, &elapsed),
            )),
        }
    }

    /// One line: what failed, the store's answer, and what to change.
    fn explain(&self, fault: S3Fault, detail: &str) -> String {
        let where_ = format!(
            "s3://{}/{} ({})",
            self.cfg.bucket,
            self.cfg.prefix,
            self.endpoint_text()
        );
        let fix = match fault {
            S3Fault::AccessDenied => {
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in spec.ufs.credentialsSecretRef \
                 (or the pod's identity) and that they may list and read the bucket"
            }
            S3Fault::BucketNotFound | S3Fault::NotFound => {
                "check the bucket name in spec.ufs.uri, spec.ufs.s3.region and that the bucket exists"
            }
            S3Fault::Unreachable => {
                "check spec.ufs.s3.endpoint (rcache.underfs.s3.endpoint) and that the workers can \
                 reach it"
            }
            S3Fault::Other => "check spec.ufs.uri and spec.ufs.s3",
        };
        // Fault and fix first: status messages keep only the first few hundred characters.
        let detail = one_line(detail);
        format!(
            "under-storage {where_}: {}: {fix}; the store answered: {detail}",
            fault.reason()
        )
    }

    fn endpoint_text(&self) -> String {
        match &self.cfg.endpoint {
            Some(e) => format!("endpoint {e}"),
            None => "AWS".into(),
        }
    }

    /// The object key of a normalised path.
    fn key(&self, path: &str) -> String {
        match (self.cfg.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_string(),
            (false, true) => self.cfg.prefix.clone(),
            (false, false) => format!("{}/{path}", self.cfg.prefix),
        }
    }

    /// The store path of a directory (`None` = the bucket's root).
    fn store_path(&self, path: &str) -> Option<StorePath> {
        let key = self.key(path);
        (!key.is_empty()).then(|| StorePath::from(key.as_str()))
    }

    /// Runs `fut` under the operation deadline.
    async fn deadline<T>(&self, fut: impl Future<Output = T>) -> Result<T, String> {
        let d = op_deadline(&self.cfg);
        tokio::time::timeout(d, fut)
            .await
            .map_err(|_| format!("no answer within {}s", d.as_secs_f64()))
    }

    fn error(&self, path: &str, e: object_store::Error) -> UfsError {
        let fault = classify(&e);
        match fault {
            S3Fault::NotFound => UfsError::NotFound { path: path.into() },
            _ => UfsError::Io {
                path: path.into(),
                reason: self.explain(fault, &redact(&e.to_string(), &self.secrets)),
            },
        }
    }

    fn timeout(&self, path: &str, what: String) -> UfsError {
        UfsError::Io {
            path: path.into(),
            reason: self.explain(S3Fault::Unreachable, &what),
        }
    }

    async fn head(&self, path: &str) -> Result<Option<FileStat>, UfsError> {
        let location = StorePath::from(self.key(path).as_str());
        match self.deadline(self.store.head(&location)).await {
            Ok(Ok(meta)) => Ok(Some(file_stat(&meta))),
            Ok(Err(object_store::Error::NotFound { .. })) => Ok(None),
            Ok(Err(e)) => Err(self.error(path, e)),
            Err(t) => Err(self.timeout(path, t)),
        }
    }

    /// Whether any key lives under `path/` (a "directory" of the object store).
    async fn has_children(&self, path: &str) -> Result<bool, UfsError> {
        let prefix = self.store_path(path);
        let store = self.store.clone();
        let first = self
            .deadline(async move { store.list(prefix.as_ref()).next().await.transpose() })
            .await;
        match first {
            Ok(Ok(found)) => Ok(found.is_some()),
            Ok(Err(e)) => Err(self.error(path, e)),
            Err(t) => Err(self.timeout(path, t)),
        }
    }

    async fn get_range(&self, path: &str, offset: u64, len: usize) -> Result<GetPart, UfsError> {
        let location = StorePath::from(self.key(path).as_str());
        let _permit = self.gets.acquire().await.map_err(|e| UfsError::Io {
            path: path.into(),
            reason: format!("GET limiter closed: {e}"),
        })?;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + len as u64)),
            ..GetOptions::default()
        };
        let store = self.store.clone();
        let res = self
            .deadline(async move {
                let r = store.get_opts(&location, opts).await?;
                let meta = r.meta.clone();
                let bytes = r.bytes().await?;
                Ok::<_, object_store::Error>((meta, bytes))
            })
            .await;
        match res {
            Ok(Ok((meta, bytes))) => Ok(GetPart::Bytes(file_stat(&meta), bytes)),
            // A range at or past the end (and any range of an empty object): nothing to read.
            Ok(Err(e)) if is_range_not_satisfiable(&e) => Ok(GetPart::PastEnd),
            Ok(Err(e)) => Err(self.error(path, e)),
            Err(t) => Err(self.timeout(path, t)),
        }
    }

    async fn read_at(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, UfsError> {
        match self.get_range(path, offset, buf.len()).await? {
            GetPart::Bytes(stat, bytes) => {
                self.note(path, Some(&stat));
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(ReadOutcome { len: n, stat })
            }
            GetPart::PastEnd => match self.head(path).await? {
                Some(stat) if offset >= stat.size => Ok(ReadOutcome { len: 0, stat }),
                // Changed between the two requests: the caller's version check sorts it out.
                Some(stat) => Ok(ReadOutcome { len: 0, stat }),
                None if self.has_children(path).await? => {
                    Err(UfsError::IsADirectory { path: path.into() })
                }
                None => Err(UfsError::NotFound { path: path.into() }),
            },
        }
    }

    fn cached_listing(&self, path: &str) -> Option<Arc<Vec<DirEntry>>> {
        let ttl = match self.cfg.listing_ttl {
            SyncInterval::Always => return None,
            SyncInterval::Every(d) => Some(d),
            SyncInterval::Never => None,
        };
        let map = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let (at, entries) = map.get(path)?;
        match ttl {
            Some(d) if at.elapsed() >= d => None,
            _ => Some(entries.clone()),
        }
    }

    fn remember_listing(&self, path: &str, entries: Arc<Vec<DirEntry>>) {
        if self.cfg.listing_ttl == SyncInterval::Always {
            return;
        }
        let mut map = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_LISTINGS {
            map.clear();
        }
        map.insert(path.to_string(), (Instant::now(), entries));
    }

    /// What a HEAD or GET just said about `path` (`None`: no such object). A cached listing of
    /// its directory that says otherwise is dropped, so a listing never teaches the metadata
    /// cache an older version than the one a read or stat has already seen.
    fn note(&self, path: &str, stat: Option<&FileStat>) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut map = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, entries)) = map.get(dir) else {
            return;
        };
        let listed = entries.iter().find(|e| e.name == name).map(|e| &e.stat);
        let same = match (listed, stat) {
            (Some(l), Some(s)) => !l.is_dir && l.size == s.size && l.mtime_ns == s.mtime_ns,
            // A directory has no object of its own.
            (Some(l), None) => l.is_dir,
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if !same {
            map.remove(dir);
        }
    }

    async fn list_uncached(&self, path: &str) -> Result<Vec<DirEntry>, UfsError> {
        let prefix = self.store_path(path);
        let store = self.store.clone();
        let listed = {
            let prefix = prefix.clone();
            self.deadline(async move { store.list_with_delimiter(prefix.as_ref()).await })
                .await
        };
        let listed = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(self.error(path, e)),
            Err(t) => return Err(self.timeout(path, t)),
        };
        let mut out = Vec::with_capacity(listed.common_prefixes.len() + listed.objects.len());
        for p in &listed.common_prefixes {
            if let Some(name) = p.filename() {
                out.push(DirEntry {
                    name: name.to_string(),
                    stat: dir_stat(),
                });
            }
        }
        let mut marker = false;
        for o in &listed.objects {
            // A directory marker (`dir/`) names the directory itself, not an entry of it.
            if Some(&o.location) == prefix.as_ref() {
                marker = true;
                continue;
            }
            if let Some(name) = o.location.filename() {
                out.push(DirEntry {
                    name: name.to_string(),
                    stat: file_stat(o),
                });
            }
        }
        if out.is_empty() && !path.is_empty() && !marker {
            return match self.head(path).await? {
                Some(_) => Err(UfsError::NotADirectory { path: path.into() }),
                None => Err(UfsError::NotFound { path: path.into() }),
            };
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }
}

enum GetPart {
    Bytes(FileStat, bytes::Bytes),
    PastEnd,
}

#[async_trait::async_trait]
impl UnderStorage for S3Ufs {
    fn read_at_blocking(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, UfsError> {
        // Called on a blocking thread (the cache's fill): drive the request on the runtime.
        if path.is_empty() {
            return Err(UfsError::IsADirectory { path: path.into() });
        }
        self.runtime.block_on(self.read_at(path, offset, buf))
    }

    async fn stat(&self, path: &str) -> Result<FileStat, UfsError> {
        self.counters.stats.fetch_add(1, Ordering::Relaxed);
        if path.is_empty() {
            return Ok(dir_stat());
        }
        let head = self.head(path).await?;
        self.note(path, head.as_ref());
        if let Some(stat) = head {
            return Ok(stat);
        }
        if self.has_children(path).await? {
            Ok(dir_stat())
        } else {
            Err(UfsError::NotFound { path: path.into() })
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, UfsError> {
        if let Some(entries) = self.cached_listing(path) {
            return Ok(entries.as_ref().clone());
        }
        let entries = Arc::new(self.list_uncached(path).await?);
        self.remember_listing(path, entries.clone());
        Ok(entries.as_ref().clone())
    }

    fn counters(&self) -> &UfsCounters {
        &self.counters
    }

    fn describe(&self) -> String {
        format!(
            "s3://{}/{} ({}, {} addressing)",
            self.cfg.bucket,
            self.cfg.prefix,
            self.endpoint_text(),
            if self.cfg.path_style {
                "path-style"
            } else {
                "virtual-hosted"
            }
        )
    }
}

/// The stat of an object: its version carries the ETag (see the module docs).
pub fn file_stat(meta: &ObjectMeta) -> FileStat {
    FileStat {
        size: meta.size,
        is_dir: false,
        mode: FILE_MODE,
        mtime_ns: version_mtime_ns(meta.last_modified.timestamp(), meta.e_tag.as_deref()),
    }
}

/// Last-Modified in whole seconds (a listing and a HEAD agree on those) plus, as nanoseconds, a
/// hash of the ETag below one second.
pub fn version_mtime_ns(last_modified_secs: i64, etag: Option<&str>) -> i64 {
    let frac = etag.map_or(0, |e| {
        // FNV-1a: stable across processes and versions (workers must agree).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in e.trim_matches('"').bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % 1_000_000_000) as i64
    });
    last_modified_secs.saturating_mul(1_000_000_000) + frac
}

fn dir_stat() -> FileStat {
    FileStat {
        size: 0,
        is_dir: true,
        mode: DIR_MODE,
        mtime_ns: 0,
    }
}

/// Sorts an object_store error into what the user has to fix.
pub fn classify(e: &object_store::Error) -> S3Fault {
    let text = e.to_string();
    match e {
        _ if text.contains("NoSuchBucket") => S3Fault::BucketNotFound,
        object_store::Error::NotFound { .. } => S3Fault::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => S3Fault::AccessDenied,
        _ if [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "Forbidden",
        ]
        .iter()
        .any(|w| text.contains(w)) =>
        {
            S3Fault::AccessDenied
        }
        _ if [
            "error sending request",
            "connect",
            "timed out",
            "dns error",
            "Connection refused",
        ]
        .iter()
        .any(|w| text.contains(w)) =>
        {
            S3Fault::Unreachable
        }
        _ => S3Fault::Other,
    }
}

fn is_range_not_satisfiable(e: &object_store::Error) -> bool {
    let t = e.to_string();
    t.contains("416") || t.contains("InvalidRange") || t.contains("Range Not Satisfiable")
}

/// The credential values in the environment (never shown).
fn secret_values() -> Vec<String> {
    [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECURITY_TOKEN",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .filter(|v| v.len() >= 4)
    .collect()
}

/// `text` with every secret value replaced.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    out
}

/// A store's answer on one line: an S3 error body (XML) shrinks to its code and message.
fn one_line(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let len = text[start..].find(close)?;
        Some(text[start..start + len].to_string())
    };
    let text = match (
        text.find("<?xml").or_else(|| text.find("<Error>")),
        between("<Code>", "</Code>"),
    ) {
        (Some(xml), Some(code)) => {
            let message = between("<Message>", "</Message>").unwrap_or_default();
            format!("{}{code}: {message}", &text[..xml])
        }
        _ => text.to_string(),
    };
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.len() > 600 {
        let mut cut = 600;
        while !flat.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &flat[..cut])
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_second_and_size_with_another_etag_is_another_version() {
        let a = version_mtime_ns(1_700_000_000, Some("\"336311a016184326ddbdd61edd4eeb52\""));
        let b = version_mtime_ns(1_700_000_000, Some("\"0bbc18cdea1c4aaa17777d441214774a\""));
        assert_ne!(a, b);
        assert_eq!(a / 1_000_000_000, 1_700_000_000, "whole seconds kept");
        assert_eq!(
            a,
            version_mtime_ns(1_700_000_000, Some("336311a016184326ddbdd61edd4eeb52")),
            "quotes do not matter"
        );
    }

    #[test]
    fn virtual_hosted_style_puts_the_bucket_in_the_endpoint_host() {
        let mut c = S3Config {
            bucket: "b1".into(),
            prefix: String::new(),
            endpoint: Some("http://s3.local:9000/".into()),
            region: None,
            path_style: false,
            max_concurrent_gets: 4,
            request_timeout: Duration::from_secs(1),
            max_retries: 0,
            listing_ttl: SyncInterval::Always,
        };
        assert_eq!(
            store_endpoint(&c).as_deref(),
            Some("http://b1.s3.local:9000")
        );
        c.path_style = true;
        assert_eq!(store_endpoint(&c).as_deref(), Some("http://s3.local:9000"));
    }

    #[test]
    fn redaction_removes_every_secret_value() {
        let s = vec!["SECRETVALUE".to_string(), "AKIAXYZ".to_string()];
        let out = redact("key AKIAXYZ sig SECRETVALUE", &s);
        assert!(
            !out.contains("SECRETVALUE") && !out.contains("AKIAXYZ"),
            "{out}"
        );
    }
}
