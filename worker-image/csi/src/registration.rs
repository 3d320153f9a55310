//! The kubelet's plugin-registration API (`pluginregistration.v1`), served on a socket in
//! `/var/lib/kubelet/plugins_registry/`: the kubelet finds the socket, asks `GetInfo` for the
//! driver name and the CSI endpoint, then reports the outcome. It replaces the upstream
//! `node-driver-registrar` sidecar, so the plugin is one container.

use tonic::{Request, Response, Status};

use crate::proto::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
    registration::registration_server::Registration,
};

#[derive(Debug, Clone)]
pub struct RegistrationService {
    /// The CSI socket as the kubelet sees it (a host path).
    pub csi_endpoint: String,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: crate::DRIVER_NAME.into(),
            endpoint: self.csi_endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = request.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = crate::DRIVER_NAME, "registered with the kubelet");
        } else {
            tracing::error!(driver = crate::DRIVER_NAME, error = %s.error, "the kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
