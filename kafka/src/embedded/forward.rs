//! The embedded broker's front door: every client connection comes in here and is piped to the mock
//! broker, so the broker can be taken down and brought back on a port that never changes hands.

use std::time::Duration;

use tokio::{net::TcpListener, sync::watch};

/// Accepts client connections and pipes each to the mock broker at `target` until either side
/// closes, or until `reachable` turns false: then every open connection is closed, and connections
/// made while it stays false are closed as soon as they are accepted (a broker that is down).
pub(super) async fn forward(
    listener: TcpListener,
    target: String,
    reachable: watch::Receiver<bool>,
) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // Usually EMFILE; back off instead of spinning.
                tracing::warn!(%error, "embedded broker accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut reachable = reachable.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let mut outbound = tokio::select! {
                // Reachability first: a connection accepted while down is never let through.
                biased;
                // Down: the client is turned away (its connection is closed when `inbound` drops).
                _ = reachable.wait_for(|up| !*up) => return,
                connected = tokio::net::TcpStream::connect(&target) => match connected {
                    Ok(outbound) => outbound,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "cannot reach the mock broker");
                        return;
                    }
                },
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                biased;
                // Taken down: both sides are closed, as a broker going away closes them.
                _ = reachable.wait_for(|up| !*up) => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
