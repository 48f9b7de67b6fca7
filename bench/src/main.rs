//! `ckpt-bench`: the end-to-end comparison harness. The criterion
//! micro-benchmarks live in `benches/`; this binary answers the question
//! they cannot: does a checkpoint reach the speed of the disk, as `dd`
//! measures it, on this machine, when written through the store (`e2e`) or
//! as plain files through the `/ckpt` mount (`fuse`)?

mod capi;
mod criu;
mod drain;
mod e2e;
mod fuse;
mod fuse_transport;
mod host;
mod machine;
mod mounts;
#[cfg(feature = "rdma")]
mod rdma;
mod report;
mod s3;
mod stats;

use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Benchmarks for ckptfs that need a real disk.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Capi(capi::Args),
    Criu(criu::Args),
    Drain(drain::Args),
    E2e(e2e::Args),
    Fuse(fuse::Args),
    FuseTransport(fuse_transport::Args),
    S3(s3::Args),
    /// The DR transport over RDMA verbs (needs `--features rdma` and a
    /// verbs device: run it in the soft-RoCE guest).
    #[cfg(feature = "rdma")]
    Rdma(rdma::Args),
}

fn main() -> anyhow::Result<()> {
    // The engine says through tracing which path it took and how many bytes
    // went direct; `RUST_LOG=libckpt=debug` shows it.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Capi(args) => capi::run(&args),
        Command::Criu(args) => criu::run(&args),
        Command::Drain(args) => drain::run(&args),
        Command::E2e(args) => e2e::run(&args),
        Command::Fuse(args) => fuse::run(&args),
        Command::FuseTransport(args) => fuse_transport::run(&args),
        Command::S3(args) => s3::run(&args),
        #[cfg(feature = "rdma")]
        Command::Rdma(args) => rdma::run(&args),
    }
}

/// Shared by the flags that take a size: `4GiB`, `1MiB`, `65536`.
fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>().map(|b| b.as_u64())
}

/// Default bench directory: on the node's own disk, not tmpfs.
fn default_dir() -> PathBuf {
    PathBuf::from("/var/tmp/ckpt-bench")
}
