//! `ckptfs-dump`: flags and printing around `libckpt::criu::dump`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use bytesize::ByteSize;
use libckpt::criu::{self, process, CriuError, DumpOptions};
use libckpt::path::JobName;

use crate::criu_cmd::{finish, load, Common, CriuFlags, EXIT_CODES};

/// ckptfs-dump: checkpoint a running process tree into the store (CRIU).
///
/// The tree rooted at PID is dumped by CRIU into a new set of the job
/// (`<cache>/<job>/dump-<time>`, or `<full>+K` for the K-th incremental dump
/// on top of a full one), made mode 0600 and owned by the process's user,
/// and committed; the drain takes it to the lower tiers from there. A dump
/// that fails is never committed and its files are removed; the process is
/// left running (or resumed) whatever happens. Without --leave-running the
/// tree is killed once the set is committed, as `criu dump` does.
#[derive(Debug, clap::Parser)]
#[command(name = "ckptfs-dump", version, after_help = EXIT_CODES)]
pub struct DumpCli {
    /// The root of the process tree to dump.
    pub pid: i32,

    /// The job to add the set to [default: the process's name].
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,

    /// Keep the tree running after the dump.
    #[arg(long)]
    pub leave_running: bool,

    /// Store only the 4 KiB pages the job's newest dump lacks (per-page
    /// deduplication; the set records its parent).
    #[arg(long)]
    pub incremental: bool,

    /// With --incremental: a full dump every N dumps.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub full_every: u32,

    /// Dump again every DURATION (e.g. 10m) until the process ends;
    /// implies --leave-running.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub every: Option<Duration>,

    /// Skip a dump (and say so) while the one-minute load average is above X.
    #[arg(long, value_name = "X")]
    pub skip_if_load_above: Option<f64>,

    #[command(flatten)]
    pub criu_flags: CriuFlags,

    #[command(flatten)]
    pub common: Common,
}

fn default_job(pid: i32) -> Result<JobName> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    Ok(JobName::new(comm).or_else(|_| JobName::new(format!("pid-{pid}")))?)
}

fn load_too_high(limit: Option<f64>) -> Option<(f64, f64)> {
    let limit = limit?;
    let load = process::load_average()?;
    (load > limit).then_some((load, limit))
}

pub fn dump_main(cli: DumpCli) -> ExitCode {
    finish("ckptfs-dump", dump(cli))
}

fn dump(cli: DumpCli) -> Result<()> {
    if cli.pid <= 0 {
        bail!("{} is not a process id", cli.pid);
    }
    let (_, store, criu) = load(&cli.common)?;
    let job = match &cli.job {
        Some(j) => JobName::new(j.as_str())?,
        None => {
            if !process::alive(cli.pid) {
                return Err(CriuError::NoSuchProcess { pid: cli.pid }.into());
            }
            default_job(cli.pid)?
        }
    };
    let opts = DumpOptions {
        pid: cli.pid,
        job,
        leave_running: cli.leave_running || cli.every.is_some(),
        incremental: cli.incremental,
        full_every: cli.full_every,
        passthrough: cli.criu_flags.passthrough(),
    };
    let Some(every) = cli.every else {
        if let Some((load, limit)) = load_too_high(cli.skip_if_load_above) {
            println!("skipped: load {load:.2} is above {limit}");
            return Ok(());
        }
        let r = criu::dump(&store, &criu, &opts)?;
        print_dump(&r, cli.common.json)?;
        return Ok(());
    };
    // When the process ends the schedule ends: successfully if a dump was
    // made (a dump cut short by the end itself is no failure).
    let mut made_one = false;
    let mut last: Result<()> = Ok(());
    let ended = |pid: i32, made_one: bool, last: Result<()>| {
        eprintln!("ckptfs-dump: pid {pid} has ended; stopping");
        if made_one {
            Ok(())
        } else {
            last
        }
    };
    loop {
        if !process::alive(opts.pid) {
            return ended(opts.pid, made_one, last);
        }
        if let Some((load, limit)) = load_too_high(cli.skip_if_load_above) {
            println!("skipped: load {load:.2} is above {limit}");
        } else {
            match criu::dump(&store, &criu, &opts) {
                Ok(r) => {
                    print_dump(&r, cli.common.json)?;
                    made_one = true;
                    last = Ok(());
                }
                Err(e) if !process::alive(opts.pid) => {
                    return ended(opts.pid, made_one, Err(e.into()));
                }
                Err(e) => {
                    eprintln!("ckptfs-dump: {e}");
                    last = Err(e.into());
                }
            }
        }
        std::thread::sleep(every);
    }
}

fn print_dump(r: &criu::DumpReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let kind = match &r.parent {
        Some(p) => format!("incremental on {p}"),
        None => "full".to_owned(),
    };
    println!(
        "dumped pid {} into {}/{} ({kind}): {} pages, {} stored, {} in the set; criu {:.2} s, total {:.2} s{}",
        r.pid,
        r.job,
        r.set,
        r.pages,
        r.new_pages,
        ByteSize::b(r.stored_bytes),
        r.criu_seconds,
        r.seconds,
        if r.left_running { "; left running" } else { "" }
    );
    Ok(())
}
