//! The payment service binary: the shared command line (settings, `healthcheck`), then serve until
//! SIGINT/SIGTERM.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ordermesh_platform::cli::main(|listeners, config: ordermesh_payment::Config| {
        ordermesh_payment::run(listeners, config, ordermesh_platform::shutdown::signal())
    })
    .await
}
