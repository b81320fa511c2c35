//! The embedded broker the quick start runs on: librdkafka's mock cluster behind a stable address.

use std::{net::SocketAddr, time::Duration};

use rdkafka::{mocking::MockCluster, producer::DefaultProducerContext};
use tokio::net::TcpListener;

use crate::BrokerError;

/// Where the runner's embedded broker listens unless told otherwise.
pub const DEFAULT_EMBEDDED_ADDR: &str = "127.0.0.1:9092";
/// An in-process Kafka-protocol broker (librdkafka's mock cluster) reachable at a stable address.
/// Everything it holds is in memory and gone when it is dropped.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    addr: SocketAddr,
    /// Dropping it stops the forwarder thread.
    _stop_forwarder: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .field("mock", &self.cluster.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster with `topics` created, and forwards `listen` to it
    /// (`127.0.0.1:0` picks a free port, as tests do).
    ///
    /// The forwarder runs on a thread of its own, not on the caller's runtime: clients in this same
    /// process make blocking calls (metadata, commits, close) that would otherwise be able to starve
    /// the very task that must carry their traffic.
    pub fn start(
        listen: SocketAddr,
        topics: &[&str],
        partitions: i32,
    ) -> Result<Self, BrokerError> {
        let cluster = MockCluster::new(1)?;
        for topic in topics {
            cluster.create_topic(topic, partitions, 1)?;
        }
        let listen_error = |source| BrokerError::Listen {
            addr: listen,
            source,
        };
        let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(listen_error)?;
        let target = cluster.bootstrap_servers();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("embedded-kafka-forwarder".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = forward(listener, target) => {}
                        // The broker was dropped.
                        _ = stopped => {}
                    }
                })
            })
            .map_err(listen_error)?;
        tracing::info!(%addr, mock = %cluster.bootstrap_servers(), "embedded Kafka broker started");
        Ok(Self {
            cluster,
            addr,
            _stop_forwarder: stop,
        })
    }

    /// The stable bootstrap address (what clients are configured with).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bootstrap servers for clients in this process: the stable address.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// Creates another topic.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        Ok(self.cluster.create_topic(topic, partitions, 1)?)
    }

    /// The mock cluster itself, for tests that inject broker faults.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

/// Accepts bootstrap connections and pipes each to the mock broker until either side closes.
async fn forward(listener: TcpListener, target: String) {
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
        let target = target.clone();
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(error) => tracing::warn!(%peer, %error, "cannot reach the mock broker"),
            }
        });
    }
}
