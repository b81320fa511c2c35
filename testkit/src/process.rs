//! A program a test runs as a real child process, so that it can be killed (SIGKILL) or stopped
//! (SIGTERM) as an operator or a container runtime would, and its log shown when it fails.
//!
//! The child is killed when the handle is dropped: a failing test leaves no process behind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::wait::{EVENTUALLY, is_serving};

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
