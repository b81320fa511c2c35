//! Loopback addresses for the servers a test starts as processes: they cannot be handed a listener,
//! so the test picks a free port and tells them.
//!
//! The port comes from below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
//! default), where the kernel never puts a port-0 listener or the local end of an outgoing
//! connection. A port picked from inside that range (by binding port 0 and letting go) could be
//! taken by any of the connections a test run makes before the server it was meant for bound it:
//! it happened, `aiosmtpd on 127.0.0.1:33495 exited at start` in a CI run. No port is handed out
//! twice by one process.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::Mutex,
};

use anyhow::{Result, bail};

/// Ports handed out by this process so far.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The lowest port of the range tests pick from.
const LOWEST: u16 = 10_000;

/// A loopback address nobody listens on now, that no other test of this process was given and
/// that the kernel does not give out by itself.
pub async fn unused_addr() -> Result<SocketAddr> {
    unused_loopback_addr()
}

/// [`unused_addr`], for callers that are not async.
pub(crate) fn unused_loopback_addr() -> Result<SocketAddr> {
    let below = ephemeral_start().max(LOWEST + 1_000);
    for _ in 0..1_000 {
        let port = fastrand::u16(LOWEST..below);
        let fresh = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert_with(HashSet::new)
            .insert(port);
        if !fresh {
            continue;
        }
        // Bound and let go at once: nobody listens there now.
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Ok(listener.local_addr()?);
        }
    }
    bail!("no free loopback port between {LOWEST} and {below} after 1000 tries")
}

/// The first port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ports_come_from_below_the_ephemeral_range_and_never_twice() {
        let start = ephemeral_start();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = unused_addr().await.expect("a port").port();
            assert!(
                (LOWEST..start.max(LOWEST + 1_000)).contains(&port),
                "{port} is where the kernel gives out ports itself (from {start})"
            );
            assert!(seen.insert(port), "{port} handed out twice");
        }
    }
}
