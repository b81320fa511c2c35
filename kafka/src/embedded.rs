//! The embedded broker the quick start runs on: librdkafka's mock cluster behind a stable address.

use std::net::SocketAddr;

use rdkafka::{
    ClientConfig,
    client::{Client, DefaultClientContext},
    mocking::MockCluster,
    types::RDKafkaType,
};
use tokio::{net::TcpListener, sync::watch};

use crate::BrokerError;

mod advertise;
mod forward;

/// Where the runner's embedded broker listens unless told otherwise.
pub const DEFAULT_EMBEDDED_ADDR: &str = "127.0.0.1:9092";
/// How much of each partition the embedded broker keeps: librdkafka's mock cluster drops a
/// partition's oldest message sets once it holds more than 5 MiB of them (or 100,000 sets), and a
/// consumer behind that then skips to the oldest one kept. About 6,000 order events a partition;
/// real Kafka keeps what its retention settings say.
pub const RETAINED_BYTES_PER_PARTITION: usize = 5 * 1024 * 1024;

/// An in-process Kafka-protocol broker (librdkafka's mock cluster) reachable at a stable address.
/// Everything it holds is in memory and gone when it is dropped, and it keeps only the newest
/// [`RETAINED_BYTES_PER_PARTITION`] of each partition.
///
/// All client traffic goes through that address: the mock broker advertises it in its metadata,
/// and a forwarder pipes each connection on to the mock's own (random) port. That is what lets the
/// broker be taken [down](EmbeddedBroker::down) and brought [up](EmbeddedBroker::up) again without
/// giving up a port: librdkafka's own broker-down closes its listening socket and binds the port
/// again, and aborts the whole process if, in between, some other socket took the port.
pub struct EmbeddedBroker {
    /// The client the mock cluster belongs to (made with `test.mock.num.brokers`); the cluster
    /// lives as long as it.
    owner: Client<DefaultClientContext>,
    addr: SocketAddr,
    /// Whether the forwarder lets clients through.
    reachable: watch::Sender<bool>,
    /// Dropping it stops the forwarder thread.
    _stop_forwarder: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .field("up", &*self.reachable.borrow())
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster with `topics` created, and serves it on `listen`
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
        let mut config = ClientConfig::new();
        config.set("test.mock.num.brokers", "1");
        let owner = Client::new(
            &config,
            config.create_native_config()?,
            RDKafkaType::RD_KAFKA_PRODUCER,
            DefaultClientContext,
        )?;
        let listen_error = |source| BrokerError::Listen {
            addr: listen,
            source,
        };
        let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let (reachable, reachable_rx) = watch::channel(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let broker = Self {
            owner,
            addr,
            reachable,
            _stop_forwarder: stop,
        };
        let cluster = broker.cluster()?;
        for topic in topics {
            cluster.create_topic(topic, partitions, 1)?;
        }
        // Before any client connects, so that every client's metadata names the stable address.
        advertise::advertise(&broker.owner, advertised(addr))?;
        let target = cluster.bootstrap_servers();
        drop(cluster);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(listen_error)?;
        std::thread::Builder::new()
            .name("embedded-kafka-forwarder".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = forward::forward(listener, target, reachable_rx) => {}
                        // The broker was dropped.
                        _ = stopped => {}
                    }
                })
            })
            .map_err(listen_error)?;
        tracing::info!(%addr, "embedded Kafka broker started");
        Ok(broker)
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
        Ok(self.cluster()?.create_topic(topic, partitions, 1)?)
    }

    /// Takes the broker down: every client connection is closed, and new ones are closed as soon
    /// as they are made, until [`EmbeddedBroker::up`]. What the broker stores is kept.
    pub fn down(&self) {
        self.reachable.send_replace(false);
    }

    /// Brings the broker back after [`EmbeddedBroker::down`].
    pub fn up(&self) {
        self.reachable.send_replace(true);
    }

    /// The mock cluster itself, for tests that inject broker faults.
    pub fn cluster(&self) -> Result<MockCluster<'_, DefaultClientContext>, BrokerError> {
        self.owner.mock_cluster().ok_or(BrokerError::NoMockCluster)
    }
}

/// The address the broker puts in its metadata: where it listens, or loopback if it listens on
/// every interface (clients on this machine reach it there; others need a real broker).
fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}
