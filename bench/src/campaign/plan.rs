//! The plan of a fault campaign: from a seed, the list of CreateOrder calls to make, each with the
//! faults payment is to inject, and whether (and after what pause, with what faults) the same
//! request is sent again, and whether its order, once accepted, is cancelled (once or twice, with
//! or without faults on the refund). Pure and deterministic, so a seed printed by a failing run
//! replays it: the same calls with the same faults (what the services then do with them is up to
//! timing).

use std::time::Duration;

use ordermesh::{
    proto::order::v1::CancelOrderRequest, proto::order::v1::CreateOrderRequest,
    proto::order::v1::Customer, proto::order::v1::LineItem, proto::types::v1::Money,
};

/// Every gRPC code an abort is injected with: retryable ones (the order service tries again) and
/// refusals (it settles the charge key before giving up).
pub const ABORT_CODES: &[&str] = &[
    "unavailable",
    "deadline_exceeded",
    "invalid_argument",
    "permission_denied",
    "unimplemented",
    "not_found",
    "failed_precondition",
    "aborted",
    "internal",
    "resource_exhausted",
    "cancelled",
    "unknown",
];

/// A token payment approves, one it declines, and one it does not know (and refuses).
pub const TOKEN_APPROVED: &str = "tok_visa";
pub const TOKEN_DECLINED: &str = "tok_declined";
pub const TOKEN_UNKNOWN: &str = "tok_unknown";

/// How big a campaign is and how hostile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Distinct request ids (first sends); resends come on top.
    pub requests: usize,
    /// Share of calls (first sends and resends) carrying fault headers.
    pub fault_share: f64,
    /// Share of request ids sent a second time.
    pub resend_share: f64,
    /// Longest injected delay; around the order service's payment deadline (3 s by default) so
    /// that some answers come just in time and some just too late.
    pub max_delay: Duration,
    /// Longest pause before a request is sent again.
    pub max_resend_pause: Duration,
    /// Share of request ids paid with a declined token, and with an unknown one (each).
    pub bad_token_share: f64,
    /// Share of request ids whose order is cancelled once CreateOrder answered it; a third of those
    /// are cancelled a second time, and a cancel carries faults (for payment's Refund) with
    /// `fault_share`.
    pub cancel_share: f64,
    /// Longest pause before a cancel (after the last CreateOrder answer) and between two cancels.
    pub max_cancel_pause: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            requests: 500,
            fault_share: 0.4,
            resend_share: 0.3,
            max_delay: Duration::from_millis(3_000),
            max_resend_pause: Duration::from_secs(2),
            bad_token_share: 0.05,
            cancel_share: 0.3,
            max_cancel_pause: Duration::from_secs(1),
        }
    }
}

/// When payment injects a fault: before anything is charged, or after the charge is stored (the
/// charge stands, the answer is late or lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Before,
    After,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::After => "after",
        }
    }
}

/// The faults of one call, as payment's fault headers (`payment/src/fault.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Faults {
    pub delay_ms: Option<u64>,
    /// A code from [`ABORT_CODES`].
    pub abort: Option<&'static str>,
    pub stage: Stage,
    /// Only the order service's attempts 1 to N fail; later retries go through.
    pub until_attempt: Option<u32>,
}

impl Faults {
    /// The CreateOrder headers that ask for these faults.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("x-fault-stage", self.stage.as_str().to_owned())];
        if let Some(delay) = self.delay_ms {
            out.push(("x-fault-delay-ms", delay.to_string()));
        }
        if let Some(code) = self.abort {
            out.push(("x-fault-abort", code.to_owned()));
        }
        if let Some(n) = self.until_attempt {
            out.push(("x-fault-until-attempt", n.to_string()));
        }
        out
    }
}

/// The same request sent again.
#[derive(Debug, Clone, PartialEq)]
pub struct Resend {
    /// How long after the first call's answer.
    pub pause: Duration,
    pub faults: Option<Faults>,
}

/// A CancelOrder of the order a request id was answered with (made only if it was).
#[derive(Debug, Clone, PartialEq)]
pub struct Cancel {
    /// How long after the request id's last CreateOrder answer.
    pub pause: Duration,
    /// Payment's faults, on its Refund (the order service forwards them as for a Charge): a
    /// refund faulted before it is made, or whose answer is lost, leaves the order CANCELLING for
    /// the reconciler to finish.
    pub faults: Option<Faults>,
    /// The same cancel again, this long after the first one's answer.
    pub again: Option<Again>,
}

/// A second CancelOrder of the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct Again {
    pub pause: Duration,
    pub faults: Option<Faults>,
}

/// One request id's calls.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCall {
    pub request: CreateOrderRequest,
    pub faults: Option<Faults>,
    pub resend: Option<Resend>,
    pub cancel: Option<Cancel>,
}

impl PlannedCall {
    /// Calls made for this request id (1 or 2).
    pub fn calls(&self) -> usize {
        1 + usize::from(self.resend.is_some())
    }

    /// Calls made for this request id with fault headers.
    pub fn faulted_calls(&self) -> usize {
        usize::from(self.faults.is_some())
            + usize::from(self.resend.as_ref().is_some_and(|r| r.faults.is_some()))
    }

    /// CancelOrder calls planned for this request id (0 to 2; made only if its order was
    /// accepted).
    pub fn cancels(&self) -> usize {
        self.cancel
            .as_ref()
            .map_or(0, |c| 1 + usize::from(c.again.is_some()))
    }
}

/// The CancelOrder request of a campaign for `order_id`.
pub fn cancel_request(order_id: &str) -> CancelOrderRequest {
    CancelOrderRequest {
        order_id: order_id.to_owned(),
        reason: "fault campaign".to_owned(),
    }
}

/// The calls of a campaign with `seed`; request ids are `{prefix}-{i}`.
pub fn plan(seed: u64, shape: &Shape, prefix: &str) -> Vec<PlannedCall> {
    let mut rng = fastrand::Rng::with_seed(seed);
    // Cancels draw from a generator of their own, so the calls of a seed stay what they were
    // whatever the share of cancels.
    let mut cancels = fastrand::Rng::with_seed(seed ^ 0x00ca_9ce1);
    (0..shape.requests)
        .map(|i| {
            let token = match rng.f64() {
                x if x < shape.bad_token_share => TOKEN_DECLINED,
                x if x < 2.0 * shape.bad_token_share => TOKEN_UNKNOWN,
                _ => TOKEN_APPROVED,
            };
            let request = order_request(&format!("{prefix}-{i}"), token, i);
            let faults = maybe_faults(&mut rng, shape);
            let resend = (rng.f64() < shape.resend_share).then(|| Resend {
                pause: Duration::from_millis(
                    rng.u64(0..=u64::try_from(shape.max_resend_pause.as_millis()).unwrap_or(0)),
                ),
                faults: maybe_faults(&mut rng, shape),
            });
            let cancel = maybe_cancel(&mut cancels, shape);
            PlannedCall {
                request,
                faults,
                resend,
                cancel,
            }
        })
        .collect()
}

/// With probability `cancel_share`, a cancel: a third of them sent twice, each with faults with
/// probability `fault_share`.
fn maybe_cancel(rng: &mut fastrand::Rng, shape: &Shape) -> Option<Cancel> {
    if rng.f64() >= shape.cancel_share {
        return None;
    }
    let max_pause = u64::try_from(shape.max_cancel_pause.as_millis()).unwrap_or(0);
    Some(Cancel {
        pause: Duration::from_millis(rng.u64(0..=max_pause)),
        faults: maybe_faults(rng, shape),
        again: (rng.f64() < 1.0 / 3.0).then(|| Again {
            pause: Duration::from_millis(rng.u64(0..=max_pause)),
            faults: maybe_faults(rng, shape),
        }),
    })
}

/// With probability `fault_share`, some faults: a delay alone, an abort alone, or both; before or
/// after the charge; sometimes only on the first attempts.
fn maybe_faults(rng: &mut fastrand::Rng, shape: &Shape) -> Option<Faults> {
    if rng.f64() >= shape.fault_share {
        return None;
    }
    let max_delay = u64::try_from(shape.max_delay.as_millis()).unwrap_or(u64::MAX);
    let (delay, abort) = match rng.u8(0..3) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let delay_ms = delay.then(|| rng.u64(0..=max_delay));
    let abort = abort.then(|| ABORT_CODES[rng.usize(0..ABORT_CODES.len())]);
    let stage = if rng.bool() {
        Stage::Before
    } else {
        Stage::After
    };
    let until_attempt = rng.bool().then(|| rng.u32(1..=3));
    Some(Faults {
        delay_ms,
        abort,
        stage,
        until_attempt,
    })
}

/// A valid order for `request_id`, paid with `token`; the amount varies with `i`, so a resend is
/// known by its body being the same.
fn order_request(request_id: &str, token: &str, i: usize) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.to_owned(),
        customer: Some(Customer {
            email: format!("campaign+{i}@example.com"),
            phone: "+14155550100".into(),
        }),
        items: vec![LineItem {
            sku: "BOOK-1".into(),
            quantity: 1 + (i % 3) as i32,
            unit_price: Some(Money {
                currency_code: "USD".into(),
                minor_units: 1999,
            }),
        }],
        payment_method_token: token.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let shape = Shape::default();
        assert_eq!(plan(42, &shape, "c"), plan(42, &shape, "c"));
        assert_ne!(plan(42, &shape, "c"), plan(43, &shape, "c"));
    }

    #[test]
    fn the_shares_of_faults_and_resends_are_roughly_those_asked_for() {
        let shape = Shape {
            requests: 2_000,
            ..Shape::default()
        };
        let calls = plan(7, &shape, "c");
        let total: usize = calls.iter().map(PlannedCall::calls).sum();
        let faulted: usize = calls.iter().map(PlannedCall::faulted_calls).sum();
        let resent = calls.iter().filter(|c| c.resend.is_some()).count();
        let fault_share = faulted as f64 / total as f64;
        let resend_share = resent as f64 / calls.len() as f64;
        assert!((0.35..0.45).contains(&fault_share), "{fault_share}");
        assert!((0.25..0.35).contains(&resend_share), "{resend_share}");
        let ids: HashSet<&str> = calls
            .iter()
            .map(|c| c.request.request_id.as_str())
            .collect();
        assert_eq!(ids.len(), calls.len(), "request ids are unique");
    }

    #[test]
    fn a_large_plan_has_every_kind_of_fault() {
        let shape = Shape {
            requests: 5_000,
            ..Shape::default()
        };
        let calls = plan(1, &shape, "c");
        let faults: Vec<&Faults> = calls
            .iter()
            .flat_map(|c| {
                c.faults
                    .iter()
                    .chain(c.resend.iter().flat_map(|r| r.faults.iter()))
            })
            .collect();
        for code in ABORT_CODES {
            for stage in [Stage::Before, Stage::After] {
                assert!(
                    faults
                        .iter()
                        .any(|f| f.abort == Some(*code) && f.stage == stage),
                    "abort {code} {stage:?}"
                );
            }
        }
        for stage in [Stage::Before, Stage::After] {
            assert!(
                faults
                    .iter()
                    .any(|f| f.abort.is_none() && f.delay_ms.is_some() && f.stage == stage)
            );
        }
        for n in 1..=3 {
            assert!(
                faults.iter().any(|f| f.until_attempt == Some(n)),
                "until {n}"
            );
        }
        let max = u64::try_from(shape.max_delay.as_millis()).unwrap();
        assert!(
            faults
                .iter()
                .any(|f| f.delay_ms.is_some_and(|d| d > max * 9 / 10))
        );
        assert!(
            faults
                .iter()
                .any(|f| f.delay_ms.is_some_and(|d| d < max / 10))
        );
        for token in [TOKEN_APPROVED, TOKEN_DECLINED, TOKEN_UNKNOWN] {
            assert!(
                calls
                    .iter()
                    .any(|c| c.request.payment_method_token == token),
                "{token}"
            );
        }
        assert!(
            calls
                .iter()
                .any(|c| c.resend.as_ref().is_some_and(|r| r.faults.is_none()))
        );
        assert!(
            calls
                .iter()
                .any(|c| c.resend.as_ref().is_some_and(|r| r.faults.is_some()))
        );
    }

    #[test]
    fn a_share_of_requests_is_cancelled_some_twice_some_with_faults() {
        let shape = Shape {
            requests: 3_000,
            ..Shape::default()
        };
        let calls = plan(11, &shape, "c");
        let cancels: Vec<&Cancel> = calls.iter().filter_map(|c| c.cancel.as_ref()).collect();
        let share = cancels.len() as f64 / calls.len() as f64;
        assert!((0.25..0.35).contains(&share), "{share}");
        let twice = cancels.iter().filter(|c| c.again.is_some()).count() as f64;
        assert!(
            (0.25..0.42).contains(&(twice / cancels.len() as f64)),
            "{twice}"
        );
        let faulted = cancels.iter().filter(|c| c.faults.is_some()).count() as f64;
        assert!(
            (0.3..0.5).contains(&(faulted / cancels.len() as f64)),
            "{faulted}"
        );
        for stage in [Stage::Before, Stage::After] {
            assert!(
                cancels.iter().any(|c| c
                    .faults
                    .as_ref()
                    .is_some_and(|f| f.stage == stage && f.abort.is_some())),
                "{stage:?}"
            );
        }
        let planned: usize = calls.iter().map(PlannedCall::cancels).sum();
        assert_eq!(planned, cancels.len() + twice as usize);
    }

    #[test]
    fn cancels_change_none_of_the_create_calls_of_a_seed() {
        let without = Shape {
            cancel_share: 0.0,
            ..Shape::default()
        };
        let with = plan(5, &Shape::default(), "c");
        let without = plan(5, &without, "c");
        assert!(without.iter().all(|c| c.cancel.is_none()));
        for (a, b) in with.iter().zip(&without) {
            assert_eq!(
                (&a.request, &a.faults, &a.resend),
                (&b.request, &b.faults, &b.resend)
            );
        }
    }

    #[test]
    fn headers_name_every_fault() {
        let faults = Faults {
            delay_ms: Some(1200),
            abort: Some("internal"),
            stage: Stage::After,
            until_attempt: Some(2),
        };
        assert_eq!(
            faults.headers(),
            vec![
                ("x-fault-stage", "after".to_owned()),
                ("x-fault-delay-ms", "1200".to_owned()),
                ("x-fault-abort", "internal".to_owned()),
                ("x-fault-until-attempt", "2".to_owned()),
            ]
        );
    }
}
