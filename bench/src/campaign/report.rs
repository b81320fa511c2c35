//! What a campaign prints: its seed and how to replay it, the answers by code (CreateOrder's and
//! CancelOrder's), how settlement went, what the ledger holds, and every violated invariant with
//! the request ids concerned.

use std::collections::BTreeMap;

use ordermesh::{
    events::ORDER_CANCELLED_TYPE,
    proto::{order::v1::OrderStatus, payment::v1::PaymentStatus},
};

use super::{Outcome, Settled};
use crate::audit::{Invariant, Ledger, Violation};

/// A campaign's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    /// The command that replays this campaign.
    pub replay: String,
    pub requests: usize,
    pub outcome: Outcome,
    pub settled: Settled,
    /// Orders by status name.
    pub orders: BTreeMap<String, usize>,
    pub charges: usize,
    /// REFUNDED payments.
    pub refunds: usize,
    pub events: usize,
    /// Of `events`, OrderCancelled ones.
    pub cancelled_events: usize,
    /// Orders CANCELLED, and still CANCELLING, in the ledger.
    pub cancelled: usize,
    pub cancelling: usize,
    pub notifications: Option<usize>,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn new(
        seed: u64,
        replay: String,
        requests: usize,
        outcome: Outcome,
        settled: Settled,
        ledger: &Ledger,
        violations: Vec<Violation>,
    ) -> Self {
        let mut orders = BTreeMap::new();
        for order in &ledger.orders {
            *orders
                .entry(
                    order
                        .status()
                        .as_str_name()
                        .trim_start_matches("ORDER_STATUS_")
                        .to_owned(),
                )
                .or_default() += 1;
        }
        Self {
            seed,
            replay,
            requests,
            outcome,
            settled,
            orders,
            charges: ledger
                .payments
                .iter()
                // Charges standing, as the audit counts them: a refunded one gave the money back.
                .filter(|p| match p.status() {
                    PaymentStatus::Succeeded => true,
                    PaymentStatus::Refunded
                    | PaymentStatus::Declined
                    | PaymentStatus::Unspecified => false,
                })
                .count(),
            refunds: ledger
                .payments
                .iter()
                .filter(|p| p.status() == PaymentStatus::Refunded)
                .count(),
            events: ledger.events.len(),
            cancelled_events: ledger
                .events
                .iter()
                .filter(|e| e.ce_type == ORDER_CANCELLED_TYPE)
                .count(),
            cancelled: crate::audit::count_status(&ledger.orders, OrderStatus::Cancelled),
            cancelling: ledger.cancelling(),
            notifications: ledger.notifications.as_ref().map(Vec::len),
            violations,
        }
    }

    /// The violations grouped by invariant, with the request ids (or order ids, for a charge or
    /// event without an order) concerned.
    pub fn by_invariant(&self) -> BTreeMap<Invariant, Vec<&Violation>> {
        let mut out: BTreeMap<Invariant, Vec<&Violation>> = BTreeMap::new();
        for v in &self.violations {
            out.entry(v.invariant).or_default().push(v);
        }
        out
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.outcome;
        writeln!(f, "fault campaign, seed {}", self.seed)?;
        writeln!(f, "  replay with: {}", self.replay)?;
        writeln!(
            f,
            "  {} requests, {} calls ({} with faults) in {:.1} s",
            self.requests,
            o.calls,
            o.faulted_calls,
            o.elapsed.as_secs_f64()
        )?;
        let answers: Vec<String> = o.answers.iter().map(|(c, n)| format!("{c} {n}")).collect();
        writeln!(f, "  answers: {}", answers.join(", "))?;
        let cancel_answers: Vec<String> = o
            .cancel_answers
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        writeln!(
            f,
            "  cancels: {} planned, {} made ({} with faults) for {} orders; answers: {}; at the audit {} orders cancelled, {} still cancelling",
            o.cancels_planned,
            o.cancel_calls,
            o.cancel_faulted_calls,
            o.cancel_asked.len(),
            if cancel_answers.is_empty() {
                "none".to_owned()
            } else {
                cancel_answers.join(", ")
            },
            self.cancelled,
            self.cancelling
        )?;
        writeln!(
            f,
            "  settled in {:.1} s, {} orders still pending, {} still cancelling",
            self.settled.waited.as_secs_f64(),
            self.settled.pending,
            self.settled.cancelling
        )?;
        let orders: Vec<String> = self
            .orders
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        write!(
            f,
            "  ledger: orders {}; {} charges, {} refunds; {} events ({} OrderCancelled)",
            orders.join(", "),
            self.charges,
            self.refunds,
            self.events,
            self.cancelled_events
        )?;
        match self.notifications {
            Some(n) => writeln!(f, "; {n} notifications")?,
            None => writeln!(f, "; notifications not checked")?,
        }
        if self.violations.is_empty() {
            return writeln!(f, "audit: the money promise holds (0 violations)");
        }
        writeln!(f, "audit: {} violations", self.violations.len())?;
        for (invariant, found) in self.by_invariant() {
            let ids: Vec<&str> = found
                .iter()
                .map(|v| {
                    if v.request_id.is_empty() {
                        v.order_id.as_str()
                    } else {
                        v.request_id.as_str()
                    }
                })
                .collect();
            writeln!(
                f,
                "  VIOLATED {invariant} ({}): {}",
                found.len(),
                ids.join(" ")
            )?;
            for v in found {
                writeln!(f, "    {v}")?;
            }
        }
        writeln!(f, "replay with: {}", self.replay)
    }
}
