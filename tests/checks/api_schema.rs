//! The API's schema against the API as released, with buf (`buf.yaml` says which rules and why):
//! the .proto files pass `buf lint`, and `buf breaking` finds nothing against the last released
//! snapshot (`proto/released/`), so gRPC callers and event consumers built against it still work.
//! A second test breaks a copy of the protos on purpose and shows the check fails, naming the
//! change: a check that cannot fail proves nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

// `buf <args>` in a directory holding buf.yaml and its module, `proto/`.
use crate::tool_run::{Run, run as buf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The snapshot of the API as last released (docs/schema.md: how to take the next one).
const RELEASED: &str = "proto/released/v0.1.0.binpb";

/// `buf breaking` against the released snapshot, one JSON line per finding.
fn breaking(tool: &Path, dir: &Path) -> Result<Run> {
    let against = Path::new(ROOT).join(RELEASED);
    let against = against
        .to_str()
        .context("the snapshot's path is not UTF-8")?;
    buf(
        tool,
        dir,
        &["breaking", "--against", against, "--error-format", "json"],
    )
}

#[test]
fn the_protos_lint_clean_and_break_nothing_released() -> Result<()> {
    let Some(tool) = ordermesh_testkit::tool("buf")? else {
        return Ok(());
    };
    let root = Path::new(ROOT);
    let lint = buf(&tool, root, &["lint"])?;
    ensure!(lint.success, "buf lint:\n{}", lint.output);
    let breaking = breaking(&tool, root)?;
    ensure!(
        breaking.success,
        "buf breaking against {RELEASED} (a released field renamed, renumbered or removed, a method \
         or message gone; add, do not change):\n{}",
        breaking.output
    );
    Ok(())
}

/// Copies `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Replaces the one occurrence of `old` in `file` under `dir` (more or fewer is an error: the
/// proto changed under the test, which must then change too).
fn edit(dir: &Path, file: &str, old: &str, new: &str) -> Result<()> {
    let path: PathBuf = dir.join(file);
    let text = std::fs::read_to_string(&path).with_context(|| file.to_owned())?;
    ensure!(
        text.matches(old).count() == 1,
        "{file}: expected `{old}` exactly once to break it on purpose"
    );
    std::fs::write(&path, text.replace(old, new))?;
    Ok(())
}

#[test]
fn a_renamed_event_field_and_a_renumbered_request_field_fail_the_check() -> Result<()> {
    let Some(tool) = ordermesh_testkit::tool("buf")? else {
        return Ok(());
    };
    // Arrange: a copy of the module and its configuration, which passes as it is (so what fails
    // below is the change, not the copy).
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    std::fs::copy(Path::new(ROOT).join("buf.yaml"), dir.join("buf.yaml"))?;
    copy_tree(&Path::new(ROOT).join("proto"), &dir.join("proto"))?;
    let unchanged = breaking(&tool, dir)?;
    ensure!(
        unchanged.success,
        "the unchanged copy should pass:\n{}",
        unchanged.output
    );

    // Act: OrderPlaced's payment_id renamed (its JSON name, what consumers read on Kafka, changes
    // with it), and ChargeRequest's payment_method_token moved to another number (what the binary
    // wire carries).
    edit(
        dir,
        "proto/ordermesh/events/v1/events.proto",
        "string payment_id = 7;",
        "string paid_with = 7;",
    )?;
    edit(
        dir,
        "proto/ordermesh/payment/v1/payment.proto",
        "string payment_method_token = 4;",
        "string payment_method_token = 14;",
    )?;
    let broken = breaking(&tool, dir)?;

    // Assert: the check fails, and names both changes with the rules that caught them.
    println!("buf breaking on the broken copy said:\n{}", broken.output);
    ensure!(!broken.success, "buf breaking passed a breaking change");
    for (file, rule, words) in [
        (
            "events.proto",
            "FIELD_SAME_JSON_NAME",
            ["OrderPlaced", "paymentId"],
        ),
        (
            "events.proto",
            "FIELD_SAME_NAME",
            ["OrderPlaced", "payment_id"],
        ),
        (
            "payment.proto",
            "FIELD_NO_DELETE",
            ["ChargeRequest", "payment_method_token"],
        ),
    ] {
        ensure!(
            broken.output.lines().any(|line| {
                line.contains(file)
                    && line.contains(&format!("\"type\":\"{rule}\""))
                    && words.iter().all(|w| line.contains(w))
            }),
            "expected {rule} on {} in {file}; buf said:\n{}",
            words.join(" "),
            broken.output
        );
    }
    Ok(())
}
