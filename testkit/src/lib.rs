//! Test support shared by the ordermesh suites: the Kafka-protocol broker a test runs against (the
//! embedded mock cluster, or `tansu`, an independent broker nobody here wrote), service binaries run
//! as real processes so a test can SIGKILL them, a PostgreSQL server of a test's own, and the waits
//! they need.
//!
//! Tools from outside the Rust toolchain (tansu, PostgreSQL) are found on PATH or in `~/.cargo/bin`. Without
//! them a local run says so and skips; under CI=true (where `.ci/run` installs them) a missing tool
//! fails.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use ordermesh_kafka::EmbeddedBroker;
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::OwnedMessage,
};
use tokio::process::{Child, Command};

pub mod postgres;
pub use postgres::{Databases, Postgres, on_postgres};

/// Runs each named test twice: `$test(false)` on SQLite and `$test(true)` on PostgreSQL, as
/// `<test>::on_sqlite` and `<test>::on_postgres`. For unit tests of the statements that replicas
/// sharing a database rely on; each test makes its own database ([`Databases::for_test`] skips the
/// PostgreSQL one where PostgreSQL is not installed and CI is not set).
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn on_sqlite() {
                super::$test(false).await
            }
            #[tokio::test]
            async fn on_postgres() {
                super::$test(true).await
            }
        }
    )*};
}

/// Upper bound for anything that happens asynchronously. It only bounds a failing test.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// The path of tool `name`, None to skip (locally), or an error (in CI).
pub fn tool(name: &str) -> Result<Option<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    match dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        Some(path) => Ok(Some(path)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            bail!("{name} is not installed, and CI=true requires it (.ci/run installs it)")
        }
        None => {
            eprintln!(
                "SKIPPED: {name} is not installed (run .ci/run, or install it, to run this test)"
            );
            Ok(None)
        }
    }
}

/// A loopback address nobody listens on now (bound, read and released).
pub async fn unused_addr() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

/// Polls the async `check` until it answers true, or fails naming `what` after [`EVENTUALLY`].
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let last = check().await;
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not so after {EVENTUALLY:?}: {what} (last check: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the gRPC server at `addr` answers its health check with SERVING.
pub async fn is_serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|a| a.into_inner().status() == ServingStatus::Serving)
}

/// A child process with its output in a log file, killed when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and `envs`, its stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: PathBuf,
    ) -> Result<Self> {
        let dir = log.parent().unwrap_or(Path::new(".")).to_owned();
        Self::spawn_in(&dir, name, program, args, envs, log)
    }

    /// [`Process::spawn`] with `dir` as the working directory.
    pub fn spawn_in(
        dir: &Path,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: PathBuf,
    ) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(program)
            .current_dir(dir)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Fails with the process's log if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Waits until the gRPC server at `addr` is SERVING, failing if the process exits first.
    pub async fn wait_serving(&mut self, addr: SocketAddr) -> Result<()> {
        self.wait_for(&format!("SERVING at {addr}"), || is_serving(addr))
            .await
    }

    /// Polls `check` until it holds, failing with the process's log if the process exits first or
    /// `what` is not so after [`EVENTUALLY`].
    pub async fn wait_for<F, Fut>(&mut self, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            self.check_running()?;
            if check().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{}: not {what} after {EVENTUALLY:?}; its log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the process gets no chance to finish anything. Waits until it is gone.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit (SIGKILL after 10 s).
    pub async fn terminate(self) -> Result<()> {
        self.terminate_within(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGTERM, as a container runtime stopping it sends, then waits up to `grace` for the process
    /// to exit: its exit status if it did, or None if it had to be killed.
    pub async fn terminate_within(mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The broker a test runs against.
pub enum Broker {
    /// librdkafka's mock cluster behind a stable address (what `cargo run` uses).
    Embedded(EmbeddedBroker),
    /// tansu, an independent Kafka-compatible broker, on SQLite storage.
    Tansu(Box<Tansu>),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Broker {
    /// An embedded broker with `topics` (the mock cluster cannot create topics on request).
    pub fn embedded(topics: &[&str], partitions: i32) -> Result<Self> {
        Ok(Self::Embedded(EmbeddedBroker::start(
            "127.0.0.1:0".parse()?,
            topics,
            partitions,
        )?))
    }

    /// What the tests print, so a log says which broker a test proved something against.
    pub fn name(&self) -> &'static str {
        match self {
            Broker::Embedded(_) => "embedded broker (librdkafka mock cluster)",
            Broker::Tansu(_) => "tansu 0.6 (independent Kafka-compatible broker, SQLite storage)",
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Broker::Embedded(broker) => broker.bootstrap_servers(),
            Broker::Tansu(tansu) => tansu.addr.to_string(),
        }
    }

    /// Creates `topic` (the mock cluster directly, tansu through the admin API).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        match self {
            Broker::Embedded(broker) => Ok(broker.create_topic(topic, partitions)?),
            Broker::Tansu(tansu) => {
                ordermesh_kafka::ensure_topics(
                    &ordermesh_kafka::KafkaSettings::plaintext(tansu.addr.to_string()),
                    &[topic],
                    partitions,
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Makes the broker unreachable; [`Broker::up`] brings it back with what it had stored.
    pub async fn down(&mut self) -> Result<()> {
        match self {
            Broker::Embedded(broker) => Ok(broker.cluster().broker_down(1)?),
            Broker::Tansu(tansu) => tansu.stop().await,
        }
    }

    pub async fn up(&mut self) -> Result<()> {
        match self {
            Broker::Embedded(broker) => Ok(broker.cluster().broker_up(1)?),
            Broker::Tansu(tansu) => tansu.start().await,
        }
    }

    /// The first `count` messages of `topic`, read from the beginning by a new consumer group.
    pub async fn read(&self, topic: &str, count: usize) -> Result<Vec<OwnedMessage>> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set(
                "group.id",
                format!("ordermesh-testkit-read-{}", std::process::id()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        while out.len() < count {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .with_context(|| {
                    format!("read {} of {count} messages from {topic}", out.len())
                })??;
            out.push(message.detach());
        }
        Ok(out)
    }

    /// Messages on `topic` now: the sum of its partitions' high watermarks (none are deleted here).
    pub async fn message_count(&self, topic: &str) -> Result<i64> {
        let brokers = self.bootstrap_servers();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> Result<i64> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "ordermesh-testkit-count")
                .create()?;
            let timeout = Duration::from_secs(10);
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let mut total = 0;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) = consumer.fetch_watermarks(&topic, partition.id(), timeout)?;
                total += high - low;
            }
            Ok(total)
        })
        .await?
    }
}

/// The SQLite file tansu keeps its topics, messages and group offsets in.
const STORAGE_FILE: &str = "tansu.db";

/// A tansu broker process on a fixed loopback port and a SQLite file, so it can be stopped and
/// started again with its topics, messages and committed offsets.
#[derive(Debug)]
pub struct Tansu {
    pub addr: SocketAddr,
    program: PathBuf,
    /// Working directory, holding the storage file.
    dir: PathBuf,
    log: PathBuf,
    process: Option<Process>,
    /// Set by [`Tansu::require_authentication`].
    secured: Option<Secured>,
}

/// How a tansu that requires authentication is started and reached.
#[derive(Debug)]
struct Secured {
    /// The address it advertises in metadata instead of its own (a TLS terminator's).
    advertised: SocketAddr,
    /// The settings a client that may talk to it uses: the readiness check uses them too.
    client: ordermesh_kafka::KafkaSettings,
}

impl Tansu {
    /// Starts tansu with its storage in `dir`, or None to skip where tansu is not installed
    /// (locally; in CI a missing tansu is an error).
    pub async fn start_in(dir: &Path) -> Result<Option<Self>> {
        let Some(program) = tool("tansu")? else {
            return Ok(None);
        };
        let mut tansu = Self {
            addr: unused_addr().await?,
            program,
            dir: dir.to_owned(),
            // ORDERMESH_TANSU_LOG_DIR keeps the broker's log where a failed test cannot remove it.
            secured: None,
            log: std::env::var_os("ORDERMESH_TANSU_LOG_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.to_owned())
                .join(format!("tansu-{}.log", std::process::id())),
            process: None,
        };
        tansu.start().await?;
        Ok(Some(tansu))
    }

    /// Starts the process (again) and waits until it answers Kafka metadata requests.
    pub async fn start(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("tansu already running");
        }
        let listener = format!("tcp://{}", self.addr);
        let advertised = match &self.secured {
            Some(secured) => format!("tcp://{}", secured.advertised),
            None => listener.clone(),
        };
        let mut args = vec![
            "broker".to_owned(),
            "--listener-url".to_owned(),
            listener,
            "--advertised-listener-url".to_owned(),
            advertised,
            // tansu reads the file part of a sqlite:// URL relative to its working directory.
            "--storage-engine".to_owned(),
            format!("sqlite://{STORAGE_FILE}"),
        ];
        if self.secured.is_some() {
            args.push("--authentication".to_owned());
        }
        let client = match &self.secured {
            Some(secured) => secured.client.clone(),
            None => ordermesh_kafka::KafkaSettings::plaintext(self.addr.to_string()),
        };
        let mut process = Process::spawn_in(
            &self.dir,
            "tansu",
            &self.program,
            &args,
            &[],
            self.log.clone(),
        )?;
        process
            .wait_for(
                &format!("answering Kafka metadata at {}", client.brokers),
                || {
                    let client = client.clone();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            let consumer: Result<BaseConsumer, _> =
                                client.client_config("tansu-ready").create();
                            consumer.is_ok_and(|c| {
                                c.fetch_metadata(None, Duration::from_secs(2)).is_ok()
                            })
                        })
                        .await
                        .unwrap_or(false)
                    }
                },
            )
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the broker process: SIGTERM, as an operator restarting it would, then waits for it.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(process) = self.process.take() else {
            bail!("tansu not running");
        };
        process.terminate().await
    }

    /// Adds a SCRAM-SHA-512 user with `tansu user create` (over the Kafka protocol, so before
    /// [`Tansu::require_authentication`]: tansu then refuses anyone not yet authenticated).
    pub async fn create_scram_user(&self, name: &str, password: &str) -> Result<()> {
        let status = Command::new(&self.program)
            .args(["user", "create", "--mechanism", "scram512", "--broker"])
            .arg(format!("tcp://{}", self.addr))
            .args([name, password])
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("tansu user create {name}: {status}");
        }
        Ok(())
    }

    /// Restarts tansu with `--authentication` (SASL required before any other request),
    /// advertising `advertised` instead of its own address; `client` are settings that work
    /// against it, for the readiness check.
    pub async fn require_authentication(
        &mut self,
        advertised: SocketAddr,
        client: ordermesh_kafka::KafkaSettings,
    ) -> Result<()> {
        self.stop().await?;
        self.secured = Some(Secured { advertised, client });
        self.start().await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A TLS terminator in front of a plaintext Kafka listener, as a load balancer or a sidecar
/// terminates TLS for a broker: it accepts TLS on loopback with the given certificate and copies
/// bytes both ways to `upstream`. tansu 0.6 accepts `--cert`/`--key` but does not serve TLS yet, so
/// this is how the tests put a TLS-only broker address in front of it. The broker must advertise
/// [`TlsTerminator::addr`], so that clients come back through TLS after the bootstrap.
#[derive(Debug)]
pub struct TlsTerminator {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsTerminator {
    /// Listens on a free loopback port; connections are forwarded to `upstream` from then on.
    pub async fn start(cert: &Path, key: &Path, upstream: SocketAddr) -> Result<Self> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio_rustls::rustls;

        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("{}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed handshake (a plaintext client, a client that does not trust the
                    // certificate) just drops the connection, as a real terminator would.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
