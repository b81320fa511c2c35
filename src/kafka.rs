//! Kafka settings shared by the producer and the consumers, topic creation, and the embedded broker
//! the quick start runs on.
//!
//! The embedded broker is librdkafka's mock cluster: an in-process server that speaks the real Kafka
//! wire protocol (so kcat and any other client can read from it) and keeps everything in memory. Its
//! brokers listen on random loopback ports, so [`EmbeddedBroker`] also listens on a stable address
//! (127.0.0.1:9092 by default) and forwards bootstrap connections there to the mock broker. Clients
//! then learn the broker's real address from metadata and connect to it directly, which works from
//! anywhere on the same machine.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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

use crate::auth::Secret;

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

/// How a service reaches Kafka: the brokers and, for a secured cluster, TLS and SASL. Flattened into
/// each service's settings; every producer, consumer and admin client a service makes starts from
/// [`KafkaSettings::client_config`], so securing the cluster needs no other change. Each field is
/// passed through to the librdkafka property named in its doc.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = DEFAULT_EMBEDDED_ADDR)]
    pub brokers: String,

    /// How to talk to the brokers (`security.protocol`): plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value_t
    )]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism (`sasl.mechanism`): SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN. Required with sasl_*.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name (`sasl.username`). Required with sasl_*.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password (`sasl.password`). Required with sasl_*; never logged.
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,

    /// TLS: the CA certificates (PEM) the brokers' certificates must chain to (`ssl.ca.location`).
    /// Unset: the system's trusted roots.
    #[arg(long = "kafka-ssl-ca", env = "KAFKA_SSL_CA")]
    pub ssl_ca: Option<PathBuf>,

    /// TLS client certificate (PEM) for brokers that authenticate clients by certificate
    /// (`ssl.certificate.location`). With KAFKA_SSL_KEY.
    #[arg(long = "kafka-ssl-cert", env = "KAFKA_SSL_CERT")]
    pub ssl_cert: Option<PathBuf>,

    /// The TLS client certificate's private key (PEM, `ssl.key.location`).
    #[arg(long = "kafka-ssl-key", env = "KAFKA_SSL_KEY")]
    pub ssl_key: Option<PathBuf>,
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    // librdkafka's (and Kafka's) spelling, not clap's kebab-case.
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`, the ones that need nothing beyond a user name and password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// Kafka settings that contradict each other or name files that cannot be read. Each message names
/// the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSettingsError {
    #[error("KAFKA_SECURITY_PROTOCOL={protocol} needs {missing}")]
    Missing {
        protocol: &'static str,
        missing: &'static str,
    },
    #[error(
        "{setting} is set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use it (did you mean {instead}?)"
    )]
    Unused {
        setting: &'static str,
        protocol: &'static str,
        instead: &'static str,
    },
    #[error("KAFKA_SSL_CERT and KAFKA_SSL_KEY go together: set both or neither")]
    HalfPair,
    #[error("{setting}: cannot read {path}: {source}")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl KafkaSettings {
    /// Plaintext to `brokers`, as the quick start and the tests' own clients use it.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }

    /// Checks the settings before any client is made: librdkafka would take most mistakes silently
    /// (SASL settings on a plaintext connection are ignored) or report them later, per client,
    /// without the setting's name.
    pub fn check(&self) -> Result<(), KafkaSettingsError> {
        let protocol = self.security_protocol.as_str();
        if self.security_protocol.sasl() {
            let missing = [
                (self.sasl_mechanism.is_none(), "KAFKA_SASL_MECHANISM"),
                (self.sasl_username.is_none(), "KAFKA_SASL_USERNAME"),
                (self.sasl_password.is_none(), "KAFKA_SASL_PASSWORD"),
            ];
            if let Some((_, missing)) = missing.into_iter().find(|(absent, _)| *absent) {
                return Err(KafkaSettingsError::Missing { protocol, missing });
            }
        } else {
            let sasl = [
                (self.sasl_mechanism.is_some(), "KAFKA_SASL_MECHANISM"),
                (self.sasl_username.is_some(), "KAFKA_SASL_USERNAME"),
                (self.sasl_password.is_some(), "KAFKA_SASL_PASSWORD"),
            ];
            if let Some((_, setting)) = sasl.into_iter().find(|(present, _)| *present) {
                let instead = if self.security_protocol.tls() {
                    "sasl_ssl"
                } else {
                    "sasl_plaintext or sasl_ssl"
                };
                return Err(KafkaSettingsError::Unused {
                    setting,
                    protocol,
                    instead,
                });
            }
        }
        let files = [
            ("KAFKA_SSL_CA", &self.ssl_ca),
            ("KAFKA_SSL_CERT", &self.ssl_cert),
            ("KAFKA_SSL_KEY", &self.ssl_key),
        ];
        for (setting, path) in files {
            let Some(path) = path else { continue };
            if !self.security_protocol.tls() {
                let instead = if self.security_protocol.sasl() {
                    "sasl_ssl"
                } else {
                    "ssl or sasl_ssl"
                };
                return Err(KafkaSettingsError::Unused {
                    setting,
                    protocol,
                    instead,
                });
            }
            if let Err(source) = std::fs::File::open(path) {
                return Err(KafkaSettingsError::Unreadable {
                    setting,
                    path: path.clone(),
                    source,
                });
            }
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            return Err(KafkaSettingsError::HalfPair);
        }
        Ok(())
    }

    /// Client settings every ordermesh Kafka client starts from.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Network requests time out after 10 s instead of librdkafka's 60 s, so an unreachable
            // broker surfaces as an error while a caller is still waiting for it.
            .set("socket.timeout.ms", "10000")
            .set("security.protocol", self.security_protocol.as_str());
        if self.security_protocol.tls() {
            // librdkafka checks the broker's certificate against its host name by default
            // (`ssl.endpoint.identification.algorithm=https`); that stays. Without a CA file,
            // "probe" finds the system's roots (OpenSSL is built in, and its own default path
            // would point into the build directory).
            let ca = self
                .ssl_ca
                .as_deref()
                .map_or("probe".into(), |p| p.display().to_string());
            config.set("ssl.ca.location", ca);
            if let (Some(cert), Some(key)) = (&self.ssl_cert, &self.ssl_key) {
                config
                    .set("ssl.certificate.location", cert.display().to_string())
                    .set("ssl.key.location", key.display().to_string());
            }
        }
        if self.security_protocol.sasl() {
            if let Some(mechanism) = self.sasl_mechanism {
                config.set("sasl.mechanism", mechanism.as_str());
            }
            if let Some(username) = &self.sasl_username {
                config.set("sasl.username", username);
            }
            if let Some(password) = &self.sasl_password {
                config.set("sasl.password", password.expose());
            }
        }
        config
    }
}

/// Makes sure `topics` exist. Existing topics are left as they are. Brokers that refuse CreateTopics
/// (the embedded mock cluster does not implement it; the runner creates its topics directly) give an
/// error that says so.
pub async fn ensure_topics(
    kafka: &KafkaSettings,
    topics: &[&str],
    partitions: i32,
) -> Result<(), BrokerError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config("ordermesh-admin").create()?;
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
    kafka: KafkaSettings,
    topics: Vec<String>,
    partitions: i32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            match ensure_topics(&kafka, &names, partitions).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(brokers = %kafka.brokers, %error, retry_in_ms = backoff.as_millis(), "cannot make sure the topics exist yet (KAFKA_BROKERS)");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_ssl(ca: PathBuf) -> KafkaSettings {
        KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("ordermesh".into()),
            sasl_password: Some("pw".into()),
            ssl_ca: Some(ca),
            ..KafkaSettings::plaintext("kafka:9093")
        }
    }

    #[test]
    fn each_setting_reaches_librdkafka_under_its_own_name() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").expect("write");
        let settings = sasl_ssl(ca.clone());
        settings.check().expect("complete");
        let config = settings.client_config("test");
        let get = |key| config.get(key).unwrap_or_default().to_owned();
        assert_eq!(get("bootstrap.servers"), "kafka:9093");
        assert_eq!(get("security.protocol"), "sasl_ssl");
        assert_eq!(get("sasl.mechanism"), "SCRAM-SHA-512");
        assert_eq!(get("sasl.username"), "ordermesh");
        assert_eq!(get("sasl.password"), "pw");
        assert_eq!(get("ssl.ca.location"), ca.display().to_string());

        let plain = KafkaSettings::plaintext("localhost:9092").client_config("test");
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.password"), None);
        let system_roots = KafkaSettings {
            security_protocol: SecurityProtocol::Ssl,
            ..KafkaSettings::plaintext("kafka:9093")
        };
        assert_eq!(
            system_roots.client_config("t").get("ssl.ca.location"),
            Some("probe")
        );
    }

    #[test]
    fn contradictory_or_incomplete_settings_are_refused_naming_the_setting() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").expect("write");
        let error = |settings: KafkaSettings| settings.check().expect_err("refused").to_string();

        let no_password = KafkaSettings {
            sasl_password: None,
            ..sasl_ssl(ca.clone())
        };
        assert_eq!(
            error(no_password),
            "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_PASSWORD"
        );
        let sasl_on_plaintext = KafkaSettings {
            sasl_username: Some("u".into()),
            ..KafkaSettings::plaintext("k:9092")
        };
        assert_eq!(
            error(sasl_on_plaintext),
            "KAFKA_SASL_USERNAME is set, but KAFKA_SECURITY_PROTOCOL=plaintext does not use it \
             (did you mean sasl_plaintext or sasl_ssl?)"
        );
        let ca_without_tls = KafkaSettings {
            security_protocol: SecurityProtocol::SaslPlaintext,
            ssl_ca: Some(ca.clone()),
            ..sasl_ssl(ca.clone())
        };
        assert!(error(ca_without_tls).starts_with("KAFKA_SSL_CA is set"));
        let missing_file = sasl_ssl(dir.path().join("nope.pem"));
        assert!(error(missing_file).starts_with("KAFKA_SSL_CA: cannot read"));
        let half_pair = KafkaSettings {
            ssl_cert: Some(ca.clone()),
            ..sasl_ssl(ca.clone())
        };
        assert_eq!(
            error(half_pair),
            "KAFKA_SSL_CERT and KAFKA_SSL_KEY go together: set both or neither"
        );
    }

    #[test]
    fn the_password_never_prints() {
        let settings = sasl_ssl("ca.pem".into());
        assert!(!format!("{settings:?}").contains("pw\""), "{settings:?}");
    }
}
