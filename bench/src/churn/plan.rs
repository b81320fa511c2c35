//! The plan of a churn campaign: from a seed, the list of steps, each an action on the notifier
//! replicas (start one, SIGTERM one, SIGKILL one) and the pause before the next, and when the
//! events are published meanwhile (in bursts, see [`Burst`]). Pure and
//! deterministic, so a seed printed by a failing run replays the same schedule (what the replicas
//! and the broker then do with it is up to timing).
//!
//! Which replica a stop or kill takes is an index into the replicas alive at that step, oldest
//! first. The plan keeps count of them as it goes, so it never stops one when none runs, never
//! runs more than [`Shape::max_replicas`], and the index always names a live one.

use std::time::Duration;

/// How long and how hostile a churn campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Events published during the steps.
    pub events: usize,
    /// Bursts they are published in: fewer means bigger backlogs, so longer batches in hand when a
    /// replica is stopped or killed.
    pub bursts: usize,
    /// Actions on the replicas, after the first ones are started.
    pub steps: usize,
    /// Replicas started before the first step.
    pub initial_replicas: usize,
    /// Most replicas alive at once.
    pub max_replicas: usize,
    /// Shortest pause after an action. Short pauses are the point as much as long ones: a stop
    /// that lands while the group is still rebalancing after a start or a kill hands partitions
    /// over in the middle of a hand-over.
    pub min_pause: Duration,
    /// Longest pause after an action.
    pub max_pause: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            events: 500,
            bursts: 40,
            steps: 20,
            initial_replicas: 2,
            max_replicas: 3,
            min_pause: Duration::from_millis(200),
            max_pause: Duration::from_millis(4_000),
        }
    }
}

/// What a step does to the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Starts a new replica (never a restart of an old one: each has its own number).
    Start,
    /// SIGTERM to the live replica at this index (oldest first): it finishes the send in hand,
    /// releases its other claims and leaves the groups.
    Stop(usize),
    /// SIGKILL to the live replica at this index: whatever it was sending may be sent again by
    /// whoever takes its partitions over.
    Kill(usize),
    /// Starts a new replica and, the moment it logs that partitions were assigned to it, SIGTERMs
    /// the replica at this index among the others: a stop in the middle of the rebalance, while
    /// the newcomer reads messages the stopping one had claimed and not yet sent.
    Handover(usize),
}

/// One step: an action, then a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub pause: Duration,
}

/// Events published at once, some time after the first step began.
///
/// Bursts rather than an even trickle: a burst is a backlog on every partition, so a replica
/// stopped or killed then holds claims on several notifications at once and has a send in flight
/// on each partition, which is what the stop and the kill must not lose or multiply. Between
/// bursts the replicas idle, as in a quiet hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// Since the first step began.
    pub at: Duration,
    pub events: usize,
}

/// A campaign: what happens to the replicas, and when events are published meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// In time order; their events add up to [`Shape::events`].
    pub bursts: Vec<Burst>,
}

/// The plan of a campaign with `seed`.
///
/// A plan of four steps or more has at least one stop and one kill: a seed whose draws miss either
/// is drawn again from the same generator, so it stays deterministic per seed.
pub fn plan(seed: u64, shape: &Shape) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let steps = loop {
        let steps = draw(&mut rng, shape);
        let has = |f: fn(&Action) -> bool| steps.iter().any(|s| f(&s.action));
        if shape.steps < 4
            || (has(|a| matches!(a, Action::Stop(_))) && has(|a| matches!(a, Action::Kill(_))))
        {
            break steps;
        }
    };
    let bursts = bursts(&mut rng, shape.events, duration(&steps), shape.bursts);
    Plan { steps, bursts }
}

/// `events` spread over `count` bursts at random times within `over`: each event goes to a burst
/// drawn at random, so sizes vary around the mean.
fn bursts(rng: &mut fastrand::Rng, events: usize, over: Duration, count: usize) -> Vec<Burst> {
    let count = count.max(1);
    let over_ms = u64::try_from(over.as_millis()).unwrap_or(u64::MAX);
    let mut times: Vec<u64> = (0..count).map(|_| rng.u64(0..=over_ms)).collect();
    times.sort_unstable();
    let mut sizes = vec![0; count];
    for _ in 0..events {
        sizes[rng.usize(0..count)] += 1;
    }
    times
        .into_iter()
        .zip(sizes)
        .filter(|(_, events)| *events > 0)
        .map(|(at, events)| Burst {
            at: Duration::from_millis(at),
            events,
        })
        .collect()
}

fn draw(rng: &mut fastrand::Rng, shape: &Shape) -> Vec<Step> {
    let max = shape.max_replicas.max(1);
    let mut live = shape.initial_replicas.min(max);
    let min_pause = u64::try_from(shape.min_pause.as_millis()).unwrap_or(u64::MAX);
    let max_pause = u64::try_from(shape.max_pause.as_millis())
        .unwrap_or(u64::MAX)
        .max(min_pause);
    (0..shape.steps)
        .map(|_| {
            // None alive: start one. All alive: stop or kill one. Otherwise a quarter each, a
            // hand-over included.
            let choice = match live {
                0 => 0,
                n if n >= max => rng.u8(1..3),
                _ => rng.u8(0..4),
            };
            let action = match choice {
                0 => {
                    live += 1;
                    Action::Start
                }
                1 => {
                    live -= 1;
                    Action::Stop(rng.usize(0..=live))
                }
                2 => {
                    live -= 1;
                    Action::Kill(rng.usize(0..=live))
                }
                _ => Action::Handover(rng.usize(0..live)),
            };
            Step {
                action,
                pause: Duration::from_millis(rng.u64(min_pause..=max_pause)),
            }
        })
        .collect()
}

/// How long the steps take at least: the sum of their pauses (starts and stops take time too).
pub fn duration(steps: &[Step]) -> Duration {
    steps.iter().map(|s| s.pause).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let shape = Shape::default();
        assert_eq!(plan(42, &shape), plan(42, &shape));
        assert_ne!(plan(42, &shape).steps, plan(43, &shape).steps);
        assert_ne!(plan(42, &shape).bursts, plan(43, &shape).bursts);
    }

    #[test]
    fn every_action_names_a_live_replica_and_the_limit_holds() {
        for seed in 0..500 {
            let shape = Shape {
                steps: 30,
                ..Shape::default()
            };
            let mut live = shape.initial_replicas;
            for step in plan(seed, &shape).steps {
                match step.action {
                    Action::Start => live += 1,
                    Action::Stop(i) | Action::Kill(i) => {
                        assert!(i < live, "seed {seed}: index {i} of {live} live");
                        live -= 1;
                    }
                    Action::Handover(i) => {
                        assert!(i < live, "seed {seed}: index {i} of {live} live");
                        assert!(live < shape.max_replicas, "seed {seed}: no room");
                    }
                }
                assert!(live <= shape.max_replicas, "seed {seed}: {live} live");
                assert!((shape.min_pause..=shape.max_pause).contains(&step.pause));
            }
        }
    }

    #[test]
    fn a_plan_of_four_steps_or_more_stops_and_kills() {
        for seed in 0..500 {
            let steps = plan(
                seed,
                &Shape {
                    steps: 4,
                    ..Shape::default()
                },
            )
            .steps;
            assert!(steps.iter().any(|s| matches!(s.action, Action::Stop(_))));
            assert!(steps.iter().any(|s| matches!(s.action, Action::Kill(_))));
        }
    }

    #[test]
    fn with_none_alive_the_next_step_starts_one() {
        let shape = Shape {
            steps: 50,
            initial_replicas: 0,
            max_replicas: 1,
            ..Shape::default()
        };
        let steps = plan(7, &shape).steps;
        assert_eq!(steps[0].action, Action::Start);
        // With one replica at most, starts and stops alternate, and nothing is handed over.
        for pair in steps.windows(2) {
            assert_ne!(
                matches!(pair[0].action, Action::Start),
                matches!(pair[1].action, Action::Start)
            );
        }
    }

    #[test]
    fn the_bursts_publish_every_event_within_the_steps_in_time_order() {
        for seed in 0..200 {
            let shape = Shape::default();
            let plan = plan(seed, &shape);
            let total: usize = plan.bursts.iter().map(|b| b.events).sum();
            assert_eq!(total, shape.events, "seed {seed}");
            assert!(plan.bursts.windows(2).all(|w| w[0].at <= w[1].at));
            assert!(plan.bursts.iter().all(|b| b.at <= duration(&plan.steps)));
            assert!(
                plan.bursts.len() > shape.steps / 2,
                "seed {seed}: few bursts"
            );
        }
    }
}
