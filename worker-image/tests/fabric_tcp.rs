//! Fabric truth over UCX's `tcp` transport: the worker and the client both observe `ucx/tcp` on
//! the bound device, the worker's metrics count the bytes by transport and device, `/v1/stats`
//! says there is no RDMA lane, the client's bind device is what its endpoint uses, and a strict
//! worker refuses to serve without RDMA.

mod common;
mod fabric_common;

use std::process::{Command, Stdio};

use common::write_props;
use fabric_common::{read_over_ucx, set_env};

#[test]
fn ucx_tcp_is_observed_by_worker_and_client_on_the_bound_device_and_strict_refuses_it() {
    // The client's process sets no UCX_NET_DEVICES: its bind device `lo` must (without it,
    // UCX's context offers tcp on every interface, eth0 too).
    set_env(&[("UCX_TLS", "tcp")]);
    let d = tempfile::tempdir().expect("tmp");
    let (w, fabric, client) =
        read_over_ucx(d.path(), &[("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")]);

    // The worker: /v1/stats and metrics.
    assert_eq!(fabric["observed"], "ucx/tcp", "{fabric}");
    assert_eq!(fabric["ucx"], true);
    assert_eq!(fabric["rdmaLane"], false, "no RDMA lane over tcp: {fabric}");
    assert_eq!(fabric["endpointsTcp"], 1, "{fabric}");
    let sent = w.metric(
        "rcache_transport_bytes_total{transport=\"ucx/tcp\",device=\"lo\",direction=\"sent\"}",
    );
    assert!(
        sent >= (3 << 20) as f64,
        "worker sent {sent} bytes on ucx/tcp lo"
    );
    assert_eq!(
        w.metric("rcache_transport_rdma_lane{offered=\"rdma\"}"),
        0.0
    );
    assert_eq!(
        w.metric("rcache_transport_ucx_offered{transport=\"ucx/tcp\",device=\"lo\"}"),
        1.0
    );

    // The client: every lane it used is ucx/tcp on its bind device.
    assert_eq!(client.endpoints_tcp, 1, "{client:?}");
    assert!(!client.lanes.is_empty(), "{client:?}");
    for l in &client.lanes {
        assert_eq!(
            (l.transport.as_str(), l.device.as_str()),
            ("ucx/tcp", "lo"),
            "{client:?}"
        );
    }
    let received: u64 = client.lanes.iter().map(|l| l.bytes_received).sum();
    assert!(received >= 3 << 20, "client received {received}");
    assert!(
        client.offered.iter().all(|o| o.ends_with(":lo")),
        "{:?}",
        client.offered
    );
    drop(w);

    // Strict: the same worker refuses to start, saying why and what to do.
    let props = write_props(
        d.path(),
        "strict",
        &format!("file://{}", d.path().join("ufs").display()),
        &[
            ("rcache.network.rdma.data.enabled", "true"),
            ("rcache.network.rdma.data.bind.host", "127.0.0.1"),
            ("rcache.network.rdma.data.port", "0"),
            ("rcache.network.rdma.data.strict", "true"),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .args(["serve", "--config"])
        .arg(&props)
        .env("UCX_TLS", "tcp")
        .env("UCX_NET_DEVICES", "lo")
        .env("RCACHE_TERMINATION_LOG", d.path().join("termination"))
        .stdout(Stdio::null())
        .output()
        .expect("run strict worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a strict worker without RDMA must not serve: {err}"
    );
    assert!(
        err.contains("no RDMA lane") && err.contains("ucx/tcp:lo") && err.contains("strict"),
        "{err}"
    );
}
