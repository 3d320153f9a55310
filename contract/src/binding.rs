//! The one rule for data-plane devices, followed by the worker (`rcache.worker.data.bind.device`,
//! `rcache.network.rdma.data.bind.device`) and the client (`rcache.user.network.data.bind.device`)
//! alike: which interface and RDMA device UCX may use (`UCX_NET_DEVICES`), with which port
//! (`rcache.network.rdma.data.ib.port`) and RoCE GID index (`rcache.network.rdma.data.gid.index`).
//! It validates and renders; resolving an interface to its RDMA device (sysfs) is the
//! transport's job.

use crate::keys::{RDMA_BIND_DEVICE, RDMA_GID_INDEX, RDMA_IB_PORT};
use crate::properties::{ConfigError, Properties};
use crate::values::{check_interface_name, check_rdma_device};

/// The RDMA settings of the properties, validated: what both sides apply to UCX.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RdmaSettings {
    /// `rcache.network.rdma.data.bind.device` (`mlx5_0:1`).
    pub device: Option<String>,
    /// `rcache.network.rdma.data.ib.port`.
    pub ib_port: Option<u8>,
    /// `rcache.network.rdma.data.gid.index` (`UCX_IB_GID_INDEX`).
    pub gid_index: Option<u32>,
}

impl RdmaSettings {
    /// Reads and checks the RDMA keys: the device's syntax, the port's range (1-255), the GID
    /// index's range (0-255), and that a device's own port agrees with `ib.port`.
    pub fn from_properties(p: &Properties) -> Result<RdmaSettings, ConfigError> {
        let device = p.text(RDMA_BIND_DEVICE);
        let ib_port = if p.is_set(RDMA_IB_PORT) {
            let n = p.count(RDMA_IB_PORT);
            Some(
                u8::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| p.bad(RDMA_IB_PORT, n.to_string(), "a port 1-255"))?,
            )
        } else {
            None
        };
        let gid_index = if p.is_set(RDMA_GID_INDEX) {
            let n = p.count(RDMA_GID_INDEX);
            Some(
                u32::try_from(n)
                    .ok()
                    .filter(|&n| n < 256)
                    .ok_or_else(|| p.bad(RDMA_GID_INDEX, n.to_string(), "an index 0-255"))?,
            )
        } else {
            None
        };
        if let (Some(d), Some(port)) = (&device, ib_port) {
            with_port(d, Some(port)).map_err(|why| p.bad(RDMA_IB_PORT, port.to_string(), &why))?;
        }
        Ok(RdmaSettings {
            device,
            ib_port,
            gid_index,
        })
    }
}

/// `devices` (`name:port[,...]`) with every port set to `ib_port`; refuses a device whose own
/// port says otherwise.
pub fn with_port(devices: &str, ib_port: Option<u8>) -> Result<String, String> {
    check_rdma_device(devices)?;
    let Some(port) = ib_port else {
        return Ok(devices.to_string());
    };
    devices
        .split(',')
        .map(|d| {
            let (name, own) = d.rsplit_once(':').unwrap_or((d, ""));
            if own == port.to_string() {
                Ok(d.to_string())
            } else {
                Err(format!(
                    "{d} names port {own} but {RDMA_IB_PORT} is {port}; make them agree (or drop one)"
                ))
            }
            .map(|_| format!("{name}:{port}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join(","))
}

/// `UCX_NET_DEVICES` for a side bound to `interface` using RDMA device(s) `rdma` (given, or
/// resolved from the interface with its port from `ib_port` when set): the RDMA devices, then
/// the interface (UCX's TCP connection manager needs it for addresses). `None`: no binding,
/// UCX picks every device. Errors name what is wrong with which value.
pub fn net_devices(
    rdma: Option<&str>,
    ib_port: Option<u8>,
    interface: Option<&str>,
) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    if let Some(r) = rdma.map(str::trim).filter(|r| !r.is_empty()) {
        // A resolved device's port is what sysfs said: ib.port, when set, wins.
        let r = match ib_port {
            Some(port) => {
                check_rdma_device(r)?;
                r.split(',')
                    .map(|d| format!("{}:{port}", d.rsplit_once(':').map_or(d, |x| x.0)))
                    .collect::<Vec<_>>()
                    .join(",")
            }
            None => with_port(r, None)?,
        };
        parts.push(r);
    }
    if let Some(i) = interface.map(str::trim).filter(|i| !i.is_empty()) {
        check_interface_name(i)?;
        parts.push(i.to_string());
    }
    Ok((!parts.is_empty()).then(|| parts.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(text: &str) -> Result<RdmaSettings, String> {
        let p = Properties::parse(text, "test").map_err(|e| e.to_string())?;
        RdmaSettings::from_properties(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn net_devices_list_the_rdma_device_then_the_interface() {
        assert_eq!(
            net_devices(Some("mlx5_0:1"), None, Some("ib0")),
            Ok(Some("mlx5_0:1,ib0".into()))
        );
        assert_eq!(
            net_devices(None, None, Some("eth1")),
            Ok(Some("eth1".into()))
        );
        assert_eq!(net_devices(None, None, None), Ok(None));
    }

    #[test]
    fn ib_port_sets_the_port_of_a_resolved_device() {
        assert_eq!(
            net_devices(Some("mlx5_0:1,mlx5_1:1"), Some(2), Some("ib0")),
            Ok(Some("mlx5_0:2,mlx5_1:2,ib0".into()))
        );
    }

    #[test]
    fn bad_interface_or_device_is_refused_with_the_value() {
        let e = net_devices(None, None, Some("ib0 x")).unwrap_err();
        assert!(e.contains("ib0 x"), "{e}");
        let e = net_devices(Some("mlx5_0"), None, None).unwrap_err();
        assert!(e.contains("mlx5_0:1"), "{e}");
    }

    #[test]
    fn properties_give_port_and_gid_index_and_refuse_out_of_range_or_disagreeing_values() {
        let s = props("rcache.network.rdma.data.ib.port=1\nrcache.network.rdma.data.gid.index=3\nrcache.network.rdma.data.bind.device=mlx5_0:1").unwrap();
        assert_eq!((s.ib_port, s.gid_index), (Some(1), Some(3)));
        let e = props("rcache.network.rdma.data.ib.port=0").unwrap_err();
        assert!(e.contains(RDMA_IB_PORT), "{e}");
        let e = props("rcache.network.rdma.data.gid.index=256").unwrap_err();
        assert!(e.contains(RDMA_GID_INDEX), "{e}");
        let e = props(
            "rcache.network.rdma.data.ib.port=2\nrcache.network.rdma.data.bind.device=mlx5_0:1",
        )
        .unwrap_err();
        assert!(e.contains("agree"), "{e}");
        assert_eq!(props("").unwrap(), RdmaSettings::default());
    }
}
