//! rcache-fuse: read-only FUSE view of the under-storage namespace served by rcache workers.
//!
//! - [`source`]: where metadata and bytes come from (the cache client, or a local directory).
//! - [`fs`]: the `fuser` filesystem (inodes, handles, errno), answering from tokio tasks.
//! - [`reader`]: per-handle prefetch window and whole-file fetch of small files.
//! - [`mount`]: mount point preparation (stale mounts), mounting, clean unmount.
//! - [`takeover`]: the keeper that holds the `/dev/fuse` connection across client restarts.
//! - [`metrics`]: read/error/prefetch metrics and the `/metrics`, `/healthz`, `/readyz` server.

pub mod client;
pub mod fs;
pub mod inodes;
pub mod metrics;
pub mod mount;
pub mod options;
pub mod reader;
pub mod source;
pub mod stat_cache;
pub mod takeover;

pub use fs::RcacheFs;
pub use metrics::FuseMetrics;
pub use mount::{MountedFs, mount};
pub use options::FuseOptions;
pub use source::{FileSource, LocalDirSource, SourceError};
