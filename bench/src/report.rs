//! Where a harness's markdown report goes: standard output, and appended
//! to `--markdown FILE` when given (several runs collect in one file).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;

pub fn publish(report: &str, markdown: Option<&Path>) -> anyhow::Result<()> {
    print!("{report}");
    io::stdout().flush()?;
    if let Some(path) = markdown {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(report.as_bytes())
            .with_context(|| format!("appending to {}", path.display()))?;
    }
    Ok(())
}

/// Per-round values for a table cell: "1.20, 1.31, –".
pub fn cells(v: &[Option<f64>], f: impl Fn(f64) -> String) -> String {
    v.iter()
        .map(|x| x.map_or("–".into(), &f))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value or "–" when it was not measured.
pub fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// Bytes as MiB with one decimal.
pub fn mib(b: f64) -> String {
    format!("{:.1}", b / (1u64 << 20) as f64)
}

/// A target's verdict in bold.
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}
