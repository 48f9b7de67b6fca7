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
