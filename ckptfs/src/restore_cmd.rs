//! `ckptfs-restore`: flags and printing around `libckpt::criu::restore`.

use std::process::ExitCode;

use anyhow::Result;
use libckpt::criu::{self, RestoreOptions};
use libckpt::path::{JobName, SetName};

use crate::criu_cmd::{finish, load, Common, CriuFlags, EXIT_CODES};

/// ckptfs-restore: bring a process tree dumped by ckptfs-dump back (CRIU).
///
/// The set (the job's newest when SET is omitted) and every set it
/// depends on are staged in from a lower tier when the cache lacks them,
/// every chunk is verified, an incremental set's page images are rebuilt,
/// then `criu restore` runs. Without --detach, waits for the restored tree
/// to end.
#[derive(Debug, clap::Parser)]
#[command(name = "ckptfs-restore", version, after_help = EXIT_CODES)]
pub struct RestoreCli {
    /// The job.
    pub job: String,
    /// The set [default: the newest complete set on the cache or any tier].
    pub set: Option<String>,
    /// Return once the tree is restored, leaving it running.
    #[arg(long)]
    pub detach: bool,

    #[command(flatten)]
    pub criu_flags: CriuFlags,

    #[command(flatten)]
    pub common: Common,
}

pub fn restore_main(cli: RestoreCli) -> ExitCode {
    finish("ckptfs-restore", restore(cli))
}

fn restore(cli: RestoreCli) -> Result<()> {
    let (config, store, criu) = load(&cli.common)?;
    let tiers: Vec<_> = libckpt::drain::tiers_from_config(&config)?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let opts = RestoreOptions {
        job: JobName::new(cli.job.as_str())?,
        set: cli.set.as_deref().map(SetName::new).transpose()?,
        detach: cli.detach,
        passthrough: cli.criu_flags.passthrough(),
    };
    let r = criu::restore(&store, &tiers, &criu, &opts)?;
    if cli.common.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    for (s, tier) in &r.staged {
        eprintln!("staged {}/{s} in from {tier}", r.job);
    }
    match (r.pid, &r.exit_status) {
        (_, Some(st)) => println!(
            "restored {}/{}; the tree has ended ({st}); criu {:.2} s",
            r.job, r.set, r.criu_seconds
        ),
        (Some(pid), None) => println!(
            "restored {}/{} as pid {pid}; criu {:.2} s, total {:.2} s",
            r.job, r.set, r.criu_seconds, r.seconds
        ),
        (None, None) => println!("restored {}/{}", r.job, r.set),
    }
    Ok(())
}
