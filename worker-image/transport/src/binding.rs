//! Binding: which address a data listener binds to and which RDMA device UCX uses.
//! Owns the resolution of a bind device (interface name such as `ib0`) to its IPv4 address
//! (getifaddrs) and of an interface to its RDMA device `name:port` through sysfs
//! (`/sys/class/net/<if>/device/infiniband/`, or the RoCE GID tables naming the interface).
//! The sysfs root is a parameter so unit tests can use a fake tree: RDMA hardware cannot exist
//! on the build machines, so those tests are a mock of it.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    #[error(
        "bind device {interface:?} does not exist in this network namespace (check the pod's network attachment or rcache.worker.data.bind.device)"
    )]
    NoSuchInterface { interface: String },
    #[error(
        "bind device {interface:?} has no IPv4 address (assign one, e.g. through the NetworkAttachmentDefinition's IPAM)"
    )]
    NoIpv4 { interface: String },
    #[error("cannot list interfaces: {0}")]
    Getifaddrs(String),
    #[error(
        "no RDMA device found for interface {interface:?}: {detail}; set rcache.network.rdma.data.bind.device (e.g. mlx5_0:1) or attach an RDMA-capable interface"
    )]
    NoRdmaDevice { interface: String, detail: String },
    #[error(
        "invalid RDMA device {value:?} in rcache.network.rdma.data.bind.device: expected name:port such as mlx5_0:1"
    )]
    BadRdmaDevice { value: String },
    #[error("invalid data-plane binding: {reason}")]
    BadBinding { reason: String },
}

/// The IPv4 address of interface `name` (the first one when there are several).
pub fn interface_ipv4(name: &str) -> Result<Ipv4Addr, BindError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(BindError::Getifaddrs(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let mut seen = false;
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: NUL-terminated name owned by the list.
        let n = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if n.to_bytes() != name.as_bytes() {
            continue;
        }
        seen = true;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr; the family says which struct it is.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    match found {
        Some(a) => Ok(a),
        None if seen || Path::new("/sys/class/net").join(name).exists() => Err(BindError::NoIpv4 {
            interface: name.into(),
        }),
        None => Err(BindError::NoSuchInterface {
            interface: name.into(),
        }),
    }
}

/// The interface that holds IPv4 address `ip` (`lo` for 127.0.0.1); `None` when none does.
pub fn interface_of(ip: Ipv4Addr) -> Option<String> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr; the family says which struct it is.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == ip {
            // SAFETY: NUL-terminated name owned by the list.
            let n = unsafe { CStr::from_ptr(ifa.ifa_name) };
            found = Some(n.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// The listen address: the bind device's address when one is set, else `bind_host`.
pub fn listen_ip(bind_device: Option<&str>, bind_host: IpAddr) -> Result<IpAddr, BindError> {
    match bind_device.filter(|d| !d.is_empty()) {
        Some(dev) => Ok(IpAddr::V4(interface_ipv4(dev)?)),
        None => Ok(bind_host),
    }
}

fn check_device_format(v: &str) -> Result<(), BindError> {
    rcache_contract::values::check_rdma_device(v)
        .map_err(|_| BindError::BadRdmaDevice { value: v.into() })
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn list_dir(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Ports of `dev` whose RoCE GID table names `interface`.
fn ports_naming(sysfs: &Path, dev: &str, interface: &str) -> Vec<String> {
    let ports = sysfs.join("class/infiniband").join(dev).join("ports");
    list_dir(&ports)
        .into_iter()
        .filter(|port| {
            let ndevs = ports.join(port).join("gid_attrs/ndevs");
            list_dir(&ndevs)
                .iter()
                .any(|i| read_trim(&ndevs.join(i)).as_deref() == Some(interface))
        })
        .collect()
}

/// Resolves the RDMA device (`mlx5_0:1`) behind `interface` from a sysfs tree rooted at
/// `sysfs` (normally `/sys`): the device under `/sys/class/net/<if>/device/infiniband/` (the
/// port from the GID tables, the only port, or `dev_port` + 1), else any device whose RoCE GID
/// table names the interface (SR-IOV VFs, macvlan/ipvlan over RoCE).
pub fn rdma_device_for_interface(interface: &str, sysfs: &Path) -> Result<String, BindError> {
    let net = sysfs.join("class/net").join(interface);
    if !net.exists() {
        return Err(BindError::NoSuchInterface {
            interface: interface.into(),
        });
    }
    let ib_dir = net.join("device/infiniband");
    if let Some(dev) = list_dir(&ib_dir).into_iter().next() {
        let by_gid = ports_naming(sysfs, &dev, interface);
        if let Some(port) = by_gid.first() {
            return Ok(format!("{dev}:{port}"));
        }
        let all_ports = list_dir(&sysfs.join("class/infiniband").join(&dev).join("ports"));
        let port = if all_ports.len() == 1 {
            all_ports[0].clone()
        } else {
            let dev_port = read_trim(&net.join("dev_port"))
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            (dev_port + 1).to_string()
        };
        return Ok(format!("{dev}:{port}"));
    }
    for dev in list_dir(&sysfs.join("class/infiniband")) {
        if let Some(port) = ports_naming(sysfs, &dev, interface).first() {
            return Ok(format!("{dev}:{port}"));
        }
    }
    let detail = format!(
        "{} does not exist and no GID table under {} names the interface",
        ib_dir.display(),
        sysfs
            .join("class/infiniband/*/ports/*/gid_attrs/ndevs")
            .display()
    );
    Err(BindError::NoRdmaDevice {
        interface: interface.into(),
        detail,
    })
}

/// The RDMA device UCX should use: the property when set (validated), else resolved from the
/// bind interface, else `None` (UCX picks every device it finds).
pub fn rdma_device(
    property: Option<&str>,
    interface: Option<&str>,
    sysfs: &Path,
) -> Result<Option<String>, BindError> {
    if let Some(p) = property.map(str::trim).filter(|p| !p.is_empty()) {
        check_device_format(p)?;
        return Ok(Some(p.to_string()));
    }
    match interface.filter(|i| !i.is_empty()) {
        Some(i) => rdma_device_for_interface(i, sysfs).map(Some),
        None => Ok(None),
    }
}

/// `UCX_NET_DEVICES` for a binding: the RDMA device(s) plus the interface, which UCX's TCP
/// connection manager needs for the listener's address.
pub fn ucx_net_devices(rdma: Option<&str>, interface: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = rdma
        .into_iter()
        .chain(interface)
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// `UCX_NET_DEVICES` for one side (worker or client) bound to `interface`: the RDMA device
/// from the property, else resolved from the interface through sysfs (an interface without
/// one, a veth or Ethernet NIC, gives just the interface: UCX runs tcp on it), with
/// `rcache.network.rdma.data.ib.port` applied; validated by the contract's one rule
/// (`rcache_contract::binding::net_devices`). The second value is the resolution error when
/// no RDMA device was found, for the caller to report (or refuse, when strict).
pub fn ucx_binding(
    rdma_property: Option<&str>,
    ib_port: Option<u8>,
    interface: Option<&str>,
    sysfs: &Path,
) -> Result<(Option<String>, Option<BindError>), BindError> {
    let (rdma, missing) = match rdma_device(rdma_property, interface, sysfs) {
        Ok(d) => (d, None),
        Err(e @ BindError::NoRdmaDevice { .. }) => (None, Some(e)),
        Err(e) => return Err(e),
    };
    let devices = rcache_contract::binding::net_devices(rdma.as_deref(), ib_port, interface)
        .map_err(|reason| BindError::BadBinding { reason })?;
    Ok((devices, missing))
}

/// The real sysfs root.
pub fn sysfs_root() -> PathBuf {
    PathBuf::from("/sys")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake sysfs tree (mock of RDMA hardware, which cannot exist on build machines).
    struct FakeSys(tempfile::TempDir);

    impl FakeSys {
        fn new() -> FakeSys {
            FakeSys(tempfile::tempdir().unwrap())
        }
        fn root(&self) -> &Path {
            self.0.path()
        }
        fn iface(&self, name: &str) -> PathBuf {
            let p = self.root().join("class/net").join(name);
            fs::create_dir_all(&p).unwrap();
            p
        }
        fn ib_under_iface(&self, iface: &str, dev: &str) {
            fs::create_dir_all(self.iface(iface).join("device/infiniband").join(dev)).unwrap();
        }
        fn port(&self, dev: &str, port: u32, gid_ndevs: &[&str]) {
            let p = self
                .root()
                .join("class/infiniband")
                .join(dev)
                .join("ports")
                .join(port.to_string());
            let nd = p.join("gid_attrs/ndevs");
            fs::create_dir_all(&nd).unwrap();
            for (i, n) in gid_ndevs.iter().enumerate() {
                fs::write(nd.join(i.to_string()), format!("{n}\n")).unwrap();
            }
        }
    }

    #[test]
    fn ipoib_interface_resolves_to_its_hca_and_only_port() {
        let s = FakeSys::new();
        s.ib_under_iface("ib0", "mlx5_0");
        s.port("mlx5_0", 1, &[]);
        assert_eq!(
            rdma_device_for_interface("ib0", s.root()).unwrap(),
            "mlx5_0:1"
        );
    }

    #[test]
    fn dual_port_hca_uses_dev_port() {
        let s = FakeSys::new();
        s.ib_under_iface("ib1", "mlx5_0");
        s.port("mlx5_0", 1, &[]);
        s.port("mlx5_0", 2, &[]);
        fs::write(s.iface("ib1").join("dev_port"), "1\n").unwrap();
        assert_eq!(
            rdma_device_for_interface("ib1", s.root()).unwrap(),
            "mlx5_0:2"
        );
    }

    #[test]
    fn roce_vf_without_device_link_is_found_through_gid_tables() {
        let s = FakeSys::new();
        s.iface("net1");
        s.port("mlx5_3", 1, &["eth0", "net1"]);
        s.port("mlx5_4", 1, &["other"]);
        assert_eq!(
            rdma_device_for_interface("net1", s.root()).unwrap(),
            "mlx5_3:1"
        );
    }

    #[test]
    fn interface_without_rdma_device_names_the_interface() {
        let s = FakeSys::new();
        s.iface("eth0");
        let e = rdma_device_for_interface("eth0", s.root()).unwrap_err();
        assert!(matches!(&e, BindError::NoRdmaDevice { interface, .. } if interface == "eth0"));
        let msg = e.to_string();
        assert!(
            msg.contains("\"eth0\"") && msg.contains("rcache.network.rdma.data.bind.device"),
            "{msg}"
        );
    }

    #[test]
    fn missing_interface_is_its_own_error() {
        let s = FakeSys::new();
        assert_eq!(
            rdma_device_for_interface("ib9", s.root()).unwrap_err(),
            BindError::NoSuchInterface {
                interface: "ib9".into()
            }
        );
    }

    #[test]
    fn property_wins_and_is_validated() {
        let s = FakeSys::new();
        assert_eq!(
            rdma_device(Some("mlx5_1:1"), Some("ib0"), s.root())
                .unwrap()
                .as_deref(),
            Some("mlx5_1:1")
        );
        assert_eq!(
            rdma_device(Some("mlx5_0:1,mlx5_1:1"), None, s.root())
                .unwrap()
                .as_deref(),
            Some("mlx5_0:1,mlx5_1:1")
        );
        assert!(matches!(
            rdma_device(Some("mlx5_0"), None, s.root()),
            Err(BindError::BadRdmaDevice { .. })
        ));
        assert_eq!(rdma_device(None, None, s.root()).unwrap(), None);
    }

    #[test]
    fn loopback_has_127_0_0_1_and_unknown_interfaces_are_named() {
        assert_eq!(interface_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            listen_ip(None, IpAddr::V4(Ipv4Addr::UNSPECIFIED)).unwrap(),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        let e = interface_ipv4("rcache-none0").unwrap_err();
        assert!(e.to_string().contains("rcache-none0"), "{e}");
    }

    #[test]
    fn ucx_devices_join_rdma_device_and_interface() {
        assert_eq!(
            ucx_net_devices(Some("mlx5_0:1"), Some("ib0")).as_deref(),
            Some("mlx5_0:1,ib0")
        );
        assert_eq!(ucx_net_devices(None, None), None);
    }
}
