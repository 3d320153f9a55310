//! rcache-worker: properties, under-storage, page cache, membership and placement, server and client library.
