//! 7. Resident memory of each service, idle and under load, vs a raw tonic echo server.
//!
//! Memory is per process, so here, unlike the other benchmarks, every side runs as its own process
//! from the real binaries: `order`, `payment` and `notifier` with their default settings (the
//! notifier's email and SMS in log-only mode, SQLite files in a temporary directory), against the
//! embedded broker in this process, and `ordermesh-echo` (see [`crate::echo`]) as the baseline. All
//! are looked for beside the running `ordermesh-bench`, so a release bench measures release
//! services.
//!
//! Each round starts all four afresh, lets them settle, reads each one's VmRSS (idle), then, in
//! ABBA order, drives CreateOrder at order (which calls payment and publishes what the notifier
//! consumes) and the same closed loop of echo calls at the echo, reading VmRSS every
//! [`SAMPLE_EVERY`] meanwhile. The figure under load is the largest sample; VmHWM, the kernel's
//! own record of the peak since the process started, is read as the load ends. (Recent kernels
//! keep these counters per CPU and sum them loosely, so the two can differ by a few pages.) Fresh
//! processes per round keep the rounds independent: a process's memory rarely shrinks, so a
//! reused one would carry each round's peak into the next. RSS counts a process's code pages too,
//! and for an idle service they are most of it; the anonymous part (RssAnon, the largest sample
//! under load) is printed as well, so the two can be told apart.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::pin,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use ordermesh_notifier::{Channel, dead_letter};
use ordermesh_testkit::{Broker, Process, unused_addr};
use tempfile::TempDir;

use crate::{
    Scale,
    compare::{Better, Comparison, in_turn},
    grpc::{create_orders, echo_calls, no_errors},
    load::{Pace, Until},
};

/// How often VmRSS is read under load.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What builds the binaries this benchmark runs.
const BUILD: &str = "cargo build --release --workspace";

/// The memory of a process as `/proc/<pid>/status` gives it, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most ever resident.
    pub hwm_kib: u64,
    /// RssAnon: the resident part that is the process's own (heap, stacks), as against its
    /// code and other file pages, which RSS counts too and which are most of an idle service's.
    pub anon_kib: u64,
}

impl Memory {
    /// The memory of process `pid` now. Linux only.
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        // A process that has exited but is not yet reaped still has a status, without these.
        Self::parse(&status).with_context(|| format!("no VmRSS/VmHWM in {path}: has it exited?"))
    }

    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
            })
        };
        Some(Self {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
            anon_kib: field("RssAnon")?,
        })
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The programs this benchmark runs, from one directory.
#[derive(Debug)]
struct Binaries {
    order: PathBuf,
    payment: PathBuf,
    notifier: PathBuf,
    echo: PathBuf,
}

impl Binaries {
    /// The binaries beside the running executable: cargo puts every binary of the workspace in
    /// the same directory, so a release bench finds release services.
    fn beside_this_executable() -> Result<Self> {
        let exe = std::env::current_exe().context("where is ordermesh-bench?")?;
        let dir = exe
            .parent()
            .with_context(|| format!("{} has no directory", exe.display()))?;
        Self::in_dir(dir)
    }

    fn in_dir(dir: &Path) -> Result<Self> {
        let names = ["order", "payment", "notifier", "ordermesh-echo"];
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|name| !dir.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the resident-memory benchmark runs the real binaries from the directory of \
                 ordermesh-bench, and {} {} not in {}: build them beside it with `{BUILD}` (or \
                 `cargo build --workspace` for a debug ordermesh-bench)",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                dir.display()
            );
        }
        let [order, payment, notifier, echo] = names.map(|name| dir.join(name));
        Ok(Self {
            order,
            payment,
            notifier,
            echo,
        })
    }
}

/// Fails if this process's environment carries service settings: the children inherit it, and
/// this benchmark measures the defaults (and must not send real email or SMS).
fn check_environment() -> Result<()> {
    let inherited: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            ["ORDER_", "PAYMENT_", "NOTIFIER_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    if !inherited.is_empty() {
        bail!(
            "the environment sets {}, which the services would inherit: the resident-memory \
             benchmark runs them with their defaults (the notifier log-only) and its own \
             addresses, data and topics; unset before running",
            inherited.join(", ")
        );
    }
    Ok(())
}

/// Settings every service gets, so what the caller's shell exports does not change what is
/// measured: the default log filter and format, and no OTLP export (the default without a
/// collector).
fn common_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "RUST_LOG",
            ordermesh_platform::telemetry::DEFAULT_FILTER.to_owned(),
        ),
        ("LOG_FORMAT", "text".to_owned()),
        ("OTEL_TRACES_EXPORTER", "none".to_owned()),
        ("OTEL_METRICS_EXPORTER", "none".to_owned()),
    ]
}

/// How a program is told where to serve gRPC.
#[derive(Debug, Clone, Copy)]
enum Listen {
    /// The services: an environment variable, like their other settings here.
    Env(&'static str),
    /// `ordermesh-echo`, which has only flags.
    Flag(&'static str),
}

/// A process this benchmark started, and where it serves gRPC.
#[derive(Debug)]
struct Running {
    process: Process,
    addr: SocketAddr,
}

impl Running {
    /// Starts `program` with its gRPC server on a free port, its log in `dir`, and waits until
    /// it is SERVING.
    async fn start(
        dir: &Path,
        name: &str,
        program: &Path,
        listen: Listen,
        mut envs: Vec<(&str, String)>,
    ) -> Result<Self> {
        let addr = unused_addr().await?;
        let args = match listen {
            Listen::Env(variable) => {
                envs.push((variable, addr.to_string()));
                Vec::new()
            }
            Listen::Flag(flag) => vec![flag.to_owned(), addr.to_string()],
        };
        let mut process =
            Process::spawn(name, program, &args, &envs, dir.join(format!("{name}.log")))?;
        process.wait_serving(addr).await?;
        Ok(Self { process, addr })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn pid(&self) -> Result<u32> {
        self.process
            .pid()
            .with_context(|| format!("{} has exited", self.process.name))
    }

    fn memory(&self) -> Result<Memory> {
        Memory::of(self.pid()?).with_context(|| format!("memory of {}", self.process.name))
    }
}

/// The three services and the echo, started afresh for one round, their data and logs in `_dir`.
struct Round {
    order: Running,
    payment: Running,
    notifier: Running,
    echo: Running,
    _dir: TempDir,
}

impl Round {
    async fn start(binaries: &Binaries, broker: &Broker) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        // A topic of its own per round, so each round's notifier starts from an empty one.
        let topic = format!("rss-{}", uuid::Uuid::new_v4().simple());
        // The mock cluster does not create topics on request: the events topic and the
        // notifier's dead-letter topics.
        for topic in [
            topic.clone(),
            dead_letter::topic(&topic, Channel::Email),
            dead_letter::topic(&topic, Channel::Sms),
        ] {
            broker.create_topic(&topic, 3).await?;
        }
        let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        let with_common = |mut envs: Vec<(&'static str, String)>| {
            envs.extend(common_env());
            envs
        };

        let payment = Running::start(
            dir.path(),
            "payment",
            &binaries.payment,
            Listen::Env("PAYMENT_LISTEN_ADDR"),
            with_common(vec![
                // Any free port: the metrics endpoint is served but not scraped.
                ("PAYMENT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
                ("PAYMENT_DATABASE_URL", db("payment.db")),
            ]),
        )
        .await?;
        let order = Running::start(
            dir.path(),
            "order",
            &binaries.order,
            Listen::Env("ORDER_LISTEN_ADDR"),
            with_common(vec![
                ("ORDER_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
                ("ORDER_DATABASE_URL", db("order.db")),
                ("ORDER_PAYMENT_URL", payment.url()),
                ("KAFKA_BROKERS", broker.bootstrap_servers()),
                ("ORDER_EVENTS_TOPIC", topic.clone()),
            ]),
        )
        .await?;
        // No NOTIFIER_SMTP_URL or NOTIFIER_SMS_WEBHOOK_URL: email and SMS are recorded and
        // logged, not sent (check_environment makes sure none is inherited).
        let notifier = Running::start(
            dir.path(),
            "notifier",
            &binaries.notifier,
            Listen::Env("NOTIFIER_LISTEN_ADDR"),
            with_common(vec![
                ("NOTIFIER_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
                ("NOTIFIER_DATABASE_URL", db("notifier.db")),
                ("KAFKA_BROKERS", broker.bootstrap_servers()),
                ("ORDER_EVENTS_TOPIC", topic.clone()),
                ("NOTIFIER_EMAIL_GROUP", format!("{topic}-email")),
                ("NOTIFIER_SMS_GROUP", format!("{topic}-sms")),
            ]),
        )
        .await?;
        let echo = Running::start(
            dir.path(),
            "ordermesh-echo",
            &binaries.echo,
            Listen::Flag("--listen-addr"),
            Vec::new(),
        )
        .await?;
        Ok(Self {
            order,
            payment,
            notifier,
            echo,
            _dir: dir,
        })
    }

    /// The services, in the order of the rows.
    fn services(&self) -> [&Running; 3] {
        [&self.order, &self.payment, &self.notifier]
    }

    /// SIGTERM to all, as an operator stopping them would; each drains and exits.
    async fn stop(self) -> Result<()> {
        let (order, payment, notifier, echo) = tokio::join!(
            self.order.process.terminate(),
            self.payment.process.terminate(),
            self.notifier.process.terminate(),
            self.echo.process.terminate(),
        );
        order.and(payment).and(notifier).and(echo)
    }
}

/// Runs `load` while reading the memory of `processes` every [`SAMPLE_EVERY`]; returns what
/// `load` returned and, per process, the largest VmRSS read and VmHWM as the load ended.
async fn sampled<T>(
    processes: &[&Running],
    load: impl Future<Output = Result<T>>,
) -> Result<(T, Vec<Memory>)> {
    let mut peaks = vec![Memory::default(); processes.len()];
    let sample = |peaks: &mut [Memory]| -> Result<()> {
        for (peak, process) in peaks.iter_mut().zip(processes) {
            let now = process.memory()?;
            peak.rss_kib = peak.rss_kib.max(now.rss_kib);
            peak.anon_kib = peak.anon_kib.max(now.anon_kib);
            peak.hwm_kib = now.hwm_kib;
        }
        Ok(())
    };
    let mut load = pin!(load);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    // A late tick is taken when it can be, not made up for with a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The load is over: one last reading, so a short run still has its end.
            out = &mut load => {
                let out = out?;
                sample(&mut peaks)?;
                return Ok((out, peaks));
            }
            // Meanwhile, a reading every SAMPLE_EVERY (the first at once).
            _ = tick.tick() => sample(&mut peaks)?,
        }
    }
}

/// 7. Resident memory of each service, idle and under load, vs a raw tonic echo server.
pub async fn rss(scale: &Scale) -> Result<Vec<Comparison>> {
    let binaries = Binaries::beside_this_executable()?;
    check_environment()?;
    // 64 callers as in benchmark 2. The settle covers the notifier's consumer groups joining
    // (about 3 s on the mock cluster), so idle means idle, not starting up.
    let (concurrency, load_for, settle) = if scale.smoke {
        (8, Duration::from_millis(1_500), Duration::from_millis(500))
    } else {
        (64, Duration::from_secs(10), Duration::from_secs(3))
    };
    let pace = Pace::Closed { concurrency };
    let until = Until::Elapsed(load_for);
    let broker = Broker::embedded(&[], 3)?;

    let rows = |what: &str, target: Option<f64>| {
        ["order", "payment", "notifier"].map(|service| {
            let note = if target.is_some() { "" } else { " (info only)" };
            Comparison::new(
                &format!("{service} {what} vs raw echo{note}"),
                "MiB",
                Better::Lower,
                target,
            )
        })
    };
    let mut under_load = rows(
        &format!("RSS under load ({concurrency} callers)"),
        Some(2.0),
    );
    let mut idle = rows("RSS idle", None);
    let mut high_water = rows("VmHWM after load", None);
    let mut anonymous = rows("anonymous RSS under load", None);

    for round in 0..scale.rounds {
        let mesh = Round::start(&binaries, &broker).await?;
        tokio::time::sleep(settle).await;
        let echo_idle = mesh.echo.memory()?;
        for (row, service) in idle.iter_mut().zip(mesh.services()) {
            row.ours.push(mib(service.memory()?.rss_kib));
            row.raw.push(mib(echo_idle.rss_kib));
        }

        let ours = async {
            let (summary, peaks) = sampled(
                &mesh.services(),
                create_orders(&mesh.order.url(), pace, until),
            )
            .await?;
            no_errors("CreateOrder", &summary)?;
            Ok(peaks)
        };
        let raw = async {
            let (summary, peaks) =
                sampled(&[&mesh.echo], echo_calls(&mesh.echo.url(), pace, until)).await?;
            no_errors("echo", &summary)?;
            Ok(peaks)
        };
        let (ours, raw) = in_turn(round, ours, raw).await?;
        let echo = raw.first().copied().unwrap_or_default();
        for (((load, peak), anon), service) in under_load
            .iter_mut()
            .zip(&mut high_water)
            .zip(&mut anonymous)
            .zip(&ours)
        {
            load.ours.push(mib(service.rss_kib));
            load.raw.push(mib(echo.rss_kib));
            peak.ours.push(mib(service.hwm_kib));
            peak.raw.push(mib(echo.hwm_kib));
            anon.ours.push(mib(service.anon_kib));
            anon.raw.push(mib(echo.anon_kib));
        }
        mesh.stop().await?;
    }
    Ok(under_load
        .into_iter()
        .chain(idle)
        .chain(high_water)
        .chain(anonymous)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_high_water_mark_from_proc_status() {
        let status = "Name:\torder\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nRssAnon:\t    8192 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss_kib: 30_720,
                hwm_kib: 40_960,
                anon_kib: 8_192,
            })
        );
        // A zombie's status has no memory lines.
        assert_eq!(Memory::parse("Name:\torder\nState:\tZ (zombie)\n"), None);

        let mine = Memory::of(std::process::id()).expect("this process's memory");
        assert!(mine.rss_kib > 0 && mine.hwm_kib >= mine.rss_kib, "{mine:?}");
        assert!(
            mine.anon_kib > 0 && mine.anon_kib <= mine.rss_kib,
            "{mine:?}"
        );
    }

    #[test]
    fn missing_binaries_are_named_with_the_command_that_builds_them() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("order"), b"").expect("write");
        let error = Binaries::in_dir(dir.path()).expect_err("payment and others missing");
        let message = error.to_string();
        assert!(
            message.contains("payment, notifier, ordermesh-echo") && message.contains(BUILD),
            "{message}"
        );
    }
}
