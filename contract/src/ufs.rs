//! The under-storage a worker serves, read from `rcache.ufs.uri` ([`UfsConfig::from_properties`]):
//! the schemes the worker serves and what each requires of the URI. Add a scheme here (a variant
//! with its settings and their keys in `keys.rs`), in the CRD's URI rule (`operator/src/rules.rs`)
//! and in the operator's `validate.rs`; the worker opens the variant (`rcache_worker::ufs`).

use std::path::PathBuf;
use std::time::Duration;

use crate::keys::{
    METADATA_SYNC_INTERVAL, S3_ENDPOINT, S3_PATH_STYLE, S3_REGION, S3_REQUEST_TIMEOUT,
    S3_RETRY_MAX, S3_THREADS_MAX, UFS_URI,
};
use crate::paths::{SAFE_DIR_ACCEPTED, check_safe_dir};
use crate::properties::{ConfigError, Properties};
use crate::values::SyncInterval;

/// Which under-storage `rcache.ufs.uri` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UfsConfig {
    /// `file:///absolute/path`: a directory in the worker (hostPath, NFS or PVC mount).
    File(PathBuf),
    /// `s3://bucket[/prefix]` and the `rcache.underfs.s3.*` keys: AWS S3 or an S3-compatible
    /// store.
    S3(S3Config),
}

/// What `rcache.ufs.uri` accepts.
pub const UFS_ACCEPTED: &str =
    "file:///absolute/path (hostPath, NFS or PVC mount) or s3://bucket[/prefix]";

/// What an `s3://` URI accepts ([`check_s3_uri`]).
pub const S3_URI_ACCEPTED: &str = "s3://bucket[/prefix]: a bucket name of 3-63 lower-case letters, digits, `.` and `-` (a letter or digit at each end), then an optional key prefix of printable ASCII without spaces, `.` or `..` segments or `//`";

/// The RE2 pattern of [`check_s3_uri`] without its `.`/`..` rule (the CRD checks that with
/// [`crate::paths::DOT_SEGMENT_PATTERN`]).
pub const S3_URI_PATTERN: &str =
    r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[\x21-\x2e\x30-\x7e]+)*/?$";

/// The RE2 pattern of [`check_s3_endpoint`].
pub const S3_ENDPOINT_PATTERN: &str = r"^https?://[\x21-\x2e\x30-\x7e]+/?$";

/// Checks an `s3://bucket[/prefix]` URI; returns the bucket and the prefix (no leading or
/// trailing `/`, `""` for the whole bucket).
pub fn check_s3_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("not an s3:// URI; accepted: {S3_URI_ACCEPTED}"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && edge(bucket.bytes().next())
        && edge(bucket.bytes().last());
    if !bucket_ok {
        return Err(format!(
            "`{bucket}` is not a bucket name; accepted: {S3_URI_ACCEPTED}"
        ));
    }
    let raw = prefix;
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !raw.is_empty() {
        for seg in prefix.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(format!(
                    "the key prefix `{prefix}` has an empty, `.` or `..` segment; accepted: {S3_URI_ACCEPTED}"
                ));
            }
            if !seg.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
                return Err(format!(
                    "the key prefix `{prefix}` has a space or a non-ASCII character; accepted: {S3_URI_ACCEPTED}"
                ));
            }
        }
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The RE2 pattern of [`check_s3_region`].
pub const S3_REGION_PATTERN: &str = r"^[A-Za-z0-9_-]{1,64}$";

/// Checks an S3 region name such as `eu-west-1`: 1-64 of `[A-Za-z0-9_-]`.
pub fn check_s3_region(region: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&region.len())
        && region
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err("not a region name such as eu-west-1 (1-64 letters, digits, `_` and `-`)".into())
    }
}

/// Checks an S3 endpoint: `http://` or `https://` and a host, printable ASCII without spaces.
pub fn check_s3_endpoint(endpoint: &str) -> Result<(), String> {
    let host = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or("not an http:// or https:// URL such as https://s3.example.com")?;
    let host = host.strip_suffix('/').unwrap_or(host);
    if host.is_empty()
        || !host
            .bytes()
            .all(|c| (0x21..=0x7e).contains(&c) && c != b'/')
    {
        return Err(
            "not an http:// or https:// URL such as https://s3.example.com (a host and an optional port, no path)"
                .into(),
        );
    }
    Ok(())
}

/// What the `rcache.underfs.s3.*` keys and `rcache.ufs.uri` say about an S3 under-storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix under the bucket, without leading or trailing `/`; `""` for the whole bucket.
    pub prefix: String,
    /// `rcache.underfs.s3.endpoint`: an S3-compatible endpoint (`http://` allows plain HTTP);
    /// unset = AWS.
    pub endpoint: Option<String>,
    /// `rcache.underfs.s3.region`; unset = `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// `rcache.underfs.s3.path.style`: `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub path_style: bool,
    /// `rcache.underfs.s3.threads.max`: GETs in flight per worker.
    pub max_concurrent_gets: usize,
    /// `rcache.underfs.s3.request.timeout`: one HTTP request's deadline.
    pub request_timeout: Duration,
    /// `rcache.underfs.s3.retry.max`: retries of a failed request (5xx, SlowDown, timeouts).
    pub max_retries: usize,
    /// `rcache.user.file.metadata.sync.interval`: how long a directory listing is trusted.
    pub listing_ttl: SyncInterval,
}

impl S3Config {
    fn from_properties(p: &Properties, uri: &str) -> Result<Self, ConfigError> {
        let (bucket, prefix) =
            check_s3_uri(uri).map_err(|why| p.bad(UFS_URI, why, UFS_ACCEPTED))?;
        let threads = p.count(S3_THREADS_MAX);
        if threads == 0 {
            return Err(p.bad(
                S3_THREADS_MAX,
                "zero",
                "a positive number of concurrent GETs, e.g. 32",
            ));
        }
        let request_timeout = p.duration(S3_REQUEST_TIMEOUT);
        if request_timeout.is_zero() {
            return Err(p.bad(S3_REQUEST_TIMEOUT, "zero", "a positive duration, e.g. 30s"));
        }
        let endpoint = p.text(S3_ENDPOINT);
        if let Some(e) = &endpoint {
            check_s3_endpoint(e).map_err(|why| {
                p.bad(
                    S3_ENDPOINT,
                    why,
                    "a URL such as https://s3.example.com or http://10.0.0.5:9000",
                )
            })?;
        }
        let region = p.text(S3_REGION);
        if let Some(r) = &region {
            check_s3_region(r)
                .map_err(|why| p.bad(S3_REGION, why, "a region such as eu-west-1"))?;
        }
        Ok(S3Config {
            bucket,
            prefix,
            endpoint,
            region,
            path_style: p.flag(S3_PATH_STYLE),
            max_concurrent_gets: usize::try_from(threads).unwrap_or(usize::MAX),
            request_timeout,
            max_retries: usize::try_from(p.count(S3_RETRY_MAX)).unwrap_or(usize::MAX),
            listing_ttl: p.sync_interval(METADATA_SYNC_INTERVAL),
        })
    }
}

impl UfsConfig {
    /// Reads `rcache.ufs.uri`; refuses a scheme the worker does not serve, or a path that is not
    /// absolute or lies in a system directory, with a message naming the key.
    pub fn from_properties(p: &Properties) -> Result<Self, ConfigError> {
        let uri = p.required(
            UFS_URI,
            "the under-storage root, e.g. file:///data or s3://bucket/prefix",
        )?;
        if uri.starts_with("s3://") {
            return Ok(UfsConfig::S3(S3Config::from_properties(p, &uri)?));
        }
        let Some(path) = uri.strip_prefix("file://").filter(|p| p.starts_with('/')) else {
            return Err(p.bad(
                UFS_URI,
                "the worker serves only file:// (with an absolute path) and s3:// under-storage",
                UFS_ACCEPTED,
            ));
        };
        if let Err(reason) = check_safe_dir(path) {
            return Err(p.bad(UFS_URI, reason, format!("file:// and {SAFE_DIR_ACCEPTED}")));
        }
        Ok(UfsConfig::File(PathBuf::from(path)))
    }

    /// The directory the worker reads, for a `file://` under-storage.
    pub fn local_root(&self) -> Option<&str> {
        match self {
            UfsConfig::File(root) => root.to_str(),
            UfsConfig::S3(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ufs(text: &str) -> Result<UfsConfig, String> {
        let p = Properties::parse(text, "t").map_err(|e| e.to_string())?;
        UfsConfig::from_properties(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn s3_uri_and_underfs_keys_make_the_s3_config() {
        let got = ufs("rcache.ufs.uri=s3://data-set/train/\n\
             rcache.underfs.s3.endpoint=http://127.0.0.1:9000\nrcache.underfs.s3.region=eu-west-1\n\
             rcache.underfs.s3.path.style=true\nrcache.user.file.metadata.sync.interval=5s\n")
        .expect("s3 accepted");
        let UfsConfig::S3(s3) = got else {
            panic!("not s3: {got:?}")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("data-set", "train")
        );
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert!(s3.path_style);
        assert_eq!(s3.max_concurrent_gets, 32);
        assert_eq!(s3.max_retries, 3);
        assert_eq!(s3.request_timeout, Duration::from_secs(30));
        assert_eq!(s3.listing_ttl, SyncInterval::Every(Duration::from_secs(5)));
    }

    #[test]
    fn bad_s3_uris_and_endpoints_are_refused_naming_the_key() {
        for uri in [
            "s3://Bad_Bucket/x",
            "s3://b/x",
            "s3://bucket/../x",
            "s3://bucket//x",
            "s3://-bucket",
        ] {
            let m = ufs(&format!("rcache.ufs.uri={uri}\n")).expect_err(uri);
            assert!(
                m.contains("rcache.ufs.uri") && m.contains("s3://bucket"),
                "{uri}: {m}"
            );
        }
        let m = ufs("rcache.ufs.uri=s3://bucket\nrcache.underfs.s3.endpoint=s3.local:9000\n")
            .expect_err("no scheme");
        assert!(
            m.contains("rcache.underfs.s3.endpoint") && m.contains("http"),
            "{m}"
        );
        let m = ufs("rcache.ufs.uri=s3://bucket\nrcache.underfs.s3.region=eu west\n")
            .expect_err("region");
        assert!(m.contains("rcache.underfs.s3.region"), "{m}");
        let m = ufs("rcache.ufs.uri=gs://bucket/x\n").expect_err("gs");
        assert!(m.contains("rcache.ufs.uri") && m.contains("s3://"), "{m}");
    }

    #[test]
    fn s3_uri_check_takes_buckets_and_clean_prefixes() {
        // The CRD's rule (S3_URI_PATTERN, no dot segment) is held to this by e2e/tests/agreement.rs.
        let re_like = |uri: &str| check_s3_uri(uri).is_ok();
        for (uri, ok) in [
            ("s3://bucket", true),
            ("s3://bucket/", true),
            ("s3://my.bucket-1/a/b.c/", true),
            ("s3://bucket/a b", false),
            ("s3://bucket/./a", false),
            ("s3://ab", false),
            ("s3://bucket-/a", false),
            ("s3://bucket//", false),
            ("s3://bucket//a", false),
        ] {
            assert_eq!(re_like(uri), ok, "{uri}");
        }
    }
}
