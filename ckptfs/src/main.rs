//! `ckptfs`: thin shell over libckpt. Parses flags, loads the configuration,
//! runs one command, and maps its outcome to an exit status.

mod args;
mod commands;
mod daemon;
mod daemonize;
mod drain_cmd;
mod exit;
mod fuse;
mod mount_cmd;
mod mountpoint;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // A daemon's log is read after the fact: say what it did by default.
    let daemon = matches!(
        cli.command,
        args::Command::Mount { .. } | args::Command::Serve(_)
    );
    init_logging(cli.global.verbose + u8::from(daemon));
    raise_open_file_limit();
    match commands::run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("ckptfs: {e:#}");
            exit::Exit::from_error(&e).into()
        }
    }
}

/// Most open files this process asks for: high enough for a daemon, low
/// enough that a child which closes every descriptor up to its limit
/// does not take long.
const OPEN_FILES: libc::rlim_t = 65536;

/// The daemon holds many files open at once: the application's, through
/// FUSE, and the PFS tier's groups of small files waiting for their sync
/// (up to 256). The soft limit (often 1024) is lifted toward the hard one,
/// as most servers do; a failure leaves it as it was.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = lim.rlim_max.min(OPEN_FILES);
    if lim.rlim_cur < want {
        lim.rlim_cur = want;
        // SAFETY: setrlimit only reads the struct we own; a soft limit up
        // to the hard one needs no privilege.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
