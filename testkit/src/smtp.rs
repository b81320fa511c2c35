//! A real SMTP server on loopback for the notifier to deliver to: aiosmtpd, the maintained Python
//! SMTP server, storing what it accepts in a Maildir on disk, where a test reads every email back
//! with its `Message-ID` and the time it was stored.
//!
//! aiosmtpd comes from PyPI (`.ci/run` installs it). Without it a local run says so and skips; under
//! CI=true a missing aiosmtpd fails (the rule of `tools`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    process::{Child, Command},
};

use crate::wait::EVENTUALLY;

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
#[derive(Debug)]
pub struct SmtpServer {
    pub maildir: PathBuf,
    child: Child,
}

/// One stored email's headers of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub message_id: String,
    /// The sender as the `From` header names it: a test that gives each sender its own name tells
    /// senders apart by it.
    pub from: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// When the server stored it (the file's modification time): aiosmtpd stores a message before
    /// it answers 250 to the client, so this is no later than the sender learnt it was accepted.
    pub received: SystemTime,
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
        let entry = entry?;
        let received = entry.metadata()?.modified()?;
        let text = std::fs::read_to_string(entry.path())?;
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
            from: get("From"),
            to: get("To"),
            subject: get("Subject"),
            body: body.trim().to_owned(),
            received,
        });
    }
    Ok(out)
}
