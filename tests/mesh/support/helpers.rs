//! Starting real servers for tests: an embedded Kafka-protocol broker, and payment, order and notifier
//! each on a port-0 listener with its own database, a random topic and random consumer groups, so
//! tests run in parallel without seeing each other.
//!
//! Every mesh is on the [`Backend`] its test was given: SQLite files in the test's directory, or
//! databases on a PostgreSQL server of the test's own. The tests take it from
//! `#[on_both_backends]`, which runs each as `<test>::on_sqlite` and `<test>::on_postgres`. Where
//! PostgreSQL is not installed (and CI is not set) the PostgreSQL side skips.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use ordermesh::{
    proto::notification::v1::Notification,
    proto::notification::v1::notification_service_client::NotificationServiceClient,
    proto::order::v1::CreateOrderRequest, proto::order::v1::Customer, proto::order::v1::LineItem,
    proto::order::v1::order_service_client::OrderServiceClient,
    proto::payment::v1::payment_service_client::PaymentServiceClient, proto::types::v1::Money,
};
use ordermesh_notifier::{Channel, Stats};
use ordermesh_platform::listeners::Listeners;
// Shared with the crates' own process tests.
use ordermesh_testkit::Backend;
pub use ordermesh_testkit::Databases;
use ordermesh_testkit::{Broker, Tansu};
pub use ordermesh_testkit::{EVENTUALLY, eventually, eventually_sync, unused_addr};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::OwnedMessage,
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel as GrpcChannel, ClientTlsConfig};

/// Ends the test process if a test runs far longer than any should, naming the test: a hang then
/// fails the run within minutes instead of using up all of CI's time. Also when a test fails and
/// its cleanup hangs: services dropped mid-flight can leave librdkafka waiting in a blocking close
/// for a broker that is gone, and the test runtime waits for those threads.
pub struct Watchdog {
    /// 0 running, 1 finished cleanly, 2 dropped without finishing (the test failed), 3 the
    /// test's thread has ended (its cleanup is over, whatever the outcome).
    state: Arc<std::sync::atomic::AtomicU8>,
}

thread_local! {
    /// Dropped when the test's thread ends (after the test's runtime has shut down), which tells
    /// the watchdog that a failed test's cleanup is over: without it, every failed test ended the
    /// whole run 30 s later, and took the failure's message with it.
    static THREAD_END: std::cell::RefCell<Option<ThreadEnd>> = const { std::cell::RefCell::new(None) };
}

struct ThreadEnd(Arc<std::sync::atomic::AtomicU8>);

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        self.0.store(3, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Watchdog {
    pub const LIMIT: Duration = Duration::from_secs(240);
    /// How long a failed test's cleanup may take.
    const CLEANUP: Duration = Duration::from_secs(30);

    pub fn start() -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_owned();
        let state = Arc::new(std::sync::atomic::AtomicU8::new(0));
        THREAD_END.with(|end| *end.borrow_mut() = Some(ThreadEnd(state.clone())));
        let watching = state.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut failed_at = None;
            loop {
                match watching.load(Relaxed) {
                    1 | 3 => return,
                    2 => {
                        let since = *failed_at.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() > Self::CLEANUP {
                            say(&format!(
                                "{test} failed and its cleanup still hangs after {:?}; ending the test run (the test's own output is lost with it: rerun it alone to see it)",
                                Self::CLEANUP
                            ));
                            std::process::exit(101);
                        }
                    }
                    _ => {}
                }
                if started.elapsed() > Self::LIMIT {
                    say(&format!(
                        "{test} is still running after {:?}: it hangs; ending the test run",
                        Self::LIMIT
                    ));
                    std::process::exit(101);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Self { state }
    }

    /// The test ended cleanly: stop watching.
    pub fn finish(&self) {
        self.state.store(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Writes `line` to the process's real stderr: `eprintln!` in a test's threads goes to the test
/// harness's capture, which is lost when the watchdog ends the process.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Not finished: the test failed; keep watching its cleanup.
        let _ = self.state.compare_exchange(
            0,
            2,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// A service task and the means to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin HTTP port (metrics).
    pub admin: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
    /// How a client reaches it over TLS, if it serves TLS.
    tls: Option<ClientTlsConfig>,
}

impl Running {
    /// Runs a service on a listener bound to `addr` (and an admin port on loopback) until
    /// [`Running::stop`], once it is SERVING.
    pub async fn spawn<F, E>(
        addr: SocketAddr,
        run: impl FnOnce(Listeners, oneshot::Receiver<()>) -> F,
    ) -> Result<Self>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::spawn_tls(addr, None, run).await
    }

    /// [`Running::spawn`] for a service serving TLS, reached with `tls`.
    pub async fn spawn_tls<F, E>(
        addr: SocketAddr,
        tls: Option<ClientTlsConfig>,
        run: impl FnOnce(Listeners, oneshot::Receiver<()>) -> F,
    ) -> Result<Self>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let grpc = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let (addr, admin_addr) = (grpc.local_addr()?, admin.local_addr()?);
        let (stop, stopped) = oneshot::channel();
        let listeners = Listeners {
            grpc,
            admin: Some(admin),
        };
        let future = run(listeners, stopped);
        let task = tokio::spawn(async move { future.await.map_err(anyhow::Error::from) });
        let running = Self {
            addr,
            admin: admin_addr,
            stop,
            task,
            tls,
        };
        running.wait_serving().await?;
        Ok(running)
    }

    /// Waits until the service says SERVING, failing with its own error if it stopped instead.
    async fn wait_serving(&self) -> Result<()> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            if self.task.is_finished() {
                bail!("service at {} stopped while starting", self.addr);
            }
            let channel = self.endpoint()?.connect().await;
            if let Ok(mut health) = channel.map(HealthClient::new)
                && let Ok(answer) = health.check(HealthCheckRequest::default()).await
                && answer.into_inner().status() == ServingStatus::Serving
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("service at {} not SERVING after {EVENTUALLY:?}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the service to shut down gracefully and waits until it has.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("service task panicked")?
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Where a client connects to it, over TLS if it serves TLS.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url())?;
        Ok(match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        })
    }

    /// The service's metrics, as Prometheus scrapes them.
    pub async fn scrape(&self) -> Result<Metrics> {
        let response = reqwest::get(format!("http://{}/metrics", self.admin)).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "scrape: {}",
            response.status()
        );
        Ok(Metrics(response.text().await?))
    }

    /// Scrapes the service's metrics until `check` holds, or fails naming `what` after
    /// [`EVENTUALLY`].
    pub async fn wait_for_metrics(
        &self,
        what: &str,
        check: impl Fn(&Metrics) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            let metrics = self.scrape().await?;
            if check(&metrics) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("not so after {EVENTUALLY:?}: {what}\n{}", metrics.0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A TCP proxy in front of a server, standing for it on the network: [`Severable::sever`] closes
/// every connection through it and stops listening, so to its clients the server has crashed (in
/// flight calls cut, new connections refused), which an in-process server cannot be made to do.
pub struct Severable {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl Severable {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let spawned = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                spawned.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            accept,
            connections,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and stops listening.
    pub fn sever(self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// A scrape in the Prometheus text format.
#[derive(Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// Whether there is a sample of `name` whose labels include `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples(name, labels).next().is_some()
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 if there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).sum()
    }

    /// The values of the samples of `name` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(move |(series, value)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
                if metric != name {
                    return None;
                }
                let found: Vec<(&str, &str)> = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter_map(|pair| pair.split_once("=\""))
                    .map(|(k, v)| (k.trim_start_matches(','), v.trim_end_matches('"')))
                    .collect();
                labels
                    .iter()
                    .all(|wanted| found.contains(wanted))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
    }
}

/// A whole mesh for one test. End a test with [`TestMesh::shutdown`]: the services then stop
/// gracefully while the broker is still there (dropped instead, the broker goes first and the
/// clients spend their close timeouts looking for it).
pub struct TestMesh {
    pub topic: String,
    pub payment: Option<Running>,
    /// Where order looks for payment, whether or not payment runs.
    pub payment_addr: SocketAddr,
    order: Option<Running>,
    order_config: ordermesh_order::Config,
    pub notifier: Option<Running>,
    /// Outcome counters of the current notifier run, per channel.
    pub notifier_stats: HashMap<Channel, Arc<Stats>>,
    email_group: String,
    sms_group: String,
    payment_config: fn(&mut ordermesh_payment::Config),
    /// Changes to the notifier's settings, applied at each (re)start: where to send, retry timing.
    pub notifier_settings: Arc<dyn Fn(&mut ordermesh_notifier::Config) + Send + Sync>,
    /// The Kafka settings the services use.
    pub kafka: ordermesh_kafka::KafkaSettings,
    /// The TLS terminator in front of tansu, with `secured_kafka`.
    pub secured_kafka: Option<SecuredKafka>,
    _watchdog: Watchdog,
    /// The services' databases (SQLite files in `dir`, or a PostgreSQL server of the test's own).
    pub databases: Databases,
    // Declared last so that, if a test fails early, it is dropped after everything above.
    pub dir: TempDir,
    /// The embedded broker, or tansu for the tests that prove behaviour against an independent one.
    pub broker: Broker,
}

/// What to start, and how to set it up beyond the test defaults.
#[derive(Clone, Copy, Debug)]
pub struct MeshOptions {
    pub payment: bool,
    pub notifier: bool,
    /// Changes to the order service's settings.
    pub order: fn(&mut ordermesh_order::Config),
    /// Changes to the payment service's settings (also when it is started later).
    pub payment_config: fn(&mut ordermesh_payment::Config),
    /// Run against tansu instead of the embedded broker (see [`spawn_mesh_on_tansu`]).
    pub tansu: bool,
    /// With `tansu`: tansu requires SASL/SCRAM and is reached only through TLS (see
    /// [`SecuredKafka`]); the services get the KAFKA_* settings for it.
    pub secured_kafka: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            payment: true,
            notifier: true,
            order: |_| {},
            payment_config: |_| {},
            tansu: false,
            secured_kafka: false,
        }
    }
}

/// A mesh with the default settings on `backend`; None when the test is to skip (see
/// [`Databases::for_test`]).
pub async fn spawn_mesh(backend: Backend) -> Result<Option<TestMesh>> {
    spawn_mesh_with(backend, MeshOptions::default()).await
}

/// A mesh on the embedded broker and `backend`; None when the test is to skip (see
/// [`Databases::for_test`]).
pub async fn spawn_mesh_with(backend: Backend, options: MeshOptions) -> Result<Option<TestMesh>> {
    assert!(!options.tansu, "use spawn_mesh_on_tansu");
    spawn_mesh_inner(backend, options).await
}

/// A mesh on tansu, an independent Kafka-compatible broker on SQLite storage; None (the test then
/// skips) where tansu is not installed and CI is not set.
pub async fn spawn_mesh_on_tansu(
    backend: Backend,
    options: MeshOptions,
) -> Result<Option<TestMesh>> {
    spawn_mesh_inner(
        backend,
        MeshOptions {
            tansu: true,
            ..options
        },
    )
    .await
}

async fn spawn_mesh_inner(backend: Backend, options: MeshOptions) -> Result<Option<TestMesh>> {
    // Logs go through the test harness, so they show only for a failing test (RUST_LOG to choose).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(ordermesh_platform::telemetry::DEFAULT_FILTER)
            }),
        )
        .with_test_writer()
        .try_init();
    let watchdog = Watchdog::start();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("order-events-{suffix}");
    let dead_letter_topics =
        Channel::ALL.map(|c| ordermesh_notifier::dead_letter::topic(&topic, c));
    let topics = [&topic, &dead_letter_topics[0], &dead_letter_topics[1]].map(String::as_str);
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(None);
    };
    ensure!(
        options.tansu || !options.secured_kafka,
        "secured_kafka needs tansu: use spawn_mesh_on_tansu"
    );
    let mut secured_kafka = None;
    let broker = if options.tansu {
        let Some(mut tansu) = Tansu::start_in(dir.path()).await? else {
            return Ok(None);
        };
        // The services would create them too; created here so the test can read them at once.
        ordermesh_kafka::ensure_topics(
            &ordermesh_kafka::KafkaSettings::plaintext(tansu.addr.to_string()),
            &topics,
            3,
        )
        .await?;
        if options.secured_kafka {
            secured_kafka = Some(SecuredKafka::start(&dir, &mut tansu).await?);
        }
        Broker::Tansu(Box::new(tansu))
    } else {
        Broker::embedded(&topics, 3)?
    };
    eprintln!("broker: {}", broker.name());
    let kafka = match &secured_kafka {
        Some(secured) => secured.settings.clone(),
        None => ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
    };

    // Without a payment service, order points at an address nobody listens on (yet).
    let (payment, payment_addr) = if options.payment {
        let payment = spawn_payment(
            &databases.url("payment"),
            "127.0.0.1:0".parse()?,
            options.payment_config,
        )
        .await?;
        let addr = payment.addr;
        (Some(payment), addr)
    } else {
        (None, unused_addr().await?)
    };
    let mut config = ordermesh_order::Config {
        database_url: databases.url("order"),
        payment_url: format!("http://{payment_addr}"),
        payment_timeout: std::time::Duration::from_millis(2_000),
        kafka: kafka.clone(),
        events_topic: topic.clone(),
        drain_grace: std::time::Duration::from_millis(2_000),
        // The tests drive payment's faults through CreateOrder.
        forward_fault_headers: true,
        ..ordermesh_order::Config::from_env()?
    };
    (options.order)(&mut config);
    let order = spawn_order(config.clone()).await?;

    let mut mesh = TestMesh {
        broker,
        topic,
        databases,
        dir,
        payment,
        payment_addr,
        order: Some(order),
        order_config: config,
        notifier: None,
        notifier_stats: HashMap::new(),
        email_group: format!("notifier-email-{suffix}"),
        sms_group: format!("notifier-sms-{suffix}"),
        payment_config: options.payment_config,
        notifier_settings: Arc::new(|_| {}),
        kafka,
        secured_kafka,
        _watchdog: watchdog,
    };
    if options.notifier {
        mesh.start_notifier().await?;
    }
    Ok(Some(mesh))
}

async fn spawn_order(config: ordermesh_order::Config) -> Result<Running> {
    Running::spawn("127.0.0.1:0".parse()?, |listeners, stop| async move {
        ordermesh_order::run(listeners, config, async move {
            let _ = stop.await;
        })
        .await
    })
    .await
}

async fn spawn_payment(
    database_url: &str,
    addr: SocketAddr,
    customize: fn(&mut ordermesh_payment::Config),
) -> Result<Running> {
    let mut config = ordermesh_payment::Config {
        database_url: database_url.to_owned(),
        drain_grace: std::time::Duration::from_millis(2_000),
        faults_enabled: true,
        ..ordermesh_payment::Config::from_env()?
    };
    customize(&mut config);
    Running::spawn(addr, |listeners, stop| async move {
        ordermesh_payment::run(listeners, config, async move {
            let _ = stop.await;
        })
        .await
    })
    .await
}

impl TestMesh {
    /// Starts the notifier (both channels) with fresh counters; its database and consumer groups
    /// are the same across restarts, as a restarted process's would be.
    pub async fn start_notifier(&mut self) -> Result<()> {
        if self.notifier.is_some() {
            bail!("notifier already running");
        }
        let (notifier, stats) = self.spawn_notifier_replica().await?;
        self.notifier_stats = stats;
        self.notifier = Some(notifier);
        Ok(())
    }

    /// Stops the order service gracefully (see [`TestMesh::start_order`]).
    pub async fn stop_order(&mut self) -> Result<()> {
        match self.order.take() {
            Some(order) => order.stop().await,
            None => bail!("order not running"),
        }
    }

    /// Starts the order service again on its database.
    pub async fn start_order(&mut self) -> Result<()> {
        if self.order.is_some() {
            bail!("order already running");
        }
        self.order = Some(spawn_order(self.order_config.clone()).await?);
        Ok(())
    }

    /// Stops every service gracefully, then the broker.
    pub async fn shutdown(mut self) -> Result<()> {
        if self.notifier.is_some() {
            self.stop_notifier().await?;
        }
        if let Some(order) = self.order.take() {
            order.stop().await?;
        }
        if let Some(payment) = self.payment.take() {
            payment.stop().await?;
        }
        self._watchdog.finish();
        Ok(())
    }

    /// The notifier's settings in this mesh (both channels).
    pub fn notifier_config(&self) -> Result<ordermesh_notifier::Config> {
        let mut config = ordermesh_notifier::Config {
            database_url: self.databases.url("notifier"),
            kafka: self.kafka.clone(),
            events_topic: self.topic.clone(),
            channels: vec![Channel::Email, Channel::Sms],
            email_group: self.email_group.clone(),
            sms_group: self.sms_group.clone(),
            // The smallest Kafka allows by default: a restarted notifier rejoins sooner.
            session_timeout: std::time::Duration::from_millis(6_000),
            drain_grace: std::time::Duration::from_millis(2_000),
            ..ordermesh_notifier::Config::from_env()?
        };
        (self.notifier_settings)(&mut config);
        Ok(config)
    }

    pub async fn stop_notifier(&mut self) -> Result<()> {
        match self.notifier.take() {
            Some(notifier) => notifier.stop().await,
            None => bail!("notifier not running"),
        }
    }

    /// Starts the payment service where order expects it (after a test ran without it).
    pub async fn start_payment(&mut self) -> Result<()> {
        if self.payment.is_some() {
            bail!("payment already running");
        }
        self.payment = Some(
            spawn_payment(
                &self.databases.url("payment"),
                self.payment_addr,
                self.payment_config,
            )
            .await?,
        );
        Ok(())
    }

    /// Another replica of the payment service, on the same database as the first.
    pub async fn spawn_payment_replica(&self) -> Result<Running> {
        spawn_payment(
            &self.databases.url("payment"),
            "127.0.0.1:0".parse()?,
            self.payment_config,
        )
        .await
    }

    /// Another replica of the order service: the same settings and database as the first (so its
    /// own outbox relay shares the outbox), calling payment at `payment_url`.
    pub async fn spawn_order_replica(&self, payment_url: &str) -> Result<Running> {
        let mut config = self.order_config.clone();
        config.payment_url = payment_url.to_owned();
        spawn_order(config).await
    }

    /// Another notifier replica (both channels): the same settings, database and consumer groups
    /// as the mesh's notifier, so the replicas share each channel's partitions. Its outcome
    /// counters come with it.
    pub async fn spawn_notifier_replica(&self) -> Result<(Running, HashMap<Channel, Arc<Stats>>)> {
        let config = self.notifier_config()?;
        let stats: HashMap<Channel, Arc<Stats>> =
            Channel::ALL.iter().map(|c| (*c, Arc::default())).collect();
        let counting = stats.clone();
        let running = Running::spawn("127.0.0.1:0".parse()?, |listeners, stop| async move {
            ordermesh_notifier::run_with_stats(
                listeners,
                config,
                async move {
                    let _ = stop.await;
                },
                counting,
            )
            .await
        })
        .await?;
        Ok((running, stats))
    }

    /// Every event on the topic, as (order id, event id), read from the start (as the campaign's
    /// audit reads it).
    pub async fn all_events(&self) -> Result<Vec<(String, String)>> {
        ordermesh_bench::events::read_events(&self.kafka, &self.topic, EVENTUALLY).await
    }

    /// Every event on the topic, read once it holds at least `count`: the relay publishes after the
    /// call that wrote the outbox row has answered, so reading at once can miss the newest events.
    /// More than `count` (a duplicate) are returned as found.
    pub async fn events_once_published(&self, count: usize) -> Result<Vec<(String, String)>> {
        eventually(&format!("{count} events on the topic"), || async {
            Ok(self.broker.message_count(&self.topic).await? >= count as i64)
        })
        .await?;
        self.all_events().await
    }

    /// Every event on the topic with its type (see [`Self::all_events`]).
    pub async fn all_topic_events(&self) -> Result<Vec<ordermesh_bench::events::TopicEvent>> {
        ordermesh_bench::events::read_topic_events(&self.kafka, &self.topic, EVENTUALLY).await
    }

    /// Where the order service listens (a new port after each restart).
    pub fn order_addr(&self) -> Result<SocketAddr> {
        Ok(self.order()?.addr)
    }

    pub fn order(&self) -> Result<&Running> {
        self.order.as_ref().context("order not running")
    }

    /// Stops the order service gracefully and starts it again on the same database, as a restarted
    /// process would.
    pub async fn restart_order(&mut self) -> Result<()> {
        if let Some(order) = self.order.take() {
            order.stop().await?;
        }
        self.order = Some(spawn_order(self.order_config.clone()).await?);
        Ok(())
    }

    pub async fn order_client(&self) -> Result<OrderServiceClient<GrpcChannel>> {
        Ok(OrderServiceClient::connect(format!("http://{}", self.order_addr()?)).await?)
    }

    pub async fn payment_client(&self) -> Result<PaymentServiceClient<GrpcChannel>> {
        let payment = self.payment.as_ref().context("payment not running")?;
        Ok(PaymentServiceClient::connect(payment.url()).await?)
    }

    pub async fn notifier_client(&self) -> Result<NotificationServiceClient<GrpcChannel>> {
        let notifier = self.notifier.as_ref().context("notifier not running")?;
        Ok(NotificationServiceClient::connect(notifier.url()).await?)
    }

    /// Every notification the notifier has recorded (all pages).
    pub async fn all_notifications(&self) -> Result<Vec<Notification>> {
        ordermesh_bench::audit::all_notifications(&mut self.notifier_client().await?).await
    }

    /// Every notification in the notifier's database, read directly (for while it is stopped).
    pub async fn all_notifications_offline(&self) -> Result<Vec<(String, String)>> {
        let pool = ordermesh_platform::db::connect(&self.databases.url("notifier")).await?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT event_id, channel FROM notifications WHERE status = 'SENT'")
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        Ok(rows)
    }

    /// Places `count` valid orders, 8 at a time, with request ids `{prefix}-{i}`.
    pub async fn place_orders(
        &self,
        prefix: &str,
        count: usize,
    ) -> Result<Vec<ordermesh::proto::order::v1::Order>> {
        use futures::{StreamExt, TryStreamExt};
        let client = self.order_client().await?;
        futures::stream::iter(0..count)
            .map(|i| {
                let mut client = client.clone();
                async move {
                    let request = order_request(&format!("{prefix}-{i}"), "tok_visa");
                    Ok::<_, anyhow::Error>(client.create_order(request).await?.into_inner())
                }
            })
            .buffer_unordered(8)
            .try_collect()
            .await
    }

    /// How many payments (charges and declines, not closed keys) the payment service has stored for
    /// `order_id`, read from its database.
    pub async fn payments_for(&self, order_id: &str) -> Result<i64> {
        self.count_payments(Some(order_id)).await
    }

    /// How many payments the payment service has stored in all.
    pub async fn payment_count(&self) -> Result<i64> {
        self.count_payments(None).await
    }

    async fn count_payments(&self, order_id: Option<&str>) -> Result<i64> {
        let pool = ordermesh_platform::db::connect(&self.databases.url("payment")).await?;
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM payments
                 WHERE status <> 'CLOSED' AND ($1 IS NULL OR order_id = $2)",
        )
        .bind(order_id)
        .bind(order_id)
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        Ok(count)
    }

    /// Polls until at least `count` notifications are recorded, or fails after [`EVENTUALLY`].
    pub async fn wait_for_notifications(&self, count: usize) -> Result<Vec<Notification>> {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            let all = self.all_notifications().await?;
            if all.len() >= count {
                return Ok(all);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "expected {count} notifications, have {} after {EVENTUALLY:?}",
                    all.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many messages the topic holds (sum of high watermarks; nothing is ever deleted here).
    pub async fn event_count(&self) -> Result<i64> {
        let consumer: BaseConsumer = fresh_consumer_config(&self.kafka).create()?;
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let mut total = 0;
            for partition in 0..3 {
                let (low, high) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                total += high - low;
            }
            Ok(total)
        })
        .await?
    }

    /// Reads `count` messages from the start of the events topic with a brand-new consumer.
    pub async fn read_events(&self, count: usize) -> Result<Vec<OwnedMessage>> {
        self.read_topic(&self.topic, count).await
    }

    /// Reads `count` messages from the start of `topic` with a brand-new consumer, each position
    /// once: the reader commits nothing, so should its group rebalance it starts again from the
    /// earliest offset, and a message it reads again is not a second message on the topic.
    pub async fn read_topic(&self, topic: &str, count: usize) -> Result<Vec<OwnedMessage>> {
        let consumer: StreamConsumer = fresh_consumer_config(&self.kafka).create()?;
        consumer.subscribe(&[topic])?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut last_error = None;
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        while out.len() < count {
            let received = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .with_context(|| {
                    format!(
                        "read {} of {count} events (last error: {last_error:?})",
                        out.len()
                    )
                })?;
            match received {
                Ok(message) => {
                    if seen.insert((message.partition(), message.offset())) {
                        out.push(message.detach());
                    }
                }
                // librdkafka reports connection trouble (a broker just restarted) through the
                // stream and carries on; so does the reader.
                Err(error) => last_error = Some(error),
            }
        }
        Ok(out)
    }
}

/// A reader in a group of its own, with the settings the services use (TLS and SASL included).
fn fresh_consumer_config(kafka: &ordermesh_kafka::KafkaSettings) -> ClientConfig {
    let mut config = kafka.client_config("test-reader");
    config
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    config
}

/// A valid CreateOrder request: 2 x 19.99 USD, paid with `token`.
pub fn order_request(request_id: &str, token: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.to_owned(),
        customer: Some(Customer {
            email: "ada@example.com".into(),
            phone: "+14155550100".into(),
        }),
        items: vec![LineItem {
            sku: "BOOK-1".into(),
            quantity: 2,
            unit_price: Some(Money {
                currency_code: "USD".into(),
                minor_units: 1999,
            }),
        }],
        payment_method_token: token.to_owned(),
    }
}

/// A header's value as text.
pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// tansu made to require SASL/SCRAM-SHA-512 (user [`SecuredKafka::USER`]) and put behind a TLS
/// terminator with a development CA's `kafka` certificate; tansu advertises the terminator, so
/// every connection after the bootstrap is TLS too. `settings` are what the services get.
#[derive(Debug)]
pub struct SecuredKafka {
    pub settings: ordermesh_kafka::KafkaSettings,
    /// The development CA and certificates (`ca.pem`, `outsider.pem` from another CA, ...).
    pub certs: std::path::PathBuf,
    /// Kept for as long as the mesh runs: dropping it closes the TLS port.
    _terminator: ordermesh_testkit::TlsTerminator,
}

impl SecuredKafka {
    pub const USER: &str = "ordermesh";
    pub const PASSWORD: &str = "correct horse battery staple";

    async fn start(dir: &TempDir, tansu: &mut Tansu) -> Result<Self> {
        let certs = dir.path().join("certs");
        ordermesh_runner::dev_certs::write_dev_certs(&certs)?;
        // Users are created over the Kafka protocol, so before authentication is required.
        tansu.create_scram_user(Self::USER, Self::PASSWORD).await?;
        let terminator = ordermesh_testkit::TlsTerminator::start(
            &certs.join("kafka.pem"),
            &certs.join("kafka.key"),
            tansu.addr,
        )
        .await?;
        let settings = ordermesh_kafka::KafkaSettings {
            brokers: terminator.addr.to_string(),
            security_protocol: ordermesh_kafka::SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(ordermesh_kafka::SaslMechanism::ScramSha512),
            sasl_username: Some(Self::USER.into()),
            sasl_password: Some(Self::PASSWORD.into()),
            ssl_ca: Some(certs.join("ca.pem")),
            ..ordermesh_kafka::KafkaSettings::plaintext("")
        };
        tansu
            .require_authentication(terminator.addr, settings.clone())
            .await?;
        Ok(Self {
            settings,
            certs,
            _terminator: terminator,
        })
    }
}
