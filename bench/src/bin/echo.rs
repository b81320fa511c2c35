//! `ordermesh-echo`: the raw tonic echo server (`ordermesh_bench::echo`) as a process of its own,
//! the baseline of the resident-memory benchmark. No layers and no telemetry, on purpose: it is
//! the floor a tonic server costs.
//!
//! ```text
//! ordermesh-echo --listen-addr 127.0.0.1:50099
//! ```

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh-echo",
    version,
    about = "A raw tonic server (the standard health service alone), until SIGINT/SIGTERM"
)]
struct Cli {
    /// Address to serve gRPC on (port 0: any free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:50099")]
    listen_addr: SocketAddr,
}

#[tokio::main]
#[allow(clippy::print_stderr)]
async fn main() -> anyhow::Result<()> {
    let Cli { listen_addr } = Cli::parse();
    let listener = tokio::net::TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr} (--listen-addr)"))?;
    // No tracing subscriber here, so stderr is the only way to say where a port-0 server landed.
    eprintln!("ordermesh-echo listening on {}", listener.local_addr()?);
    ordermesh_bench::echo::serve(listener, ordermesh_platform::shutdown::signal()).await?;
    Ok(())
}
