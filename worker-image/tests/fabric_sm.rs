//! Fabric truth over UCX's shared memory: a client on the worker's host gets its active
//! messages over `posix`, and both sides observe it (UCX's client/server set-up still needs
//! `tcp` for wire-up, so it is in `UCX_TLS` and may carry rendezvous payloads).

mod common;
mod fabric_common;

use fabric_common::{read_over_ucx, set_env};

const SM: [(&str, &str); 2] = [("UCX_TLS", "posix,cma,self,tcp"), ("UCX_NET_DEVICES", "lo")];

#[test]
fn shared_memory_is_observed_by_worker_and_client() {
    set_env(&SM);
    let d = tempfile::tempdir().expect("tmp");
    let (w, fabric, client) = read_over_ucx(d.path(), &SM);
    let observed = fabric["observed"].as_str().unwrap_or_default().to_string();
    assert!(observed.split(',').any(|t| t == "ucx/posix"), "{fabric}");
    assert_eq!(fabric["endpointsSharedMemory"], 1, "{fabric}");
    assert_eq!(
        fabric["endpointsTcp"], 0,
        "a same-host peer is not a tcp fallback: {fabric}"
    );
    let posix = w.metric(
        "rcache_transport_bytes_total{transport=\"ucx/posix\",device=\"memory\",direction=\"sent\"}",
    ) + w.metric(
        "rcache_transport_bytes_total{transport=\"ucx/posix\",device=\"memory\",direction=\"received\"}",
    );
    assert!(posix > 0.0, "bytes on ucx/posix: {fabric}");
    assert_eq!(client.endpoints_shared_memory, 1, "{client:?}");
    assert!(
        client.lanes.iter().any(|l| l.transport == "ucx/posix"),
        "{client:?}"
    );
}
