//! rcache-transport owns how requests and page bytes cross the network: the wire protocol,
//! the TCP transport (IPoIB / Ethernet), the UCX transport (RDMA, or UCX's tcp / shared-memory
//! transports where no fabric exists), bind-device resolution and the `bench` tool.
//! It knows nothing about caching: a server hands each request to a [`Handler`].

pub mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;

pub use protocol::{DirEntry, ErrorCode, FileStat, Request, Response};

/// Which transport carries the data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// tokio TCP: IPoIB or Ethernet.
    Tcp,
    /// UCX active messages: RDMA verbs on a fabric, `tcp`/`sm` transports here.
    Ucx,
}

/// Errors of the transport layer. Each names the peer or address involved.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection to {addr} failed: {reason}")]
    Io { addr: SocketAddr, reason: String },
    #[error("request to {addr} timed out after {after_ms} ms")]
    Timeout { addr: SocketAddr, after_ms: u64 },
    #[error("protocol error from {addr}: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// Server side: turns one request into one response. Implemented by the cache worker and by
/// `bench`'s server. Must not panic on any request; bad requests get `Response::Error`.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: Request) -> Response;
}

/// Client side: one connection to one server, safe to share between tasks (requests may be
/// pipelined).
#[async_trait::async_trait]
pub trait Connection: Send + Sync {
    async fn call(&self, req: Request) -> Result<Response, TransportError>;
    fn peer(&self) -> SocketAddr;
    fn kind(&self) -> TransportKind;
}

/// A shared connection handle.
pub type SharedConnection = Arc<dyn Connection>;
