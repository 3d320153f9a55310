//! TLS for the TCP transport (rustls, ring provider, TLS 1.3): a server holds a certificate and
//! key ([`TlsServer`]), a client verifies the server against a CA and a server name
//! ([`TlsClient`]). Off unless configured (`rcache.security.tls.enabled`); UCX never uses it
//! (on a fabric, data stays in registered memory and authentication is the guard).
//!
//! This module owns loading PEM files into rustls configurations and the byte-stream halves the
//! TCP transport reads and writes ([`ReadHalf`], [`WriteHalf`]), plain or encrypted. It does not
//! frame messages (`tcp` does).

use std::io::{self, IoSlice};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

type TlsStream = tokio_rustls::TlsStream<TcpStream>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// A server's TLS settings: its certificate chain and key.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServer")
    }
}

impl TlsServer {
    /// From PEM files: the certificate (chain, leaf first) and its private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsServer, String> {
        let chain = certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cannot read a PEM private key from {}: {e}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream> {
        Ok(tokio_rustls::TlsStream::Server(
            self.acceptor.accept(stream).await?,
        ))
    }
}

/// A client's TLS settings: the CA that signs the servers' certificates and the name their
/// certificates carry (the same for every worker of a cluster, so addresses need not be in
/// the certificates).
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.name)
    }
}

impl TlsClient {
    /// From the CA's PEM file and the servers' certificate name.
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<TlsClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("{server_name:?} is not a server name: {e}"))?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    pub(crate) async fn connect(&self, stream: TcpStream) -> io::Result<TlsStream> {
        Ok(tokio_rustls::TlsStream::Client(
            self.connector.connect(self.name.clone(), stream).await?,
        ))
    }
}

/// The read side of a TCP connection, plain or TLS (with the socket's local address, which the
/// split TLS stream no longer gives).
pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>, Option<std::net::SocketAddr>),
}

impl ReadHalf {
    /// The connection's local address (the interface its bytes use).
    pub(crate) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            ReadHalf::Plain(r) => r.local_addr().ok(),
            ReadHalf::Tls(_, a) => *a,
        }
    }
}

/// The write side of a TCP connection, plain or TLS.
pub(crate) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

/// Splits a plain stream.
pub(crate) fn plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (r, w) = stream.into_split();
    (ReadHalf::Plain(r), WriteHalf::Plain(w))
}

/// Splits a TLS stream.
pub(crate) fn encrypted(stream: TlsStream) -> (ReadHalf, WriteHalf) {
    let local = stream.get_ref().0.local_addr().ok();
    let (r, w) = tokio::io::split(stream);
    (ReadHalf::Tls(r, local), WriteHalf::Tls(w))
}

impl WriteHalf {
    /// A non-blocking vectored write (the transport's fast path). TLS has none: it answers
    /// `WouldBlock`, so the frame goes the asynchronous way.
    pub(crate) fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(w) => w.try_write_vectored(bufs),
            WriteHalf::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r, _) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
