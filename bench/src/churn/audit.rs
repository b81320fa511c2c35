//! The audit of a churn campaign: what the notifier's database and the two receiving servers hold
//! once the last replica has drained, judged against the events published and the replicas killed.
//!
//! The invariant, per channel:
//! - every published event has exactly one notification row, and it is SENT (none missing, none
//!   parked, none still under way);
//! - every row is about a published event;
//! - every published event reached its server, and every delivery there belongs to a published
//!   event (known by the `Message-ID` / `Idempotency-Key` the notifier derives from the event id);
//! - a delivery is repeated only when the replica that made the earlier delivery was SIGKILLed
//!   (that send was in flight at the kill: the notifier never learnt it succeeded), and a killed
//!   replica causes at most one repeat per partition (it sends on each of its partitions in turn);
//! - every replica ran until it was stopped, and a SIGTERMed one exited cleanly within the grace.
//!
//! Reading ([`Observed`], filled by the run) is kept apart from judging ([`violations`]), so the
//! judging is tested here on observations built by hand, broken ones included.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::SystemTime,
};

use ordermesh_notifier::Channel;

/// Which part of the invariant a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// A published event has exactly one SENT row per channel.
    SentOnce,
    /// Every row is about a published event.
    NoStrayRow,
    /// Every published event reached the server of each channel.
    Delivered,
    /// Every delivery belongs to a published event.
    NoStrayDelivery,
    /// A delivery is repeated only after its sender was SIGKILLed.
    RepeatOnlyAfterKill,
    /// A SIGKILL causes at most one repeat per partition and channel.
    RepeatsBounded,
    /// A replica runs until stopped, and stops cleanly on SIGTERM.
    ReplicaBehaves,
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SentOnce => "one SENT row per event and channel",
            Self::NoStrayRow => "every row is about a published event",
            Self::Delivered => "every event delivered on each channel",
            Self::NoStrayDelivery => "every delivery belongs to a published event",
            Self::RepeatOnlyAfterKill => "a delivery is repeated only after its sender's SIGKILL",
            Self::RepeatsBounded => "at most one repeat per partition per SIGKILL",
            Self::ReplicaBehaves => "replicas run until stopped and stop cleanly",
        })
    }
}

/// One breach of the invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// What it is about: an event id, a delivery's identity, a replica.
    pub subject: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.detail)
    }
}

/// A notification row, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub event_id: String,
    pub channel: Channel,
    pub status: String,
}

/// One message a server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub channel: Channel,
    /// The email's `Message-ID`, or the SMS request's `Idempotency-Key`.
    pub identity: String,
    /// The replica that sent it (each is given its own sender name and webhook URL), if known.
    pub replica: Option<usize>,
    pub received: SystemTime,
}

/// How a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Still running (only until the run stops it).
    Running,
    /// Exited after SIGTERM.
    Stopped,
    /// Gone without a chance to finish what it was sending: SIGKILLed by the plan or after a
    /// SIGTERM it did not answer within the grace, or exited on its own. Its sends in flight may
    /// be repeated.
    Killed,
}

/// Everything the audit judges.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Event ids published.
    pub published: Vec<String>,
    pub rows: Vec<Row>,
    pub deliveries: Vec<Delivery>,
    /// Each replica's end, by number.
    pub fates: BTreeMap<usize, Fate>,
    /// What went wrong with a replica (exited on its own, failed or hung on SIGTERM), by number.
    pub problems: Vec<(usize, String)>,
    /// Partitions of the events topic: a killed replica had at most this many sends in flight per
    /// channel.
    pub partitions: usize,
}

/// The event a delivery's identity names, as `notifier/src/delivery.rs` forms it: Message-ID
/// `<{event_id}.email@ordermesh>`, Idempotency-Key `{event_id}.sms`.
pub fn event_of(channel: Channel, identity: &str) -> Option<&str> {
    let event = match channel {
        Channel::Email => identity
            .strip_prefix('<')?
            .strip_suffix(".email@ordermesh>")?,
        Channel::Sms => identity.strip_suffix(".sms")?,
    };
    (!event.is_empty()).then_some(event)
}

/// Deliveries beyond the first of the same identity, per channel.
pub fn repeats(observed: &Observed) -> HashMap<Channel, usize> {
    let mut per_identity: HashMap<(Channel, &str), usize> = HashMap::new();
    for d in &observed.deliveries {
        *per_identity.entry((d.channel, &d.identity)).or_default() += 1;
    }
    let mut out = HashMap::new();
    for ((channel, _), n) in per_identity {
        *out.entry(channel).or_default() += n - 1;
    }
    out
}

/// Every breach of the invariant in `observed`.
pub fn violations(observed: &Observed) -> Vec<Violation> {
    let mut out = Vec::new();
    let published: HashSet<&str> = observed.published.iter().map(String::as_str).collect();
    let violation = |invariant, subject: &str, detail: String| Violation {
        invariant,
        subject: subject.to_owned(),
        detail,
    };

    // Rows: exactly one SENT per published event and channel, and none about anything else.
    let mut rows: HashMap<(&str, Channel), Vec<&str>> = HashMap::new();
    for row in &observed.rows {
        if !published.contains(row.event_id.as_str()) {
            out.push(violation(
                Invariant::NoStrayRow,
                &row.event_id,
                format!(
                    "{} row ({}) of an event never published",
                    row.channel.as_str(),
                    row.status
                ),
            ));
        }
        rows.entry((&row.event_id, row.channel))
            .or_default()
            .push(&row.status);
    }
    for event in &observed.published {
        for channel in Channel::ALL {
            let statuses = rows.get(&(event.as_str(), channel)).map(Vec::as_slice);
            if statuses != Some(&["SENT"][..]) {
                out.push(violation(
                    Invariant::SentOnce,
                    event,
                    format!(
                        "{} rows: {}",
                        channel.as_str(),
                        statuses.map_or("none".to_owned(), |s| s.join(", "))
                    ),
                ));
            }
        }
    }

    // Deliveries: each names a published event, and each published event has one per channel.
    let mut delivered: HashSet<(&str, Channel)> = HashSet::new();
    for d in &observed.deliveries {
        match event_of(d.channel, &d.identity) {
            Some(event) if published.contains(event) => {
                delivered.insert((event, d.channel));
            }
            _ => out.push(violation(
                Invariant::NoStrayDelivery,
                &d.identity,
                format!("{} delivery of no published event", d.channel.as_str()),
            )),
        }
    }
    for event in &observed.published {
        for channel in Channel::ALL {
            if !delivered.contains(&(event.as_str(), channel)) {
                out.push(violation(
                    Invariant::Delivered,
                    event,
                    format!("no {} reached its server", channel.as_str()),
                ));
            }
        }
    }

    // Repeats: each earlier delivery of a repeated identity was made by a replica SIGKILLed later,
    // and no killed replica accounts for more repeats on a channel than there are partitions.
    let killed = |replica: Option<usize>| {
        replica.is_some_and(|r| observed.fates.get(&r) == Some(&Fate::Killed))
    };
    let mut by_identity: HashMap<(Channel, &str), Vec<&Delivery>> = HashMap::new();
    for d in &observed.deliveries {
        by_identity
            .entry((d.channel, &d.identity))
            .or_default()
            .push(d);
    }
    let mut caused: HashMap<(usize, Channel), usize> = HashMap::new();
    let mut repeated: Vec<_> = by_identity
        .into_iter()
        .filter(|(_, ds)| ds.len() > 1)
        .collect();
    repeated.sort_by(|a, b| a.0.1.cmp(b.0.1));
    for ((channel, identity), mut ds) in repeated {
        ds.sort_by_key(|d| d.received);
        let senders: Vec<String> = ds
            .iter()
            .map(|d| d.replica.map_or("?".to_owned(), |r| format!("replica {r}")))
            .collect();
        for earlier in &ds[..ds.len() - 1] {
            if killed(earlier.replica) {
                if let Some(r) = earlier.replica {
                    *caused.entry((r, channel)).or_default() += 1;
                }
            } else {
                out.push(violation(
                    Invariant::RepeatOnlyAfterKill,
                    identity,
                    format!(
                        "{} delivered {} times, by {} in turn; the earlier sender was not SIGKILLed",
                        channel.as_str(),
                        ds.len(),
                        senders.join(", ")
                    ),
                ));
            }
        }
    }
    let mut caused: Vec<_> = caused.into_iter().collect();
    caused.sort_by_key(|((r, c), _)| (*r, c.as_str()));
    for ((replica, channel), n) in caused {
        if n > observed.partitions {
            out.push(violation(
                Invariant::RepeatsBounded,
                &format!("replica {replica}"),
                format!(
                    "its SIGKILL repeated {n} {} deliveries, more than the {} partitions",
                    channel.as_str(),
                    observed.partitions
                ),
            ));
        }
    }

    for (replica, what) in &observed.problems {
        out.push(violation(
            Invariant::ReplicaBehaves,
            &format!("replica {replica}"),
            what.clone(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn email(event: &str, replica: usize, ms: u64) -> Delivery {
        Delivery {
            channel: Channel::Email,
            identity: format!("<{event}.email@ordermesh>"),
            replica: Some(replica),
            received: at(ms),
        }
    }

    fn sms(event: &str, replica: usize, ms: u64) -> Delivery {
        Delivery {
            channel: Channel::Sms,
            identity: format!("{event}.sms"),
            replica: Some(replica),
            received: at(ms),
        }
    }

    fn sent(event: &str, channel: Channel) -> Row {
        Row {
            event_id: event.to_owned(),
            channel,
            status: "SENT".to_owned(),
        }
    }

    /// Two events, each sent once on each channel by replica 1 (stopped cleanly); replica 2 killed.
    fn clean() -> Observed {
        let mut fates = BTreeMap::new();
        fates.insert(1, Fate::Stopped);
        fates.insert(2, Fate::Killed);
        Observed {
            published: vec!["e1".into(), "e2".into()],
            rows: ["e1", "e2"]
                .iter()
                .flat_map(|e| Channel::ALL.map(|c| sent(e, c)))
                .collect(),
            deliveries: vec![
                email("e1", 1, 1),
                sms("e1", 1, 2),
                email("e2", 1, 3),
                sms("e2", 1, 4),
            ],
            fates,
            problems: vec![],
            partitions: 1,
        }
    }

    fn invariants(observed: &Observed) -> Vec<Invariant> {
        violations(observed).iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn identities_name_their_event() {
        assert_eq!(
            event_of(Channel::Email, "<evt_1.email@ordermesh>"),
            Some("evt_1")
        );
        assert_eq!(event_of(Channel::Sms, "evt_1.sms"), Some("evt_1"));
        assert_eq!(event_of(Channel::Email, "evt_1.sms"), None);
        assert_eq!(event_of(Channel::Sms, ".sms"), None);
    }

    #[test]
    fn a_clean_campaign_has_no_violation() {
        assert_eq!(violations(&clean()), vec![]);
        assert_eq!(repeats(&clean()).values().sum::<usize>(), 0);
    }

    #[test]
    fn a_lost_notification_is_missing_twice() {
        let mut observed = clean();
        observed
            .rows
            .retain(|r| !(r.event_id == "e2" && r.channel == Channel::Sms));
        observed.deliveries.retain(|d| d.identity != "e2.sms");
        assert_eq!(
            invariants(&observed),
            vec![Invariant::SentOnce, Invariant::Delivered]
        );
    }

    #[test]
    fn a_row_not_sent_and_strays_are_violations() {
        let mut observed = clean();
        observed.rows[0].status = "FAILED".into();
        observed.rows.push(sent("e9", Channel::Email));
        observed.deliveries.push(sms("e9", 1, 9));
        observed.deliveries.push(Delivery {
            identity: "garbage".into(),
            ..sms("e1", 1, 10)
        });
        let mut found = invariants(&observed);
        found.sort();
        assert_eq!(
            found,
            vec![
                Invariant::SentOnce,
                Invariant::NoStrayRow,
                Invariant::NoStrayDelivery,
                Invariant::NoStrayDelivery
            ]
        );
    }

    #[test]
    fn a_repeat_after_its_senders_kill_is_allowed_and_counted() {
        let mut observed = clean();
        observed.deliveries.push(sms("e1", 2, 0));
        assert_eq!(violations(&observed), vec![]);
        assert_eq!(repeats(&observed).get(&Channel::Sms), Some(&1));
    }

    #[test]
    fn a_repeat_whose_earlier_sender_was_not_killed_is_a_violation() {
        // Replica 2 (killed) sent last; replica 1 (stopped cleanly) sent first.
        let mut observed = clean();
        observed.deliveries.push(sms("e1", 2, 5));
        assert_eq!(invariants(&observed), vec![Invariant::RepeatOnlyAfterKill]);
    }

    #[test]
    fn a_kill_repeats_at_most_one_send_per_partition() {
        let mut observed = clean();
        observed.deliveries.push(email("e1", 2, 0));
        observed.deliveries.push(email("e2", 2, 0));
        assert_eq!(invariants(&observed), vec![Invariant::RepeatsBounded]);
        observed.partitions = 2;
        assert_eq!(violations(&observed), vec![]);
    }

    #[test]
    fn a_replica_that_misbehaved_is_a_violation() {
        let mut observed = clean();
        observed
            .problems
            .push((3, "exited on its own: exit status 1".into()));
        assert_eq!(invariants(&observed), vec![Invariant::ReplicaBehaves]);
    }
}
