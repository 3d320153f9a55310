//! Shared body of the fabric tests (`fabric_tcp`, `fabric_sm`): each runs in its own test
//! binary because UCX reads `UCX_*` from the process environment, set before any thread starts.
#![allow(dead_code)]

use std::time::Duration;

use crate::common::{Worker, ufs_with_file};
use rcache_worker::client::{CacheClient, ClientConfig, Fallback, MembershipSource};
use rcache_worker::cluster::MemberTransport;

/// Sets the environment of this test binary (call first, before the runtime starts).
pub fn set_env(env: &[(&str, &str)]) {
    for (k, v) in env {
        // SAFETY: the only test in its binary, before the runtime or any other thread starts.
        unsafe { std::env::set_var(k, v) };
    }
}

/// A worker serving UCX (with `worker_env`) and a client bound to `lo` that read a 3 MiB file
/// over it. Returns the worker, its `/v1/stats` fabric JSON and the client process's report.
pub fn read_over_ucx(
    dir: &std::path::Path,
    worker_env: &[(&str, &str)],
) -> (
    Worker,
    serde_json::Value,
    rcache_transport::fabric::FabricReport,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let len = 3 << 20;
        let (ufs, bytes) = ufs_with_file(dir, len, 5);
        let w = Worker::start_env(
            dir,
            "fabric",
            &ufs,
            &[
                ("rcache.network.rdma.data.enabled", "true"),
                ("rcache.network.rdma.data.bind.host", "127.0.0.1"),
                ("rcache.network.rdma.data.port", "0"),
            ],
            worker_env,
        );
        let mut m = w.member("w-fabric");
        m.transport = MemberTransport::Ucx;
        m.ports.rdma = Some(w.rdma.expect("worker reports its UCX port"));
        let c = CacheClient::new(ClientConfig {
            membership: MembershipSource::Fixed(vec![m]),
            block_size: 1 << 20,
            fallback: Fallback::None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            bind_device: Some("lo".into()),
            ..ClientConfig::default()
        })
        .await
        .expect("client");
        let got = c
            .read("sub/data.bin", 0, len as u32)
            .await
            .expect("read over UCX");
        assert!(got[..] == bytes[..], "bytes over UCX");
        let stats: serde_json::Value = serde_json::from_str(
            w.http("/v1/stats")
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b),
        )
        .expect("stats JSON");
        (
            w,
            stats["fabric"].clone(),
            rcache_transport::fabric::report(),
        )
    })
}
