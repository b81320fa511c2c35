//! The tansu broker as a process of the test's own: started, stopped and started again on the
//! same port and storage (so a test can take the broker away and bring it back), and restarted to
//! require SASL authentication.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::process::Command;

use crate::{addr::unused_addr, process::Process, tools::tool};

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
