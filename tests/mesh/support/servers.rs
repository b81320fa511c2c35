//! Real servers the notifier delivers to, on loopback: an SMTP server (aiosmtpd, the maintained
//! Python SMTP server, storing what it accepts in a Maildir on disk) and an SMS gateway (wiremock, an
//! HTTP server that answers only requests matching what a gateway would accept, and records them).
//!
//! aiosmtpd comes from PyPI (`.ci/run` installs it). Without it a local run says so and skips; under
//! CI=true a missing aiosmtpd fails.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    process::{Child, Command},
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use super::helpers::EVENTUALLY;

/// Whether aiosmtpd can run here: Ok(false) to skip (locally), an error in CI.
pub async fn smtp_available() -> Result<bool> {
    let found = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    match found {
        true => Ok(true),
        false if std::env::var("CI").is_ok_and(|v| v == "true") => {
            bail!("aiosmtpd is not installed, and CI=true requires it (.ci/run installs it)")
        }
        false => {
            eprintln!("SKIPPED: aiosmtpd is not installed (pip install aiosmtpd, or run .ci/run)");
            Ok(false)
        }
    }
}

/// An aiosmtpd process accepting mail on `addr` into a Maildir.
pub struct SmtpServer {
    pub maildir: PathBuf,
    child: Child,
}

/// One stored email's headers of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub message_id: String,
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl SmtpServer {
    /// Starts aiosmtpd on `addr` (a fixed port, so it can be stopped and started again where the
    /// notifier expects it) and waits for its greeting.
    pub async fn start(addr: SocketAddr, maildir: &Path) -> Result<Self> {
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(addr.to_string())
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start aiosmtpd")?;
        let mut server = Self {
            maildir: maildir.to_owned(),
            child,
        };
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("aiosmtpd on {addr} exited at start: {status}");
            }
            if let Ok(mut stream) = TcpStream::connect(addr).await {
                let mut greeting = [0u8; 3];
                if tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
                    .await
                    .is_ok_and(|r| r.is_ok())
                    && &greeting == b"220"
                {
                    return Ok(server);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("aiosmtpd on {addr} did not greet within {EVENTUALLY:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (the port is free again once this returns).
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Every email stored so far.
    pub fn emails(&self) -> Result<Vec<Email>> {
        read_maildir(&self.maildir)
    }
}

/// Every email in `maildir`'s `new` folder.
pub fn read_maildir(maildir: &Path) -> Result<Vec<Email>> {
    let new = maildir.join("new");
    if !new.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&new)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let get = |name: &str| {
            head.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default()
        };
        out.push(Email {
            message_id: get("Message-ID"),
            to: get("To"),
            subject: get("Subject"),
            body: body.trim().to_owned(),
        });
    }
    Ok(out)
}

/// An SMS gateway on loopback: `POST /sms` with the bearer token, an `Idempotency-Key` and a JSON
/// body with `to`, `body` and `reference` is answered with the gateway's current status (202 unless
/// told otherwise); anything else gets wiremock's 404.
pub struct SmsGateway {
    pub server: MockServer,
    responder: Responder,
}

pub const SMS_TOKEN: &str = "test-gateway-token";

/// An SMS the gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub idempotency_key: String,
    pub to: String,
    pub body: String,
    pub reference: String,
}

/// Answers valid SMS requests with the current status, recording the ones it accepts.
#[derive(Clone, Default)]
struct Responder {
    status: Arc<AtomicU16>,
    accepted: Arc<Mutex<Vec<Sms>>>,
    /// How long each answer takes.
    delay: Duration,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let status = self.status.load(Ordering::SeqCst);
        if (200..300).contains(&status)
            && let Some(sms) = parse_sms(request)
        {
            self.accepted.lock().unwrap().push(sms);
        }
        let body = if status < 300 {
            "queued"
        } else {
            "gateway says no"
        };
        ResponseTemplate::new(status)
            .set_body_string(body)
            .set_delay(self.delay)
    }
}

/// The SMS in `request` if it is one a gateway would take: JSON with an international number, a
/// text and a reference, and an idempotency key.
fn parse_sms(request: &Request) -> Option<Sms> {
    let body = request.body_json::<serde_json::Value>().ok()?;
    let text = |key: &str| body.get(key)?.as_str().map(str::to_owned);
    let sms = Sms {
        idempotency_key: request
            .headers
            .get("idempotency-key")?
            .to_str()
            .ok()?
            .to_owned(),
        to: text("to")?,
        body: text("body")?,
        reference: text("reference")?,
    };
    (sms.to.starts_with('+')
        && sms.to.len() > 6
        && !sms.body.is_empty()
        && !sms.reference.is_empty())
    .then_some(sms)
}

impl SmsGateway {
    /// A gateway that accepts every valid SMS.
    pub async fn start() -> Self {
        Self::start_slow(Duration::ZERO).await
    }

    /// A gateway that accepts every valid SMS, taking `delay` over each.
    pub async fn start_slow(delay: Duration) -> Self {
        let server = MockServer::start().await;
        let responder = Responder {
            delay,
            ..Default::default()
        };
        responder.status.store(202, Ordering::SeqCst);
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/sms"))
            .and(matchers::header(
                "authorization",
                format!("Bearer {SMS_TOKEN}").as_str(),
            ))
            .and(|request: &Request| parse_sms(request).is_some())
            .respond_with(responder.clone())
            .mount(&server)
            .await;
        Self { server, responder }
    }

    /// From now on, answer valid SMS with `status` (2xx accepts them).
    pub fn answer(&self, status: u16) {
        self.responder.status.store(status, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("{}/sms", self.server.uri())
    }

    /// Every SMS accepted so far, in order.
    pub fn accepted(&self) -> Vec<Sms> {
        self.responder.accepted.lock().unwrap().clone()
    }

    /// How many requests reached the gateway, answered or not.
    pub async fn requests(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .len()
    }
}
