//! Every crate declares only what it uses: cargo-shear reads each package's sources (lib, bins,
//! tests, benches) against its manifest and reports unused dependencies, dev-dependencies in the
//! wrong table, source files no module reaches, and doc-test or test runs with nothing to run.

use anyhow::{Result, ensure};

#[test]
fn every_crate_declares_only_what_it_uses() -> Result<()> {
    let Some(shear) = ordermesh_testkit::tool("cargo-shear")? else {
        return Ok(());
    };
    // As a cargo subcommand (cargo-shear expects `shear` as its first argument), on the whole
    // workspace, warnings refused too. It parses sources; it builds nothing.
    let out = std::process::Command::new(shear)
        .args(["shear", "--deny-warnings", "--color", "never"])
        .arg(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    ensure!(
        out.status.success(),
        "cargo shear found dependencies to fix (run `cargo shear` to see them, `cargo shear --fix` \
         to remove unused ones):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
