//! The FUSE client's settings, taken from the shared `rcache.*` properties (docs/contracts.md;
//! keys, defaults and syntax live in the `rcache-contract` crate, re-exported as
//! `rcache_worker::config`). This module only picks the FUSE
//! keys and checks what matters to FUSE.

use std::path::PathBuf;

use rcache_worker::config::{
    ConfigError, FUSE_MOUNT_POINT, FUSE_STATUS_CACHE, FUSE_STATUS_CACHE_SIZE, FUSE_WEB_PORT,
    PAGE_SIZE, PREFETCH_PARTS, PREFETCH_THRESHOLD, Properties,
};

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
    /// Port of `/metrics`, `/healthz`, `/readyz` on 0.0.0.0; `None` (`0` in the properties)
    /// disables the web server.
    pub web_port: Option<u16>,
}

/// Default of `rcache.fuse.web.port`.
pub const DEFAULT_WEB_PORT: u16 = rcache_worker::config::DEFAULT_FUSE_WEB_PORT;

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
            web_port: Some(DEFAULT_WEB_PORT),
        }
    }
}

impl FuseOptions {
    pub fn from_properties(p: &Properties) -> Result<Self, ConfigError> {
        let part_size = p.size(PAGE_SIZE);
        let max = u64::from(rcache_transport::protocol::MAX_PAYLOAD);
        if !(4096..=max).contains(&part_size) {
            return Err(p.bad(
                PAGE_SIZE,
                "FUSE reads whole pages in one request",
                "a size between 4KB and 16MB",
            ));
        }
        Ok(Self {
            mount_point: PathBuf::from(
                p.text(FUSE_MOUNT_POINT)
                    .unwrap_or_else(|| "/mnt/rcache".into()),
            ),
            prefetch_parts: usize::try_from(p.count(PREFETCH_PARTS))
                .unwrap_or(usize::MAX)
                .min(1024),
            // `<= 0` disables whole-file prefetch.
            whole_file_threshold: u64::try_from(p.signed_size(PREFETCH_THRESHOLD)).unwrap_or(0),
            part_size,
            stat_cache_enabled: p.flag(FUSE_STATUS_CACHE),
            stat_cache_max: usize::try_from(p.count(FUSE_STATUS_CACHE_SIZE)).unwrap_or(usize::MAX),
            threads: 4,
            // The syntax (0-65535) is checked when the properties are parsed; 0 disables.
            web_port: Some(p.port(FUSE_WEB_PORT)).filter(|&port| port != 0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_when_keys_are_absent() {
        let o = FuseOptions::from_properties(&Properties::new()).unwrap();
        assert_eq!(o, FuseOptions::default());
    }

    #[test]
    fn fuse_keys_are_read_and_a_negative_threshold_disables_whole_file_fetch() {
        let p = Properties::from_pairs([
            (FUSE_MOUNT_POINT, "/data/mnt"),
            (PREFETCH_PARTS, "16"),
            (PREFETCH_THRESHOLD, "4MB"),
            (FUSE_STATUS_CACHE, "true"),
            (FUSE_STATUS_CACHE_SIZE, "5"),
            (PAGE_SIZE, "256KB"),
        ])
        .unwrap();
        let o = FuseOptions::from_properties(&p).unwrap();
        assert_eq!(o.mount_point, PathBuf::from("/data/mnt"));
        assert_eq!(o.prefetch_parts, 16);
        assert_eq!(o.whole_file_threshold, 4 << 20);
        assert!(o.stat_cache_enabled);
        assert_eq!(o.stat_cache_max, 5);
        assert_eq!(o.part_size, 256 << 10);
        let p = Properties::from_pairs([(PREFETCH_THRESHOLD, "-1")]).unwrap();
        assert_eq!(
            FuseOptions::from_properties(&p)
                .unwrap()
                .whole_file_threshold,
            0
        );
    }

    #[test]
    fn the_web_port_defaults_to_30001_and_0_disables_the_web_server() {
        let o = FuseOptions::from_properties(&Properties::new()).unwrap();
        assert_eq!(o.web_port, Some(30001));
        let p = Properties::from_pairs([(FUSE_WEB_PORT, "31000")]).unwrap();
        assert_eq!(
            FuseOptions::from_properties(&p).unwrap().web_port,
            Some(31000)
        );
        let p = Properties::from_pairs([(FUSE_WEB_PORT, "0")]).unwrap();
        assert_eq!(FuseOptions::from_properties(&p).unwrap().web_port, None);
    }

    #[test]
    fn a_bad_web_port_is_refused_naming_the_key_value_and_accepted_range() {
        for bad in ["http", "70000", "-1"] {
            let err = Properties::from_pairs([(FUSE_WEB_PORT, bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(FUSE_WEB_PORT) && err.contains(bad) && err.contains("0-65535"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_page_size_fuse_cannot_read_in_one_request_is_refused_naming_the_key() {
        let p = Properties::from_pairs([(PAGE_SIZE, "1KB")]).unwrap();
        let err = FuseOptions::from_properties(&p).unwrap_err().to_string();
        assert!(err.contains(PAGE_SIZE), "{err}");
    }
}
