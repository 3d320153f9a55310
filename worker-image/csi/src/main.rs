//! `rcache-csi`: the CSI node plugin DaemonSet's process. Serves the CSI Identity and Node
//! services on `--endpoint`, registers with the kubelet through `--registration-socket`, and
//! holds FUSE connections for restarting FUSE pods on `--keeper-socket`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rcache_csi::node::{NodeConfig, NodeService};
use rcache_csi::proto::identity::identity_server::IdentityServer;
use rcache_csi::proto::node::node_server::NodeServer;
use rcache_csi::proto::registration::registration_server::RegistrationServer;
use rcache_csi::registration::RegistrationService;
use rcache_csi::{DRIVER_NAME, IdentityService};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser)]
#[command(
    name = "rcache-csi",
    version,
    about = "rcache CSI node plugin and FUSE keeper"
)]
struct Cli {
    /// The CSI socket (a host path, also the path inside the container).
    #[arg(
        long,
        default_value = "/var/lib/kubelet/plugins/csi.rcache.io/csi.sock"
    )]
    endpoint: PathBuf,
    /// The kubelet registration socket; empty disables registration.
    #[arg(
        long,
        default_value = "/var/lib/kubelet/plugins_registry/csi.rcache.io-reg.sock"
    )]
    registration_socket: PathBuf,
    /// The FUSE keeper socket the FUSE pods hand their connections to; empty disables it.
    #[arg(long, default_value = rcache_fuse::takeover::DEFAULT_KEEPER_SOCKET)]
    keeper_socket: PathBuf,
    /// A connection no FUSE client came back to for this many seconds is closed and its mount
    /// detached (the CacheCluster was deleted, or its FUSE pod cannot start).
    #[arg(long, default_value_t = 600)]
    keeper_orphan_grace_secs: u64,
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_id: String,
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// Where the node's paths are mounted in this container (HostToContainer): a node path P
    /// is seen at <host-root>/P.
    #[arg(long, default_value = "/host")]
    host_root: PathBuf,
    /// A node directory mounted under --host-root (repeatable; chart value csi.cacheMountRoots).
    /// Cache mounts must lie under one; none given: the whole node / is mounted there.
    #[arg(long = "cache-mount-root")]
    cache_mount_roots: Vec<PathBuf>,
}

fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    if !cli.keeper_socket.as_os_str().is_empty() {
        let keeper =
            rcache_fuse::takeover::Keeper::new(Duration::from_secs(cli.keeper_orphan_grace_secs))
                .with_dead_mount_sweep(
                    cli.cache_mount_roots
                        .iter()
                        .map(|r| cli.host_root.join(r.strip_prefix("/").unwrap_or(r)))
                        .collect(),
                );
        let socket = cli.keeper_socket.clone();
        std::thread::Builder::new()
            .name("fuse-keeper".into())
            .spawn(move || {
                if let Err(e) = keeper.serve(&socket) {
                    tracing::error!(error = %format!("{e:#}"), "the FUSE keeper stopped; FUSE pod restarts will not keep open files");
                }
            })?;
    }
    let node = NodeService {
        config: NodeConfig {
            node_id: cli.node_id.clone(),
            kubelet_dir: cli.kubelet_dir.clone(),
            host_root: cli.host_root.clone(),
            cache_roots: cli.cache_mount_roots.clone(),
            require_cache_mount: true,
        },
    };
    let csi = listen(&cli.endpoint)?;
    tracing::info!(driver = DRIVER_NAME, endpoint = %cli.endpoint.display(), node = %cli.node_id, "CSI node plugin listening");
    let csi_server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService))
        .add_service(NodeServer::new(node))
        .serve_with_incoming(UnixListenerStream::new(csi));
    if cli.registration_socket.as_os_str().is_empty() {
        csi_server.await.context("CSI server")?;
        return Ok(());
    }
    let reg = listen(&cli.registration_socket)?;
    tracing::info!(socket = %cli.registration_socket.display(), "kubelet registration socket");
    let reg_server = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(RegistrationService {
            csi_endpoint: cli.endpoint.to_string_lossy().into_owned(),
        }))
        .serve_with_incoming(UnixListenerStream::new(reg));
    tokio::select! {
        r = csi_server => r.context("CSI server")?,
        r = reg_server => r.context("registration server")?,
    }
    Ok(())
}
