//! What `ckptfs-dump` and `ckptfs-restore` share: configuration flags,
//! CRIU's passthrough flags, loading, and exit statuses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use libckpt::config::{Config, Overrides};
use libckpt::criu::{Criu, CriuError, Passthrough};
use libckpt::io::IoEngine;
use libckpt::store::Store;

/// The exit statuses of both commands, for `--help`.
pub const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  error (CRIU missing or failing, a full disk, configuration, I/O)
  2  usage error
  3  not found (no such process, job or set)
  4  verification failed (a corrupt or damaged image in a set)";

/// Where the configuration and the cache come from.
#[derive(Debug, Args)]
pub struct Common {
    /// Configuration file (TOML) [default: $CKPTFS_CONFIG, else
    /// /etc/ckptfs.toml if it exists].
    #[arg(long, env = "CKPTFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Cache directory (tier 0) [config: cache; default /var/tmp/ckptfs].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// The criu executable, and no other [config: criu.path; default: CRIU
    /// >= 4 on the PATH, else /opt/ckptfs/criu/bin/criu].
    #[arg(long, value_name = "FILE")]
    pub criu: Option<PathBuf>,

    /// Complete sets kept per job in the cache after each commit; 0 keeps
    /// all. A set a kept incremental dump needs is always kept
    /// [config: store.keep; default 3, or 2 with a lower tier].
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,

    /// Parallel-filesystem tier directory [config: pfs.dir].
    #[arg(long, value_name = "DIR")]
    pub pfs: Option<PathBuf>,

    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// CRIU options passed through as they are.
#[derive(Debug, Args)]
pub struct CriuFlags {
    /// criu --shell-job: the tree was started from a shell and shares its
    /// session and terminal.
    #[arg(long)]
    pub shell_job: bool,
    /// criu --tcp-established: checkpoint established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// criu --ext-unix-sk: allow unix sockets connected outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// criu --file-locks: checkpoint file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Any other criu argument, passed as is (repeatable), e.g.
    /// --criu-arg=--link-remap.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub criu_arg: Vec<String>,
}

impl CriuFlags {
    pub fn passthrough(&self) -> Passthrough {
        Passthrough {
            shell_job: self.shell_job,
            tcp_established: self.tcp_established,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: self.file_locks,
            extra: self.criu_arg.clone(),
        }
    }
}

/// The configuration (file, then flags), the store and the criu to use.
pub fn load(c: &Common) -> Result<(Config, Store, Criu)> {
    init_logging(c.verbose);
    let (config, _) = Config::discover(c.config.as_deref())?;
    let config = config.apply(&Overrides {
        cache: c.cache.clone(),
        criu: c.criu.clone(),
        pfs: c.pfs.clone(),
        keep: c.keep,
        // CRIU writes and reads its images through the page cache: the
        // commit's checksums read them back from there (not from the disk
        // with O_DIRECT), and a restore's verification leaves them there
        // for CRIU to read.
        io_direct: Some(false),
        ..Overrides::default()
    })?;
    let criu = Criu::discover(config.criu.path.as_deref())?;
    let engine = IoEngine::new(&config.io_options()).context("starting the I/O engine")?;
    let store = Store::open(&config.cache, Arc::new(engine), config.store_options())
        .with_context(|| format!("opening the cache {}", config.cache.display()))?;
    Ok((config, store, criu))
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// 0 ok, 1 error, 3 not found (no such process or set), 4 verification
/// failed: as `ckptfs`.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    for cause in e.chain() {
        if let Some(ce) = cause.downcast_ref::<CriuError>() {
            if ce.is_not_found() {
                return ExitCode::from(3);
            }
            if matches!(ce, CriuError::Corrupt { .. } | CriuError::Pages(_)) {
                return ExitCode::from(4);
            }
        }
    }
    ExitCode::from(1)
}

pub fn finish(name: &str, r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            exit_code(&e)
        }
    }
}
