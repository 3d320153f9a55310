//! Properties: the worker's view of the contract crate (`rcache-contract`, docs/contracts.md),
//! which owns the keys, their defaults, the value parsers and the cross-key checks
//! ([`WorkerConfig::from_properties`]). Re-exported here so the worker, the client library and
//! the FUSE client name them as `rcache_worker::config::*`.

pub use rcache_contract::keys::*;
pub use rcache_contract::paths;
pub use rcache_contract::properties::*;
pub use rcache_contract::ufs::*;
pub use rcache_contract::values::*;
pub use rcache_contract::worker::*;
