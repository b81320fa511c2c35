//! Loopback addresses for the servers a test starts as processes: they cannot be handed a listener,
//! so the test picks a free port and tells them.

use std::net::SocketAddr;

use anyhow::Result;

/// A loopback address nobody listens on now (bound, read and released).
pub async fn unused_addr() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}
