//! rcache-operator: CacheCluster API types, pure builders of child objects, reconcile, status.
