//! The UCX transport (placeholder until the UCX layer lands).
use std::net::SocketAddr;
use std::sync::Arc;

use crate::{ClientOptions, Handler, ServerOptions, SharedConnection, TransportError};

pub(crate) struct UcxServer {
    pub local_addr: SocketAddr,
}

impl UcxServer {
    pub async fn shutdown(&self) {}
}

pub(crate) async fn listen(
    addr: SocketAddr,
    _h: Arc<dyn Handler>,
    _o: ServerOptions,
) -> Result<UcxServer, TransportError> {
    Err(TransportError::Listen {
        addr,
        reason: "UCX transport not built yet".into(),
    })
}

pub(crate) async fn connect(
    addr: SocketAddr,
    _o: &ClientOptions,
) -> Result<crate::tcp::TcpConnection, TransportError> {
    let _: Option<SharedConnection> = None;
    Err(TransportError::Connect {
        addr,
        reason: "UCX transport not built yet".into(),
    })
}
