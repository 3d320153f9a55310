//! `rcache-fuse`: the FUSE DaemonSet's process. `rcache-fuse mount --config FILE` mounts the
//! cluster read-only at `rcache.fuse.mount.point` and serves until SIGTERM/SIGINT, then unmounts.
//! A fatal error goes to stderr and to the termination message (`rcache_worker::termination`).
//! `/metrics`, `/healthz` and `/readyz` are served on `rcache.fuse.web.port` from before the
//! mount (not ready) until the process ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rcache_fuse::client::ClusterSource;
use rcache_fuse::{FuseMetrics, FuseOptions, LocalDirSource, MountedFs};

#[derive(Parser)]
#[command(
    name = "rcache-fuse",
    version,
    about = "Mount an rcache cluster read-only through FUSE"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount and serve until SIGTERM or SIGINT, then unmount.
    Mount {
        /// The properties file the operator renders.
        #[arg(long, default_value = "/etc/rcache/rcache.properties")]
        config: PathBuf,
        /// Overrides rcache.fuse.mount.point.
        #[arg(long)]
        mount_point: Option<PathBuf>,
        /// Development and tests: serve this local directory instead of the cluster's workers.
        #[arg(long, hide = true)]
        local_dir: Option<PathBuf>,
        /// FUSE request threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Development and tests: serve the web endpoints on this address (port 0 picks a free
        /// one, logged) instead of 0.0.0.0:rcache.fuse.web.port.
        #[arg(long, hide = true)]
        web_listen: Option<SocketAddr>,
        /// The FUSE keeper's socket (the CSI node plugin serves one): the connection is handed
        /// to it after mounting and taken back on restart, so open files survive a restart of
        /// this process (SIGTERM and SIGKILL alike: it never unmounts then). Unset: the process
        /// unmounts on SIGTERM, as before.
        #[arg(long, env = "RCACHE_FUSE_KEEPER_SOCKET")]
        keeper_socket: Option<PathBuf>,
        /// The key the keeper keeps this connection under (the operator sets
        /// `<namespace>/<cluster>`); default: the mount point.
        #[arg(long, env = "RCACHE_FUSE_TAKEOVER_ID")]
        takeover_id: Option<String>,
    },
    /// Hold FUSE connections for clients that restart (what the CSI node plugin also does).
    Keeper {
        #[arg(long, default_value = rcache_fuse::takeover::DEFAULT_KEEPER_SOCKET)]
        socket: PathBuf,
        /// Close a connection no client came back to for this many seconds (its readers then
        /// see ENOTCONN).
        #[arg(long, default_value_t = 600)]
        orphan_grace_secs: u64,
        /// Detach dead rcache mounts under this directory after closing a connection
        /// (repeatable).
        #[arg(long = "sweep-root")]
        sweep_roots: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // What `main() -> anyhow::Result` printed before, plus the one-line form as the
            // Kubernetes termination message (shown in the CacheCluster's FuseReady condition).
            eprintln!("Error: {e:?}");
            rcache_worker::termination::write(&format!("{e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Mount {
            config,
            mount_point,
            local_dir,
            threads,
            web_listen,
            keeper_socket,
            takeover_id,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.clamp(2, 8))
                .thread_name("rcache-fuse-io")
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            let props = rcache_worker::config::Properties::load(&config)?;
            let mut opts = FuseOptions::from_properties(&props)?;
            if let Some(mp) = mount_point {
                opts.mount_point = mp;
            }
            opts.threads = threads;
            let keeper = rcache_fuse::takeover::KeeperOpts::resolve(
                keeper_socket,
                takeover_id,
                &opts.mount_point,
            );
            let metrics = FuseMetrics::new();
            let web = web_listen.or_else(|| {
                opts.web_port
                    .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
            });
            match web {
                Some(addr) => {
                    let bound = rt
                        .block_on(rcache_fuse::metrics::serve_web(metrics.clone(), addr))
                        .with_context(|| {
                            format!(
                                "cannot serve /metrics on {addr} ({}): set it to a free port, or 0 to disable",
                                rcache_worker::config::FUSE_WEB_PORT
                            )
                        })?;
                    tracing::info!("web server listening on {bound}");
                }
                None => tracing::info!(
                    "web server disabled ({} = 0)",
                    rcache_worker::config::FUSE_WEB_PORT
                ),
            }
            let handle = rt.handle().clone();
            let mut mounted = match local_dir {
                Some(dir) => rcache_fuse::mount::mount_with_keeper(
                    LocalDirSource::new(dir),
                    &opts,
                    handle,
                    metrics.clone(),
                    keeper.as_ref(),
                )?,
                None => {
                    let source = rt.block_on(ClusterSource::from_properties(&props))?;
                    rcache_fuse::mount::mount_with_keeper(
                        source,
                        &opts,
                        handle,
                        metrics.clone(),
                        keeper.as_ref(),
                    )?
                }
            };
            tracing::info!(mount_point = %opts.mount_point.display(), "mounted");
            let signalled = serve_until_signal(&rt, &mounted)?;
            if signalled && mounted.is_kept() {
                mounted.leave_to_keeper();
            }
            mounted.unmount()?;
            tracing::info!("unmounted");
            Ok(())
        }
        Cmd::Keeper {
            socket,
            orphan_grace_secs,
            sweep_roots,
        } => rcache_fuse::takeover::Keeper::new(Duration::from_secs(orphan_grace_secs))
            .with_dead_mount_sweep(sweep_roots)
            .serve(&socket),
    }
}

/// Waits for SIGTERM/SIGINT (true), or for the session to end on its own (false: unmounted
/// from outside).
fn serve_until_signal(rt: &tokio::runtime::Runtime, mounted: &MountedFs) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(true); }
                _ = int.recv() => { tracing::info!("SIGINT"); return Ok(true); }
                _ = tick.tick() => if !mounted.is_alive() {
                    tracing::warn!("the FUSE session ended (unmounted from outside?)");
                    return Ok(false);
                },
            }
        }
    })
}
