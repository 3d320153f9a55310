//! TLS on the TCP data path against a real `rcache-worker serve` with
//! `rcache.security.tls.enabled=true` (certificates made here with rcgen: a CA and a worker
//! certificate for the cluster-wide server name), together with client authentication.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Worker, ufs_with_file};
use rcache_transport::{AuthKey, ClientOptions, TlsClient, TransportError, TransportKind};
use rcache_worker::client::{CacheClient, ClientConfig, Fallback, MembershipSource};
use rcache_worker::cluster::Member;

const SECRET: &[u8] = b"tls-test-cluster-secret-0123456789";
const SERVER_NAME: &str = "rcache-worker";

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a certificate for `name` signed by it, as PEM files in `dir`.
fn pki(dir: &Path, tag: &str, name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("rcache test CA {tag}"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    let p = Pki {
        ca: dir.join(format!("{tag}-ca.crt")),
        cert: dir.join(format!("{tag}-tls.crt")),
        key: dir.join(format!("{tag}-tls.key")),
    };
    std::fs::write(&p.ca, ca.pem()).expect("write CA");
    std::fs::write(&p.cert, cert.pem()).expect("write cert");
    std::fs::write(&p.key, key.serialize_pem()).expect("write key");
    p
}

async fn client(member: Member, tls: Option<TlsClient>) -> CacheClient {
    CacheClient::new(ClientConfig {
        membership: MembershipSource::Fixed(vec![member]),
        block_size: 1 << 20,
        fallback: Fallback::None,
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        auth: Some(AuthKey::new(SECRET).expect("secret")),
        tls,
        ..ClientConfig::default()
    })
    .await
    .expect("client")
}

#[tokio::test]
async fn a_tls_worker_serves_tls_clients_of_its_ca_and_refuses_plain_ones_clearly() {
    let d = tempfile::tempdir().expect("tmp");
    let (ufs, bytes) = ufs_with_file(d.path(), 1 << 20, 3);
    let good = pki(d.path(), "good", SERVER_NAME);
    let other = pki(d.path(), "other", SERVER_NAME);
    let secret = d.path().join("token");
    std::fs::write(&secret, SECRET).expect("secret");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (cert, key, token) = (path(&good.cert), path(&good.key), path(&secret));
    let w = Worker::start(
        d.path(),
        "tls",
        &ufs,
        &[
            ("rcache.security.tls.enabled", "true"),
            ("rcache.security.tls.cert.file", cert.as_str()),
            ("rcache.security.tls.key.file", key.as_str()),
            ("rcache.security.auth.secret.file", token.as_str()),
        ],
    );

    // A TLS client trusting the cluster's CA reads (and authenticates inside TLS).
    let tls = TlsClient::from_ca_file(&good.ca, SERVER_NAME).expect("TLS client");
    let got = client(w.member("w"), Some(tls))
        .await
        .read("sub/data.bin", 0, bytes.len() as u32)
        .await
        .expect("TLS read");
    assert!(got[..] == bytes[..], "bytes over TLS");

    // A plain client is told the worker wants TLS.
    let addr = ([127, 0, 0, 1], w.data).into();
    let opts = ClientOptions {
        auth: Some(AuthKey::new(SECRET).expect("secret")),
        ..ClientOptions::default()
    };
    match rcache_transport::connect(TransportKind::Tcp, addr, opts.clone()).await {
        Err(e) => assert!(e.to_string().contains("accepts only TLS"), "{e}"),
        Ok(_) => panic!("a plain client was served by a TLS worker"),
    }
    let e = client(w.member("w"), None)
        .await
        .read("sub/data.bin", 0, 4096)
        .await
        .expect_err("a plain client reads nothing");
    assert!(e.to_string().contains("accepts only TLS"), "{e}");

    // A client trusting another CA does not accept the worker's certificate.
    let wrong = ClientOptions {
        tls: Some(TlsClient::from_ca_file(&other.ca, SERVER_NAME).expect("TLS client")),
        ..opts
    };
    match rcache_transport::connect(TransportKind::Tcp, addr, wrong).await {
        Err(TransportError::Connect { reason, .. }) => {
            assert!(reason.contains("TLS handshake failed"), "{reason}")
        }
        Err(e) => panic!("untrusted certificate refused with another error: {e}"),
        Ok(_) => panic!("a certificate of another CA was accepted"),
    }
}
