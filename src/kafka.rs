//! Kafka settings shared by the producer and the consumers, topic creation, and the embedded broker
//! the quick start runs on.
//!
//! The embedded broker is librdkafka's mock cluster: an in-process server that speaks the real Kafka
//! wire protocol (so kcat and any other client can read from it) and keeps everything in memory. Its
//! brokers listen on random loopback ports, so [`EmbeddedBroker`] also listens on a stable address
//! (127.0.0.1:9092 by default) and forwards bootstrap connections there to the mock broker. Clients
//! then learn the broker's real address from metadata and connect to it directly, which works from
//! anywhere on the same machine.

use std::{net::SocketAddr, time::Duration};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    mocking::MockCluster,
    producer::DefaultProducerContext,
    types::RDKafkaErrorCode,
};
use tokio::net::TcpListener;

/// The topic OrderPlaced events go to unless configured otherwise.
pub const DEFAULT_ORDER_EVENTS_TOPIC: &str = "order-events";
/// Where the runner's embedded broker listens unless told otherwise.
pub const DEFAULT_EMBEDDED_ADDR: &str = "127.0.0.1:9092";
/// Partitions of topics the services create. Events are keyed by order id, so one order's events stay
/// in order on one partition while different orders spread out.
pub const DEFAULT_PARTITIONS: i32 = 3;

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Kafka client error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("Kafka client task failed: {0}")]
    Task(String),
    #[error(
        "embedded broker cannot listen on {addr}: {source} (is another broker on that port? set another address)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Client settings every ordermesh Kafka client starts from.
pub fn client_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Network requests time out after 10 s instead of librdkafka's 60 s, so an unreachable
        // broker surfaces as an error while a caller is still waiting for it.
        .set("socket.timeout.ms", "10000");
    config
}

/// Makes sure `topics` exist. Existing topics are left as they are. Brokers that refuse CreateTopics
/// (the embedded mock cluster does not implement it; the runner creates its topics directly) give an
/// error that says so.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), BrokerError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers, "ordermesh-admin").create()?;
    // fetch_metadata blocks its thread until the broker answers: keep it off the async workers.
    let (admin, metadata) = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10));
        (admin, metadata)
    })
    .await
    .map_err(|e| BrokerError::Task(e.to_string()))?;
    let metadata = metadata?;
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(BrokerError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// [`ensure_topics`], retried with backoff until it succeeds, in the background: a service can start
/// (and accept work it keeps durably, as the order service's outbox does) while the broker is still
/// down, and the topics appear once it is up. Each failure is logged with the setting to check.
pub fn ensure_topics_in_background(
    brokers: String,
    topics: Vec<String>,
    partitions: i32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            match ensure_topics(&brokers, &names, partitions).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%brokers, %error, retry_in_ms = backoff.as_millis(), "cannot make sure the topics exist yet (KAFKA_BROKERS)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    })
}

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
