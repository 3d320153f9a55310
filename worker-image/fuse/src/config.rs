//! Loading `rcache.properties` for the FUSE process: `key=value` lines, `#`/`!` comments, then
//! `RCACHE_<KEY>` environment overrides (docs/contracts.md). Interim until the worker crate's
//! `Properties` is available to share; it keeps only what the FUSE side reads.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

#[derive(Clone, Debug, Default)]
pub struct Props {
    map: HashMap<String, String>,
}

impl Props {
    pub fn parse(text: &str) -> Self {
        let map = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .filter_map(|l| {
                let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect();
        Self { map }
    }

    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        let env: HashMap<String, String> = vars.into_iter().collect();
        for key in crate::options::ALL_KEYS {
            let name = key.replace('.', "_").to_ascii_uppercase();
            if let Some(v) = env.get(&name) {
                self.map.insert((*key).to_owned(), v.clone());
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.map.get(key).cloned()
    }
}

/// Reads the properties file at `path` and applies environment overrides.
pub fn load(path: &Path) -> anyhow::Result<Props> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read properties file {} (pass --config with the path of rcache.properties)",
            path.display()
        )
    })?;
    let mut p = Props::parse(&text);
    p.apply_env(std::env::vars());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_env_overrides_are_applied() {
        let mut p =
            Props::parse("# c\nrcache.fuse.mount.point = /a\n\nrcache.worker.page.size=1MB\n");
        assert_eq!(p.get("rcache.fuse.mount.point").as_deref(), Some("/a"));
        p.apply_env([("RCACHE_FUSE_MOUNT_POINT".to_string(), "/b".to_string())]);
        assert_eq!(p.get("rcache.fuse.mount.point").as_deref(), Some("/b"));
        assert_eq!(p.get("rcache.worker.page.size").as_deref(), Some("1MB"));
    }
}
