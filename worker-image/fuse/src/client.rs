//! The cluster as a [`FileSource`]: the cache client of `rcache-worker` (block placement on the
//! consistent-hash ring, failover to the next owner, TCP fallback). Its errors keep the worker's
//! name in the message and map to errno through `ClientError::errno`. Reads are pinned to the
//! version the file was opened at (`read_at_version`): a file changed since is `ESTALE`.

use bytes::Bytes;
use rcache_transport::protocol::{DirEntry, FileStat, FileVersion};
use rcache_worker::client::{CacheClient, ClientError};
use rcache_worker::config::Properties;

use crate::source::{FileSource, SourceError};

pub struct ClusterSource {
    client: CacheClient,
}

impl ClusterSource {
    pub fn new(client: CacheClient) -> Self {
        Self { client }
    }

    /// A client from the properties (membership file, block size, timeouts, fallback).
    pub async fn from_properties(props: &Properties) -> anyhow::Result<Self> {
        let client = CacheClient::from_properties(props)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the cache client: {e}"))?;
        Ok(Self::new(client))
    }
}

fn source_error(e: ClientError) -> SourceError {
    SourceError::new(e.errno(), e.to_string())
}

impl FileSource for ClusterSource {
    async fn stat(&self, path: &str) -> Result<FileStat, SourceError> {
        self.client.stat(path).await.map_err(source_error)
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, SourceError> {
        self.client.list(path).await.map_err(source_error)
    }

    async fn read(
        &self,
        path: &str,
        at: FileVersion,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, SourceError> {
        if len == 0 {
            // The source's version check (see `FileSource::read`): the client library answers a
            // pinned read of nothing locally, so ask the worker explicitly.
            return self
                .client
                .check_version(path, at)
                .await
                .map(|()| Bytes::new())
                .map_err(source_error);
        }
        self.client
            .read_at_version(path, at, offset, len)
            .await
            .map_err(source_error)
    }
}
