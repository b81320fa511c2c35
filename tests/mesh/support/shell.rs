//! Running the tools users have (grpcurl, kcat) as a user would: through `sh -c`, with a bound on
//! how long a command may take.

use std::process::Output;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// The tool's path, None to skip (locally), or an error (in CI).
pub use ordermesh_testkit::tool;

/// Runs a command line through `sh -c`, failing with its output if it exits non-zero or runs for
/// more than a minute (killed then).
pub async fn sh(command: &str) -> Result<String> {
    let run = Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output();
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .with_context(|| format!("`{command}` still running after 60 s"))?
        .with_context(|| format!("run {command}"))?;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    if !status.success() {
        bail!(
            "`{command}` failed ({status}):\n{stdout}\n{}",
            String::from_utf8_lossy(&stderr)
        );
    }
    Ok(stdout)
}
