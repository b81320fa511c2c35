//! What a churn campaign prints: its seed and how to replay it, what was done to the replicas,
//! what was published and delivered, how long the drain took, and every violated invariant with
//! what it is about.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use super::{
    audit::{Invariant, Violation},
    replicas::Counts,
};

/// A churn campaign's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    /// The command that replays this campaign.
    pub replay: String,
    pub partitions: usize,
    pub steps: usize,
    pub counts: Counts,
    pub published: usize,
    /// SENT rows per channel when the audit read them.
    pub sent: BTreeMap<&'static str, usize>,
    /// Deliveries per channel at the servers, repeats included.
    pub delivered: BTreeMap<&'static str, usize>,
    /// Deliveries beyond the first of the same identity, per channel.
    pub repeats: BTreeMap<&'static str, usize>,
    /// How long the last replicas took to notify everything after the last step (or the bound).
    pub drained_in: Duration,
    pub drained: bool,
    pub elapsed: Duration,
    /// Where the replicas' logs, the Maildir and the database's data are (kept after a violation).
    pub dir: PathBuf,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations grouped by invariant.
    pub fn by_invariant(&self) -> BTreeMap<Invariant, Vec<&Violation>> {
        let mut out: BTreeMap<Invariant, Vec<&Violation>> = BTreeMap::new();
        for v in &self.violations {
            out.entry(v.invariant).or_default().push(v);
        }
        out
    }
}

fn per_channel(counts: &BTreeMap<&'static str, usize>) -> String {
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// At most this many violations of one invariant are listed one by one.
const LISTED: usize = 20;

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(f, "notifier churn campaign, seed {}", self.seed)?;
        writeln!(f, "  replay with: {}", self.replay)?;
        writeln!(
            f,
            "  {} steps: {} starts, {} SIGTERMs ({} as a newcomer took partitions over, {} at the end), {} SIGKILLs ({} of them mid-send; {} more after an unanswered SIGTERM), {} skipped",
            self.steps,
            c.starts,
            c.stops,
            c.handovers,
            c.final_stops,
            c.kills,
            c.kills_mid_send,
            c.forced_kills,
            c.skipped
        )?;
        writeln!(
            f,
            "  {} events published on {} partitions; SENT rows: {}; delivered: {}; repeats: {}",
            self.published,
            self.partitions,
            per_channel(&self.sent),
            per_channel(&self.delivered),
            per_channel(&self.repeats)
        )?;
        writeln!(
            f,
            "  {} in {:.1} s after the last step; {:.1} s in all; run directory {}",
            if self.drained {
                "drained"
            } else {
                "NOT drained"
            },
            self.drained_in.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.dir.display()
        )?;
        if self.passed() {
            return writeln!(
                f,
                "audit: every event notified once per channel (0 violations)"
            );
        }
        writeln!(f, "audit: {} violations", self.violations.len())?;
        for (invariant, found) in self.by_invariant() {
            writeln!(f, "  VIOLATED {invariant} ({}):", found.len())?;
            for v in found.iter().take(LISTED) {
                writeln!(f, "    {v}")?;
            }
            if found.len() > LISTED {
                writeln!(f, "    ... and {} more", found.len() - LISTED)?;
            }
        }
        writeln!(f, "replay with: {}", self.replay)
    }
}
