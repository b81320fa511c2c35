//! The load engine: calls an async function in a closed loop (N callers, each calling again as
//! soon as it has an answer) or an open loop (calls started at a fixed rate whatever the answers),
//! for a duration or a count, into an HDR histogram of latencies and a count of errors by gRPC
//! code.
//!
//! In the open loop a call's latency is measured from when it was due, not from when it started:
//! if the generator itself falls behind, that shows as latency instead of silently lowering the
//! rate (coordinated omission).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use ordermesh::{
    proto::order::v1::CreateOrderRequest, proto::order::v1::Customer, proto::order::v1::LineItem,
    proto::types::v1::Money,
};
use serde::Serialize;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

/// How calls are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// `concurrency` callers, each calling again as soon as its call is answered.
    Closed { concurrency: usize },
    /// `rate` calls per second, started on schedule; at most `max_in_flight` outstanding (beyond
    /// that a due call is counted as `CLIENT_OVERLOADED` rather than queued without bound).
    Open { rate: f64, max_in_flight: usize },
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Elapsed(Duration),
    Calls(u64),
}

/// What one call reports: Ok, or the name of what went wrong (a gRPC code name).
pub type CallResult = Result<(), String>;

/// Latencies (microseconds), outcomes and time of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub latencies_us: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Summary {
    fn new() -> Self {
        Self {
            // 1 µs to 1 hour, 3 significant digits.
            latencies_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            ok: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, latency: Duration, result: CallResult) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latencies_us.saturating_record(us);
        match result {
            Ok(()) => self.ok += 1,
            Err(code) => *self.errors.entry(code).or_default() += 1,
        }
    }

    /// Calls made, answered or not.
    pub fn calls(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at `quantile` (0 to 1), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latencies_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The figures people read, for JSON output.
    pub fn report(&self) -> Report {
        Report {
            calls: self.calls(),
            ok: self.ok,
            errors: self.errors.clone(),
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput_per_s: self.throughput(),
            latency_ms: Latencies {
                p50: self.latency_ms(0.5),
                p90: self.latency_ms(0.9),
                p99: self.latency_ms(0.99),
                p999: self.latency_ms(0.999),
                max: self.latencies_us.max() as f64 / 1000.0,
                mean: self.latencies_us.mean() / 1000.0,
            },
        }
    }
}

/// A run in numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calls: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub latency_ms: Latencies,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency_ms;
        writeln!(f, "  {:<16} {:>12}", "calls", self.calls)?;
        writeln!(f, "  {:<16} {:>12}", "ok", self.ok)?;
        writeln!(f, "  {:<16} {:>12.2} s", "elapsed", self.elapsed_s)?;
        writeln!(
            f,
            "  {:<16} {:>12.1} /s",
            "throughput", self.throughput_per_s
        )?;
        for (name, value) in [
            ("latency p50", l.p50),
            ("latency p90", l.p90),
            ("latency p99", l.p99),
            ("latency p99.9", l.p999),
            ("latency max", l.max),
        ] {
            writeln!(f, "  {name:<16} {value:>12.3} ms")?;
        }
        if self.errors.is_empty() {
            writeln!(f, "  {:<16} {:>12}", "errors", 0)?;
        }
        for (code, count) in &self.errors {
            writeln!(f, "  error {code:<10} {count:>12}")?;
        }
        Ok(())
    }
}

/// Live counts, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// A valid CreateOrder, unique per run (`run`) and sequence number: what the load generator and
/// the benchmarks send.
pub fn order_request(run: &str, seq: u64) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: format!("load-{run}-{seq}"),
        customer: Some(Customer {
            email: format!("load+{seq}@example.com"),
            phone: "+14155550100".into(),
        }),
        items: vec![LineItem {
            sku: "BOOK-1".into(),
            quantity: 1,
            unit_price: Some(Money {
                currency_code: "USD".into(),
                minor_units: 1999,
            }),
        }],
        payment_method_token: "tok_visa".into(),
    }
}

/// Runs `call(sequence number)` paced by `pace` until `until`, counting into `progress` as it goes.
pub async fn run<F, Fut>(pace: Pace, until: Until, progress: Arc<Progress>, call: F) -> Summary
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    let call = Arc::new(call);
    let summary = Arc::new(Mutex::new(Summary::new()));
    let record = {
        let summary = summary.clone();
        move |latency: Duration, result: CallResult| {
            let counter = if result.is_ok() {
                &progress.ok
            } else {
                &progress.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            summary
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(latency, result);
        }
    };
    let started = Instant::now();
    let deadline = match until {
        Until::Elapsed(d) => Some(started + d),
        Until::Calls(_) => None,
    };
    let limit = match until {
        Until::Calls(n) => n,
        Until::Elapsed(_) => u64::MAX,
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    match pace {
        Pace::Closed { concurrency } => {
            for _ in 0..concurrency.max(1) {
                let (call, next, record) = (call.clone(), next.clone(), record.clone());
                tasks.spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let began = Instant::now();
                        let result = call(seq).await;
                        record(began.elapsed(), result);
                    }
                });
            }
        }
        Pace::Open {
            rate,
            max_in_flight,
        } => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let mut seq = 0u64;
            loop {
                // Due times are computed from the start, not from the previous call, so the rate
                // does not drift.
                let due = started + interval.mul_f64(seq as f64);
                if seq >= limit || deadline.is_some_and(|d| due >= d) {
                    break;
                }
                tokio::time::sleep_until(due).await;
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (call, record) = (call.clone(), record.clone());
                        tasks.spawn(async move {
                            let result = call(seq).await;
                            // From when it was due: falling behind shows as latency.
                            record(due.elapsed(), result);
                            drop(slot);
                        });
                    }
                    Err(_) => record(due.elapsed(), Err("CLIENT_OVERLOADED".to_owned())),
                }
                seq += 1;
                // Reap finished calls so the set does not grow over a long run.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let mut summary = Arc::try_unwrap(summary)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_else(|shared| shared.lock().unwrap_or_else(|p| p.into_inner()).clone());
    summary.elapsed = started.elapsed();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_loop_makes_exactly_the_calls_asked_for_and_counts_errors_by_code() {
        let progress = Arc::new(Progress::default());
        let summary = run(
            Pace::Closed { concurrency: 4 },
            Until::Calls(100),
            progress.clone(),
            |seq| async move {
                if seq % 10 == 0 {
                    Err("UNAVAILABLE".to_owned())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(summary.calls(), 100);
        assert_eq!(summary.ok, 90);
        assert_eq!(summary.errors["UNAVAILABLE"], 10);
        assert_eq!(progress.ok.load(Ordering::Relaxed), 90);
        assert_eq!(summary.latencies_us.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_keeps_its_rate_and_counts_latency_from_the_due_time() {
        // 100 calls per second for one second, each answered after 50 ms: 100 calls whatever the
        // answers, latency about 50 ms.
        let summary = run(
            Pace::Open {
                rate: 100.0,
                max_in_flight: 1000,
            },
            Until::Elapsed(Duration::from_secs(1)),
            Arc::default(),
            |_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            },
        )
        .await;
        assert_eq!(summary.calls(), 100);
        let p50 = summary.latency_ms(0.5);
        assert!((49.0..=52.0).contains(&p50), "{p50}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_beyond_its_in_flight_limit_says_so_instead_of_queueing() {
        let summary = run(
            Pace::Open {
                rate: 100.0,
                max_in_flight: 5,
            },
            Until::Calls(50),
            Arc::default(),
            |_| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            },
        )
        .await;
        assert_eq!(summary.calls(), 50);
        assert_eq!(summary.ok, 5);
        assert_eq!(summary.errors["CLIENT_OVERLOADED"], 45);
    }
}
