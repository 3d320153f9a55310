//! Parsing `rcache.properties` text (`key=value` or `key: value`, `#`/`!` comments) with
//! `RCACHE_<KEY>` environment overrides into [`Properties`]: every known key's value is checked
//! against its [`Kind`] and refused with a message naming the key, the value, where it came from
//! and what is accepted; unknown keys only warn. What a value means is decided by the readers
//! ([`crate::WorkerConfig`], the client's and the FUSE client's settings).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::keys::{KEYS, KeySpec, Kind, env_name, key_spec};
use crate::values::{
    SyncInterval, check_interface_name, check_rdma_device, parse_duration, parse_port, parse_size,
    parse_sync_interval,
};

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: String, line: usize },
    Env { var: String },
    Code,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File { path, line } => write!(f, "{path} line {line}"),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Code => write!(f, "set in code"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read properties file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{origin}: `{text}` is not `key=value`; write one `rcache.some.key=value` per line")]
    Syntax { origin: Origin, text: String },
    #[error("{0}")]
    BadValue(Box<BadValue>),
    #[error("{key} is required: {hint}")]
    Missing { key: String, hint: String },
}

/// A value that does not fit its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    pub key: String,
    pub value: String,
    pub origin: Origin,
    pub reason: String,
    pub accepted: String,
}

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = \"{}\" ({}) is invalid: {}; accepted: {}",
            self.key, self.value, self.origin, self.reason, self.accepted
        )
    }
}

/// A validated value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Size(u64),
    SignedSize(i64),
    Duration(Duration),
    SyncInterval(SyncInterval),
    Port(u16),
    Bool(bool),
    Count(u64),
    Text(String),
}

#[derive(Clone, Debug)]
struct Entry {
    raw: String,
    value: Value,
    origin: Origin,
}

/// The parsed properties: every value has been checked against its key's syntax.
#[derive(Clone, Debug, Default)]
pub struct Properties {
    entries: BTreeMap<String, Entry>,
    unknown: BTreeMap<String, String>,
}

impl Properties {
    /// Empty properties: every key has its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a properties file and applies `RCACHE_*` environment overrides (an override
    /// replaces the file's value before it is checked).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut raw = parse_raw(&text, &path.display().to_string())?;
        raw.extend(env_raw(std::env::vars()));
        let props = Self::from_raw(raw)?;
        props.warn_unknown();
        Ok(props)
    }

    /// Parses properties text (`key=value` or `key: value`, `#`/`!` comments). `source` names
    /// the text in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        Self::from_raw(parse_raw(text, source)?)
    }

    fn from_raw(raw: Vec<(String, String, Origin)>) -> Result<Self, ConfigError> {
        // Later entries win: keep only the last of each key, then check it.
        let mut last: BTreeMap<String, (String, Origin)> = BTreeMap::new();
        for (k, v, o) in raw {
            last.insert(k, (v, o));
        }
        let mut props = Self::new();
        for (k, (v, o)) in last {
            props.set_with_origin(&k, &v, o)?;
        }
        Ok(props)
    }

    /// Builds properties from pairs (tests, tools).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut props = Self::new();
        for (k, v) in pairs {
            props.set(k, v)?;
        }
        Ok(props)
    }

    /// Applies `RCACHE_<KEY>` overrides for every known key found in `vars`.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (k, v, o) in env_raw(vars) {
            self.set_with_origin(&k, &v, o)?;
        }
        Ok(())
    }

    /// Sets one key, validating its value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.set_with_origin(key, value, Origin::Code)
    }

    fn set_with_origin(
        &mut self,
        key: &str,
        value: &str,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let Some(spec) = key_spec(key) else {
            self.unknown.insert(key.to_string(), value.to_string());
            return Ok(());
        };
        let parsed = parse_value(spec, value).map_err(|reason| {
            ConfigError::BadValue(Box::new(BadValue {
                key: key.to_string(),
                value: value.to_string(),
                origin: origin.clone(),
                reason,
                accepted: spec.kind.accepted(),
            }))
        })?;
        self.entries.insert(
            key.to_string(),
            Entry {
                raw: value.to_string(),
                value: parsed,
                origin,
            },
        );
        Ok(())
    }

    /// Keys that are not in the contract (they are kept but ignored).
    pub fn unknown_keys(&self) -> Vec<String> {
        self.unknown.keys().cloned().collect()
    }

    /// Logs a warning per unknown key.
    pub fn warn_unknown(&self) {
        for key in self.unknown.keys() {
            tracing::warn!(key = %key, "unknown property ignored (see docs/contracts.md for the known keys)");
        }
    }

    /// The value of `key` (explicit or default); `None` when unset without default.
    pub fn value(&self, key: &str) -> Option<Value> {
        if let Some(e) = self.entries.get(key) {
            return Some(e.value.clone());
        }
        let spec = key_spec(key)?;
        // Defaults are checked by a unit test, so this only fails on a programming error.
        spec.default.and_then(|d| parse_value(spec, d).ok())
    }

    /// Raw text and origin of an explicitly set key.
    pub fn raw(&self, key: &str) -> Option<(&str, &Origin)> {
        self.entries.get(key).map(|e| (e.raw.as_str(), &e.origin))
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn text(&self, key: &str) -> Option<String> {
        match self.value(key) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub fn size(&self, key: &str) -> u64 {
        match self.value(key) {
            Some(Value::Size(n)) | Some(Value::Count(n)) => n,
            _ => 0,
        }
    }

    pub fn signed_size(&self, key: &str) -> i64 {
        match self.value(key) {
            Some(Value::SignedSize(n)) => n,
            _ => 0,
        }
    }

    pub fn count(&self, key: &str) -> u64 {
        self.size(key)
    }

    pub fn duration(&self, key: &str) -> Duration {
        match self.value(key) {
            Some(Value::Duration(d)) => d,
            _ => Duration::ZERO,
        }
    }

    pub fn sync_interval(&self, key: &str) -> SyncInterval {
        match self.value(key) {
            Some(Value::SyncInterval(s)) => s,
            _ => SyncInterval::Always,
        }
    }

    pub fn port(&self, key: &str) -> u16 {
        match self.value(key) {
            Some(Value::Port(p)) => p,
            _ => 0,
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.value(key), Some(Value::Bool(true)))
    }

    /// A `BadValue` error for a cross-field check on `key`.
    pub fn bad(
        &self,
        key: &str,
        reason: impl Into<String>,
        accepted: impl Into<String>,
    ) -> ConfigError {
        let (value, origin) = match self.raw(key) {
            Some((raw, origin)) => (raw.to_string(), origin.clone()),
            None => (
                key_spec(key)
                    .and_then(|s| s.default)
                    .unwrap_or_default()
                    .to_string(),
                Origin::Default,
            ),
        };
        ConfigError::BadValue(Box::new(BadValue {
            key: key.to_string(),
            value,
            origin,
            reason: reason.into(),
            accepted: accepted.into(),
        }))
    }

    /// A required text key.
    pub fn required(&self, key: &str, hint: &str) -> Result<String, ConfigError> {
        self.text(key).ok_or_else(|| ConfigError::Missing {
            key: key.to_string(),
            hint: hint.to_string(),
        })
    }
}

/// `key=value` lines of properties text, unchecked.
fn parse_raw(text: &str, source: &str) -> Result<Vec<(String, String, Origin)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        let origin = Origin::File {
            path: source.to_string(),
            line: i + 1,
        };
        let syntax = || ConfigError::Syntax {
            origin: origin.clone(),
            text: trimmed.to_string(),
        };
        let pos = trimmed.find(['=', ':']).ok_or_else(syntax)?;
        let key = trimmed[..pos].trim();
        if key.is_empty() {
            return Err(syntax());
        }
        out.push((
            key.to_string(),
            trimmed[pos + 1..].trim().to_string(),
            origin,
        ));
    }
    Ok(out)
}

/// `RCACHE_<KEY>` overrides of known keys, unchecked.
fn env_raw(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String, Origin)> {
    let vars: BTreeMap<String, String> = vars.into_iter().collect();
    KEYS.iter()
        .filter_map(|spec| {
            let var = env_name(spec.key);
            vars.get(&var).map(|v| {
                (
                    spec.key.to_string(),
                    v.trim().to_string(),
                    Origin::Env { var },
                )
            })
        })
        .collect()
}

fn parse_value(spec: &KeySpec, value: &str) -> Result<Value, String> {
    match spec.kind {
        Kind::Size => parse_size(value).map(Value::Size),
        Kind::SignedSize => {
            if let Some(rest) = value.strip_prefix('-') {
                let n = parse_size(rest)?;
                i64::try_from(n)
                    .map(|n| Value::SignedSize(-n))
                    .map_err(|_| "too large".to_string())
            } else {
                let n = parse_size(value)?;
                i64::try_from(n)
                    .map(Value::SignedSize)
                    .map_err(|_| "too large".to_string())
            }
        }
        Kind::Duration => parse_duration(value, spec.key.ends_with(".ms")).map(Value::Duration),
        Kind::SyncInterval => parse_sync_interval(value).map(Value::SyncInterval),
        Kind::Port => parse_port(value).map(Value::Port),
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("not a boolean".into()),
        },
        Kind::Count => value
            .parse::<u64>()
            .map(Value::Count)
            .map_err(|_| "not a non-negative integer".to_string()),
        Kind::Text => {
            if value.is_empty() {
                Err("empty".into())
            } else {
                Ok(Value::Text(value.to_string()))
            }
        }
        Kind::Uri => match value.split_once("://") {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-') =>
            {
                Ok(Value::Text(value.to_string()))
            }
            _ => Err("not a URI".into()),
        },
        Kind::Interface => check_interface_name(value).map(|()| Value::Text(value.to_string())),
        Kind::RdmaDevice => check_rdma_device(value).map(|()| Value::Text(value.to_string())),
        Kind::Path => crate::paths::check_absolute(value).map(|()| Value::Text(value.to_string())),
        Kind::OneOf(opts) => {
            let v = value.to_ascii_lowercase();
            if opts.contains(&v.as_str()) {
                Ok(Value::Text(v))
            } else {
                Err("not an accepted choice".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::*;
    use crate::ufs::UfsConfig;
    use crate::values::*;
    use crate::worker::*;
    use std::path::PathBuf;

    fn bad(text: &str) -> String {
        match Properties::parse(text, "test.properties") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    fn minimal() -> Properties {
        Properties::parse(
            "rcache.cluster.name=demo\nrcache.ufs.uri=file:///data\n",
            "t",
        )
        .expect("minimal parses")
    }

    #[test]
    fn every_default_parses_with_its_kind() {
        for s in KEYS {
            if let Some(d) = s.default {
                assert!(parse_value(s, d).is_ok(), "default of {} = {d}", s.key);
            }
        }
    }

    #[test]
    fn sizes_are_binary_multiples() {
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("256MB"), Ok(256 << 20));
        assert_eq!(parse_size("8GB"), Ok(8 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2 tb"), Ok(2 << 40));
        assert_eq!(parse_size("1.5KB"), Ok(1536));
        assert!(parse_size("MB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999TB").is_err());
    }

    #[test]
    fn durations_accept_units_and_bare_ms_for_ms_keys() {
        assert_eq!(parse_duration("20s", false), Ok(Duration::from_secs(20)));
        assert_eq!(
            parse_duration("500ms", false),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("2m", false), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h", false), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("750", true), Ok(Duration::from_millis(750)));
        assert!(parse_duration("750", false).is_err());
        assert!(parse_duration("5 fortnights", false).is_err());
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let p = minimal();
        assert_eq!(p.size(PAGE_SIZE), 1 << 20);
        assert_eq!(p.size(BLOCK_SIZE), 64 << 20);
        assert_eq!(p.port(WORKER_DATA_PORT), 29999);
        assert_eq!(p.duration(OP_TIMEOUT), Duration::from_secs(30));
        assert_eq!(p.text(FALLBACK).as_deref(), Some("none"));
        assert!(!p.flag(RDMA_ENABLED));
        let w = WorkerConfig::from_properties(&p).expect("valid");
        assert_eq!(w.ufs, UfsConfig::File(PathBuf::from("/data")));
        assert_eq!(w.ssd, None);
    }

    #[test]
    fn comments_colons_and_blank_lines_are_accepted() {
        let p = Properties::parse(
            "# comment\n! also\n\nrcache.worker.page.size : 64KB\n  rcache.worker.data.port=1234  \n",
            "t",
        )
        .expect("parses");
        assert_eq!(p.size(PAGE_SIZE), 64 << 10);
        assert_eq!(p.port(WORKER_DATA_PORT), 1234);
    }

    #[test]
    fn bad_size_names_key_value_origin_and_accepted_forms() {
        let m = bad("rcache.worker.page.size=12XB");
        assert!(m.contains("rcache.worker.page.size"), "{m}");
        assert!(m.contains("\"12XB\""), "{m}");
        assert!(m.contains("test.properties line 1"), "{m}");
        assert!(m.contains("KB, MB, GB"), "{m}");
    }

    #[test]
    fn bad_port_is_refused() {
        let m = bad("rcache.worker.data.port=70000");
        assert!(
            m.contains("rcache.worker.data.port") && m.contains("70000"),
            "{m}"
        );
        assert!(m.contains("0-65535"), "{m}");
    }

    #[test]
    fn bad_bool_is_refused() {
        let m = bad("rcache.network.rdma.data.enabled=yes");
        assert!(
            m.contains("rcache.network.rdma.data.enabled") && m.contains("\"yes\""),
            "{m}"
        );
        assert!(m.contains("true or false"), "{m}");
    }

    #[test]
    fn bad_duration_is_refused() {
        let m = bad("rcache.network.rdma.data.operation.timeout.ms=soon");
        assert!(
            m.contains("operation.timeout.ms") && m.contains("\"soon\""),
            "{m}"
        );
        assert!(m.contains("ms, s, m or h"), "{m}");
    }

    #[test]
    fn metadata_sync_interval_accepts_durations_zero_and_minus_one() {
        let p = minimal();
        let w = WorkerConfig::from_properties(&p).expect("valid");
        assert_eq!(
            w.metadata_sync,
            SyncInterval::Every(Duration::from_secs(10)),
            "default 10s"
        );
        for (text, want) in [
            ("20s", SyncInterval::Every(Duration::from_secs(20))),
            ("200ms", SyncInterval::Every(Duration::from_millis(200))),
            ("0", SyncInterval::Always),
            ("0s", SyncInterval::Always),
            ("-1", SyncInterval::Never),
        ] {
            let mut p = minimal();
            p.set(METADATA_SYNC_INTERVAL, text).expect("accepted");
            assert_eq!(p.sync_interval(METADATA_SYNC_INTERVAL), want, "{text}");
        }
    }

    #[test]
    fn bad_metadata_sync_interval_names_key_value_and_accepted_forms() {
        for text in ["-2", "soon", "10"] {
            let m = bad(&format!("rcache.user.file.metadata.sync.interval={text}"));
            assert!(
                m.contains("rcache.user.file.metadata.sync.interval")
                    && m.contains(&format!("\"{text}\"")),
                "{m}"
            );
            assert!(
                m.contains("0 to check on every read") && m.contains("-1"),
                "{m}"
            );
        }
    }

    #[test]
    fn bad_fallback_lists_choices() {
        let m = bad("rcache.network.rdma.data.fallback=udp");
        assert!(
            m.contains("\"udp\"") && m.contains("one of: none, tcp"),
            "{m}"
        );
    }

    #[test]
    fn bad_count_and_uri_are_refused() {
        let m = bad("rcache.fuse.open.read.status.cache.max.size=-3");
        assert!(m.contains("non-negative integer"), "{m}");
        let m = bad("rcache.ufs.uri=/data");
        assert!(
            m.contains("rcache.ufs.uri") && m.contains("file:///data"),
            "{m}"
        );
    }

    #[test]
    fn line_without_separator_is_a_syntax_error() {
        let m = bad("rcache.worker.page.size");
        assert!(m.contains("line 1") && m.contains("key=value"), "{m}");
    }

    #[test]
    fn unknown_keys_are_kept_as_warnings_not_errors() {
        let p = Properties::parse("rcache.worker.colour=blue\n", "t").expect("parses");
        assert_eq!(p.unknown_keys(), vec!["rcache.worker.colour".to_string()]);
    }

    #[test]
    fn env_overrides_file_values_and_bad_env_names_the_variable() {
        let mut p = Properties::parse("rcache.worker.data.port=1000\n", "t").expect("parses");
        p.apply_env(vec![
            ("RCACHE_WORKER_DATA_PORT".to_string(), "30001".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ])
        .expect("applies");
        assert_eq!(p.port(WORKER_DATA_PORT), 30001);
        let err = p
            .apply_env(vec![(
                "RCACHE_NETWORK_RDMA_DATA_BUFFER_POOL_MAX_SIZE".to_string(),
                "lots".to_string(),
            )])
            .expect_err("refused");
        let m = err.to_string();
        assert!(
            m.contains("environment variable RCACHE_NETWORK_RDMA_DATA_BUFFER_POOL_MAX_SIZE"),
            "{m}"
        );
        assert!(
            m.contains("rcache.network.rdma.data.buffer.pool.max.size"),
            "{m}"
        );
    }

    #[test]
    fn env_override_replaces_a_bad_file_value_before_it_is_checked() {
        let mut raw = parse_raw("rcache.worker.page.size=12XB\n", "t").expect("syntax ok");
        raw.extend(env_raw(vec![(
            "RCACHE_WORKER_PAGE_SIZE".to_string(),
            "64KB".to_string(),
        )]));
        let p = Properties::from_raw(raw).expect("env wins");
        assert_eq!(p.size(PAGE_SIZE), 64 << 10);
        assert!(matches!(p.raw(PAGE_SIZE), Some((_, Origin::Env { .. }))));
    }

    #[test]
    fn env_name_follows_the_contract() {
        assert_eq!(
            env_name("rcache.worker.data.port"),
            "RCACHE_WORKER_DATA_PORT"
        );
    }

    #[test]
    fn worker_requires_cluster_name_and_a_served_scheme() {
        let p = Properties::parse("rcache.ufs.uri=file:///data\n", "t").expect("parses");
        let m = WorkerConfig::from_properties(&p)
            .expect_err("missing")
            .to_string();
        assert!(m.contains("rcache.cluster.name is required"), "{m}");
        let p = Properties::parse("rcache.cluster.name=a\nrcache.ufs.uri=gs://bucket/x\n", "t")
            .expect("parses");
        let m = WorkerConfig::from_properties(&p)
            .expect_err("gs")
            .to_string();
        assert!(
            m.contains("rcache.ufs.uri") && m.contains("gs://bucket/x") && m.contains("s3://"),
            "{m}"
        );
        let p = Properties::parse("rcache.cluster.name=a\nrcache.ufs.uri=s3://bucket/x\n", "t")
            .expect("parses");
        WorkerConfig::from_properties(&p).expect("s3 is served");
    }

    #[test]
    fn page_size_must_be_a_power_of_two_in_range() {
        let mut p = minimal();
        p.set(PAGE_SIZE, "3000").expect("syntax ok");
        let m = WorkerConfig::from_properties(&p)
            .expect_err("bad page")
            .to_string();
        assert!(
            m.contains("rcache.worker.page.size") && m.contains("power of two"),
            "{m}"
        );
    }

    #[test]
    fn block_size_must_be_a_page_multiple() {
        let mut p = minimal();
        p.set(BLOCK_SIZE, "1536KB").expect("syntax ok");
        let m = WorkerConfig::from_properties(&p)
            .expect_err("bad block")
            .to_string();
        assert!(m.contains("rcache.cluster.placement.block.size"), "{m}");
    }

    #[test]
    fn pool_sizes_must_be_ordered() {
        let mut p = minimal();
        p.set(POOL_PREWARM, "512MB").expect("syntax ok");
        let m = WorkerConfig::from_properties(&p)
            .expect_err("prewarm")
            .to_string();
        assert!(m.contains("prewarm.size") && m.contains("512MB"), "{m}");
        let mut p = minimal();
        p.set(POOL_MAX, "128MB").expect("syntax ok");
        let m = WorkerConfig::from_properties(&p)
            .expect_err("max")
            .to_string();
        assert!(m.contains("max.size") && m.contains("128MB"), "{m}");
    }

    #[test]
    fn ssd_tier_is_on_when_dir_is_set() {
        let mut p = minimal();
        p.set(SSD_DIR, "/cache").expect("ok");
        p.set(SSD_QUOTA, "2GB").expect("ok");
        let w = WorkerConfig::from_properties(&p).expect("valid");
        assert_eq!(
            w.ssd,
            Some(SsdTier {
                dir: "/cache".into(),
                quota: 2 << 30
            })
        );
    }
}
