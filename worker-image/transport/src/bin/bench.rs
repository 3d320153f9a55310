//! `rcache-transport-bench`: the bench tool as a standalone binary (the same code as
//! `rcache-worker bench`), used by the transport's process-level tests and scripts.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rcache-transport-bench",
    about = "rcache transport benchmark (rdmaBenchmark equivalent)"
)]
struct Cli {
    #[command(flatten)]
    args: rcache_transport::bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    rcache_transport::bench::run(Cli::parse().args).await
}

fn tracing_subscriber_init() {}
