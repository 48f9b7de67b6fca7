//! One function per subcommand: load what it needs, call libckpt, print.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use libckpt::config::{Config, Source};
use libckpt::io::IoEngine;
use libckpt::manifest::Manifest;
use libckpt::path::{JobName, RelPath, SetName};
use libckpt::set::{SetInfo, SetState};
use libckpt::store::Store;
use serde_json::json;

use crate::args::{Cli, Command};
use crate::exit::Exit;

struct Ctx {
    config: Config,
    source: Source,
}

impl Ctx {
    fn store(&self) -> Result<Store> {
        let engine = IoEngine::new(&self.config.io_options()).context("starting the I/O engine")?;
        Store::open(
            &self.config.cache,
            Arc::new(engine),
            self.config.store_options(),
        )
        .with_context(|| format!("opening the cache {}", self.config.cache.display()))
    }

    /// The store for `restore --to`: unless `sync`, its engine writes
    /// through the page cache and does not sync (see
    /// [`IoEngine::without_sync`]); it reads the cache as usual.
    fn restore_store(&self, sync: bool) -> Result<Store> {
        if sync {
            return self.store();
        }
        let opts = libckpt::io::IoOptions {
            direct: false,
            ..self.config.io_options()
        };
        let engine = IoEngine::new(&opts)
            .context("starting the I/O engine")?
            .without_sync();
        Store::open(
            &self.config.cache,
            Arc::new(engine),
            self.config.store_options(),
        )
        .with_context(|| format!("opening the cache {}", self.config.cache.display()))
    }
}

pub fn run(cli: Cli) -> Result<Exit> {
    if let Command::Serve(args) = &cli.command {
        // The receiver has no cache: its flags are its whole configuration.
        crate::serve::run(args, &cli.global)?;
        return Ok(Exit::Ok);
    }
    let (config, source) = Config::discover(cli.global.config.as_deref())?;
    let config = config.apply(&cli.global.overrides())?;
    let ctx = Ctx { config, source };
    match cli.command {
        Command::Ls { job, json } => ls(&ctx, job.as_deref(), json),
        Command::Latest { job, path, json } => latest(&ctx, &job, path, json),
        Command::Drain {
            job,
            wait,
            timeout,
            json,
        } => crate::drain_cmd::drain(
            &ctx.config,
            ctx.store()?,
            job.as_deref(),
            wait,
            timeout,
            json,
        ),
        Command::Restore {
            job,
            set,
            to,
            from,
            sync,
            json,
        } => crate::drain_cmd::restore(
            &ctx.config,
            &ctx.restore_store(sync)?,
            &job,
            set.as_deref(),
            &to,
            from.as_deref(),
            json,
        ),
        Command::Verify { job, set, json } => verify(&ctx, &job, set.as_deref(), json),
        Command::Commit { dir, force, json } => commit(&ctx, &dir, force, json),
        Command::Mount {
            mountpoint,
            foreground,
            no_passthrough,
            threads,
            idle_commit,
        } => {
            let mut config = ctx.config.clone();
            if no_passthrough {
                config.mount.passthrough = false;
            }
            let config = config.apply(&libckpt::config::Overrides {
                mount_threads: threads,
                mount_idle_commit: idle_commit,
                ..Default::default()
            })?;
            crate::mount_cmd::mount(&config, &mountpoint, foreground)
        }
        Command::Umount { mountpoint, force } => crate::mount_cmd::umount(&mountpoint, force),
        Command::Status {
            mountpoint: Some(mp),
            json,
        } => crate::mount_cmd::status(&mp, json),
        Command::Put {
            job,
            paths,
            set,
            json,
        } => put(&ctx, &job, &paths, set.as_deref(), json),
        Command::Rm { job, set } => rm(&ctx, &job, &set),
        Command::Prune { job, json } => prune(&ctx, job.as_deref(), json),
        Command::Status {
            mountpoint: None,
            json,
        } => status(&ctx, json),
        Command::Serve(_) => unreachable!("handled above"),
        Command::Config => {
            print!("{}", ctx.config.to_toml());
            Ok(Exit::Ok)
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ls(ctx: &Ctx, job: Option<&str>, json: bool) -> Result<Exit> {
    let store = ctx.store()?;
    let Some(job) = job else {
        let mut rows = Vec::new();
        for job in store.jobs()? {
            let sets = store.sets(&job)?;
            let complete = sets.iter().filter(|s| s.is_complete()).count();
            let latest = sets.iter().rev().find(|s| s.is_complete()).cloned();
            rows.push((job, sets.len(), complete, latest));
        }
        if json {
            let v: Vec<_> = rows
                .iter()
                .map(|(job, n, c, latest)| {
                    json!({"job": job, "sets": n, "complete": c,
                           "latest": latest.as_ref().map(|s| &s.set)})
                })
                .collect();
            print_json(&v)?;
        } else if rows.is_empty() {
            eprintln!("no jobs in {}", store.root().display());
        } else {
            println!("{:<24} {:>5} {:>9}  LATEST", "JOB", "SETS", "COMPLETE");
            for (job, n, c, latest) in &rows {
                let latest = latest
                    .as_ref()
                    .map_or("-".to_owned(), |s| s.set.to_string());
                println!("{:<24} {n:>5} {c:>9}  {latest}", job.as_str());
            }
        }
        return Ok(Exit::Ok);
    };
    let job = JobName::new(job)?;
    let sets = store.sets(&job)?;
    if json {
        print_json(&sets)?;
    } else if sets.is_empty() {
        eprintln!("no sets for job {job} in {}", store.root().display());
    } else {
        print_sets(&sets);
    }
    Ok(if sets.is_empty() {
        Exit::NotFound
    } else {
        Exit::Ok
    })
}

fn print_sets(sets: &[SetInfo]) {
    println!(
        "{:<28} {:<11} {:<20} {:>6} {:>12}",
        "SET", "STATE", "CREATED", "FILES", "SIZE"
    );
    for s in sets {
        println!(
            "{:<28} {:<11} {:<20} {:>6} {:>12}",
            s.set.as_str(),
            s.state.label(),
            when(s.created),
            s.files,
            ByteSize::b(s.bytes).to_string()
        );
        if let SetState::Damaged(why) = &s.state {
            println!("    {why}");
        }
    }
}

fn latest(ctx: &Ctx, job: &str, path: bool, json: bool) -> Result<Exit> {
    let store = ctx.store()?;
    let job = JobName::new(job)?;
    let Some(found) = crate::drain_cmd::latest_anywhere(&ctx.config, &store, &job)? else {
        if json {
            print_json(&serde_json::Value::Null)?;
        }
        eprintln!(
            "no complete set for job {job} in {} or any tier",
            store.root().display()
        );
        return Ok(Exit::NotFound);
    };
    let dir = store.set_dir(&job, &found.set);
    let in_cache = found.sources.iter().any(|s| s == libckpt::stage::CACHE);
    if json {
        let mut v = serde_json::to_value(&found)?;
        if in_cache {
            v["path"] = json!(dir);
        }
        v["set"] = json!(found.set);
        print_json(&v)?;
    } else if path {
        if !in_cache {
            eprintln!(
                "{job}/{} is on {} only, not in the cache: `ckptfs restore {job} {}` brings it back",
                found.set,
                found.sources.join(", "),
                found.set
            );
            return Ok(Exit::NotFound);
        }
        println!("{}", dir.display());
    } else {
        println!("{}", found.set);
    }
    Ok(Exit::Ok)
}

fn verify(ctx: &Ctx, job: &str, set: Option<&str>, json: bool) -> Result<Exit> {
    let store = ctx.store()?;
    let job = JobName::new(job)?;
    let set = match set {
        Some(s) => SetName::new(s)?,
        None => match store.latest(&job)? {
            Some(info) => info.set,
            None => {
                eprintln!("no complete set for job {job} to verify");
                return Ok(Exit::NotFound);
            }
        },
    };
    let report = store.verify(&job, &set)?;
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = json!(report.ok());
        print_json(&v)?;
    } else {
        for p in &report.problems {
            eprintln!("{job}/{set}: {p}");
        }
        for extra in &report.extra_files {
            eprintln!("{job}/{set}: {extra}: not in the manifest (not part of the checkpoint)");
        }
        if report.ok() {
            println!(
                "{job}/{set}: ok ({} files, {})",
                report.files,
                ByteSize::b(report.bytes)
            );
        } else {
            println!(
                "{job}/{set}: FAILED: {} of {} files bad",
                report.problems.len(),
                report.files
            );
        }
    }
    Ok(if report.ok() {
        Exit::Ok
    } else {
        Exit::VerifyFailed
    })
}

fn commit(ctx: &Ctx, dir: &Path, force: bool, json: bool) -> Result<Exit> {
    if let Some(v) = crate::mount_cmd::commit_in_mount(dir)? {
        if json {
            print_json(&v)?;
        } else {
            println!(
                "{}/{}: committed ({} files, {})",
                v["job"].as_str().unwrap_or("?"),
                v["set"].as_str().unwrap_or("?"),
                v["files"],
                ByteSize::b(v["bytes"].as_u64().unwrap_or(0))
            );
        }
        return Ok(Exit::Ok);
    }
    let store = ctx.store()?;
    let m = store.commit_dir(dir, force)?;
    print_committed(&store, &m, json)
}

fn print_committed(store: &Store, m: &Manifest, json: bool) -> Result<Exit> {
    if json {
        print_json(&json!({"job": m.job, "set": m.set, "files": m.files.len(),
                           "bytes": m.total_bytes, "path": store.set_dir(&m.job, &m.set)}))?;
    } else {
        println!(
            "{}/{}: committed ({} files, {})",
            m.job,
            m.set,
            m.files.len(),
            ByteSize::b(m.total_bytes)
        );
    }
    Ok(Exit::Ok)
}

/// Files to copy: (name inside the set, source path).
fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<(RelPath, PathBuf)>> {
    let mut out = Vec::new();
    for p in paths {
        let md = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        let base = p
            .file_name()
            .with_context(|| format!("{} has no file name", p.display()))?;
        if md.is_file() {
            out.push((RelPath::from_path(Path::new(base))?, p.clone()));
            continue;
        }
        if !md.is_dir() {
            bail!("{}: not a regular file or directory", p.display());
        }
        for entry in walkdir::WalkDir::new(p).sort_by_file_name() {
            let entry = entry.with_context(|| format!("reading {}", p.display()))?;
            if entry.file_type().is_dir() {
                continue;
            }
            if !entry.file_type().is_file() {
                bail!(
                    "{}: only regular files can be put in a set",
                    entry.path().display()
                );
            }
            let inner = entry.path().strip_prefix(p).unwrap_or(entry.path());
            out.push((
                RelPath::from_path(&Path::new(base).join(inner))?,
                entry.path().to_owned(),
            ));
        }
    }
    Ok(out)
}

fn default_set_name() -> String {
    // RFC 3339 with the colons dropped sorts by time and is a valid name.
    humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(':', "")
}

fn put(ctx: &Ctx, job: &str, paths: &[PathBuf], set: Option<&str>, json: bool) -> Result<Exit> {
    let store = ctx.store()?;
    let job = JobName::new(job)?;
    let set = SetName::new(set.map(str::to_owned).unwrap_or_else(default_set_name))?;
    let inputs = collect_inputs(paths)?;
    let mut writer = store.create_set(&job, &set)?;
    for (rel, src) in &inputs {
        let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let d = writer
            .write_file(rel, &mut f)
            .with_context(|| format!("writing {rel} into {job}/{set}"))?;
        tracing::info!(file = %rel, bytes = d.size, "written");
    }
    let m = writer.commit()?;
    print_committed(&store, &m, json)
}

fn rm(ctx: &Ctx, job: &str, set: &str) -> Result<Exit> {
    let store = ctx.store()?;
    let (job, set) = (JobName::new(job)?, SetName::new(set)?);
    store.delete_set(&job, &set)?;
    println!("{job}/{set}: deleted");
    Ok(Exit::Ok)
}

fn prune(ctx: &Ctx, job: Option<&str>, json: bool) -> Result<Exit> {
    let store = ctx.store()?;
    let jobs = match job {
        Some(j) => vec![JobName::new(j)?],
        None => store.jobs()?,
    };
    let keep = ctx.config.cache_keep();
    let mut out = Vec::new();
    let mut failed = false;
    for job in jobs {
        let r = store.apply_retention(&job, keep)?;
        failed |= !r.failed.is_empty();
        if !json {
            for s in &r.deleted {
                println!("{job}/{s}: removed");
            }
            for (s, why) in &r.failed {
                eprintln!("{job}/{s}: could not remove: {why}");
            }
        }
        out.push(json!({"job": job, "deleted": r.deleted, "failed": r.failed}));
    }
    if json {
        print_json(&out)?;
    }
    Ok(if failed { Exit::Error } else { Exit::Ok })
}

fn status(ctx: &Ctx, json: bool) -> Result<Exit> {
    // A daemon serving this cache knows more (data path, open files).
    let criu = libckpt::criu::discover::status(ctx.config.criu.path.as_deref(), &ctx.config.cache);
    if let Some(mut v) = crate::mount_cmd::status_of_cache(&ctx.config.cache)? {
        if json {
            if let Some(o) = v.as_object_mut() {
                o.insert("criu".into(), serde_json::to_value(&criu)?);
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            crate::mount_cmd::print_status(&v);
            println!("{}", libckpt::criu::discover::status_line(&criu));
        }
        return Ok(Exit::Ok);
    }
    let store = ctx.store()?;
    let engine = store.engine();
    let mut jobs = Vec::new();
    for job in store.jobs()? {
        let sets = store.sets(&job)?;
        let count = |label: &str| sets.iter().filter(|s| s.state.label() == label).count();
        jobs.push(json!({
            "job": job,
            "complete": count("complete"),
            "writing": count("writing"),
            "abandoned": count("abandoned"),
            "uncommitted": count("uncommitted"),
            "damaged": count("damaged"),
            "bytes": sets.iter().map(|s| s.bytes).sum::<u64>(),
            "latest": sets.iter().rev().find(|s| s.is_complete()).map(|s| &s.set),
        }));
    }
    let drain_status = libckpt::drain::tiers_from_config(&ctx.config)
        .map(|t| {
            libckpt::drain::Drain::new(
                store.clone(),
                t,
                libckpt::drain::DrainOptions::from_config(&ctx.config),
            )
            .status()
        })
        .unwrap_or_default();
    let (total, free, fill) = libckpt::statfs::space(store.root())
        .map(|s| (s.total, s.free, s.fill_percent()))
        .unwrap_or((0, 0, 0.0));
    let v = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": ctx.source.to_string(),
        "cache": store.root(),
        "cache_fs_total_bytes": total,
        "cache_fs_free_bytes": free,
        "cache_fs_fill_percent": fill,
        "io": {
            "path": engine.path(),
            "fallback_reason": engine.fallback_reason(),
            "queue_depth": engine.options().queue_depth,
            "buffer_size": engine.options().buffer_size,
            "direct": engine.options().direct,
        },
        "chunk_size": store.options().chunk_size,
        "keep": store.options().keep,
        "jobs": jobs,
        "drain": drain_status,
        "criu": criu,
    });
    if json {
        print_json(&v)?;
        return Ok(Exit::Ok);
    }
    println!("ckptfs {}", env!("CARGO_PKG_VERSION"));
    println!("config:      {}", ctx.source);
    println!(
        "cache:       {} ({} free of {}, {fill:.0}% full)",
        store.root().display(),
        ByteSize::b(free),
        ByteSize::b(total)
    );
    match engine.fallback_reason() {
        None => println!("I/O path:    {}", engine.path()),
        Some(why) => println!("I/O path:    {} ({why})", engine.path()),
    }
    println!(
        "chunk size:  {}   keep: {} complete sets per job",
        ByteSize::b(store.options().chunk_size),
        store.options().keep
    );
    for line in crate::drain_cmd::tier_lines(&drain_status) {
        println!("{line}");
    }
    println!("{}", libckpt::criu::discover::status_line(&criu));
    for j in &jobs {
        println!(
            "job {}: {} complete, {} writing, {} abandoned, {} uncommitted, {} damaged, latest {}",
            j["job"].as_str().unwrap_or("?"),
            j["complete"],
            j["writing"],
            j["abandoned"],
            j["uncommitted"],
            j["damaged"],
            j["latest"].as_str().unwrap_or("-")
        );
    }
    Ok(Exit::Ok)
}
