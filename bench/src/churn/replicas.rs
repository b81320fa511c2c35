//! The notifier replicas of a churn campaign: real processes of the notifier binary, all on the one
//! PostgreSQL database and in the same two consumer groups, started, SIGTERMed and SIGKILLed as
//! the plan says, each with a number of its own.
//!
//! The number is how the audit knows who sent what: each replica sends its emails as
//! `replica-<n> <orders@ordermesh.example>` and its SMS to the gateway URL with `?replica=<n>`, so
//! a repeated delivery can be traced to the replica that made the earlier one, and that replica's
//! fate (was it SIGKILLed?) decides whether the repeat is allowed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use ordermesh_testkit::{Process, SmsGateway, unused_addr};

use super::audit::Fate;

/// The settings every replica shares (the per-replica ones are added at start).
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) program: PathBuf,
    /// Where the replicas' logs go (`replica-<n>.log`).
    pub(crate) dir: PathBuf,
    /// Environment of every replica.
    pub(crate) env: Vec<(&'static str, String)>,
    /// The SMS gateway's URL, to which `?replica=<n>` is added.
    pub(crate) sms_url: String,
    /// How long a SIGTERMed replica may take to exit before it is SIGKILLed.
    pub(crate) grace: Duration,
}

/// What was done to the replicas, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub starts: usize,
    /// SIGTERMs sent (by the plan and at the end).
    pub stops: usize,
    /// Of those, sent as a newcomer was assigned partitions ([`super::plan::Action::Handover`]).
    pub handovers: usize,
    /// Of those, sent at the end to the replicas still running.
    pub final_stops: usize,
    /// SIGKILLs sent by the plan.
    pub kills: usize,
    /// Of those, sent while the gateway held an SMS of that replica unanswered: a send in flight
    /// and its batch's other claims held.
    pub kills_mid_send: usize,
    /// SIGKILLs sent because a SIGTERMed replica did not exit within the grace.
    pub forced_kills: usize,
    /// Steps the plan could not carry out: a stop or kill when none was alive (a replica exited
    /// on its own and the plan did not know).
    pub skipped: usize,
}

/// The live replicas, oldest first, and how every replica ended.
#[derive(Debug)]
pub(crate) struct Replicas {
    shared: Shared,
    live: Vec<(usize, Process)>,
    pub(crate) fates: BTreeMap<usize, Fate>,
    pub(crate) problems: Vec<(usize, String)>,
    pub(crate) counts: Counts,
}

/// The number in `text` after `marker` (`replica-` in a From header, `replica=` in a query).
pub(crate) fn replica_number(text: &str, marker: &str) -> Option<usize> {
    let after = &text[text.find(marker)? + marker.len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Replicas {
    pub(crate) fn new(shared: Shared) -> Self {
        Self {
            shared,
            live: Vec::new(),
            fates: BTreeMap::new(),
            problems: Vec::new(),
            counts: Counts::default(),
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.len()
    }

    /// Starts replica number `starts + 1` and waits until it serves (its consumers are created
    /// then; joining the groups follows).
    pub(crate) async fn start(&mut self) -> Result<()> {
        let number = self.counts.starts + 1;
        let addr = unused_addr().await?;
        let mut env = self.shared.env.clone();
        env.extend([
            ("NOTIFIER_LISTEN_ADDR", addr.to_string()),
            (
                "NOTIFIER_EMAIL_FROM",
                format!("replica-{number} <orders@ordermesh.example>"),
            ),
            (
                "NOTIFIER_SMS_WEBHOOK_URL",
                format!("{}?replica={number}", self.shared.sms_url),
            ),
        ]);
        let mut process = Process::spawn(
            &format!("notifier replica {number}"),
            &self.shared.program,
            &[],
            &env,
            log(&self.shared.dir, number),
        )?;
        self.counts.starts += 1;
        self.fates.insert(number, Fate::Running);
        process
            .wait_serving(addr)
            .await
            .with_context(|| format!("start notifier replica {number}"))?;
        self.live.push((number, process));
        Ok(())
    }

    /// SIGTERM to the live replica at `index` (oldest first; taken modulo the live count).
    pub(crate) async fn stop(&mut self, index: usize) -> Result<()> {
        let Some((number, process)) = self.take(index) else {
            return Ok(());
        };
        self.terminate(number, process).await
    }

    /// Starts a replica and, as soon as its log says partitions were assigned to it (or after
    /// `within`), SIGTERMs the replica at `index` among those alive before (modulo their count).
    pub(crate) async fn hand_over(&mut self, index: usize, within: Duration) -> Result<()> {
        let before = self.live.len();
        self.start().await?;
        if before == 0 {
            self.counts.skipped += 1;
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + within;
        while let Some((_, newcomer)) = self.live.last()
            && !newcomer.log_text().contains("partitions assigned")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (number, process) = self.live.remove(index % before);
        self.counts.handovers += 1;
        self.terminate(number, process).await
    }

    /// SIGKILL to the live replica at `index` (oldest first; taken modulo the live count), in the
    /// middle of a send if it makes one within `within`: the moment the SMS gateway has taken an
    /// SMS from it and not answered yet (it answers after `delay`). A kill between batches tests
    /// little; one mid-send leaves a send in flight and the batch's other claims held.
    pub(crate) async fn kill(
        &mut self,
        index: usize,
        gateway: &SmsGateway,
        delay: Duration,
        within: Duration,
    ) -> Result<()> {
        if let Some((number, _)) = self.live.get(index % self.live.len().max(1)) {
            let query = format!("replica={number}");
            let deadline = tokio::time::Instant::now() + within;
            while tokio::time::Instant::now() < deadline {
                let sending = gateway.accepted().iter().rev().any(|sms| {
                    sms.query == query
                        && sms.received.elapsed().is_ok_and(|since| since < delay / 2)
                });
                if sending {
                    self.counts.kills_mid_send += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let Some((number, process)) = self.take(index) else {
            return Ok(());
        };
        self.counts.kills += 1;
        self.fates.insert(number, Fate::Killed);
        process.kill().await
    }

    /// SIGTERM to every live replica at once, each waited for.
    pub(crate) async fn stop_all(&mut self) -> Result<()> {
        let live = std::mem::take(&mut self.live);
        let grace = self.shared.grace;
        let ends =
            futures::future::join_all(live.into_iter().map(|(number, process)| async move {
                (number, process.terminate_within(grace).await)
            }))
            .await;
        for (number, end) in ends {
            self.counts.stops += 1;
            self.counts.final_stops += 1;
            self.record_stop(number, end?);
        }
        Ok(())
    }

    /// Notes every replica that exited without being told to: a crash is a violation, and its
    /// sends in flight may be repeated as a killed one's may.
    pub(crate) fn check(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            let (number, process) = &mut self.live[i];
            if let Err(e) = process.check_running() {
                let first = e.to_string().lines().next().unwrap_or_default().to_owned();
                self.problems.push((
                    *number,
                    format!(
                        "{first} (log: {})",
                        log(&self.shared.dir, *number).display()
                    ),
                ));
                self.fates.insert(*number, Fate::Killed);
                self.live.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn take(&mut self, index: usize) -> Option<(usize, Process)> {
        if self.live.is_empty() {
            self.counts.skipped += 1;
            return None;
        }
        let index = index % self.live.len();
        Some(self.live.remove(index))
    }

    async fn terminate(&mut self, number: usize, process: Process) -> Result<()> {
        self.counts.stops += 1;
        let end = process.terminate_within(self.shared.grace).await?;
        self.record_stop(number, end);
        Ok(())
    }

    fn record_stop(&mut self, number: usize, end: Option<std::process::ExitStatus>) {
        let log = log(&self.shared.dir, number);
        match end {
            Some(status) => {
                self.fates.insert(number, Fate::Stopped);
                if !status.success() {
                    self.problems.push((
                        number,
                        format!(
                            "exited with {status} after SIGTERM (log: {})",
                            log.display()
                        ),
                    ));
                }
            }
            None => {
                self.counts.forced_kills += 1;
                self.fates.insert(number, Fate::Killed);
                self.problems.push((
                    number,
                    format!(
                        "still running {:?} after SIGTERM, SIGKILLed (log: {})",
                        self.shared.grace,
                        log.display()
                    ),
                ));
            }
        }
    }
}

fn log(dir: &Path, number: usize) -> PathBuf {
    dir.join(format!("replica-{number}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_is_read_from_a_from_header_and_from_a_query() {
        assert_eq!(
            replica_number("replica-12 <orders@ordermesh.example>", "replica-"),
            Some(12)
        );
        assert_eq!(
            replica_number("\"replica-3\" <orders@ordermesh.example>", "replica-"),
            Some(3)
        );
        assert_eq!(replica_number("replica=7", "replica="), Some(7));
        assert_eq!(replica_number("orders@ordermesh.example", "replica-"), None);
        assert_eq!(replica_number("replica=", "replica="), None);
    }
}
