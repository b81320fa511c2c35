//! Running a tool from outside the Rust toolchain (buf, promtool) in a directory, for the checks
//! that judge the files by what the tool says.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

/// What a tool printed, and whether it succeeded.
pub(crate) struct Run {
    pub(crate) success: bool,
    /// Its standard output, then its standard error.
    pub(crate) output: String,
}

/// `tool <args>` in `dir`.
pub(crate) fn run(tool: &Path, dir: &Path, args: &[&str]) -> Result<Run> {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {} {}", tool.display(), args.join(" ")))?;
    Ok(Run {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}
