//! Writes checkpoint sets in a loop until killed, for the SIGKILL test.
//!
//! usage: ckpt-torture CACHE JOB SEED ENGINE(uring|fallback) KEEP
//! Each set gets the files `ckpt_tests::torture_files(SEED, index)` gives;
//! half of them through the engine, half by plain writes sealed at commit,
//! so both sealing paths are under the knife. Prints "committed NAME" after
//! each commit returns.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ckpt_tests::{torture_files, torture_set_index, torture_set_name};
use libckpt::io::{EngineKind, IoEngine, IoOptions};
use libckpt::path::{JobName, RelPath, SetName};
use libckpt::store::{Store, StoreOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, cache, job, seed, engine, keep] = args.as_slice() else {
        bail!("usage: ckpt-torture CACHE JOB SEED ENGINE KEEP");
    };
    let seed: u64 = seed.parse().context("SEED")?;
    let kind: EngineKind = engine.parse().map_err(anyhow::Error::msg)?;
    let engine = IoEngine::new(&IoOptions {
        kind,
        ..IoOptions::default()
    })?;
    let store = Store::open(
        cache.as_ref(),
        Arc::new(engine),
        StoreOptions {
            chunk_size: 64 * 1024,
            keep: keep.parse().context("KEEP")?,
            ..Default::default()
        },
    )?;
    let job = JobName::new(job.as_str())?;
    let mut next = store
        .sets(&job)?
        .iter()
        .filter_map(|s| torture_set_index(s.set.as_str()))
        .max()
        .map_or(0, |i| i + 1);
    let mut out = std::io::stdout().lock();
    loop {
        let name = SetName::new(torture_set_name(next))?;
        let mut w = store.create_set(&job, &name)?;
        for (i, (path, bytes)) in torture_files(seed, next).iter().enumerate() {
            let rel = RelPath::new(path.as_str())?;
            if i % 2 == 0 {
                w.write_bytes(&rel, bytes)?;
            } else {
                let p = rel.under(w.dir());
                std::fs::create_dir_all(p.parent().context("parent")?)?;
                std::fs::write(&p, bytes)?;
            }
        }
        w.commit()?;
        writeln!(out, "committed {name}")?;
        out.flush()?;
        next += 1;
    }
}
