//! `rcache-worker`: `serve` (the cache worker), `bench` (the transport benchmark), `--version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use rcache_worker::config::{Properties, WorkerConfig};
use rcache_worker::server::{ServeOptions, serve};

#[derive(Parser)]
#[command(
    name = "rcache-worker",
    version,
    about = "rcache cache worker and data-plane tools"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RCACHE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve cached pages of the under-storage to clients.
    Serve {
        /// The properties file the operator renders.
        #[arg(long, default_value = "/etc/rcache/rcache.properties")]
        config: PathBuf,
        /// Write the bound ports as JSON to this file once listening (for tests using port 0).
        #[arg(long)]
        ports_file: Option<PathBuf>,
    },
    /// Transport benchmark (Alluxio rdmaBenchmark equivalent).
    Bench(rcache_transport::bench::BenchArgs),
    /// Read a file through the client library and print ops/s, Gbps, latency percentiles.
    ReadBench(rcache_worker::readbench::ReadBenchArgs),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    init_logs(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcache-worker: cannot start the runtime: {e}");
            rcache_worker::termination::write(&format!("cannot start the runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve { config, ports_file } => {
                let props = Properties::load(&config)?;
                let cfg = WorkerConfig::from_properties(&props)?;
                // Warm-up jobs reach the other workers through the membership file; loads
                // carry no data back, so no receive pool.
                let cluster_client = rcache_worker::client::ClientConfig::from_properties(&props)
                    .ok()
                    .map(|c| rcache_worker::client::ClientConfig {
                        receive_pool: None,
                        ..c
                    });
                serve(
                    cfg,
                    ServeOptions {
                        ports_file,
                        cluster_client,
                    },
                )
                .await
            }
            Cmd::Bench(args) => rcache_transport::bench::run(args).await,
            Cmd::ReadBench(args) => rcache_worker::readbench::run(args).await,
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if json_logs {
                tracing::error!("{e:#}");
            } else {
                eprintln!("rcache-worker: {e:#}");
            }
            rcache_worker::termination::write(&format!("{e:#}"));
            std::process::ExitCode::from(2)
        }
    }
}
