//! rcache-transport owns how requests and page bytes cross the network: the wire protocol,
//! the TCP transport (IPoIB / Ethernet), the UCX transport (RDMA, or UCX's tcp / shared-memory
//! transports where no fabric exists), bind-device resolution and the `bench` tool.
//! It knows nothing about caching: a server hands each request to a [`Handler`].

pub mod auth;
pub mod bench;
pub mod binding;
pub mod bufpool;
pub mod fabric;
pub mod protocol;
pub mod tcp;
pub mod tls;
pub mod ucx;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::AuthKey;
pub use bufpool::{BufferPool, ChunkMut, PoolConfig, PoolError, PoolStats};
pub use protocol::{DirEntry, ErrorCode, FileStat, FileVersion, LoadCounts, Request, Response};
pub use tls::{TlsClient, TlsServer};

/// Which transport carries the data path.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
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
    /// The server refused the connection's authentication (or asked for one the client
    /// cannot give); `reason` is the server's text, which starts "authentication failed".
    #[error("{addr} refused the connection: {reason}")]
    Auth { addr: SocketAddr, reason: String },
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

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Ucx => "ucx",
        })
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(TransportKind::Tcp),
            "ucx" | "rdma" => Ok(TransportKind::Ucx),
            other => Err(format!("unknown transport {other:?}: use tcp or ucx")),
        }
    }
}

/// Server settings.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Registered buffer pool: with UCX its regions are registered (`ucp_mem_map`) and any
    /// `Response::Data` pointing into it is sent without a copy; received payloads that fit a
    /// chunk land in it (TCP and UCX).
    pub pool: Option<BufferPool>,
    /// SO_SNDBUF/SO_RCVBUF for TCP sockets; `None` keeps kernel autotuning.
    pub socket_buffer: Option<usize>,
    /// UCX `NET_DEVICES` (e.g. `mlx5_0:1`, see `binding`); `None` keeps UCX's choice.
    pub ucx_devices: Option<String>,
    /// UCX `IB_GID_INDEX` (RoCE, `rcache.network.rdma.data.gid.index`); `None`: UCX's choice.
    pub ucx_gid_index: Option<u32>,
    /// The cluster's secret: every connection must prove it knows it (module `auth`) before
    /// its requests reach the handler. `None` serves everyone.
    pub auth: Option<AuthKey>,
    /// TCP only: serve TLS with this certificate (module `tls`); plain clients are refused
    /// with an error frame. `None`: plain TCP.
    pub tls: Option<TlsServer>,
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Limit on establishing the connection (including the first ping).
    pub connect_timeout: Duration,
    /// Per-request limit (`rcache.network.rdma.data.operation.timeout.ms`); `None` waits forever.
    pub request_timeout: Option<Duration>,
    /// Received payloads that fit a chunk are placed in this pool (registered with UCX).
    pub pool: Option<BufferPool>,
    /// SO_SNDBUF/SO_RCVBUF for TCP sockets; `None` keeps kernel autotuning.
    pub socket_buffer: Option<usize>,
    /// UCX `NET_DEVICES` (e.g. `mlx5_0:1`, see `binding`); `None` keeps UCX's choice.
    pub ucx_devices: Option<String>,
    /// UCX `IB_GID_INDEX` (RoCE, `rcache.network.rdma.data.gid.index`); `None`: UCX's choice.
    pub ucx_gid_index: Option<u32>,
    /// TCP only: the source address of connections (the client's bind device's address,
    /// `rcache.user.network.data.bind.device`); `None`: the kernel's route decides.
    pub local_ip: Option<std::net::IpAddr>,
    /// UCX only: the calling thread sends and progresses the connection's UCP worker itself
    /// for up to this long while it waits for the reply (no hand-off to the connection's
    /// thread and back), then parks the task. Cuts small-request latency to about the fabric's
    /// round trip; costs a busy core per waiting caller. `None` (default) never polls.
    pub busy_poll: Option<Duration>,
    /// The cluster's secret, proven at connection setup (module `auth`). `None`: the client
    /// proves nothing, and a server that asks for authentication refuses it.
    pub auth: Option<AuthKey>,
    /// TCP only: speak TLS and verify the server against this CA and name. `None`: plain TCP.
    pub tls: Option<TlsClient>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(30)),
            pool: None,
            socket_buffer: None,
            ucx_devices: None,
            ucx_gid_index: None,
            local_ip: None,
            busy_poll: None,
            auth: None,
            tls: None,
        }
    }
}

enum ServerInner {
    Tcp(tcp::TcpServer),
    Ucx(ucx::UcxServer),
}

/// A running data server. Dropping it stops it, like `shutdown`.
pub struct Server {
    kind: TransportKind,
    local_addr: SocketAddr,
    inner: ServerInner,
}

impl Server {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Stops accepting and closes the connections.
    pub async fn shutdown(&self) {
        match &self.inner {
            ServerInner::Tcp(s) => s.shutdown(),
            ServerInner::Ucx(s) => s.shutdown().await,
        }
    }
}

/// Starts a data server on `addr` (port 0 picks a free port) that answers with `handler`.
/// Must be called inside a tokio runtime; handlers run on it.
pub async fn listen(
    kind: TransportKind,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    opts: ServerOptions,
) -> Result<Server, TransportError> {
    let inner = match kind {
        TransportKind::Tcp => ServerInner::Tcp(tcp::listen(addr, handler, opts).await?),
        TransportKind::Ucx => ServerInner::Ucx(ucx::listen(addr, handler, opts).await?),
    };
    let local_addr = match &inner {
        ServerInner::Tcp(s) => s.local_addr,
        ServerInner::Ucx(s) => s.local_addr,
    };
    Ok(Server {
        kind,
        local_addr,
        inner,
    })
}

/// Connects to a data server, authenticates when `opts.auth` holds the cluster's secret
/// (module `auth`), and checks the server answers, all within `opts.connect_timeout`.
pub async fn connect(
    kind: TransportKind,
    addr: SocketAddr,
    opts: ClientOptions,
) -> Result<SharedConnection, TransportError> {
    let conn: SharedConnection = match kind {
        TransportKind::Tcp => Arc::new(tcp::connect(addr, &opts).await?),
        TransportKind::Ucx => Arc::new(ucx::connect(addr, &opts).await?),
    };
    let setup = setup(conn.as_ref(), kind, addr, opts.auth.as_ref());
    match tokio::time::timeout(opts.connect_timeout, setup).await {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TransportError::Timeout {
            addr,
            after_ms: opts.connect_timeout.as_millis() as u64,
        }),
    }
}

/// The first round trips of a connection: a ping, or the challenge-response of `auth`.
async fn setup(
    conn: &dyn Connection,
    kind: TransportKind,
    addr: SocketAddr,
    key: Option<&AuthKey>,
) -> Result<(), TransportError> {
    let unexpected = |step: &str, other: Response| match other {
        Response::Error {
            code: ErrorCode::Unauthenticated,
            message,
        } => TransportError::Auth {
            addr,
            reason: message,
        },
        other => TransportError::Protocol {
            addr,
            reason: format!("{step} answered with {other:?}"),
        },
    };
    let Some(key) = key else {
        return match conn.call(Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected("ping", other)),
        };
    };
    let nonce = match conn.call(Request::AuthHello).await? {
        Response::AuthChallenge { nonce } => nonce,
        other => return Err(unexpected("authentication hello", other)),
    };
    if nonce.is_empty() {
        return Ok(()); // the server asks for no authentication
    }
    let mac = key.proof(&nonce, kind);
    match conn.call(Request::AuthProof { mac }).await? {
        Response::Pong => Ok(()),
        other => Err(unexpected("authentication proof", other)),
    }
}
