//! rcache-fuse: read-only FUSE view of the under-storage namespace served by rcache workers.
