//! The payment binary as a real process: it serves, and SIGTERM (what `docker stop` sends) stops it
//! cleanly, exit code 0, its port released. Having an integration test is also what makes `cargo
//! test --workspace` build this binary, which the resident-memory benchmark runs. On SQLite and
//! on PostgreSQL (`#[on_both_backends]`).

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use ordermesh_testkit::{Backend, Databases, Process, is_serving, on_both_backends, unused_addr};

#[on_both_backends]
#[tokio::test]
async fn serves_then_exits_cleanly_on_sigterm(backend: Backend) -> Result<()> {
    // Arrange: the binary on a free port, its database in a temporary directory (or server).
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    let addr = unused_addr().await?;
    let mut payment = Process::spawn(
        "payment",
        Path::new(env!("CARGO_BIN_EXE_payment")),
        &[],
        &[
            ("PAYMENT_LISTEN_ADDR", addr.to_string()),
            // Any free port: tests run side by side.
            ("PAYMENT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("PAYMENT_DATABASE_URL", databases.url("payment")),
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

/// What compose's health check runs against a payment serving mutual TLS: `payment healthcheck
/// --ca` with the service's own settings passes; without the CA it cannot pass.
#[on_both_backends]
#[tokio::test]
async fn the_healthcheck_subcommand_speaks_mutual_tls(backend: Backend) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    let certs = dir.path().join("certs");
    ordermesh_runner::dev_certs::write_dev_certs(&certs)?;
    let addr = unused_addr().await?;
    let path = |name: &str| certs.join(name).display().to_string();
    let env = [
        ("PAYMENT_LISTEN_ADDR", addr.to_string()),
        ("PAYMENT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("PAYMENT_DATABASE_URL", databases.url("payment")),
        ("PAYMENT_TLS_CERT", path("payment.pem")),
        ("PAYMENT_TLS_KEY", path("payment.key")),
        ("PAYMENT_TLS_CLIENT_CA", path("ca.pem")),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_payment"));
    let payment = Process::spawn("payment", binary, &[], &env, dir.path().join("payment.log"))?;
    let check = |args: Vec<String>| {
        let env = env.clone();
        async move {
            tokio::process::Command::new(binary)
                .arg("healthcheck")
                .args(args)
                .envs(env)
                .output()
                .await
        }
    };
    // The server needs a moment to start; the check with the CA is the readiness probe.
    let mut healthy = None;
    for _ in 0..100 {
        let out = check(vec!["--ca".into(), path("ca.pem")]).await?;
        if out.status.success() {
            healthy = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        healthy.is_some(),
        "healthcheck --ca never passed; payment's log:\n{}",
        payment.log_text()
    );
    let plaintext = check(Vec::new()).await?;
    anyhow::ensure!(
        !plaintext.status.success(),
        "a plaintext check of a TLS server passed"
    );
    let stderr = String::from_utf8_lossy(&plaintext.stderr);
    anyhow::ensure!(stderr.contains("pass --ca"), "{stderr}");
    let other_ca = check(vec!["--ca".into(), path("outsider.pem")]).await?;
    anyhow::ensure!(
        !other_ca.status.success(),
        "a check trusting another CA passed"
    );
    payment.terminate().await
}
