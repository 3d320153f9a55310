//! rcache CSI node plugin: the CSI Identity and Node services (`node`), the kubelet plugin
//! registration (`registration`), and the FUSE keeper (`rcache_fuse::takeover`) that holds the
//! nodes' `/dev/fuse` connections while FUSE pods restart.

pub mod node;
pub mod proto;
pub mod registration;

use tonic::{Request, Response, Status};

use crate::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, ProbeRequest, ProbeResponse, identity::identity_server::Identity,
};

/// The CSI driver name (the `CSIDriver` object and every PersistentVolume's `csi.driver`).
pub const DRIVER_NAME: &str = "csi.rcache.io";

#[derive(Debug, Clone, Default)]
pub struct IdentityService;

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {}))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PluginInfo;
    use crate::proto::registration::registration_server::Registration;
    use prost::Message;

    #[tokio::test]
    async fn identity_names_the_driver_and_is_ready() {
        let info = IdentityService
            .get_plugin_info(Request::new(GetPluginInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "csi.rcache.io");
        let probe = IdentityService
            .probe(Request::new(ProbeRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(probe.ready, Some(true));
    }

    #[tokio::test]
    async fn registration_tells_the_kubelet_the_csi_endpoint() {
        let reg = registration::RegistrationService {
            csi_endpoint: "/var/lib/kubelet/plugins/csi.rcache.io/csi.sock".into(),
        };
        let info: PluginInfo = reg
            .get_info(Request::new(crate::proto::InfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, DRIVER_NAME);
        assert_eq!(info.supported_versions, vec!["1.0.0"]);
        assert!(info.endpoint.ends_with("csi.sock"));
    }

    #[test]
    fn a_publish_request_with_fields_this_plugin_does_not_read_decodes() {
        // volume_id (1) = "a/b", then volume_capability (5, a message this plugin skips), then
        // target_path (4).
        let mut buf = vec![0x0a, 3, b'a', b'/', b'b', 0x2a, 2, 0x08, 1];
        buf.extend_from_slice(&[0x22, 2, b'/', b't']);
        let r = crate::proto::NodePublishVolumeRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(r.volume_id, "a/b");
        assert_eq!(r.target_path, "/t");
    }
}
