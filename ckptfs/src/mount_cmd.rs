//! The commands that talk to a mount: mount, umount, status MOUNTPOINT,
//! and commit of a directory under a mount.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libckpt::config::Config;
use libckpt::control::{self, Client, Request};
use libckpt::path::{JobName, SetName};
use serde_json::Value;

use crate::daemon::{self, MountRequest};
use crate::daemonize::{self, Readiness};
use crate::exit::Exit;
use crate::mountpoint;

/// How long `ckptfs mount` waits for the background daemon to be live.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn mount(config: &Config, mountpoint: &Path, foreground: bool) -> Result<Exit> {
    if foreground {
        let ready = Readiness::from_env();
        daemon::run(
            config,
            MountRequest {
                mountpoint: mountpoint.to_owned(),
            },
            ready,
        )?;
        return Ok(Exit::Ok);
    }
    // The daemon's log goes next to its cache.
    let log_dir = config.cache.join(libckpt::store::META_DIR);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log = log_dir.join("daemon.log");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let pid = daemonize::spawn_background(&args, &log, START_TIMEOUT)?;
    println!(
        "ckptfs mounted at {} (daemon pid {pid}, cache {}, log {})",
        mountpoint.display(),
        config.cache.display(),
        log.display()
    );
    Ok(Exit::Ok)
}

fn client_for_mount(mp: &Path) -> Result<(Client, PathBuf)> {
    let entry = mountpoint::find_mount(mp)?
        .with_context(|| format!("{} is not a mount point", mp.display()))?;
    if entry.fstype != mountpoint::FSTYPE {
        bail!(
            "{} is a {} mount, not a ckptfs one",
            mp.display(),
            entry.fstype
        );
    }
    let socket = control::socket_path(Path::new(&entry.source));
    let client = Client::connect(&socket)?;
    Ok((client, socket))
}

pub fn umount(mp: &Path, force: bool) -> Result<Exit> {
    if mountpoint::is_stale(mp) {
        mountpoint::detach(mp)
            .with_context(|| format!("detaching the stale mount at {}", mp.display()))?;
        println!("{}: stale mount (daemon gone) detached", mp.display());
        return Ok(Exit::Ok);
    }
    let mp = mp
        .canonicalize()
        .with_context(|| format!("resolving {}", mp.display()))?;
    let asked = client_for_mount(&mp).and_then(|(mut c, _)| {
        c.call(&Request::Unmount { force })
            .map_err(anyhow::Error::from)
    });
    match asked {
        Ok(_) => {}
        Err(e) if force => {
            // A daemon that does not answer cannot keep a forced unmount
            // from happening.
            tracing::warn!(error = %format!("{e:#}"), "daemon did not answer; detaching");
            mountpoint::detach(&mp).with_context(|| format!("detaching {}", mp.display()))?;
        }
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while mountpoint::find_mount(&mp)?.is_some_and(|m| m.fstype == mountpoint::FSTYPE) {
        if Instant::now() > deadline {
            bail!("{} is still mounted after 30 s", mp.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{}: unmounted", mp.display());
    Ok(Exit::Ok)
}

pub fn status(mp: &Path, json: bool) -> Result<Exit> {
    let (mut client, _) = client_for_mount(mp)?;
    show_status(&mut client, json)
}

/// Status from the daemon serving `cache`, if one answers.
pub fn status_of_cache(cache: &Path) -> Result<Option<Value>> {
    let socket = control::socket_path(cache);
    match Client::connect(&socket) {
        Ok(mut client) => Ok(Some(client.call(&Request::Status)?)),
        Err(e) if e.daemon_absent() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn show_status(client: &mut Client, json: bool) -> Result<Exit> {
    let v = client.call(&Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(Exit::Ok);
    }
    print_status(&v);
    Ok(Exit::Ok)
}

pub fn print_status(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
    println!(
        "ckptfs {} (pid {}, up {} s)",
        s("version"),
        v["pid"],
        v["uptime_seconds"]
    );
    println!("mount:      {}", s("mountpoint"));
    println!(
        "cache:      {} ({} free of {}, {:.0}% full)",
        s("cache"),
        bytesize::ByteSize::b(v["cache_fs_free_bytes"].as_u64().unwrap_or(0)),
        bytesize::ByteSize::b(v["cache_fs_total_bytes"].as_u64().unwrap_or(0)),
        v["cache_fs_fill_percent"].as_f64().unwrap_or(0.0)
    );
    let dp = &v["data_path"];
    let mut line = format!("data path:  {}", dp["mode"].as_str().unwrap_or("?"));
    if let Some(r) = dp["reason"].as_str() {
        line += &format!(" ({r})");
    }
    if let Some(w) = dp["writes"].as_str() {
        line += &format!("; writes {w}");
    }
    println!("{line}");
    match v["io"]["fallback_reason"].as_str() {
        Some(r) => println!(
            "I/O engine: {} ({r})",
            v["io"]["path"].as_str().unwrap_or("?")
        ),
        None => println!("I/O engine: {}", v["io"]["path"].as_str().unwrap_or("?")),
    }
    for t in v["drain"].as_array().into_iter().flatten() {
        println!("{}", crate::drain_cmd::tier_line(t));
    }
    if let Some(open) = v["open_files"].as_array().filter(|a| !a.is_empty()) {
        println!("open for writing: {}", open.len());
        for f in open {
            println!("  {}", f.as_str().unwrap_or("?"));
        }
    }
    for job in v["jobs"].as_array().into_iter().flatten() {
        println!("job {}:", job["job"].as_str().unwrap_or("?"));
        for set in job["sets"].as_array().into_iter().flatten() {
            println!(
                "  {:<28} {:<11} {:>6} files {:>12}",
                set["set"].as_str().unwrap_or("?"),
                set["state"].as_str().unwrap_or("?"),
                set["files"],
                bytesize::ByteSize::b(set["bytes"].as_u64().unwrap_or(0)).to_string()
            );
        }
    }
}

/// Commit `dir` through the daemon of the mount it is on, if it is on one.
/// `None`: not on a ckptfs mount.
pub fn commit_in_mount(dir: &Path) -> Result<Option<Value>> {
    let Some((socket, rel)) = daemon::control_for(dir)? else {
        return Ok(None);
    };
    let parts: Vec<&str> = rel
        .components()
        .map(|c| c.as_os_str().to_str().unwrap_or("\u{fffd}"))
        .collect();
    let [job, set] = parts.as_slice() else {
        bail!(
            "{} is not a set directory: a set is MOUNTPOINT/<job>/<set>",
            dir.display()
        );
    };
    let req = Request::Commit {
        job: JobName::new(*job)?,
        set: SetName::new(*set)?,
    };
    let mut client = Client::connect(&socket)?;
    // A commit waits for the seals of a large set: no timeout.
    client.set_timeout(None)?;
    Ok(Some(client.call(&req)?))
}
