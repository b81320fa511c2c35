//! The order service binary: the shared command line (settings, `healthcheck`), then serve until
//! SIGINT/SIGTERM.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ordermesh_platform::cli::main(|listeners, config: ordermesh_order::Config| {
        ordermesh_order::run(listeners, config, ordermesh_platform::shutdown::signal())
    })
    .await
}
