//! Client authentication against a real `rcache-worker serve` with
//! `rcache.security.auth.secret.file` set, over TCP and over UCX (UCX's `tcp` transport on
//! loopback). Its own test binary: it sets `UCX_*` in the process environment before anything
//! else runs, so it holds one test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use common::{Worker, ufs_with_file};
use rcache_transport::protocol::split_frame;
use rcache_transport::{
    AuthKey, ClientOptions, ErrorCode, Request, Response, TransportError, TransportKind,
};
use rcache_worker::client::{CacheClient, ClientConfig, ClientError, Fallback, MembershipSource};
use rcache_worker::cluster::{Member, MemberTransport};

const UCX_ENV: [(&str, &str); 2] = [("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")];
const SECRET: &[u8] = b"the-cluster-secret-of-this-test-0123456789";

async fn client(member: Member, secret: Option<&[u8]>) -> CacheClient {
    CacheClient::new(ClientConfig {
        membership: MembershipSource::Fixed(vec![member]),
        block_size: 1 << 20,
        fallback: Fallback::None,
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        auth: secret.map(|s| AuthKey::new(s).expect("test secret")),
        ..ClientConfig::default()
    })
    .await
    .expect("client")
}

/// A client without the secret and one with a wrong secret are refused with a clear error and
/// read nothing; the one holding the secret reads the file's bytes.
async fn only_the_secret_holder_reads(member: Member, bytes: &[u8], over: &str) {
    let len = bytes.len() as u32;
    let e = client(member.clone(), None)
        .await
        .read("sub/data.bin", 0, len)
        .await
        .expect_err("a client without the secret is refused");
    assert!(
        matches!(e, ClientError::Unauthenticated { .. }),
        "{over}: {e}"
    );
    let text = e.to_string();
    assert!(text.contains("authentication failed"), "{over}: {text}");
    assert!(
        text.contains("rcache.security.auth.secret.file"),
        "{over}: {text}"
    );
    assert_eq!(e.errno(), libc::EACCES);

    let e = client(member.clone(), Some(b"a-wrong-secret-of-enough-length"))
        .await
        .read("sub/data.bin", 0, len)
        .await
        .expect_err("a client with a wrong secret is refused");
    assert!(
        e.to_string().contains("authentication failed: wrong proof"),
        "{over}: {e}"
    );

    let got = client(member, Some(SECRET))
        .await
        .read("sub/data.bin", 0, len)
        .await
        .unwrap_or_else(|e| panic!("{over}: the secret holder reads: {e}"));
    assert!(got[..] == bytes[..], "{over}: bytes");
}

/// The transport's own connect names the refusal (`TransportError::Auth`).
async fn bare_connect_is_refused(kind: TransportKind, addr: SocketAddr) {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    match rcache_transport::connect(kind, addr, opts).await {
        Err(TransportError::Auth { reason, .. }) => {
            assert!(reason.starts_with("authentication failed:"), "{reason}")
        }
        Err(e) => panic!("{kind}: refused with another error: {e}"),
        Ok(_) => panic!("{kind}: connected without the secret"),
    }
}

/// On TCP, a request before authentication is answered `Unauthenticated` and the worker closes
/// the connection (the next read sees EOF).
fn tcp_request_before_auth_gets_refusal_then_close(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = BytesMut::new();
    Request::List { path: "".into() }.encode_frame(5, &mut out);
    s.write_all(&out).expect("send");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the worker closes the connection");
    let mut buf = BytesMut::from(&got[..]);
    let (h, meta, data) = split_frame(&mut buf)
        .expect("a frame")
        .expect("a whole frame");
    assert_eq!(h.id, 5);
    match Response::decode(h.op, &meta, data).expect("a response") {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::Unauthenticated);
            assert!(message.starts_with("authentication failed:"), "{message}");
        }
        other => panic!("answered {other:?}"),
    }
    assert!(buf.is_empty(), "nothing after the refusal");
}

#[test]
fn only_clients_proving_the_cluster_secret_are_served_over_tcp_and_ucx() {
    for (k, v) in UCX_ENV {
        // SAFETY: the only test in this binary, before the runtime or any other thread starts.
        unsafe { std::env::set_var(k, v) };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let d = tempfile::tempdir().expect("tmp");
        let (ufs, bytes) = ufs_with_file(d.path(), 1 << 20, 16);
        let secret_file = d.path().join("token");
        // A trailing newline (a hand-made file) is not part of the secret.
        let mut text = SECRET.to_vec();
        text.push(b'\n');
        std::fs::write(&secret_file, text).expect("secret");
        let secret_path = secret_file.to_string_lossy().into_owned();
        let w = Worker::start_env(
            d.path(),
            "auth",
            &ufs,
            &[
                ("rcache.security.auth.secret.file", secret_path.as_str()),
                ("rcache.network.rdma.data.enabled", "true"),
                ("rcache.network.rdma.data.bind.host", "127.0.0.1"),
                ("rcache.network.rdma.data.port", "0"),
            ],
            &UCX_ENV,
        );
        let rdma = w.rdma.expect("worker reports its UCX port");

        tcp_request_before_auth_gets_refusal_then_close(w.data);
        bare_connect_is_refused(TransportKind::Tcp, ([127, 0, 0, 1], w.data).into()).await;
        bare_connect_is_refused(TransportKind::Ucx, ([127, 0, 0, 1], rdma).into()).await;
        assert_eq!(w.ufs_bytes(), 0.0, "refused connections read nothing");

        only_the_secret_holder_reads(w.member("w-tcp"), &bytes, "tcp").await;
        let mut m = w.member("w-ucx");
        m.transport = MemberTransport::Ucx;
        m.ports.rdma = Some(rdma);
        only_the_secret_holder_reads(m, &bytes, "ucx").await;
        assert_eq!(
            w.metric("rcache_bytes_served_total{transport=\"ucx\"}"),
            bytes.len() as f64,
            "the UCX read went over UCX"
        );
    });
}
