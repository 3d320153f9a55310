//! The FUSE client's settings, read from the `rcache.*` properties (docs/contracts.md). This
//! module owns key names and defaults for the FUSE side; it parses nothing else.

use std::path::PathBuf;

pub const KEY_MOUNT_POINT: &str = "rcache.fuse.mount.point";
pub const KEY_PREFETCH_PARTS: &str =
    "rcache.user.position.reader.streaming.async.prefetch.max.part.number";
pub const KEY_WHOLE_FILE_THRESHOLD: &str =
    "rcache.user.position.reader.streaming.async.prefetch.file.length.threshold";
pub const KEY_STAT_CACHE_ENABLED: &str = "rcache.fuse.open.read.status.cache.enabled";
pub const KEY_STAT_CACHE_MAX: &str = "rcache.fuse.open.read.status.cache.max.size";
pub const KEY_PAGE_SIZE: &str = "rcache.worker.page.size";
pub const ALL_KEYS: &[&str] = &[
    KEY_MOUNT_POINT,
    KEY_PREFETCH_PARTS,
    KEY_WHOLE_FILE_THRESHOLD,
    KEY_STAT_CACHE_ENABLED,
    KEY_STAT_CACHE_MAX,
    KEY_PAGE_SIZE,
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    pub mount_point: PathBuf,
    /// Read-ahead parts kept in flight for a sequential reader.
    pub prefetch_parts: usize,
    /// Files at or below this size are fetched whole on open; 0 disables.
    pub whole_file_threshold: u64,
    /// Unit of reads sent to the workers (the worker page size, so reads stay page aligned).
    pub part_size: u64,
    pub stat_cache_enabled: bool,
    pub stat_cache_max: usize,
    /// FUSE request threads; requests are answered from tokio tasks, so a few suffice.
    pub threads: usize,
}

impl Default for FuseOptions {
    fn default() -> Self {
        Self {
            mount_point: PathBuf::from("/mnt/rcache"),
            prefetch_parts: 8,
            whole_file_threshold: 0,
            part_size: 1 << 20,
            stat_cache_enabled: false,
            stat_cache_max: 10_000,
            threads: 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("property {key}={value:?}: {reason}")]
pub struct OptionError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl FuseOptions {
    /// Reads the FUSE keys through `get` (a properties lookup that already applied environment
    /// overrides); absent keys keep their defaults.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, OptionError> {
        let mut o = Self::default();
        let fetch = |key: &'static str| get(key).map(|v| (key, v.trim().to_owned()));
        if let Some((_, v)) = fetch(KEY_MOUNT_POINT) {
            o.mount_point = PathBuf::from(v);
        }
        if let Some((k, v)) = fetch(KEY_PREFETCH_PARTS) {
            o.prefetch_parts = v
                .parse()
                .map_err(|_| bad(k, &v, "expected a count, e.g. 8"))?;
        }
        if let Some((k, v)) = fetch(KEY_WHOLE_FILE_THRESHOLD) {
            // `<= 0` disables, so accept negative numbers as "off".
            o.whole_file_threshold = if v.starts_with('-') {
                0
            } else {
                parse_size(&v).ok_or_else(|| bad(k, &v, "expected a size, e.g. 4MB or 0"))?
            };
        }
        if let Some((k, v)) = fetch(KEY_PAGE_SIZE) {
            o.part_size = parse_size(&v)
                .filter(|s| *s >= 4096 && *s <= u64::from(rcache_transport::protocol::MAX_PAYLOAD))
                .ok_or_else(|| bad(k, &v, "expected a size between 4KB and 16MB, e.g. 1MB"))?;
        }
        if let Some((k, v)) = fetch(KEY_STAT_CACHE_ENABLED) {
            o.stat_cache_enabled = match v.as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(bad(k, &v, "expected true or false")),
            };
        }
        if let Some((k, v)) = fetch(KEY_STAT_CACHE_MAX) {
            o.stat_cache_max = v
                .parse()
                .map_err(|_| bad(k, &v, "expected a count, e.g. 10000"))?;
        }
        Ok(o)
    }

    pub fn from_properties(p: &crate::config::Props) -> Result<Self, OptionError> {
        Self::from_lookup(|k| p.get(k))
    }
}

fn bad(key: &'static str, value: &str, reason: &str) -> OptionError {
    OptionError {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `1048576`, `64KB`, `1MB`, `2GB` (binary multiples, as in docs/contracts.md).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_match_the_contract_when_keys_are_absent() {
        let o = FuseOptions::from_lookup(|_| None).unwrap();
        assert_eq!(o, FuseOptions::default());
        assert_eq!(o.prefetch_parts, 8);
        assert_eq!(o.mount_point, PathBuf::from("/mnt/rcache"));
    }

    #[test]
    fn keys_are_parsed_with_sizes_and_negative_threshold_disables() {
        let m: HashMap<&str, &str> = [
            (KEY_MOUNT_POINT, "/data/mnt"),
            (KEY_PREFETCH_PARTS, "16"),
            (KEY_WHOLE_FILE_THRESHOLD, "4MB"),
            (KEY_STAT_CACHE_ENABLED, "true"),
            (KEY_STAT_CACHE_MAX, "5"),
            (KEY_PAGE_SIZE, "256KB"),
        ]
        .into();
        let o = FuseOptions::from_lookup(|k| m.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(o.mount_point, PathBuf::from("/data/mnt"));
        assert_eq!(o.prefetch_parts, 16);
        assert_eq!(o.whole_file_threshold, 4 << 20);
        assert!(o.stat_cache_enabled);
        assert_eq!(o.stat_cache_max, 5);
        assert_eq!(o.part_size, 256 << 10);
        let o =
            FuseOptions::from_lookup(|k| (k == KEY_WHOLE_FILE_THRESHOLD).then(|| "-1".to_string()))
                .unwrap();
        assert_eq!(o.whole_file_threshold, 0);
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_expected_form() {
        let err = FuseOptions::from_lookup(|k| (k == KEY_PREFETCH_PARTS).then(|| "lots".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(KEY_PREFETCH_PARTS) && err.contains("expected a count"),
            "{err}"
        );
    }
}
