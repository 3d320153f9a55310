//! Generates the gRPC service stubs of the CSI Identity and Node services and of the kubelet's
//! plugin-registration service with `tonic-build`'s manual builder: the messages are written by
//! hand in `src/proto.rs` (the fields this plugin uses, with the spec's tags), so no `protoc`.

use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::proto::{input}"))
        .output_type(format!("crate::proto::{output}"))
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn main() {
    let identity = Service::builder()
        .name("Identity")
        .package("csi.v1")
        .method(method(
            "get_plugin_info",
            "GetPluginInfo",
            "GetPluginInfoRequest",
            "GetPluginInfoResponse",
        ))
        .method(method(
            "get_plugin_capabilities",
            "GetPluginCapabilities",
            "GetPluginCapabilitiesRequest",
            "GetPluginCapabilitiesResponse",
        ))
        .method(method("probe", "Probe", "ProbeRequest", "ProbeResponse"))
        .build();
    let node = Service::builder()
        .name("Node")
        .package("csi.v1")
        .method(method(
            "node_publish_volume",
            "NodePublishVolume",
            "NodePublishVolumeRequest",
            "NodePublishVolumeResponse",
        ))
        .method(method(
            "node_unpublish_volume",
            "NodeUnpublishVolume",
            "NodeUnpublishVolumeRequest",
            "NodeUnpublishVolumeResponse",
        ))
        .method(method(
            "node_get_capabilities",
            "NodeGetCapabilities",
            "NodeGetCapabilitiesRequest",
            "NodeGetCapabilitiesResponse",
        ))
        .method(method(
            "node_get_info",
            "NodeGetInfo",
            "NodeGetInfoRequest",
            "NodeGetInfoResponse",
        ))
        .build();
    let registration = Service::builder()
        .name("Registration")
        .package("pluginregistration")
        .method(method("get_info", "GetInfo", "InfoRequest", "PluginInfo"))
        .method(method(
            "notify_registration_status",
            "NotifyRegistrationStatus",
            "RegistrationStatus",
            "RegistrationStatusResponse",
        ))
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[identity, node, registration]);
}
