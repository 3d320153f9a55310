//! Raw UCX bindings (generated).
