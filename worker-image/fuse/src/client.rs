//! The cluster's cache client as a [`FileSource`](crate::FileSource). Interim: the client
//! library of `rcache-worker` is not available yet, so connecting reports that clearly.

use crate::config::Props;
use crate::source::LocalDirSource;

pub fn connect(_props: &Props, _rt: &tokio::runtime::Handle) -> anyhow::Result<LocalDirSource> {
    anyhow::bail!(
        "this build of rcache-fuse has no cache client yet; use --local-dir for development"
    )
}
