//! A compression bomb against the real payment binary: a gzip request frame well under the 64 KiB
//! request limit that inflates to 32 MiB. The server inflates into a buffer bounded by the same
//! limit, so the call is refused with RESOURCE_EXHAUSTED, the process's peak memory barely moves
//! (it would grow by the inflated size, twice over with the decode, if the limit did not apply to
//! the inflated bytes), the same connection serves the next charge, and nothing is recorded for the
//! refused one. Peak memory is the kernel's VmHWM of the server process, which only this test
//! talks to. On SQLite and on PostgreSQL (`#[on_both_backends]`).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use ordermesh::{
    proto::payment::v1::ChargeRequest,
    proto::payment::v1::payment_service_client::PaymentServiceClient, proto::types::v1::Money,
};
use ordermesh_testkit::{Backend, Databases, Process, on_both_backends, unused_addr};
use tonic::{Code, codec::CompressionEncoding};

/// Inflated size of the bomb's one string field.
const BOMB_BYTES: usize = 32 * 1024 * 1024;
/// How much the server's peak memory may grow across the bomb: a fraction of what inflating it
/// would take, and far more than the noise of serving two small calls.
const ALLOWED_GROWTH_KIB: u64 = 12 * 1024;

fn charge(key: &str, token: String) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        order_id: format!("ord_{key}"),
        amount: Some(Money {
            currency_code: "USD".into(),
            minor_units: 1_999,
        }),
        payment_method_token: token,
    }
}

/// The process's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/<pid>/status")
}

#[on_both_backends]
#[tokio::test]
async fn a_compression_bomb_is_refused_without_inflating_and_the_connection_goes_on(
    backend: Backend,
) -> Result<()> {
    // Arrange: the binary on a free port; one client (one HTTP/2 connection) that gzips every
    // request.
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    let database = databases.url("payment");
    let addr = unused_addr().await?;
    let mut payment = Process::spawn(
        "payment",
        Path::new(env!("CARGO_BIN_EXE_payment")),
        &[],
        &[
            ("PAYMENT_LISTEN_ADDR", addr.to_string()),
            ("PAYMENT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("PAYMENT_DATABASE_URL", database.clone()),
        ],
        dir.path().join("payment.log"),
    )?;
    payment.wait_serving(addr).await?;
    let pid = payment.pid().context("payment's pid")?;
    let mut client = PaymentServiceClient::connect(format!("http://{addr}"))
        .await?
        .send_compressed(CompressionEncoding::Gzip);
    client
        .charge(charge("before", "tok_visa".into()))
        .await
        .context("a gzip-compressed charge")?;
    let peak_before = peak_rss_kib(pid)?;

    // Act: the bomb. A megabyte of one repeated byte deflates about a thousandfold.
    let bomb = charge("bomb", "A".repeat(BOMB_BYTES));
    let refused = client
        .charge(bomb)
        .await
        .expect_err("a 32 MiB message is over the limit");

    // Assert: the right code, bounded memory, the connection still serving, nothing recorded.
    let growth = peak_rss_kib(pid)?.saturating_sub(peak_before);
    eprintln!("peak memory grew by {growth} KiB across the bomb");
    ensure!(
        growth < ALLOWED_GROWTH_KIB,
        "peak memory grew by {growth} KiB across the bomb (inflated it is {} KiB)",
        BOMB_BYTES / 1024
    );
    ensure!(
        refused.code() == Code::ResourceExhausted,
        "expected RESOURCE_EXHAUSTED, got {refused:?}"
    );
    ensure!(
        refused.message().contains("size limit"),
        "the message says why: {}",
        refused.message()
    );
    client
        .charge(charge("after", "tok_visa".into()))
        .await
        .context("the same connection after the bomb")?;
    payment.terminate().await?;
    let db = ordermesh_platform::db::connect(&database).await?;
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM payments ORDER BY created_at_ms")
            .fetch_all(&db)
            .await?;
    db.close().await;
    ensure!(keys == ["before", "after"], "recorded charges: {keys:?}");
    Ok(())
}
