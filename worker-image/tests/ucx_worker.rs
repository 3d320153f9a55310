//! The worker over UCX (RDMA code path), run here on UCX's `tcp` transport over loopback as the
//! design prescribes for machines without a fabric. Its own test binary: it sets `UCX_*` in the
//! process environment before anything else runs.

mod common;

use std::time::Duration;

use common::{Worker, ufs_with_file};
use rcache_worker::client::{CacheClient, ClientConfig, Fallback, MembershipSource};
use rcache_worker::cluster::MemberTransport;

const UCX_ENV: [(&str, &str); 2] = [("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")];

#[test]
fn reads_over_ucx_are_served_from_the_cache_with_identical_bytes() {
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
        let len = 3 << 20;
        let (ufs, bytes) = ufs_with_file(d.path(), len, 77);
        let w = Worker::start_env(
            d.path(),
            "ucx",
            &ufs,
            &[
                ("rcache.network.rdma.data.enabled", "true"),
                ("rcache.network.rdma.data.bind.host", "127.0.0.1"),
                ("rcache.network.rdma.data.port", "0"),
            ],
            &UCX_ENV,
        );
        let mut m = w.member("w-ucx");
        m.transport = MemberTransport::Ucx;
        m.ports.rdma = Some(w.rdma.expect("worker reports its UCX port"));
        let c = CacheClient::new(ClientConfig {
            membership: MembershipSource::Fixed(vec![m]),
            block_size: 1 << 20,
            fallback: Fallback::None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        })
        .await
        .expect("client");
        let got = c
            .read("sub/data.bin", 0, len as u32)
            .await
            .expect("read over UCX");
        assert!(got[..] == bytes[..], "bytes over UCX");
        let again = c
            .read("sub/data.bin", 12345, 1 << 20)
            .await
            .expect("hot read");
        assert!(again[..] == bytes[12345..12345 + (1 << 20)]);
        assert_eq!(
            w.metric("rcache_bytes_served_total{transport=\"ucx\"}"),
            (len + (1 << 20)) as f64
        );
        assert_eq!(
            w.metric("rcache_bytes_served_total{transport=\"tcp\"}"),
            0.0
        );
        assert_eq!(
            w.ufs_bytes(),
            len as f64,
            "the hot read came from the cache"
        );
    });
}
