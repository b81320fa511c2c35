//! The sockets a service serves on: bound by its caller (a test binds port 0), each named by the
//! setting it comes from so a failed bind says what to change.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

/// The sockets a service serves on, bound by its caller: gRPC, and optionally the admin HTTP port
/// (metrics). A bare listener converts into one without an admin port.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self { grpc, admin: None }
    }
}

/// An address to bind and the setting it comes from, for the error message if binding fails.
pub type Address<'a> = (SocketAddr, &'a str);

/// Binds `address`, naming its setting if that fails.
pub async fn bind((addr, setting): Address<'_>) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({setting})"))
}

/// The address `listener` serves on, if other hosts can reach it (not loopback only): where
/// plaintext or an open API deserves a warning.
pub fn off_loopback(listener: &TcpListener) -> Option<std::net::SocketAddr> {
    listener
        .local_addr()
        .ok()
        .filter(|addr| !addr.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_addresses_other_hosts_reach_are_off_loopback() {
        let loopback = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert_eq!(off_loopback(&loopback), None);
        let everywhere = TcpListener::bind("0.0.0.0:0").await.expect("bind");
        assert!(off_loopback(&everywhere).is_some());
    }
}
