//! The benchmark harness works end to end: `ordermesh-bench --smoke` runs every benchmark at a
//! tiny scale and prints a row per figure. Its figures mean nothing and nothing about them is
//! asserted beyond being there: timing belongs in the full run, on a quiet machine.

use std::process::Stdio;

use tokio::process::Command;

#[tokio::test]
async fn every_benchmark_runs_at_smoke_scale() -> anyhow::Result<()> {
    let listed = Command::new(env!("CARGO_BIN_EXE_ordermesh-bench"))
        .arg("--list")
        .output()
        .await?;
    let names: Vec<String> = String::from_utf8(listed.stdout)?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    assert!(names.iter().any(|n| n == "rss"), "{names:?}");

    let output = Command::new(env!("CARGO_BIN_EXE_ordermesh-bench"))
        .args(["--smoke", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8(output.stderr)?;
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("smoke run"), "{stdout}");
    // One JSON array of comparisons after the table, each with figures on both sides.
    let json = &stdout[stdout.find('[').expect("JSON after the table")..];
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    assert!(rows.len() >= 10, "{stdout}");
    // The resident-memory rows run the real service binaries beside ordermesh-bench (cargo test
    // --workspace builds them: each service package has an integration test); the loop below
    // checks they have figures.
    for service in ["order", "payment", "notifier"] {
        for what in [
            "RSS under load",
            "RSS idle",
            "VmHWM after load",
            "anonymous RSS under load",
        ] {
            assert!(
                rows.iter().any(|row| row["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{service} {what}")))),
                "no {service} {what} row: {stdout}"
            );
        }
    }
    // The cost of one order: the whole beside the sum of its parts, and each part in a row of its
    // own (raw figure only), so the sum can be read off.
    let named = |prefix: &str| {
        rows.iter()
            .filter(|row| row["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .count()
    };
    assert_eq!(named("CPU per order"), 1, "{stdout}");
    assert_eq!(named("  part: "), 6, "{stdout}");
    for row in &rows {
        // A baseline whose tool is missing (kcat) says so in its name and has no figures.
        if row["name"].as_str().is_some_and(|n| n.contains("skipped")) {
            continue;
        }
        // A row with a ratio has figures on both sides; a part, or a figure with nothing to be
        // compared with (orders/s with the notifier running), on its one side.
        let sides: &[&str] = if row["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("  part: "))
        {
            &["raw"]
        } else if row["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("Orders/s"))
        {
            &["ours"]
        } else {
            &["ours", "raw"]
        };
        for side in sides {
            let figures = row[side].as_array().expect("figures");
            assert!(
                !figures.is_empty() && figures.iter().all(|f| f.as_f64().is_some_and(|v| v > 0.0)),
                "{row}"
            );
        }
    }
    // A name that is not a benchmark is an error that says where to look.
    let unknown = Command::new(env!("CARGO_BIN_EXE_ordermesh-bench"))
        .args(["--only", "nope"])
        .output()
        .await?;
    assert!(!unknown.status.success());
    assert!(String::from_utf8(unknown.stderr)?.contains("--list"));
    Ok(())
}
