//! Helpers shared by the end-to-end suites (cluster env, kubectl/helm wrappers, namespaces), and
//! the spec generator of the agreement tests ([`specgen`]).

pub mod specgen;
