//! The one contract between the rcache operator and its worker image (docs/contracts.md): the
//! keys of `rcache.properties` with their defaults and syntax ([`keys`]), the parsers and
//! validators of sizes, quantities, durations, ports, interface and RDMA device names
//! ([`values`]) and paths ([`paths`]), the properties parser ([`properties`]), the
//! under-storage URI ([`ufs`]), the worker's verdict on a whole file ([`worker`]) and the one
//! rule for data-plane devices both worker and client follow ([`binding`]).
//!
//! The operator renders keys and validates the spec with this crate; the worker, the client
//! library and the FUSE client parse with it, so what one side writes the other reads. It has no
//! heavy dependencies, so every crate of the workspace can use it.

pub mod binding;
pub mod keys;
pub mod meaning;
pub mod paths;
pub mod properties;
pub mod ufs;
pub mod values;
pub mod worker;

pub use keys::*;
pub use properties::*;
pub use ufs::*;
pub use values::*;
pub use worker::*;
