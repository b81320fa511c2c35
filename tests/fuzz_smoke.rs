//! Each cargo-fuzz target in `fuzz/` runs for a short, bounded time and must find nothing. It is a
//! smoke run, not a fuzzing campaign: it proves the targets build and hold on their seeds and on
//! what the fuzzer reaches in that time (the README says how to fuzz for longer).
//!
//! cargo-fuzz needs nightly-only compiler flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain take
//! them. The fuzz project is a workspace of its own with its own target dir (`fuzz/target`), so the
//! build here never waits on the lock of the `cargo test` running it. Without cargo-fuzz the test is
//! skipped locally and fails under CI=true (`.ci/run` installs it).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The targets, as named in `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &["event_decode", "create_order_validation"];
/// How long each target runs, in seconds.
const SECONDS: u32 = 25;
/// The build options; `cargo fuzz run` with the same ones reuses the build (see the README).
const BUILD_OPTIONS: &[&str] = &["--debug-assertions", "--codegen-units", "16"];

#[test]
fn every_fuzz_target_runs_clean_for_a_short_while() -> Result<()> {
    let Some(cargo_fuzz) = ordermesh_testkit::tool("cargo-fuzz")? else {
        return Ok(());
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let started = Instant::now();
    let build = run(cargo_fuzz_command(&cargo_fuzz, root)
        .arg("build")
        .args(BUILD_OPTIONS))?;
    if !build.status.success() {
        bail!("cargo fuzz build failed:\n{}", tail(&build, 60));
    }
    eprintln!("fuzz targets built in {:.0?}", started.elapsed());

    let mut failures = Vec::new();
    for target in TARGETS {
        // New inputs go to a scratch corpus, listed first; the committed seeds are read only.
        let scratch = tempfile::tempdir()?;
        let seeds = root.join("fuzz/corpus").join(target);
        let started = Instant::now();
        let output = run(cargo_fuzz_command(&cargo_fuzz, root)
            .args(["run", target])
            .args(BUILD_OPTIONS)
            .arg(scratch.path())
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={SECONDS}"))
            // A single input taking this long is a hang, and reported like a crash.
            .arg("-timeout=10"))?;
        eprintln!("{target}: {} in {:.0?}", output.status, started.elapsed());
        if !output.status.success() {
            failures.push(format!(
                "fuzz target {target} failed ({}); the crashing input is saved at {}\n\
                 reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run {} {target} <that file>\n\
                 what went wrong:\n{}\n\
                 last lines of its output:\n{}",
                output.status,
                saved_input(&output).unwrap_or_else(|| "(not found in the output)".into()),
                BUILD_OPTIONS.join(" "),
                what_went_wrong(&output),
                tail(&output, 30),
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    Ok(())
}

/// `cargo fuzz` in the repository root, on the stable toolchain, building into `fuzz/target` (its
/// default, made explicit: never the outer build's target dir, whatever this test was started with).
fn cargo_fuzz_command(cargo_fuzz: &Path, root: &Path) -> Command {
    let mut command = Command::new(cargo_fuzz);
    command
        .arg("fuzz")
        .current_dir(root)
        // cargo-fuzz passes `-Z` flags to rustc (sanitizer, coverage instrumentation).
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root.join("fuzz/target"))
        .env_remove("CARGO_BUILD_TARGET_DIR");
    // What cargo sets for this test process describes this package, not the fuzz build; build
    // scripts that watch these variables (ring's do) would run again and rebuild everything after
    // them, every time the test and a `cargo fuzz` from a shell take turns.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO"
            || name == "OUT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn run(command: &mut Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("running {command:?}"))
}

/// Where libFuzzer saved the input that failed (`fuzz/artifacts/<target>/crash-…`).
fn saved_input(output: &Output) -> Option<String> {
    let text = String::from_utf8_lossy(&output.stderr);
    text.lines()
        .find_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned())
        .or_else(|| {
            text.lines()
                .skip_while(|line| !line.contains("Failing input:"))
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.contains("Failing input:"))
                .map(str::to_owned)
        })
        .map(|path| {
            let path = PathBuf::from(path);
            path.canonicalize().unwrap_or(path).display().to_string()
        })
}

/// The panic message and the sanitizer's or libFuzzer's verdict, which a stack trace pushes far
/// from the end of the output.
fn what_went_wrong(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Vec<&str> = Vec::new();
    for (i, &line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            // The message is on the next line.
            found.extend(lines.iter().skip(i).take(2));
        } else if line.contains("==ERROR:") || line.starts_with("SUMMARY:") {
            found.push(line);
        }
    }
    cut_lines(&found)
}

/// The last `lines` lines of a command's output (stdout, then stderr).
fn tail(output: &Output, lines: usize) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let all: Vec<&str> = text.lines().collect();
    cut_lines(&all[all.len().saturating_sub(lines)..])
}

/// Lines cut to a readable length (libFuzzer prints a crashing input as one line of bytes).
fn cut_lines(lines: &[&str]) -> String {
    const MAX: usize = 300;
    lines
        .iter()
        .map(|line| match line.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => (*line).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
