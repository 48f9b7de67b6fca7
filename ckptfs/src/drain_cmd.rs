//! `ckptfs drain` and `ckptfs restore`: moving sets between the cache and
//! the lower tiers from the command line.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use libckpt::config::Config;
use libckpt::control::{self, Client, Request};
use libckpt::drain::{self, Drain, DrainOptions, TierStatus};
use libckpt::path::{JobName, SetName};
use libckpt::stage::{self, RestoreRequest};
use libckpt::store::Store;
use libckpt::tier::Tier;
use serde_json::json;

use crate::exit::Exit;

pub fn tiers(config: &Config) -> Result<Vec<Arc<dyn Tier>>> {
    Ok(drain::tiers_from_config(config)?
        .into_iter()
        .map(|(t, _)| t)
        .collect())
}

fn progress_bar(total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    Some(pb)
}

/// One line per tier of a drain status (as JSON: from the library or from
/// a daemon's control socket, which sends the same shape).
pub fn tier_line(t: &serde_json::Value) -> String {
    let rate = t["current_rate"]
        .as_f64()
        .map_or("-".to_owned(), |r| format!("{}/s", ByteSize::b(r as u64)));
    let rpo = t["rpo_exposure_seconds"]
        .as_u64()
        .map_or("none".to_owned(), |s| format!("{s} s"));
    let mut via = t["transport"]
        .as_str()
        .map_or(String::new(), |t| format!(" over {t}"));
    if let Some(c) = t["compression"].as_str() {
        via.push_str(&format!(", {c}"));
    }
    format!(
        "tier {} ({}{via}): {} set(s) pending, {} pending, rate {rate}, RPO exposure {rpo}{}",
        t["tier"].as_str().unwrap_or("?"),
        t["location"].as_str().unwrap_or("?"),
        t["pending"].as_array().map_or(0, Vec::len),
        ByteSize::b(t["bytes_pending"].as_u64().unwrap_or(0)),
        t["last_error"]
            .as_str()
            .map_or(String::new(), |e| format!("; last error: {e}"))
    )
}

pub fn tier_lines(status: &[TierStatus]) -> Vec<String> {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(tier_line)
        .collect()
}

fn print_tier_lines(status: &[TierStatus]) {
    for line in tier_lines(status) {
        eprintln!("{line}");
    }
}

/// `ckptfs drain [JOB] [--wait] [--timeout D] [--json]`.
pub fn drain(
    config: &Config,
    store: Store,
    job: Option<&str>,
    wait: bool,
    timeout: Option<Duration>,
    json: bool,
) -> Result<Exit> {
    let job = job.map(JobName::new).transpose()?;
    let tiers = drain::tiers_from_config(config)?;
    if tiers.is_empty() {
        bail!("no lower tier is configured: give --pfs DIR, --dr HOST:PORT and/or --s3 s3://BUCKET/PREFIX (or [pfs]/[dr]/[s3] in the config)");
    }
    // A daemon serving this cache drains by itself; two drains of one
    // cache would race on the journal.
    let socket = control::socket_path(store.root());
    if let Ok(client) = Client::connect(&socket) {
        return wait_for_daemon(client, job.as_ref(), wait, timeout, json);
    }
    let engine = Drain::new(store, tiers, DrainOptions::from_config(config));
    if !wait {
        let st = engine.status();
        if json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print_tier_lines(&st);
        }
        return Ok(Exit::Ok);
    }
    let workers = engine.start();
    let deadline = timeout.map(|t| Instant::now() + t);
    let total: u64 = engine.status().iter().map(|t| t.bytes_pending).sum();
    let pb = if json {
        None
    } else {
        progress_bar(total, "draining")
    };
    let mut last_line = Instant::now();
    let result = loop {
        let (pending, failed) = engine.outstanding(job.as_ref());
        let st = engine.status();
        let left: u64 = st.iter().map(|t| t.bytes_pending).sum();
        if let Some(pb) = &pb {
            pb.set_position(total.saturating_sub(left));
        } else if !json && last_line.elapsed() > Duration::from_secs(2) {
            print_tier_lines(&st);
            last_line = Instant::now();
        }
        if pending == 0 {
            break Ok(());
        }
        if failed > 0 && failed == pending {
            break Err(anyhow::anyhow!(
                "{failed} set(s) failed to drain for good: {}",
                st.iter()
                    .flat_map(|t| t.pending.iter().filter_map(|p| p.last_error.clone()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            break Err(anyhow::anyhow!(
                "timed out with {pending} set(s) still pending"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    engine.shutdown();
    for w in workers {
        let _ = w.join();
    }
    let st = engine.status();
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print_tier_lines(&st);
    }
    result?;
    if !json {
        println!("drained: every complete set is on every tier");
    }
    Ok(Exit::Ok)
}

fn wait_for_daemon(
    mut client: Client,
    job: Option<&JobName>,
    wait: bool,
    timeout: Option<Duration>,
    json: bool,
) -> Result<Exit> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last_line: Option<Instant> = None;
    loop {
        let v = client.call(&Request::Status)?;
        let tiers = v["drain"].as_array().cloned().unwrap_or_default();
        let pending: usize = tiers
            .iter()
            .flat_map(|t| t["pending"].as_array().cloned().unwrap_or_default())
            .filter(|p| job.is_none_or(|j| p["job"] == j.as_str()))
            .count();
        if !wait || pending == 0 {
            if json {
                println!("{}", serde_json::to_string_pretty(&v["drain"])?);
            } else if pending == 0 {
                println!("drained: every complete set is on every tier");
            } else {
                println!("{pending} set(s) pending on the daemon's drain");
            }
            return Ok(Exit::Ok);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!("timed out with {pending} set(s) still pending");
        }
        // The daemon drains; say how it goes every few seconds.
        if !json && last_line.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            for t in &tiers {
                eprintln!("{}", tier_line(t));
            }
            last_line = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ckptfs restore JOB [SET] --to DIR [--from SOURCE] [--json]`.
pub fn restore(
    config: &Config,
    store: &Store,
    job: &str,
    set: Option<&str>,
    to: &Path,
    from: Option<&str>,
    json: bool,
) -> Result<Exit> {
    let job = JobName::new(job)?;
    let set = set.map(SetName::new).transpose()?;
    let tiers = tiers(config)?;
    let bytes = AtomicU64::new(0);
    let total = match &set {
        Some(s) => stage::locate(store, &tiers, &job)
            .into_iter()
            .find(|l| &l.set == s)
            .map_or(0, |l| l.bytes),
        None => stage::latest(store, &tiers, &job).map_or(0, |l| l.bytes),
    };
    let pb = if json {
        None
    } else {
        progress_bar(total, "restoring")
    };
    let started = Instant::now();
    let req = RestoreRequest {
        job: &job,
        set: set.as_ref(),
        to,
        from,
    };
    let result = stage::restore(
        store,
        &tiers,
        &req,
        &|n| {
            let done = bytes.fetch_add(n, Ordering::Relaxed) + n;
            if let Some(pb) = &pb {
                pb.set_position(done);
            }
        },
        &mut |failure| eprintln!("ckptfs: {failure}; trying the next source"),
    );
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let (m, source) = result?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "job": m.job, "set": m.set, "from": source, "to": to,
                "files": m.files.len(), "bytes": m.total_bytes, "seconds": secs,
            }))?
        );
    } else {
        println!(
            "{}/{}: restored from {source} into {} ({} files, {}, verified)",
            m.job,
            m.set,
            to.display(),
            m.files.len(),
            ByteSize::b(m.total_bytes)
        );
    }
    Ok(Exit::Ok)
}

/// Where the newest complete set of a job is, across the cache and tiers.
pub fn latest_anywhere(
    config: &Config,
    store: &Store,
    job: &JobName,
) -> Result<Option<stage::Located>> {
    let tiers = tiers(config).context("setting up the lower tiers")?;
    Ok(stage::latest(store, &tiers, job))
}
