//! docs/configuration.md is what `ordermesh config-reference` prints: the reference is generated
//! from the binaries' own flag definitions, so a setting added, renamed or given a new default
//! shows up here until the file is generated again.

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn the_configuration_reference_is_what_the_code_generates() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_ordermesh"))
        .arg("config-reference")
        .output()?;
    ensure!(
        out.status.success(),
        "config-reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout)?;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let written = std::fs::read_to_string(path)?;
    ensure!(
        generated == written,
        "docs/configuration.md differs from what the code generates: run\n  \
         cargo run --bin ordermesh -- config-reference > docs/configuration.md\n\
         (first line that differs: {:?})",
        generated.lines().zip(written.lines()).find(|(a, b)| a != b)
    );
    // Every binary's settings are there, and the ones read by name.
    for heading in [
        "## `payment`",
        "## `order`",
        "## `notifier`",
        "## `ordermesh`, the runner",
    ] {
        ensure!(generated.contains(heading), "{heading} is missing");
    }
    for setting in [
        "`ORDER_RECONCILE_GRACE_MS`",
        "`NOTIFIER_CHANNELS`",
        "`KAFKA_BROKERS`",
        "`OTEL_EXPORTER_OTLP_ENDPOINT`",
        "`replay-dead-letters --channel`",
    ] {
        ensure!(generated.contains(setting), "{setting} is missing");
    }
    Ok(())
}
