//! The under-storage a worker serves, read from `rcache.ufs.uri` ([`UfsConfig::from_properties`]):
//! the schemes the worker serves and what each requires of the URI. Add a scheme here (a variant
//! with its settings and their keys in `keys.rs`), in the CRD's URI rule (`operator/src/rules.rs`)
//! and in the operator's `validate.rs`; the worker opens the variant (`rcache_worker::ufs`).

use std::path::PathBuf;

use crate::keys::UFS_URI;
use crate::paths::{SAFE_DIR_ACCEPTED, check_safe_dir};
use crate::properties::{ConfigError, Properties};

/// Which under-storage `rcache.ufs.uri` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UfsConfig {
    /// `file:///absolute/path`: a directory in the worker (hostPath, NFS or PVC mount).
    File(PathBuf),
}

/// What `rcache.ufs.uri` accepts.
pub const UFS_ACCEPTED: &str = "file:///absolute/path (hostPath, NFS or PVC mount)";

impl UfsConfig {
    /// Reads `rcache.ufs.uri`; refuses a scheme the worker does not serve, or a path that is not
    /// absolute or lies in a system directory, with a message naming the key.
    pub fn from_properties(p: &Properties) -> Result<Self, ConfigError> {
        let uri = p.required(UFS_URI, "the under-storage root, e.g. file:///data")?;
        let Some(path) = uri.strip_prefix("file://").filter(|p| p.starts_with('/')) else {
            return Err(p.bad(
                UFS_URI,
                "the worker serves only file:// under-storage with an absolute path",
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
        }
    }
}
