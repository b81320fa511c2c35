//! A process-churn campaign for the notifier (issue 19): while orders flow, notifier replicas that
//! share one PostgreSQL database are started, SIGTERMed and SIGKILLed on a seeded schedule
//! ([`plan`]), delivering to a real SMTP server and an SMS gateway that record every delivery with
//! its `Message-ID` / `Idempotency-Key`; once the last replicas have drained, the [`audit`] checks
//! that every event was notified exactly once per channel, and that repeats at the servers came only
//! from sends a SIGKILL interrupted, at most one per partition per kill.
//!
//! The run owns its whole set-up, on loopback: the embedded broker (librdkafka's mock cluster, in
//! this process; the replicas reach it over TCP), a PostgreSQL server of its own (testkit),
//! aiosmtpd, a wiremock SMS gateway, and the replicas as real processes of the notifier binary
//! ([`replicas`]). "Orders flow" is OrderPlaced events published on the events topic as the order
//! service's relay publishes them (same encoding, CloudEvents headers and key), in bursts during
//! the steps: the notifier is what is under test, and an order service would only slow the run.
//!
//! The `ordermesh-churn` binary runs it for a user; `notifier/tests/churn.rs` runs a short one in
//! `cargo test`. Both print the seed and the command that replays it.

pub mod audit;
pub mod plan;
mod publish;
mod replicas;
mod report;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use ordermesh_notifier::{Channel, dead_letter};
use ordermesh_testkit::{
    Backend, Broker, Databases, SMS_TOKEN, SmsGateway, SmtpServer, smtp_available, unused_addr,
};
use tokio::time::Instant;

use self::{
    audit::{Delivery, Observed, Row},
    plan::{Action, Plan},
    replicas::{Replicas, Shared, replica_number},
};
pub use self::{replicas::Counts, report::Report};

/// How a campaign runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub shape: plan::Shape,
    /// The notifier binary the replicas run.
    pub notifier: PathBuf,
    /// Partitions of the events topic.
    pub partitions: usize,
    /// The replicas' send timeout. Their claim lease is twice this and a second: how long the
    /// partitions of a killed replica wait before its claims are taken over.
    pub send_timeout: Duration,
    /// The replicas' consumer session timeout: how long the group waits for a killed member.
    pub session_timeout: Duration,
    /// How long the SMS gateway takes per SMS: sends take long enough for a kill to land in one.
    pub sms_delay: Duration,
    /// How long a SIGTERMed replica may take to exit.
    pub stop_grace: Duration,
    /// Bound on the wait, after the last step, for every event to be notified.
    pub drain_timeout: Duration,
    /// Where the logs, the Maildir and the run's files go.
    pub dir: PathBuf,
    /// The command that replays this campaign, for the report.
    pub replay: String,
}

impl Settings {
    /// Defaults for a campaign with `seed` of `notifier`, its files in `dir`.
    pub fn new(seed: u64, notifier: PathBuf, dir: PathBuf) -> Self {
        Self {
            seed,
            shape: plan::Shape::default(),
            notifier,
            partitions: 3,
            send_timeout: Duration::from_millis(2_000),
            session_timeout: Duration::from_millis(6_000),
            sms_delay: Duration::from_millis(20),
            stop_grace: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(120),
            dir,
            replay: String::new(),
        }
    }
}

/// Runs the campaign of `settings` and audits it. None when the run is to skip: PostgreSQL or
/// aiosmtpd is not installed and CI is not set (the testkit's rule; it says so on stderr).
pub async fn run(settings: &Settings) -> Result<Option<Report>> {
    let started = Instant::now();
    let plan = plan::plan(settings.seed, &settings.shape);

    // Arrange: the broker, the database, the two servers, the first replicas.
    let Some(databases) = Databases::for_test(&settings.dir, Backend::Postgres).await? else {
        return Ok(None);
    };
    if !smtp_available().await? {
        return Ok(None);
    }
    let database = databases.url("notifier");
    let topic = format!("churn-{}", uuid::Uuid::new_v4().simple());
    let dead_letters = Channel::ALL.map(|c| dead_letter::topic(&topic, c));
    let partitions = i32::try_from(settings.partitions).context("partitions")?;
    let broker = Broker::embedded(&[&topic, &dead_letters[0], &dead_letters[1]], partitions)?;
    let smtp_addr = unused_addr().await?;
    let maildir = settings.dir.join("mail");
    let smtp = SmtpServer::start(smtp_addr, &maildir).await?;
    let gateway = SmsGateway::start_slow(settings.sms_delay).await;
    let mut replicas = Replicas::new(Shared {
        program: settings.notifier.clone(),
        dir: settings.dir.clone(),
        env: replica_env(settings, &database, &broker, &topic, smtp_addr),
        sms_url: gateway.url(),
        grace: settings.stop_grace,
    });
    for _ in 0..settings.shape.initial_replicas {
        replicas.start().await?;
    }

    // Act: the steps, with events published meanwhile.
    let publishing = tokio::spawn(publish::bursts(
        broker.bootstrap_servers(),
        topic.clone(),
        format!("churn_{}", settings.seed),
        plan.bursts.clone(),
    ));
    apply(&plan, &mut replicas, &gateway, settings.sms_delay).await?;
    let published = publishing.await.context("the publisher")??;
    let drain_started = Instant::now();
    replicas.check();
    if replicas.live() == 0 {
        replicas.start().await?;
    }
    let pool = ordermesh_platform::db::connect(&database).await?;
    let drained = drain(&pool, published.len(), settings.drain_timeout).await?;
    let drained_in = drain_started.elapsed();
    replicas.check();
    replicas.stop_all().await?;

    // Assert: what the database and the servers hold, judged.
    let observed = Observed {
        rows: rows(&pool).await?,
        deliveries: deliveries(&smtp, &gateway)?,
        published,
        fates: replicas.fates.clone(),
        problems: replicas.problems.clone(),
        partitions: settings.partitions,
    };
    pool.close().await;
    smtp.stop().await?;
    let violations = audit::violations(&observed);
    let count = |of: &dyn Fn(Channel) -> usize| -> BTreeMap<&'static str, usize> {
        Channel::ALL.iter().map(|c| (c.as_str(), of(*c))).collect()
    };
    let repeats = audit::repeats(&observed);
    Ok(Some(Report {
        seed: settings.seed,
        replay: settings.replay.clone(),
        partitions: settings.partitions,
        steps: plan.steps.len(),
        counts: replicas.counts,
        published: observed.published.len(),
        sent: count(&|c| {
            observed
                .rows
                .iter()
                .filter(|r| r.channel == c && r.status == "SENT")
                .count()
        }),
        delivered: count(&|c| {
            observed
                .deliveries
                .iter()
                .filter(|d| d.channel == c)
                .count()
        }),
        repeats: count(&|c| repeats.get(&c).copied().unwrap_or(0)),
        drained_in,
        drained,
        elapsed: started.elapsed(),
        dir: settings.dir.clone(),
        violations,
    }))
}

/// Carries out the steps: each action, then its pause. A replica that exited on its own is noted
/// before each step (and a stop or kill then takes another, or none). A kill waits (a few seconds
/// at most) for its replica to be in the middle of a send, seen at `gateway`, whose SMS take
/// `sms_delay`.
async fn apply(
    plan: &Plan,
    replicas: &mut Replicas,
    gateway: &SmsGateway,
    sms_delay: Duration,
) -> Result<()> {
    for step in &plan.steps {
        replicas.check();
        match step.action {
            Action::Start => replicas.start().await?,
            Action::Stop(index) => replicas.stop(index).await?,
            Action::Kill(index) => {
                replicas
                    .kill(index, gateway, sms_delay, Duration::from_secs(5))
                    .await?
            }
            // Joining takes a session or so at most; past that, stop anyway.
            Action::Handover(index) => replicas.hand_over(index, Duration::from_secs(15)).await?,
        }
        tokio::time::sleep(step.pause).await;
    }
    Ok(())
}

/// The environment every replica shares: the one database and broker, the same topic and groups,
/// the two servers, and timeouts short enough for a short run.
fn replica_env(
    settings: &Settings,
    database: &str,
    broker: &Broker,
    topic: &str,
    smtp: std::net::SocketAddr,
) -> Vec<(&'static str, String)> {
    let millis = |d: Duration| d.as_millis().to_string();
    vec![
        // Any free port: several replicas run side by side.
        ("NOTIFIER_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("NOTIFIER_DATABASE_URL", database.to_owned()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("ORDER_EVENTS_TOPIC", topic.to_owned()),
        ("NOTIFIER_EMAIL_GROUP", format!("{topic}-email")),
        ("NOTIFIER_SMS_GROUP", format!("{topic}-sms")),
        ("NOTIFIER_SMTP_URL", format!("smtp://{smtp}")),
        ("NOTIFIER_SMS_WEBHOOK_TOKEN", SMS_TOKEN.to_owned()),
        ("NOTIFIER_SEND_TIMEOUT_MS", millis(settings.send_timeout)),
        (
            "NOTIFIER_SESSION_TIMEOUT_MS",
            millis(settings.session_timeout),
        ),
        // A send that failed (the server was slow under load) is tried again soon, not in a
        // minute: the drain would wait for it.
        ("NOTIFIER_RETRY_BACKOFF_MS", "200".to_owned()),
        ("NOTIFIER_RETRY_MAX_BACKOFF_MS", "2000".to_owned()),
        // The embedded broker holds an empty fetch this long: a burst is seen sooner.
        ("NOTIFIER_FETCH_WAIT_MAX_MS", "100".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
}

/// SENT rows per channel.
async fn sent(pool: &ordermesh_platform::db::Pool) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT channel, COUNT(*) FROM notifications WHERE status = 'SENT' GROUP BY channel",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until every one of `events` is SENT on both channels, or `timeout` passes: whether it was.
async fn drain(
    pool: &ordermesh_platform::db::Pool,
    events: usize,
    timeout: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let want = i64::try_from(events)?;
    loop {
        let sent = sent(pool).await?;
        if Channel::ALL
            .iter()
            .all(|c| sent.get(c.as_str()).copied().unwrap_or(0) >= want)
        {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every notification row.
async fn rows(pool: &ordermesh_platform::db::Pool) -> Result<Vec<Row>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_id, channel, status FROM notifications")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(event_id, channel, status)| {
            let channel = Channel::ALL.into_iter().find(|c| c.as_str() == channel)?;
            Some(Row {
                event_id,
                channel,
                status,
            })
        })
        .collect())
}

/// Every email in the Maildir and every SMS the gateway accepted, with the replica that sent it.
fn deliveries(smtp: &SmtpServer, gateway: &SmsGateway) -> Result<Vec<Delivery>> {
    let emails = smtp.emails()?.into_iter().map(|e| Delivery {
        channel: Channel::Email,
        replica: replica_number(&e.from, "replica-"),
        identity: e.message_id,
        received: e.received,
    });
    let sms = gateway.accepted().into_iter().map(|s| Delivery {
        channel: Channel::Sms,
        replica: replica_number(&s.query, "replica="),
        identity: s.idempotency_key,
        received: s.received,
    });
    Ok(emails.chain(sms).collect())
}

/// The notifier binary next to the running executable (`target/<profile>/notifier` for a binary
/// of this crate run from there), the default of `ordermesh-churn --notifier`.
pub fn notifier_beside_me() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!("notifier{}", std::env::consts::EXE_SUFFIX)))
}
