//! Finding the tools from outside the Rust toolchain a test needs (tansu, kcat, cargo-shear, ...):
//! one rule for all of them, so every test skips locally and fails in CI the same way.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The path of tool `name`, None to skip (locally), or an error (in CI).
pub fn tool(name: &str) -> Result<Option<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    match dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        Some(path) => Ok(Some(path)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            bail!("{name} is not installed, and CI=true requires it (.ci/run installs it)")
        }
        None => {
            eprintln!(
                "SKIPPED: {name} is not installed (run .ci/run, or install it, to run this test)"
            );
            Ok(None)
        }
    }
}
