//! The TCP transport (IPoIB or Ethernet): the shared protocol over tokio TCP. Owns sockets,
//! framing on a byte stream, pipelining by request id and the reader/writer tasks; it does not
//! interpret requests (the `Handler` does).
//!
//! Each connection has one reader and one writer task. Writers batch whatever is queued into
//! one vectored write (headers from a reused buffer, payload `Bytes` as their own slices, no
//! copy). Readers read large payloads straight into their destination (a pool chunk when a
//! pool is configured).
//!
//! Fast path: when a frame is alone (the client has no other call in flight on the
//! connection; the server's reader has no further request buffered) and the writer is idle,
//! the caller or the handler that answered in place writes it itself with a non-blocking
//! vectored write ([`write_now`]) instead of queueing it for the writer task: one task hand-off
//! (a thread wake-up when the writer runs elsewhere) fewer on each side of a round trip. Frames
//! that are not alone still go to the writer task, which batches them into one `writev`.
//! Whoever holds the writer's lock writes whole frames, so frames never interleave; a write the
//! socket cannot take at once is finished by a task that keeps the lock.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::{Gate, Verdict};
use crate::bufpool::BufferPool;
use crate::protocol::{CodecError, ErrorCode, FrameHeader, HEADER_LEN, Request, Response};
use crate::tls::TlsServer;
use crate::tls::{ReadHalf, WriteHalf};
use crate::{ClientOptions, Connection, Handler, ServerOptions, TransportError, TransportKind};
use crate::{binding, fabric};

/// How long a TLS server waits for a new connection's first bytes to tell a plain rcache
/// client (it sends a frame at once) from a TLS one.
const TLS_SNIFF: Duration = Duration::from_secs(5);
/// Payloads at least this large are read directly into their own buffer.
const DIRECT_READ_MIN: usize = 32 << 10;
/// Most frames one vectored write carries.
const MAX_BATCH: usize = 64;
const QUEUE_DEPTH: usize = 1024;

/// A message that can be written as a frame.
pub(crate) trait Frame: Send + 'static {
    fn encode_meta(&self, meta: &mut BytesMut) -> (u16, Option<&Bytes>);
}

impl Frame for Request {
    fn encode_meta(&self, meta: &mut BytesMut) -> (u16, Option<&Bytes>) {
        Request::encode_meta(self, meta)
    }
}

impl Frame for Response {
    fn encode_meta(&self, meta: &mut BytesMut) -> (u16, Option<&Bytes>) {
        Response::encode_meta(self, meta)
    }
}

/// Encodes header + metadata at the end of `meta`; returns the payload to send after it.
pub(crate) fn encode_into<'a, T: Frame>(
    id: u64,
    msg: &'a T,
    meta: &mut BytesMut,
) -> Option<&'a Bytes> {
    let start = meta.len();
    meta.put_bytes(0, HEADER_LEN);
    let (op, data) = msg.encode_meta(meta);
    let meta_len = (meta.len() - start - HEADER_LEN) as u32;
    let data_len = data.map_or(0, |d| d.len() as u32);
    let mut hdr = &mut meta[start..start + HEADER_LEN];
    FrameHeader {
        op,
        id,
        meta_len,
        data_len,
    }
    .encode(&mut hdr);
    data.filter(|d| !d.is_empty())
}

/// A connection's write half and its reusable buffers. Whoever holds the lock writes whole
/// frames.
pub(crate) struct FrameWriter {
    wr: WriteHalf,
    /// Frame headers and metadata, encoded back to back.
    meta: BytesMut,
    /// What is left to write, in order.
    segs: VecDeque<Bytes>,
    /// Bytes sent are counted here (`fabric`).
    lane: Arc<fabric::LaneBytes>,
}

type SharedWriter = Arc<tokio::sync::Mutex<FrameWriter>>;

impl FrameWriter {
    fn shared(wr: WriteHalf, lane: Arc<fabric::LaneBytes>) -> SharedWriter {
        Arc::new(tokio::sync::Mutex::new(FrameWriter {
            wr,
            lane,
            meta: BytesMut::with_capacity(64 << 10),
            segs: VecDeque::with_capacity(2 * MAX_BATCH + 1),
        }))
    }

    /// Appends one frame to `segs` (header+metadata from `meta`, payload as its own slice).
    fn push<T: Frame>(&mut self, id: u64, msg: &T) {
        if let Some(data) = encode_into(id, msg, &mut self.meta) {
            let head = self.meta.split().freeze();
            self.lane.add_sent((head.len() + data.len()) as u64);
            self.segs.push_back(head);
            self.segs.push_back(data.clone());
        }
    }

    /// Moves the encoded tail of `meta` (frames without payload) into `segs`.
    fn seal(&mut self) {
        if !self.meta.is_empty() {
            let head = self.meta.split().freeze();
            self.lane.add_sent(head.len() as u64);
            self.segs.push_back(head);
        }
        if self.meta.capacity() < 4096 {
            self.meta.reserve(64 << 10);
        }
    }
}

/// Writes one frame now if the writer is idle, without waiting: `Err` gives the message back
/// when another writer holds the lock (queue it for the writer task then). When the socket
/// takes only part of the frame, a task that keeps the lock writes the rest; `on_err` is called
/// (from that task) if that write fails. Errors of the immediate write go to `on_err` too.
pub(crate) fn write_now<T: Frame, E>(
    w: &SharedWriter,
    id: u64,
    msg: T,
    on_err: E,
) -> Result<(), (u64, T)>
where
    E: FnOnce(io::Error) + Send + 'static,
{
    let Ok(mut g) = w.clone().try_lock_owned() else {
        return Err((id, msg));
    };
    if !g.segs.is_empty() {
        // Left by a write that failed (the connection is broken): the writer task's error
        // path reports it; never write after a partial frame.
        return Err((id, msg));
    }
    g.push(id, &msg);
    g.seal();
    drop(msg);
    loop {
        let r = {
            let FrameWriter { wr, segs, .. } = &mut *g;
            let mut iov = [IoSlice::new(&[]); MAX_BATCH];
            let k = fill_iov(segs, &mut iov);
            wr.try_write_vectored(&iov[..k])
        };
        match r {
            Ok(0) => {
                g.segs.clear();
                on_err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "peer stopped reading",
                ));
                return Ok(());
            }
            Ok(n) => {
                advance(&mut g.segs, n);
                if g.segs.is_empty() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                g.segs.clear();
                on_err(e);
                return Ok(());
            }
        }
    }
    tokio::spawn(async move {
        let FrameWriter { wr, segs, .. } = &mut *g;
        if let Err(e) = write_segments(wr, segs).await {
            segs.clear();
            on_err(e);
        }
    });
    Ok(())
}

/// Points `iov` at the first segments (at most `MAX_BATCH`); returns how many.
fn fill_iov<'a>(segs: &'a VecDeque<Bytes>, iov: &mut [IoSlice<'a>; MAX_BATCH]) -> usize {
    let mut k = 0;
    for s in segs.iter().take(MAX_BATCH) {
        iov[k] = IoSlice::new(s);
        k += 1;
    }
    k
}

/// Drops the first `n` written bytes from `segs`.
fn advance(segs: &mut VecDeque<Bytes>, n: usize) {
    let mut left = n;
    while left > 0 {
        let Some(front) = segs.front_mut() else { break };
        if left >= front.len() {
            left -= front.len();
            segs.pop_front();
        } else {
            front.advance(left);
            left = 0;
        }
    }
}

async fn write_segments(wr: &mut WriteHalf, segs: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !segs.is_empty() {
        let n = {
            let mut iov = [IoSlice::new(&[]); MAX_BATCH];
            let k = fill_iov(segs, &mut iov);
            wr.write_vectored(&iov[..k]).await?
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "peer stopped reading",
            ));
        }
        advance(segs, n);
    }
    // TLS keeps records it could not send yet; plain TCP has nothing to flush.
    wr.flush().await
}

/// Writes every queued frame; ends when all senders are gone or the socket fails.
async fn write_loop<T: Frame>(w: SharedWriter, mut rx: mpsc::Receiver<(u64, T)>) -> io::Result<()> {
    let mut batch: Vec<(u64, T)> = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            let mut g = w.lock().await;
            let _ = g.wr.shutdown().await;
            return Ok(());
        }
        let mut g = w.lock().await;
        for (id, msg) in batch.drain(..) {
            g.push(id, &msg);
        }
        g.seal();
        let FrameWriter { wr, segs, .. } = &mut *g;
        write_segments(wr, segs).await?;
    }
}

pub(crate) enum ReadError {
    Io(io::Error),
    Codec(Option<u64>, CodecError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Records a connection with the interface its local address is on (`fabric`).
fn observe_connection(rd: &ReadHalf) -> Arc<fabric::LaneBytes> {
    let device = match rd.local_addr().map(|a| a.ip()) {
        Some(std::net::IpAddr::V4(ip)) => binding::interface_of(ip),
        _ => None,
    };
    fabric::record_tcp_connection(device.as_deref().unwrap_or("unknown"))
}

/// Reads frames off a byte stream.
struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
    pool: Option<BufferPool>,
    /// Bytes received are counted here (`fabric`).
    lane: Arc<fabric::LaneBytes>,
}

impl FrameReader {
    async fn fill(&mut self, need: usize) -> Result<bool, ReadError> {
        while self.buf.len() < need {
            if self.buf.capacity() - self.buf.len() < 16 << 10 {
                self.buf.reserve((need - self.buf.len()).max(64 << 10));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                )
                .into());
            }
        }
        Ok(true)
    }

    /// Next frame, or `None` on a clean end of stream.
    async fn next(&mut self) -> Result<Option<(FrameHeader, Bytes, Bytes)>, ReadError> {
        if !self.fill(HEADER_LEN).await? {
            return Ok(None);
        }
        let h = FrameHeader::decode(&self.buf).map_err(|(id, e)| ReadError::Codec(id, e))?;
        let meta_len = h.meta_len as usize;
        let data_len = h.data_len as usize;
        if !self.fill(HEADER_LEN + meta_len).await? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a frame",
            )
            .into());
        }
        self.buf.advance(HEADER_LEN);
        let meta = self.buf.split_to(meta_len).freeze();
        let data = if data_len == 0 {
            Bytes::new()
        } else if data_len <= self.buf.len() || data_len < DIRECT_READ_MIN {
            if !self.fill(data_len).await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                )
                .into());
            }
            self.buf.split_to(data_len).freeze()
        } else {
            self.read_direct(data_len).await?
        };
        self.lane
            .add_received((HEADER_LEN + meta.len() + data.len()) as u64);
        Ok(Some((h, meta, data)))
    }

    /// Reads a large payload into its own buffer: what is buffered first, then straight from
    /// the socket.
    async fn read_direct(&mut self, len: usize) -> Result<Bytes, ReadError> {
        let have = self.buf.len();
        if let Some(mut chunk) = self
            .pool
            .as_ref()
            .filter(|p| len <= p.chunk_size())
            .and_then(|p| p.alloc_at_least(len))
        {
            let dst = &mut chunk.as_mut_slice()[..len];
            dst[..have].copy_from_slice(&self.buf);
            self.buf.clear();
            self.rd.read_exact(&mut dst[have..]).await?;
            return Ok(chunk.freeze(len));
        }
        let mut d = BytesMut::with_capacity(len);
        d.extend_from_slice(&self.buf);
        self.buf.clear();
        while d.len() < len {
            let want = len - d.len();
            if self.rd.read_buf(&mut (&mut d).limit(want)).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a payload",
                )
                .into());
            }
        }
        Ok(d.freeze())
    }
}

fn tune_socket(stream: &TcpStream, buf: Option<usize>) {
    let _ = stream.set_nodelay(true);
    if let Some(size) = buf {
        let s = socket2::SockRef::from(stream);
        let _ = s.set_send_buffer_size(size);
        let _ = s.set_recv_buffer_size(size);
    }
}

/// A handler call whose panic becomes an `Io` error reply: a panicking handler must not kill
/// the connection, nor abort the process when polled inside a UCX callback (FFI boundary).
pub(crate) struct CatchPanic(Pin<Box<dyn Future<Output = Response> + Send + 'static>>);

impl CatchPanic {
    pub(crate) fn handle(handler: Arc<dyn Handler>, req: Request) -> CatchPanic {
        CatchPanic(Box::pin(async move { handler.handle(req).await }))
    }
}

impl Future for CatchPanic {
    type Output = Response;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("request handler panicked");
                Poll::Ready(Response::error(
                    crate::ErrorCode::Io,
                    "the server's handler failed (panicked) on this request",
                ))
            }
        }
    }
}

/// Runs a handler future: polled once in place (most cache hits complete without waiting, and
/// this saves a task spawn and a wake-up), spawned when it has to wait.
pub(crate) fn dispatch<F>(handler: &Arc<dyn Handler>, req: Request, done: F)
where
    F: FnOnce(Response) + Send + 'static,
{
    let mut fut = CatchPanic::handle(handler.clone(), req);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut fut).poll(&mut cx) {
        Poll::Ready(r) => done(r),
        Poll::Pending => {
            tokio::spawn(async move { done(fut.await) });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server

pub(crate) struct TcpServer {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl TcpServer {
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

pub(crate) async fn listen(
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    opts: ServerOptions,
) -> Result<TcpServer, TransportError> {
    let err = |e: io::Error| TransportError::Listen {
        addr,
        reason: e.to_string(),
    };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    if let Some(size) = opts.socket_buffer {
        let _ = sock.set_recv_buffer_size(size);
        let _ = sock.set_send_buffer_size(size);
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(1024).map_err(err)?;
    let listener = TcpListener::from_std(sock.into()).map_err(err)?;
    let local_addr = listener.local_addr().map_err(err)?;
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(accept_loop(listener, handler, opts, stop_rx));
    tracing::info!(%local_addr, "TCP data server listening");
    Ok(TcpServer { local_addr, stop })
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    opts: ServerOptions,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    tune_socket(&stream, opts.socket_buffer);
                    let h = handler.clone();
                    let pool = opts.pool.clone();
                    let gate = Gate::new(opts.auth.clone(), TransportKind::Tcp);
                    let stop = stop.clone();
                    let tls = opts.tls.clone();
                    tokio::spawn(async move {
                        let Some((rd, wr)) = open_server_stream(stream, tls.as_ref(), peer).await
                        else {
                            return;
                        };
                        if let Err(e) = serve_conn(rd, wr, h, pool, gate, stop).await {
                            tracing::debug!(%peer, error = %e, "TCP data connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A reply from the reader itself (errors): written now when the writer is idle, like the
/// handlers' replies, so replies to a sequence of requests keep their order; else queued.
async fn reply_soon(w: &SharedWriter, tx: &mpsc::Sender<(u64, Response)>, id: u64, resp: Response) {
    if let Err(m) = write_now(w, id, resp, |e| {
        tracing::debug!(error = %e, "TCP reply write failed");
    }) {
        let _ = tx.send(m).await;
    }
}

/// The connection's halves: plain, or after the TLS handshake when the server has TLS. A plain
/// rcache client (its first bytes are a frame's magic) gets a plain error frame saying TLS is
/// required instead of a TLS alert it could not read.
async fn open_server_stream(
    stream: TcpStream,
    tls: Option<&TlsServer>,
    peer: SocketAddr,
) -> Option<(ReadHalf, WriteHalf)> {
    let Some(tls) = tls else {
        return Some(crate::tls::plain(stream));
    };
    let mut first = [0u8; 4];
    if let Ok(Ok(4)) = tokio::time::timeout(TLS_SNIFF, stream.peek(&mut first)).await
        && u32::from_le_bytes(first) == crate::protocol::MAGIC
    {
        let mut out = BytesMut::new();
        Response::error(
            ErrorCode::Unsupported,
            "this worker accepts only TLS connections (rcache.security.tls.enabled=true); \
             the client must use TLS with the cluster's CA (rcache.security.tls.ca.file)",
        )
        .encode_frame(0, &mut out);
        let mut stream = stream;
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
        tracing::debug!(%peer, "plain connection to a TLS worker refused");
        return None;
    }
    match tls.accept(stream).await {
        Ok(s) => Some(crate::tls::encrypted(s)),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

async fn serve_conn(
    rd: ReadHalf,
    wr: WriteHalf,
    handler: Arc<dyn Handler>,
    pool: Option<BufferPool>,
    mut gate: Gate,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<(u64, Response)>(QUEUE_DEPTH);
    let lane = observe_connection(&rd);
    let w = FrameWriter::shared(wr, lane.clone());
    let writer = tokio::spawn(write_loop(w.clone(), rx));
    let mut reader = FrameReader {
        rd,
        buf: BytesMut::with_capacity(128 << 10),
        pool,
        lane,
    };
    let result = loop {
        let next = tokio::select! {
            _ = stop.changed() => break Ok(()),
            n = reader.next() => n,
        };
        match next {
            Ok(None) => break Ok(()),
            Ok(Some((h, meta, data))) => match Request::decode(h.op, &meta, data) {
                Ok(req) => {
                    let req = match gate.admit(req) {
                        Verdict::Handle(req) => req,
                        Verdict::Reply(resp) => {
                            reply_soon(&w, &tx, h.id, resp).await;
                            continue;
                        }
                        Verdict::Close(resp) => {
                            reply_soon(&w, &tx, h.id, resp).await;
                            break Ok(());
                        }
                    };
                    let tx = tx.clone();
                    let w = w.clone();
                    // More requests already read: let the writer task batch the replies.
                    let alone = reader.buf.len() < HEADER_LEN;
                    dispatch(&handler, req, move |resp| {
                        // Straight to the socket when alone and the writer is idle (module docs).
                        let m = if alone {
                            match write_now(&w, h.id, resp, |e| {
                                tracing::debug!(error = %e, "TCP reply write failed");
                            }) {
                                Ok(()) => return,
                                Err(m) => m,
                            }
                        } else {
                            (h.id, resp)
                        };
                        // try_send keeps the fast path synchronous; a full queue means the peer
                        // is not reading, so wait in a task.
                        if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(m) {
                            tokio::spawn(async move {
                                let _ = tx.send(m).await;
                            });
                        }
                    });
                }
                Err(e) => {
                    let resp = Response::error(e.code(), format!("bad request: {e}"));
                    reply_soon(&w, &tx, h.id, resp).await;
                }
            },
            Err(ReadError::Codec(id, e)) => {
                let resp = Response::error(e.code(), format!("bad frame: {e}; closing"));
                reply_soon(&w, &tx, id.unwrap_or(0), resp).await;
                break Ok(());
            }
            Err(ReadError::Io(e)) => break Err(e),
        }
    };
    drop(tx);
    // Let queued replies (error replies included) go out before the socket closes.
    let _ = writer.await;
    result
}

// ---------------------------------------------------------------------------------------------
// Client

type Reply = oneshot::Sender<Result<Response, TransportError>>;

struct Pending {
    map: Mutex<HashMap<u64, Reply>>,
    /// Why the connection is gone, once it is.
    closed: Mutex<Option<String>>,
}

impl Pending {
    fn fail_all(&self, addr: SocketAddr, reason: String) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        let drained: Vec<Reply> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, v)| v)
            .collect();
        for tx in drained {
            let _ = tx.send(Err(TransportError::Io {
                addr,
                reason: reason.clone(),
            }));
        }
    }
}

pub(crate) struct TcpConnection {
    peer: SocketAddr,
    tx: mpsc::Sender<(u64, Request)>,
    w: SharedWriter,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    timeout: Option<Duration>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

pub(crate) async fn connect(
    addr: SocketAddr,
    opts: &ClientOptions,
) -> Result<TcpConnection, TransportError> {
    let dial = async {
        match opts.local_ip {
            Some(ip) => {
                let sock = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(addr).await
            }
            None => TcpStream::connect(addr).await,
        }
    };
    let stream = match tokio::time::timeout(opts.connect_timeout, dial).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(TransportError::Connect {
                addr,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(TransportError::Timeout {
                addr,
                after_ms: opts.connect_timeout.as_millis() as u64,
            });
        }
    };
    tune_socket(&stream, opts.socket_buffer);
    let (rd, wr) = match &opts.tls {
        None => crate::tls::plain(stream),
        Some(tls) => match tokio::time::timeout(opts.connect_timeout, tls.connect(stream)).await {
            Ok(Ok(s)) => crate::tls::encrypted(s),
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    addr,
                    reason: format!(
                        "TLS handshake failed: {e} (does the worker serve TLS with a certificate \
                         of the CA in rcache.security.tls.ca.file?)"
                    ),
                });
            }
            Err(_) => {
                return Err(TransportError::Timeout {
                    addr,
                    after_ms: opts.connect_timeout.as_millis() as u64,
                });
            }
        },
    };
    let (tx, rx) = mpsc::channel::<(u64, Request)>(QUEUE_DEPTH);
    let lane = observe_connection(&rd);
    let w = FrameWriter::shared(wr, lane.clone());
    let pending = Arc::new(Pending {
        map: Mutex::new(HashMap::with_capacity(256)),
        closed: Mutex::new(None),
    });
    let p2 = pending.clone();
    let w2 = w.clone();
    tokio::spawn(async move {
        if let Err(e) = write_loop(w2, rx).await {
            p2.fail_all(addr, format!("write failed: {e}"));
        }
    });
    let p3 = pending.clone();
    let mut fr = FrameReader {
        rd,
        buf: BytesMut::with_capacity(128 << 10),
        pool: opts.pool.clone(),
        lane,
    };
    let reader = tokio::spawn(async move {
        let reason = loop {
            match fr.next().await {
                Ok(None) => break "server closed the connection".to_string(),
                Ok(Some((h, meta, data))) => {
                    let resp =
                        Response::decode(h.op, &meta, data).map_err(|e| TransportError::Protocol {
                            addr,
                            reason: e.to_string(),
                        });
                    let waiter = p3
                        .map
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&h.id);
                    if let Some(w) = waiter {
                        let _ = w.send(resp);
                    } else if h.id == 0
                        && let Ok(Response::Error { message, .. }) = &resp
                    {
                        // A connection-level refusal (no request to answer): every call fails
                        // with the server's words.
                        break format!("the server refused the connection: {message}");
                    }
                }
                Err(ReadError::Codec(_, e)) => break format!("bad frame from server: {e}"),
                Err(ReadError::Io(e)) => break format!("read failed: {e}"),
            }
        };
        p3.fail_all(addr, reason);
    });
    Ok(TcpConnection {
        peer: addr,
        tx,
        w,
        pending,
        next_id: AtomicU64::new(1),
        timeout: opts.request_timeout,
        reader,
    })
}

#[async_trait::async_trait]
impl Connection for TcpConnection {
    async fn call(&self, req: Request) -> Result<Response, TransportError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (stx, srx) = oneshot::channel();
        let alone;
        {
            let mut m = self.pending.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(reason) = self
                .pending
                .closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                return Err(TransportError::Io {
                    addr: self.peer,
                    reason: reason.clone(),
                });
            }
            alone = m.is_empty();
            m.insert(id, stx);
        }
        let _guard = PendingGuard {
            pending: &self.pending,
            id,
        };
        // Straight to the socket when alone and the writer is idle (module docs); else the
        // writer task, which batches.
        let pending = self.pending.clone();
        let addr = self.peer;
        let queued = if alone {
            write_now(&self.w, id, req, move |e| {
                pending.fail_all(addr, format!("write failed: {e}"));
            })
            .err()
        } else {
            Some((id, req))
        };
        if let Some(m) = queued
            && self.tx.send(m).await.is_err()
        {
            return Err(TransportError::Io {
                addr: self.peer,
                reason: "connection closed".into(),
            });
        }
        let res = match self.timeout {
            Some(t) => match tokio::time::timeout(t, srx).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(TransportError::Timeout {
                        addr: self.peer,
                        after_ms: t.as_millis() as u64,
                    });
                }
            },
            None => srx.await,
        };
        res.unwrap_or_else(|_| {
            Err(TransportError::Io {
                addr: self.peer,
                reason: "connection closed".into(),
            })
        })
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use crate::{connect as connect_any, listen as listen_any};

    struct Echo;

    #[async_trait::async_trait]
    impl Handler for Echo {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::Ping => Response::Pong,
                Request::BenchRead { len } => {
                    Response::Data(Bytes::from(vec![0xabu8; len as usize]))
                }
                Request::BenchWrite { .. } => Response::Ack,
                Request::Stat { path } if path == "panic" => panic!("handler bug"),
                Request::Stat { path } if path == "slow" => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Response::Ack
                }
                _ => Response::error(ErrorCode::NotFound, "nothing here"),
            }
        }
    }

    async fn pair() -> (crate::Server, crate::SharedConnection) {
        let s = listen_any(
            TransportKind::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Echo),
            ServerOptions::default(),
        )
        .await
        .unwrap();
        let c = connect_any(TransportKind::Tcp, s.local_addr(), ClientOptions::default())
            .await
            .unwrap();
        (s, c)
    }

    /// The fast path (a lone frame written by the caller or the answering handler itself) with
    /// socket buffers far smaller than the frames: large writes and large replies are finished
    /// by a task holding the writer's lock while lone and concurrent small calls keep coming, and
    /// every reply is whole and matched to its call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_frames_written_in_place_never_interleave_with_other_frames() {
        let small = Some(16 << 10);
        let s = listen_any(
            TransportKind::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Echo),
            ServerOptions {
                socket_buffer: small,
                ..ServerOptions::default()
            },
        )
        .await
        .unwrap();
        let c = connect_any(
            TransportKind::Tcp,
            s.local_addr(),
            ClientOptions {
                socket_buffer: small,
                ..ClientOptions::default()
            },
        )
        .await
        .unwrap();
        for round in 0..6usize {
            // Lone calls: the client writes in place, the server answers in place.
            let len = [1usize, 3 << 20, 4096, (2 << 20) + 5, 0, 65536][round];
            match c
                .call(Request::BenchRead { len: len as u32 })
                .await
                .unwrap()
            {
                Response::Data(d) => {
                    assert_eq!(d.len(), len);
                    assert!(d.iter().all(|&b| b == 0xab));
                }
                other => panic!("unexpected {other:?}"),
            }
            let w = Bytes::from(vec![7u8; 3 << 20]);
            assert_eq!(
                c.call(Request::BenchWrite { payload: w }).await.unwrap(),
                Response::Ack
            );
            // A burst of mixed calls racing the in-place writers and the writer task.
            let mut tasks = Vec::new();
            for i in 0..16usize {
                let c = c.clone();
                tasks.push(tokio::spawn(async move {
                    let len = if i % 4 == 0 { 1 << 20 } else { 100 + i };
                    match c
                        .call(Request::BenchRead { len: len as u32 })
                        .await
                        .unwrap()
                    {
                        Response::Data(d) => assert_eq!(d.len(), len),
                        other => panic!("unexpected {other:?}"),
                    }
                    if i % 5 == 0 {
                        let w = Bytes::from(vec![1u8; 1 << 20]);
                        assert_eq!(
                            c.call(Request::BenchWrite { payload: w }).await.unwrap(),
                            Response::Ack
                        );
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Pong);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn pipelined_calls_get_their_own_replies() {
        let (_s, c) = pair().await;
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let len = (i * 4099) % (200 << 10);
                match c.call(Request::BenchRead { len }).await.unwrap() {
                    Response::Data(d) => assert_eq!(d.len(), len as usize),
                    other => panic!("unexpected {other:?}"),
                }
            }));
        }
        assert_eq!(
            c.call(Request::Stat {
                path: "slow".into()
            })
            .await
            .unwrap(),
            Response::Ack
        );
        for t in tasks {
            t.await.unwrap();
        }
        let payload = Bytes::from(vec![1u8; 3 << 20]);
        assert_eq!(
            c.call(Request::BenchWrite { payload }).await.unwrap(),
            Response::Ack
        );
    }

    #[tokio::test]
    async fn panicking_handler_becomes_an_error_reply() {
        let (_s, c) = pair().await;
        let r = c
            .call(Request::Stat {
                path: "panic".into(),
            })
            .await
            .unwrap();
        assert!(
            matches!(
                r,
                Response::Error {
                    code: ErrorCode::Io,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Pong);
    }

    #[tokio::test]
    async fn garbage_gets_an_error_reply_then_close() {
        let (s, _c) = pair().await;
        let mut raw = TcpStream::connect(s.local_addr()).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let mut b = BytesMut::from(&buf[..]);
        let (h, meta, data) = crate::protocol::split_frame(&mut b).unwrap().unwrap();
        match Response::decode(h.op, &meta, data).unwrap() {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::InvalidRequest);
                assert!(message.contains("magic"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn undecodable_request_gets_error_and_connection_lives_on() {
        let (s, _c) = pair().await;
        let mut raw = TcpStream::connect(s.local_addr()).await.unwrap();
        let mut out = BytesMut::new();
        FrameHeader {
            op: 0x0777,
            id: 5,
            meta_len: 0,
            data_len: 0,
        }
        .encode(&mut out);
        Request::Ping.encode_frame(6, &mut out);
        raw.write_all(&out).await.unwrap();
        let mut b = BytesMut::new();
        let mut replies = Vec::new();
        while replies.len() < 2 {
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read_buf(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "server closed early");
            while let Some((h, meta, data)) = crate::protocol::split_frame(&mut b).unwrap() {
                replies.push((h.id, Response::decode(h.op, &meta, data).unwrap()));
            }
        }
        assert!(
            matches!(
                replies[0],
                (
                    5,
                    Response::Error {
                        code: ErrorCode::Unsupported,
                        ..
                    }
                )
            ),
            "{replies:?}"
        );
        assert_eq!(replies[1], (6, Response::Pong));
    }

    #[tokio::test]
    async fn oversized_payload_is_refused_without_reading_it() {
        let (s, _c) = pair().await;
        let mut raw = TcpStream::connect(s.local_addr()).await.unwrap();
        let mut out = BytesMut::new();
        FrameHeader {
            op: crate::protocol::op::BENCH_WRITE,
            id: 8,
            meta_len: 0,
            data_len: u32::MAX,
        }
        .encode(&mut out);
        raw.write_all(&out).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let mut b = BytesMut::from(&buf[..]);
        let (h, meta, data) = crate::protocol::split_frame(&mut b).unwrap().unwrap();
        assert_eq!(h.id, 8);
        assert!(matches!(
            Response::decode(h.op, &meta, data).unwrap(),
            Response::Error {
                code: ErrorCode::TooLarge,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn calls_fail_with_the_peer_named_after_server_shutdown() {
        let (s, c) = pair().await;
        assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Pong);
        s.shutdown().await;
        let mut last = Ok(Response::Pong);
        for _ in 0..50 {
            last = c.call(Request::Ping).await;
            if last.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = last.unwrap_err();
        assert!(e.to_string().contains(&s.local_addr().to_string()), "{e}");
    }

    #[tokio::test]
    async fn client_pool_receives_large_payloads_into_chunks() {
        let pool = BufferPool::new(crate::bufpool::PoolConfig {
            chunk_size: 1 << 20,
            initial: 4 << 20,
            prewarm: 0,
            max: 4 << 20,
        })
        .unwrap();
        let s = listen_any(
            TransportKind::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Echo),
            ServerOptions::default(),
        )
        .await
        .unwrap();
        let opts = ClientOptions {
            pool: Some(pool.clone()),
            ..Default::default()
        };
        let c = connect_any(TransportKind::Tcp, s.local_addr(), opts)
            .await
            .unwrap();
        match c.call(Request::BenchRead { len: 1 << 20 }).await.unwrap() {
            Response::Data(d) => {
                assert!(d.iter().all(|&b| b == 0xab));
                assert!(pool.region_of(d.as_ptr(), d.len()).is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
