//! rcache-worker: the cache worker and its client library.
//!
//! - [`config`]: the properties file (keys, defaults, syntax) and the worker's validated config.
//! - [`ufs`]: under-storage (`file://`): range reads, stat, list; refuses paths leaving the root.
//! - [`cache`]: the page store (MEM tier in the registered pool, SSD tier on disk).
//! - [`cluster`]: membership file (reloaded on change) and consistent-hash placement.
//! - [`server`]: the transport `Handler` that serves reads, stat and list from the cache.
//! - [`client`]: the client library (block placement, failover, TCP fallback) used by FUSE.
//! - [`load`]: warm-up jobs (`/v1/loads`) and the cache's numbers (`/v1/stats`) for the operator.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! - [`termination`]: the fatal error written as the Kubernetes termination message.
//! - [`readbench`]: `read-bench`, reads through the client library for `scripts/bench-worker.sh`.

pub mod cache;
pub mod client;
pub mod cluster;
pub mod config;
pub mod hash;
pub mod load;
pub mod metrics;
pub mod readbench;
pub mod server;
pub mod termination;
pub mod ufs;
