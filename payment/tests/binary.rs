//! The payment binary as a real process: it serves, and SIGTERM (what `docker stop` sends) stops it
//! cleanly, exit code 0, its port released. Having an integration test is also what makes `cargo
//! test --workspace` build this binary, which the resident-memory benchmark runs.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use ordermesh_testkit::{Process, is_serving, unused_addr};

#[tokio::test]
async fn serves_then_exits_cleanly_on_sigterm() -> Result<()> {
    // Arrange: the binary on a free port, its database in a temporary directory.
    let dir = tempfile::tempdir()?;
    let addr = unused_addr().await?;
    let mut payment = Process::spawn(
        "payment",
        Path::new(env!("CARGO_BIN_EXE_payment")),
        &[],
        &[
            ("PAYMENT_LISTEN_ADDR", addr.to_string()),
            // Any free port: tests run side by side.
            ("PAYMENT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            (
                "PAYMENT_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("payment.db").display()),
            ),
            ("RUST_LOG", "info".to_owned()),
        ],
        dir.path().join("payment.log"),
    )?;
    payment.wait_serving(addr).await?;
    let log = dir.path().join("payment.log");

    // Act: SIGTERM, as a container runtime stopping it would send.
    let exited = payment
        .terminate_within(Duration::from_secs(5))
        .await?
        .with_context(|| {
            format!(
                "still running 5 s after SIGTERM; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;

    // Assert: a clean exit, and nothing answers on its port any more.
    assert_eq!(
        exited.code(),
        Some(0),
        "{exited}; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!is_serving(addr).await, "still serving after exit");
    Ok(())
}
