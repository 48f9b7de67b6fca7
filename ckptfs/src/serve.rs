//! `ckptfs serve`: the DR site's receiver. Loads the key, binds, serves
//! until SIGTERM or SIGINT; everything else is `libckpt::dr`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use libckpt::dr::{Key, Server, ServerOptions};

/// Serve a DR chunk store: the receiving end of `--dr HOST:PORT`.
///
/// Sets arrive as content-addressed chunks (BLAKE3, zstd-compressed on the
/// wire and at rest), so a chunk the store already holds is never sent
/// again; a set is complete here once its record is written, last.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory holding the chunk store and the set records; created
    /// (mode 0700) if missing. Nothing is ever written outside it.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Address to listen on (HOST:PORT). The default accepts this machine
    /// only: peers are authenticated but traffic is not encrypted, so
    /// listening on a network (e.g. 0.0.0.0:7070) should be a deliberate
    /// choice, on a trusted network or behind a tunnel.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: String,

    /// Shared key file, the same one clients pass as --dr-key. Refused if
    /// group or others can read it (chmod 600). Create one with
    /// `openssl rand -hex 32 > FILE`.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

pub fn run(args: &ServeArgs, global: &crate::args::Global) -> Result<()> {
    let key = Key::load(&args.key)?;
    // The receiver has no config file: the transport flags (shared with
    // the client commands) are its transport settings, checked the same
    // way a client's `[dr]` section is.
    let config = libckpt::config::Config::default()
        .apply(&global.overrides())
        .context("checking the transport and I/O flags")?;
    let dr = config.dr.transport();
    let mut opts = ServerOptions {
        transport: dr.choice,
        rdma: dr.rdma,
        ..ServerOptions::default()
    };
    opts.repo.io = config.io_options();
    let server = Server::bind(&args.listen, &args.root, key, opts)?;
    let transports = server.transports();
    let addr = server.local_addr();
    let stop = server.shutdown_handle();

    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let signal_thread = std::thread::Builder::new()
        .name("ckptfs-signals".into())
        .spawn(move || {
            let mut seen = signals.forever();
            if let Some(sig) = seen.next() {
                tracing::info!(signal = sig, "stopping on signal");
                stop.shutdown();
            }
            // A second signal while connections wind down: stop now.
            if seen.next().is_some() {
                eprintln!("ckptfs serve: second signal; exiting without waiting");
                std::process::exit(1);
            }
        })
        .context("starting the signal thread")?;

    // One write(2) for the whole line: scripts and tests wait for it in the
    // log, and eprintln! on unbuffered stderr writes it piece by piece (a
    // test once read "listening on " without the rest).
    let line = format!(
        "ckptfs serve: listening on {addr} over {transports} (root {})\n",
        args.root.display()
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    let served = server.run();
    signal_handle.close();
    let _ = signal_thread.join();
    served?;
    Ok(())
}
