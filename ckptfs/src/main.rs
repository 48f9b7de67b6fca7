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
    match commands::run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("ckptfs: {e:#}");
            exit::Exit::from_error(&e).into()
        }
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
