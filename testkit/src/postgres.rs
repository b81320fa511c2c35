//! A real PostgreSQL server for one test, on loopback: Debian's `postgresql` package (`.ci/run`
//! installs it), started by the test and stopped when the handle is dropped.
//!
//! Starting one is cheap: `initdb` runs once per temporary directory into a template (about a
//! second; see [`template_in`] for how dozens of tests asking at once get one whole template), and
//! each server starts from a copy of it (a tenth of that). Each server listens on
//! 127.0.0.1 only, with trust authentication, and no Unix socket.
//!
//! PostgreSQL refuses to run as root, so as root (as in CI) the server runs as the `postgres` user
//! the package creates, through `setpriv`. The server is started by a small shell that stops it
//! when the test process's end of a pipe closes: even a test process that exits without running
//! destructors (the watchdog's `exit`) leaves no server behind.

use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// A running PostgreSQL server of a test's own.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    /// The shell running the server; it stops the server when `stop` closes.
    child: Child,
    stop: Option<ChildStdin>,
    log: PathBuf,
    // Dropped after the server has stopped (see Drop).
    dir: Option<TempDir>,
}

/// Where Debian keeps the server binaries: `/usr/lib/postgresql/<major>/bin`, the newest major
/// (or `ORDERMESH_PG_BIN`); None where PostgreSQL is not installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ORDERMESH_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root (PostgreSQL then needs another user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "no postgres user (it comes with Debian's postgresql package)"
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// `program` run as the server's user: through setpriv when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Checks that the server's user can reach `dir`: as root the server runs as `postgres`, which
/// needs search permission on every directory above its data. A private temporary directory (the
/// 0700 one `mktemp -d` makes) fails this, and initdb's own message would not say why.
fn ensure_reachable(dir: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let reachable = as_server_user(Path::new("test"))
        .arg("-x")
        .arg(dir)
        .status()
        .context("run test -x as the postgres user")?;
    anyhow::ensure!(
        reachable.success(),
        "PostgreSQL runs as the postgres user here (we are root), and that user cannot reach {}: \
         a directory above it does not let others pass (mode 0700?). Point TMPDIR at a directory \
         every user can pass through, such as /tmp (.ci/run picks one)",
        dir.display()
    );
    Ok(())
}

/// Gives `path` to the server's user, when we are root.
fn hand_over(path: &Path) -> Result<()> {
    if is_root() {
        let (uid, gid) = postgres_user()?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// The file inside a finished template that says what made it. A directory at the template's path
/// without it (an initdb that died half-way, a directory from another tool or another server
/// version) is never copied: it is removed and built again.
const TEMPLATE_MARK: &str = "ordermesh-template";

/// The template data directory for the server binaries in `bin`, made by initdb once per machine
/// (per temporary directory) and major version.
fn template(bin: &Path) -> Result<PathBuf> {
    template_in(&std::env::temp_dir(), bin)
}

/// The template data directory for the server binaries in `bin`, under `root`: built once, whatever
/// the number of threads and processes asking for it at once.
///
/// Every caller takes an exclusive lock on a file beside the template (`flock`, so it holds between
/// processes and between threads of one process alike: each call opens the file anew). Under the
/// lock it looks for a finished template, one whose mark names these binaries; only if there is
/// none does it build one, in a directory of its own, and rename it into place. The lock is
/// released when the file closes, also when the process dies, so a crashed builder blocks nobody.
/// Copies are made outside the lock: a finished template is never changed again.
pub fn template_in(root: &Path, bin: &Path) -> Result<PathBuf> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("pg");
    ensure_reachable(root)?;
    let dir = root.join(format!("ordermesh-pg-template-{version}"));
    let lock_path = root.join(format!("ordermesh-pg-template-{version}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("lock {}", lock_path.display()))?;

    // The binaries' size and time too: a package upgraded in place keeps the path.
    let initdb = std::fs::metadata(bin.join("initdb"))
        .with_context(|| format!("no initdb in {}", bin.display()))?;
    let mark = format!(
        "initdb from {} ({} bytes, changed at {})\n",
        bin.display(),
        initdb.len(),
        initdb.mtime()
    );
    if std::fs::read_to_string(dir.join(TEMPLATE_MARK)).is_ok_and(|found| found == mark) {
        return Ok(dir);
    }
    if dir.exists() {
        // Not one of ours, or not finished: nobody copies from it (copies need the mark).
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("remove the unfinished template {}", dir.display()))?;
    }
    // Built beside it and renamed into place, so the template's path only ever holds a whole one.
    let building = tempfile::Builder::new()
        .prefix(&format!("ordermesh-pg-template-{version}.building-"))
        .tempdir_in(root)?;
    hand_over(building.path())?;
    let out = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(building.path())
        .args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ])
        .output()
        .context("run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(building.path().join(TEMPLATE_MARK), &mark)?;
    std::fs::rename(building.keep(), &dir)
        .with_context(|| format!("move the new template to {}", dir.display()))?;
    Ok(dir)
}

impl Postgres {
    /// Starts a server; None (the test then skips) where PostgreSQL is not installed and CI is not
    /// set; an error under CI=true, where `.ci/run` installs it.
    pub async fn start() -> Result<Option<Self>> {
        let Some(bin) = bin_dir() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!(
                    "PostgreSQL is not installed (/usr/lib/postgresql/*/bin), and CI=true requires it (.ci/run installs it)"
                );
            }
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (apt-get install postgresql, or run .ci/run)"
            );
            return Ok(None);
        };
        let started = tokio::task::spawn_blocking(move || -> Result<Self> {
            let template = template(&bin)?;
            // A port is picked free and may be taken before the server binds it: try again then.
            let mut last = None;
            for _ in 0..3 {
                match Self::start_from(&bin, &template) {
                    Ok(server) => return Ok(server),
                    Err(error) => last = Some(error),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
        })
        .await??;
        Ok(Some(started))
    }

    fn start_from(bin: &Path, template: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ordermesh-pg-").tempdir()?;
        hand_over(dir.path())?;
        let data = dir.path().join("data");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&data)
            .status()?;
        anyhow::ensure!(copied.success(), "copy the template data directory");
        // Not a port-0 pick: see `addr` (another test's connection could take it first).
        let port = crate::addr::unused_loopback_addr()?.port();
        let log = dir.path().join("postgres.log");
        let server = as_server_user(&bin.join("postgres"));
        let mut argv: Vec<String> = vec![server.get_program().to_string_lossy().into_owned()];
        argv.extend(server.get_args().map(|a| a.to_string_lossy().into_owned()));
        argv.extend(
            [
                "-D",
                &data.to_string_lossy(),
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "shared_buffers=16MB",
                // Several services with a pool of 10 each, and replicas of them.
                "-c",
                "max_connections=200",
                // The tests kill services, never the machine: durability against an OS crash is
                // not what they test, and an fsync per commit costs seconds on a shared disk.
                "-c",
                "fsync=off",
            ]
            .map(str::to_owned),
        );
        let out = std::fs::File::create(&log)?;
        // The shell starts the server, then waits for its stdin to close (our handle dropped, or
        // this process gone) and stops it: SIGQUIT is PostgreSQL's immediate shutdown.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$@" & pid=$!; read -r _; kill -QUIT "$pid" 2>/dev/null; wait "$pid""#)
            .arg("postgres-for-test")
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start postgres")?;
        let stop = child.stdin.take();
        let mut server = Self {
            port,
            child,
            stop,
            log,
            dir: Some(dir),
        };
        server.wait_ready(bin)?;
        Ok(server)
    }

    fn wait_ready(&mut self, bin: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("postgres exited ({status}): {}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("postgres not ready after 30 s: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `database` (empty) and returns its URL.
    pub async fn create_database(&self, database: &str) -> Result<String> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        // A name of ours, never input: letters, digits and underscores only.
        anyhow::ensure!(
            database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {database:?}"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(self.url(database))
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the pipe tells the shell to stop the server; wait for that, briefly.
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take();
    }
}
