//! Helpers shared by the end-to-end suites (cluster env, kubectl/helm wrappers, namespaces).
