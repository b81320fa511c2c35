//! The PostgreSQL template data directory is built once, however many threads ask for it at once,
//! and nothing but a whole template of ours is ever handed out: the test suites on PostgreSQL start
//! dozens of servers at the same moment from it, on a machine that may never have run them.

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::Command,
    sync::{Arc, Barrier},
};

use anyhow::{Context, Result, bail};
use ordermesh_testkit::postgres::{bin_dir, template_in};

/// As many as the PostgreSQL mesh suite starts at once, and then some.
const THREADS: usize = 16;

#[test]
fn many_threads_asking_at_once_in_an_empty_temp_dir_get_one_whole_template() -> Result<()> {
    let Some(bin) = bin_dir() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("PostgreSQL is not installed, and CI=true requires it (.ci/run installs it)");
        }
        eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
        return Ok(());
    };
    // Arrange: an empty temporary directory the server's user can enter, as /tmp is, holding only
    // what an initdb that died early leaves: a directory at the template's path with PG_VERSION in
    // it and nothing else.
    let root = tempfile::tempdir()?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o1777))?;
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .context("version directory")?
        .to_owned();
    let half_built = root.path().join(format!("ordermesh-pg-template-{version}"));
    std::fs::create_dir(&half_built)?;
    std::fs::write(half_built.join("PG_VERSION"), format!("{version}\n"))?;

    // Act: every thread asks at the same moment.
    let start = Arc::new(Barrier::new(THREADS));
    let askers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (start, root, bin) = (start.clone(), root.path().to_owned(), bin.clone());
            std::thread::spawn(move || {
                start.wait();
                template_in(&root, &bin)
            })
        })
        .collect();
    let mut answers: Vec<PathBuf> = Vec::new();
    for asker in askers {
        answers.push(asker.join().expect("no panic")?);
    }

    // Assert: one path for all, a whole cluster there (its control file reads as a cluster that
    // was shut down cleanly), and nothing left beside it but the lock file.
    assert!(
        answers.iter().all(|a| *a == half_built),
        "one template for all: {answers:?}"
    );
    let control = Command::new(bin.join("pg_controldata"))
        .arg("-D")
        .arg(&half_built)
        .output()?;
    let control_text = String::from_utf8_lossy(&control.stdout);
    assert!(
        control.status.success()
            && control_text
                .lines()
                .any(|line| line.starts_with("Database cluster state:")
                    && line.trim_end().ends_with("shut down")),
        "pg_controldata: {control_text}{}",
        String::from_utf8_lossy(&control.stderr)
    );
    let mut left: Vec<String> = std::fs::read_dir(root.path())?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    left.sort();
    assert_eq!(
        left,
        [
            format!("ordermesh-pg-template-{version}"),
            format!("ordermesh-pg-template-{version}.lock"),
        ],
        "no half-built directories left behind"
    );

    // And asked again, the finished template is found as it is, not built again.
    let control_file = half_built.join("global/pg_control");
    let built = std::fs::metadata(&control_file)?.modified()?;
    assert_eq!(template_in(root.path(), &bin)?, half_built);
    assert_eq!(std::fs::metadata(&control_file)?.modified()?, built);
    Ok(())
}

/// As root the server runs as the postgres user. A temporary directory inside a private one (what
/// `TMPDIR=$(mktemp -d)` gives) is one that user cannot reach: the error says so and what to do,
/// instead of initdb's "could not change directory" from deep inside.
#[test]
fn a_temp_dir_the_server_user_cannot_reach_is_refused_with_the_reason() -> Result<()> {
    let Some(bin) = bin_dir() else {
        eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
        return Ok(());
    };
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        eprintln!("SKIPPED: not root, so the server runs as this user and reaches any of its dirs");
        return Ok(());
    }
    // Arrange: a world-writable directory inside a private one.
    let private = tempfile::tempdir()?;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))?;
    let root = private.path().join("run");
    std::fs::create_dir(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777))?;

    // Act
    let refused = template_in(&root, &bin).expect_err("the postgres user cannot pass the 0700 dir");

    // Assert: the reason and the remedy, and nothing made there.
    let message = format!("{refused:#}");
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains("TMPDIR"), "{message}");
    assert_eq!(std::fs::read_dir(&root)?.count(), 0);
    Ok(())
}
