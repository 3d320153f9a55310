//! The CSI Node service: `NodePublishVolume` bind-mounts the node's cache mount (or a `subPath`
//! under it) read-only at the pod's target path; `NodeUnpublishVolume` unmounts it, and both are
//! idempotent as the spec requires. Every input from the kubelet is checked first, and a refusal
//! names the field and what would be accepted.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tonic::{Request, Response, Status};

use crate::proto::{
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
    NodeGetInfoResponse, NodePublishVolumeRequest, NodePublishVolumeResponse,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, node::node_server::Node,
};

/// Volume attribute: the node path where the CacheCluster's FUSE pods mount the cache
/// (`spec.fuse.hostMountPath`), set by the operator on the PersistentVolume.
pub const ATTR_HOST_MOUNT_PATH: &str = "hostMountPath";
/// Volume attribute: a directory under the cache to publish instead of its root.
pub const ATTR_SUB_PATH: &str = "subPath";

/// Where this plugin finds things on the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// The kubelet's root directory; target paths must lie under it.
    pub kubelet_dir: PathBuf,
    /// Where the node's `/` is seen in this container (`/host` in the DaemonSet, `/` in tests).
    pub host_root: PathBuf,
    /// The node directories mounted under `host_root` (chart value `csi.cacheMountRoots`): a
    /// cache mount outside them cannot be seen from this container. Empty: all of `/` is.
    pub cache_roots: Vec<PathBuf>,
    /// Refuse to publish unless an rcache FUSE mount is at the host mount path.
    pub require_cache_mount: bool,
}

#[derive(Debug, Clone)]
pub struct NodeService {
    pub config: NodeConfig,
}

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// `<namespace>/<name>` of the CacheCluster (what the operator writes as `volumeHandle`).
pub fn parse_volume_id(id: &str) -> Result<(&str, &str), Status> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !s.starts_with(['-', '.'])
            && !s.ends_with(['-', '.'])
    };
    match id.split_once('/') {
        Some((ns, name)) if ok(ns) && ok(name) => Ok((ns, name)),
        _ => Err(invalid(format!(
            "volume_id {id:?} is not <namespace>/<name> of a CacheCluster (lower-case DNS names); \
             the operator writes it as the PersistentVolume's volumeHandle"
        ))),
    }
}

/// An absolute path without `.`, `..`, empty components or a trailing `/`.
fn is_normal_absolute(p: &str) -> bool {
    p.starts_with('/')
        && (p == "/"
            || (!p.ends_with('/')
                && p[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")))
        && !p.bytes().any(|b| b == 0)
}

/// The target path, which must be absolute, normalized and under the kubelet's directory.
pub fn check_target(field: &str, target: &str, kubelet_dir: &Path) -> Result<PathBuf, Status> {
    if target.is_empty() {
        return Err(invalid(format!(
            "{field} is empty; the kubelet sets it to the pod's volume directory"
        )));
    }
    if !is_normal_absolute(target) {
        return Err(invalid(format!(
            "{field} {target:?} must be an absolute path without '.', '..', '//' or a trailing '/'"
        )));
    }
    let p = PathBuf::from(target);
    if !p.starts_with(kubelet_dir) || p == kubelet_dir {
        return Err(invalid(format!(
            "{field} {target:?} is outside the kubelet directory {}; this plugin only mounts into pods' volume directories",
            kubelet_dir.display()
        )));
    }
    Ok(p)
}

/// The node path to publish: `hostMountPath[/subPath]` from the volume attributes.
pub fn publish_source(ctx: &HashMap<String, String>) -> Result<(PathBuf, PathBuf), Status> {
    let Some(root) = ctx.get(ATTR_HOST_MOUNT_PATH) else {
        return Err(invalid(format!(
            "volume_context has no {ATTR_HOST_MOUNT_PATH:?}; the operator sets it on the PersistentVolume to spec.fuse.hostMountPath"
        )));
    };
    if !is_normal_absolute(root) || root == "/" {
        return Err(invalid(format!(
            "volume_context {ATTR_HOST_MOUNT_PATH}={root:?} must be an absolute, normalized path other than /"
        )));
    }
    let root = PathBuf::from(root);
    let mut source = root.clone();
    if let Some(sub) = ctx.get(ATTR_SUB_PATH).filter(|s| !s.is_empty()) {
        let p = Path::new(sub);
        let escapes = sub.starts_with('/')
            || sub.bytes().any(|b| b == 0)
            || p.components().any(|c| !matches!(c, Component::Normal(_)));
        if escapes {
            return Err(invalid(format!(
                "volume_context {ATTR_SUB_PATH}={sub:?} must be a relative path inside the cache (no '/', '.' or '..' at its start or in it)"
            )));
        }
        source.push(p);
    }
    Ok((root, source))
}

fn in_host(host_root: &Path, p: &Path) -> PathBuf {
    host_root.join(p.strip_prefix("/").unwrap_or(p))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn sys_mount(src: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (s, t) = (cstr(src)?, cstr(target)?);
    // SAFETY: valid NUL-terminated strings that outlive the call; no fs type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_mount_point(p: &Path) -> bool {
    rcache_fuse::mount::mount_entry(p).is_some()
}

impl NodeService {
    pub fn publish(&self, r: &NodePublishVolumeRequest) -> Result<(), Status> {
        let (ns, name) = parse_volume_id(&r.volume_id)?;
        let target = check_target("target_path", &r.target_path, &self.config.kubelet_dir)?;
        let (root, source) = publish_source(&r.volume_context)?;
        if !self.config.cache_roots.is_empty()
            && !self.config.cache_roots.iter().any(|r| root.starts_with(r))
        {
            let roots: Vec<String> = self
                .config
                .cache_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            return Err(Status::failed_precondition(format!(
                "the cache of CacheCluster {ns}/{name} is mounted at {} (spec.fuse.hostMountPath), outside the node paths this plugin sees ({}); add it to the chart value csi.cacheMountRoots",
                root.display(),
                roots.join(", ")
            )));
        }
        let host_root = in_host(&self.config.host_root, &root);
        if self.config.require_cache_mount
            && rcache_fuse::mount::mounted_fs_type(&host_root).as_deref() != Some("fuse.rcache")
        {
            return Err(Status::failed_precondition(format!(
                "the cache of CacheCluster {ns}/{name} is not mounted on node {} at {}; is its FUSE pod running on this node (spec.fuse.nodeSelector)?",
                self.config.node_id,
                root.display()
            )));
        }
        if is_mount_point(&target) {
            return Ok(()); // published already
        }
        let src = in_host(&self.config.host_root, &source);
        match std::fs::metadata(&src) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "{ATTR_SUB_PATH} {} is not a directory in the cache",
                    source.display()
                )));
            }
            Err(e) => {
                return Err(Status::not_found(format!(
                    "cannot publish {}: {e}",
                    source.display()
                )));
            }
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", target.display())))?;
        sys_mount(&src, &target, libc::MS_BIND | libc::MS_REC).map_err(|e| {
            Status::internal(format!(
                "cannot bind-mount {} at {}: {e}",
                src.display(),
                target.display()
            ))
        })?;
        if let Err(e) = sys_mount(
            Path::new("none"),
            &target,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        ) {
            let _ = unmount(&target);
            return Err(Status::internal(format!(
                "cannot make {} read-only: {e}",
                target.display()
            )));
        }
        tracing::info!(volume = %r.volume_id, source = %source.display(), target = %target.display(), "published read-only");
        Ok(())
    }

    pub fn unpublish(&self, r: &NodeUnpublishVolumeRequest) -> Result<(), Status> {
        parse_volume_id(&r.volume_id)?;
        let target = check_target("target_path", &r.target_path, &self.config.kubelet_dir)?;
        while is_mount_point(&target) {
            unmount(&target).map_err(|e| {
                Status::internal(format!("cannot unmount {}: {e}", target.display()))
            })?;
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot remove {}: {e}",
                    target.display()
                )));
            }
        }
        tracing::info!(volume = %r.volume_id, target = %target.display(), "unpublished");
        Ok(())
    }
}

/// Unmounts `p`, lazily when busy.
fn unmount(p: &Path) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        return Err(io::Error::last_os_error());
    }
    Err(e)
}

impl NodeService {
    /// Runs `f` (mount(2), umount(2), stat of the node's paths: blocking) off the runtime.
    async fn blocking(
        &self,
        f: impl FnOnce(&NodeService) -> Result<(), Status> + Send + 'static,
    ) -> Result<(), Status> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        self.blocking(move |s| s.publish(&r)).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        self.blocking(move |s| s.unpublish(&r)).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {}))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        svc: NodeService,
        cache: PathBuf,
        kubelet: PathBuf,
    }

    fn fixture(require_cache_mount: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("mnt/rcache");
        std::fs::create_dir_all(cache.join("datasets/a")).unwrap();
        std::fs::write(cache.join("datasets/a/x.bin"), b"bytes").unwrap();
        let kubelet = dir.path().join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let svc = NodeService {
            config: NodeConfig {
                node_id: "node-1".into(),
                kubelet_dir: kubelet.clone(),
                host_root: PathBuf::from("/"),
                cache_roots: Vec::new(),
                require_cache_mount,
            },
        };
        Fixture {
            _dir: dir,
            svc,
            cache,
            kubelet,
        }
    }

    fn publish_req(f: &Fixture, target: &str, sub: Option<&str>) -> NodePublishVolumeRequest {
        let mut ctx = HashMap::from([(
            ATTR_HOST_MOUNT_PATH.to_string(),
            f.cache.to_string_lossy().into_owned(),
        )]);
        if let Some(s) = sub {
            ctx.insert(ATTR_SUB_PATH.into(), s.into());
        }
        NodePublishVolumeRequest {
            volume_id: "team-a/demo".into(),
            target_path: target.into(),
            readonly: true,
            volume_context: ctx,
            ..Default::default()
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn volume_ids_are_namespace_slash_name() {
        assert_eq!(parse_volume_id("team-a/demo").unwrap(), ("team-a", "demo"));
        for bad in ["", "demo", "a/b/c", "Team/x", "a/", "/a", "../x", "a/-x"] {
            let e = parse_volume_id(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("volume_id"), "{}", e.message());
        }
    }

    #[test]
    fn bad_target_paths_are_refused_naming_the_field() {
        let f = fixture(false);
        let inside = f.kubelet.join("pods/u/volumes/v/mount");
        let inside = inside.to_str().unwrap();
        for (target, why) in [
            ("", "is empty"),
            ("relative/mount", "absolute"),
            (
                &format!("{inside}/../../../../etc") as &str,
                "absolute path without",
            ),
            (&format!("{inside}/") as &str, "trailing"),
            ("/etc/cron.d", "outside the kubelet directory"),
            (f.kubelet.to_str().unwrap(), "outside the kubelet directory"),
        ] {
            let e = f.svc.publish(&publish_req(&f, target, None)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{target}");
            assert!(
                e.message().contains("target_path") && e.message().contains(why),
                "{target}: {}",
                e.message()
            );
            let e = f
                .svc
                .unpublish(&NodeUnpublishVolumeRequest {
                    volume_id: "team-a/demo".into(),
                    target_path: target.into(),
                })
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{target}");
        }
    }

    #[test]
    fn a_sub_path_that_escapes_the_cache_is_refused() {
        let f = fixture(false);
        let target = f.kubelet.join("pods/u/mount");
        for sub in ["../x", "/etc", "a/../../b", "./a"] {
            let e = f
                .svc
                .publish(&publish_req(&f, target.to_str().unwrap(), Some(sub)))
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{sub}");
            assert!(e.message().contains("subPath"), "{}", e.message());
        }
        assert!(!target.exists());
    }

    #[test]
    fn the_host_mount_path_attribute_is_required_and_absolute() {
        let f = fixture(false);
        let target = f.kubelet.join("pods/u/mount");
        let mut r = publish_req(&f, target.to_str().unwrap(), None);
        r.volume_context.clear();
        let e = f.svc.publish(&r).unwrap_err();
        assert!(e.message().contains("hostMountPath"), "{}", e.message());
        r.volume_context
            .insert(ATTR_HOST_MOUNT_PATH.into(), "mnt/rcache".into());
        let e = f.svc.publish(&r).unwrap_err();
        assert!(e.message().contains("absolute"), "{}", e.message());
    }

    #[test]
    fn without_the_cache_mounted_on_the_node_publish_says_which_cluster() {
        let f = fixture(true);
        let target = f.kubelet.join("pods/u/mount");
        let e = f
            .svc
            .publish(&publish_req(&f, target.to_str().unwrap(), None))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("team-a/demo") && e.message().contains("node-1"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_cache_mount_outside_the_plugins_host_paths_names_the_chart_value() {
        let mut f = fixture(false);
        f.svc.config.cache_roots = vec![PathBuf::from("/mnt/elsewhere")];
        let target = f.kubelet.join("pods/u/mount");
        let e = f
            .svc
            .publish(&publish_req(&f, target.to_str().unwrap(), None))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("csi.cacheMountRoots")
                && e.message().contains("/mnt/elsewhere")
                && e.message().contains("team-a/demo"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn publish_binds_read_only_and_both_calls_are_idempotent() {
        if !is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and this test cannot run: bind mounts need root"
            );
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let f = fixture(false);
        let target = f.kubelet.join("pods/u/volumes/kubernetes.io~csi/pv/mount");
        let t = target.to_str().unwrap();
        let r = publish_req(&f, t, Some("datasets"));
        f.svc.publish(&r).unwrap();
        f.svc.publish(&r).unwrap(); // again: already published
        assert_eq!(std::fs::read(target.join("a/x.bin")).unwrap(), b"bytes");
        let e = std::fs::write(target.join("new"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let u = NodeUnpublishVolumeRequest {
            volume_id: r.volume_id.clone(),
            target_path: t.into(),
        };
        f.svc.unpublish(&u).unwrap();
        assert!(!target.exists(), "the target directory is removed");
        f.svc.unpublish(&u).unwrap(); // again: nothing there
        assert!(
            f.cache.join("datasets/a/x.bin").exists(),
            "the source is untouched"
        );
    }

    #[test]
    fn a_missing_sub_path_is_not_found() {
        let f = fixture(false);
        let target = f.kubelet.join("pods/u/mount");
        let e = f
            .svc
            .publish(&publish_req(&f, target.to_str().unwrap(), Some("nope")))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    }
}
