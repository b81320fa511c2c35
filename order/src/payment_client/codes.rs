//! What a gRPC status from payment means, decided in one table ([`Meaning::of`]): for the
//! endpoint's breaker, for the retries, for the caller of the charge, and when the status is read
//! at the attempt's deadline. The breaker, the retry policy, the attempt and the classification of
//! a failed charge all read this table, so they cannot disagree about a code; its test walks every
//! code, row by row, and checks each reader against it.
//!
//! A few meanings depend on more than the code, and the table names them: whether tonic made the
//! status from a transport error (kept as its source), whether payment's ErrorInfo names a
//! declined payment, and whether the status was read at or after the attempt's deadline. Errors
//! that are no status at all come from our own layers (an open circuit, a spent deadline) or from
//! below tonic; the functions beside the table say what those mean.

use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::BoxError;

use super::{ChargeError, breaker::Open, deadline::Exhausted};

/// What one gRPC code means to each part of the payment client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    pub breaker: Breaker,
    pub retry: Retry,
    pub caller: Caller,
    /// Read at or after the attempt's deadline.
    pub late: Late,
}

/// What a code is to the endpoint's breaker (and to `close_key`, which moves on to the next
/// endpoint after a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Payment failing: no answer, or an answer saying it cannot work now.
    Failure,
    /// An answer from a healthy service: a decline or a refusal says the endpoint works.
    Answer,
}

/// What a code is to the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Another attempt. Safe even if this one charged: every attempt carries the same idempotency
    /// key, so payment answers a repeat with the first result.
    Yes,
    /// Only if tonic made the status from a transport error, which it keeps as the status's
    /// source: a connection cut mid-call (a replica dying under it; UNKNOWN) or closed before the
    /// request went out (hyper's "operation was canceled"; CANCELLED). The same code sent by the
    /// server has no source, and is an answer.
    IfTransport,
    /// Not retried: answers, and the failures left to the breaker and the caller.
    No,
}

/// What a code is to the caller of the charge, once the retries are over: the [`ChargeError`] it
/// gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// [`ChargeError::Declined`] if payment's ErrorInfo names the declined payment; a bare
    /// FAILED_PRECONDITION (a proxy's, a fault's, a closed key's) proves nothing about the charge
    /// and is [`ChargeError::Refused`].
    DeclinedIfNamed,
    /// [`ChargeError::Refused`]: payment refused the request itself.
    Refused,
    /// [`ChargeError::DeadlineExceeded`]: no answer in time; whether it charged is unknown.
    DeadlineExceeded,
    /// [`ChargeError::Unavailable`]: payment could not work on it; whether an attempt charged is
    /// unknown.
    Unavailable,
}

/// What a code read at or after the attempt's deadline is (before the deadline, every status is
/// what its code says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// The attempt running out of time, not an answer (how an attempt knows: `ran_out_of_time`).
    Timeout,
    /// What it is, late or not.
    AsIs,
}

impl Meaning {
    /// The table. The match is exhaustive on purpose: a code tonic adds must be decided here.
    #[rustfmt::skip]
    pub const fn of(code: Code) -> Self {
        use Breaker::{Answer, Failure};
        use Caller::{DeadlineExceeded, DeclinedIfNamed, Refused, Unavailable};
        use Late::{AsIs, Timeout};
        use Retry::{IfTransport, No, Yes};
        let (breaker, retry, caller, late) = match code {
            //                            breaker  retry        caller            late
            // Not an error; should one come as such, the charge's outcome is not known.
            Code::Ok                 => (Answer,  No,          Unavailable,      AsIs),
            // Our timeout, tonic's, the server's, or a connection closing under the call.
            Code::Cancelled          => (Failure, IfTransport, Unavailable,      Timeout),
            // A connection cut mid-call, or the server failing in a way it cannot name.
            Code::Unknown            => (Failure, IfTransport, Unavailable,      AsIs),
            Code::InvalidArgument    => (Answer,  No,          Refused,          AsIs),
            Code::DeadlineExceeded   => (Failure, Yes,         DeadlineExceeded, AsIs),
            Code::NotFound           => (Answer,  No,          Refused,          AsIs),
            // A reused idempotency key with another request.
            Code::AlreadyExists      => (Answer,  No,          Refused,          AsIs),
            Code::PermissionDenied   => (Answer,  No,          Refused,          AsIs),
            // Payment shedding load (over its concurrency limit): retries would add to it.
            Code::ResourceExhausted  => (Failure, No,          Unavailable,      AsIs),
            // A decline, or a key closed, or someone else's precondition.
            Code::FailedPrecondition => (Answer,  No,          DeclinedIfNamed,  AsIs),
            // May have charged; the idempotency key makes another attempt safe.
            Code::Aborted            => (Failure, Yes,         Unavailable,      AsIs),
            Code::OutOfRange         => (Answer,  No,          Refused,          AsIs),
            Code::Unimplemented      => (Answer,  No,          Refused,          AsIs),
            Code::Internal           => (Failure, No,          Unavailable,      AsIs),
            // Unreachable, or refused the call before doing anything.
            Code::Unavailable        => (Failure, Yes,         Unavailable,      AsIs),
            Code::DataLoss           => (Failure, No,          Unavailable,      AsIs),
            Code::Unauthenticated    => (Answer,  No,          Refused,          AsIs),
        };
        Self { breaker, retry, caller, late }
    }
}

/// For the breaker: whether `error` is payment failing. An error that is no status at all is no
/// answer, so a failure.
pub(super) fn is_breaker_failure(error: &BoxError) -> bool {
    match error.downcast_ref::<Status>() {
        Some(status) => Meaning::of(status.code()).breaker == Breaker::Failure,
        None => true,
    }
}

/// For the retry policy: whether `error` is worth another attempt. An error that is no status is
/// not: an open circuit on every endpoint stops the retries at once.
pub(super) fn is_retryable(error: &BoxError) -> bool {
    error
        .downcast_ref::<Status>()
        .is_some_and(|status| match Meaning::of(status.code()).retry {
            Retry::Yes => true,
            Retry::IfTransport => std::error::Error::source(status).is_some(),
            Retry::No => false,
        })
}

/// For the attempt: whether `status`, received at `now`, is the attempt running out of time rather
/// than an answer.
///
/// Three timers end an attempt at its deadline: ours (the attempt's `timeout_at`), tonic's client,
/// which enforces the `grpc-timeout` we send and reports CANCELLED with a `TimeoutExpired` source,
/// and tonic's server, which enforces the same `grpc-timeout` and answers CANCELLED "Timeout
/// expired". The server's starts when the request arrives, after ours, so its answer comes at or
/// after our deadline; on a loaded machine it can still be read before our own timer is seen to
/// fire. Taken as an answer, a CANCELLED without a source is neither retried nor a deadline: the
/// attempt that simply ran out of time became UNAVAILABLE. A CANCELLED that arrives before the
/// deadline is the server's own doing, and stays what it is.
pub(super) fn ran_out_of_time(status: &Status, deadline: Instant, now: Instant) -> bool {
    is_local_timeout(status)
        || (Meaning::of(status.code()).late == Late::Timeout && now >= deadline)
}

/// Whether `status` is tonic's client giving up at the request's timeout (reported as CANCELLED
/// with a `TimeoutExpired` source), as opposed to the server cancelling. Known by its source,
/// whatever the code, so it is not a column of the table.
fn is_local_timeout(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// For the caller: what a failed charge means for the order. Our own layers' errors first (an
/// open circuit everywhere, a deadline spent before calling), then the table; anything else is no
/// answer from payment.
pub(super) fn classify(error: BoxError) -> ChargeError {
    if let Some(open) = error.downcast_ref::<Open>() {
        return ChargeError::CircuitOpen(*open);
    }
    if error.downcast_ref::<Exhausted>().is_some() {
        return ChargeError::DeadlineExceeded(error.to_string());
    }
    let status = match error.downcast::<Status>() {
        Ok(status) => *status,
        Err(other) => return ChargeError::Unavailable(Status::unavailable(other.to_string())),
    };
    match Meaning::of(status.code()).caller {
        Caller::DeclinedIfNamed => match declined_payment(&status) {
            Some((payment_id, reason)) => ChargeError::Declined { payment_id, reason },
            None => ChargeError::Refused(status),
        },
        Caller::Refused => ChargeError::Refused(status),
        Caller::DeadlineExceeded => ChargeError::DeadlineExceeded(status.message().to_owned()),
        Caller::Unavailable => ChargeError::Unavailable(status),
    }
}

/// The payment id and reason of a decline, if payment's ErrorInfo names the declined payment.
fn declined_payment(status: &Status) -> Option<(String, String)> {
    let info = status.get_details_error_info()?;
    let payment_id = info
        .metadata
        .get("payment_id")
        .filter(|id| !id.is_empty())?;
    Some((payment_id.clone(), info.reason.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc, time::Duration};

    use tonic_types::ErrorDetails;

    use super::*;

    /// Every code tonic knows: 0 to 16, and nothing past it (tonic reads 17 as UNKNOWN).
    fn every_code() -> Vec<Code> {
        assert_eq!(Code::from_i32(17), Code::Unknown, "a code past DATA_LOSS");
        (0..=16).map(Code::from_i32).collect()
    }

    /// A status as the server sends it: no source.
    fn sent(code: Code) -> Status {
        Status::new(code, "the server says so")
    }

    /// The same code as tonic makes it from a transport error: the error kept as its source.
    fn from_transport(code: Code) -> Status {
        let mut status = Status::new(code, "connection closed");
        status.set_source(Arc::new(std::io::Error::other("connection closed")));
        status
    }

    /// A decline as payment sends it: FAILED_PRECONDITION with an ErrorInfo naming the payment.
    fn declined(code: Code) -> Status {
        Status::with_error_details(
            code,
            "declined",
            ErrorDetails::with_error_info(
                "CARD_DECLINED",
                "payment.ordermesh",
                HashMap::from([("payment_id".to_owned(), "pay_1".to_owned())]),
            ),
        )
    }

    /// The caller's side of a classification, without its payload.
    fn caller_of(error: &ChargeError) -> &'static str {
        match error {
            ChargeError::Declined { .. } => "declined",
            ChargeError::Refused(_) => "refused",
            ChargeError::DeadlineExceeded(_) => "deadline",
            ChargeError::CircuitOpen(_) => "circuit open",
            ChargeError::Unavailable(_) => "unavailable",
        }
    }

    #[test]
    fn the_table_row_by_row() {
        use Breaker::{Answer, Failure};
        use Caller::{DeadlineExceeded, DeclinedIfNamed, Refused, Unavailable};
        use Late::{AsIs, Timeout};
        use Retry::{IfTransport, No, Yes};
        // Written out again on purpose: changing what a code means takes changing it twice.
        #[rustfmt::skip]
        let expected = [
            (Code::Ok,                 Answer,  No,          Unavailable,      AsIs),
            (Code::Cancelled,          Failure, IfTransport, Unavailable,      Timeout),
            (Code::Unknown,            Failure, IfTransport, Unavailable,      AsIs),
            (Code::InvalidArgument,    Answer,  No,          Refused,          AsIs),
            (Code::DeadlineExceeded,   Failure, Yes,         DeadlineExceeded, AsIs),
            (Code::NotFound,           Answer,  No,          Refused,          AsIs),
            (Code::AlreadyExists,      Answer,  No,          Refused,          AsIs),
            (Code::PermissionDenied,   Answer,  No,          Refused,          AsIs),
            (Code::ResourceExhausted,  Failure, No,          Unavailable,      AsIs),
            (Code::FailedPrecondition, Answer,  No,          DeclinedIfNamed,  AsIs),
            (Code::Aborted,            Failure, Yes,         Unavailable,      AsIs),
            (Code::OutOfRange,         Answer,  No,          Refused,          AsIs),
            (Code::Unimplemented,      Answer,  No,          Refused,          AsIs),
            (Code::Internal,           Failure, No,          Unavailable,      AsIs),
            (Code::Unavailable,        Failure, Yes,         Unavailable,      AsIs),
            (Code::DataLoss,           Failure, No,          Unavailable,      AsIs),
            (Code::Unauthenticated,    Answer,  No,          Refused,          AsIs),
        ];
        let codes: Vec<Code> = expected.iter().map(|row| row.0).collect();
        assert_eq!(codes, every_code(), "one row per code, in order");
        for (code, breaker, retry, caller, late) in expected {
            let row = Meaning {
                breaker,
                retry,
                caller,
                late,
            };
            assert_eq!(Meaning::of(code), row, "{code:?}");
        }
    }

    #[test]
    fn the_breaker_the_retries_and_the_caller_read_the_table() {
        for code in every_code() {
            let row = Meaning::of(code);
            assert_eq!(
                is_breaker_failure(&BoxError::from(sent(code))),
                row.breaker == Breaker::Failure,
                "breaker, {code:?}"
            );
            assert_eq!(
                is_retryable(&BoxError::from(sent(code))),
                row.retry == Retry::Yes,
                "retry of a status the server sent, {code:?}"
            );
            assert_eq!(
                is_retryable(&BoxError::from(from_transport(code))),
                row.retry != Retry::No,
                "retry of a status made from a transport error, {code:?}"
            );
            let expected = match row.caller {
                Caller::DeclinedIfNamed | Caller::Refused => "refused",
                Caller::DeadlineExceeded => "deadline",
                Caller::Unavailable => "unavailable",
            };
            assert_eq!(
                caller_of(&classify(sent(code).into())),
                expected,
                "caller, {code:?}"
            );
            let named = if row.caller == Caller::DeclinedIfNamed {
                "declined"
            } else {
                expected
            };
            assert_eq!(
                caller_of(&classify(declined(code).into())),
                named,
                "caller of a status naming a payment, {code:?}"
            );
            let deadline = Instant::now();
            assert_eq!(
                ran_out_of_time(&sent(code), deadline, deadline),
                row.late == Late::Timeout,
                "read at the deadline, {code:?}"
            );
            assert!(
                !ran_out_of_time(&sent(code), deadline, deadline - Duration::from_millis(1)),
                "read before the deadline, {code:?}"
            );
        }
    }

    #[test]
    fn errors_that_are_no_status() {
        let open = Open {
            retry_after: Duration::from_secs(2),
        };
        assert!(matches!(
            classify(open.into()),
            ChargeError::CircuitOpen(o) if o == open
        ));
        assert!(
            !is_retryable(&BoxError::from(open)),
            "an open circuit stops the retries"
        );
        assert!(matches!(
            classify(Exhausted.into()),
            ChargeError::DeadlineExceeded(_)
        ));
        let other = BoxError::from("no answer at all");
        assert!(is_breaker_failure(&other));
        assert!(!is_retryable(&other));
        assert!(matches!(
            classify(other),
            ChargeError::Unavailable(status) if status.code() == Code::Unavailable
        ));
    }

    #[test]
    fn a_decline_needs_a_payment_id_a_bare_failed_precondition_is_a_refusal() {
        match classify(declined(Code::FailedPrecondition).into()) {
            ChargeError::Declined { payment_id, reason } => {
                assert_eq!(payment_id, "pay_1");
                assert_eq!(reason, "card_declined", "the reason, lower case");
            }
            other => panic!("{other:?}"),
        }
        let empty_id = Status::with_error_details(
            Code::FailedPrecondition,
            "closed",
            ErrorDetails::with_error_info(
                "KEY_CLOSED",
                "payment.ordermesh",
                HashMap::from([("payment_id".to_owned(), String::new())]),
            ),
        );
        assert!(matches!(classify(empty_id.into()), ChargeError::Refused(_)));
        assert!(matches!(
            classify(sent(Code::FailedPrecondition).into()),
            ChargeError::Refused(_)
        ));
    }

    #[test]
    fn a_connection_cut_mid_call_is_retried_an_unknown_from_the_server_is_not() {
        let cut = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(cut.code(), Code::Unknown);
        assert!(is_retryable(&BoxError::from(cut)));
        let sent = Status::unknown("the server says so");
        assert!(!is_retryable(&BoxError::from(sent)));
        // A request the closing connection never sent: tonic keeps hyper's error as the source.
        let mut unsent = Status::cancelled("operation was canceled");
        unsent.set_source(std::sync::Arc::new(std::io::Error::other(
            "connection closed",
        )));
        assert!(is_retryable(&BoxError::from(unsent)));
        assert!(!is_retryable(&BoxError::from(Status::cancelled(
            "the server says so"
        ))));
    }

    #[test]
    fn the_servers_timeout_answer_at_our_deadline_is_our_timeout_and_an_earlier_cancel_is_not() {
        let deadline = Instant::now() + Duration::from_millis(500);
        // What tonic's server answers when the grpc-timeout we sent runs out.
        let server_timeout = || Status::cancelled(tonic::TimeoutExpired(()).to_string());

        assert!(ran_out_of_time(&server_timeout(), deadline, deadline));
        assert!(ran_out_of_time(
            &server_timeout(),
            deadline,
            deadline + Duration::from_millis(3)
        ));
        assert!(
            !ran_out_of_time(
                &Status::cancelled("server shutting down"),
                deadline,
                deadline - Duration::from_millis(100)
            ),
            "a cancel before the deadline is the server's answer"
        );
        assert!(
            !ran_out_of_time(
                &Status::unavailable("no"),
                deadline,
                deadline + Duration::from_millis(1)
            ),
            "other answers stay what they are, late or not"
        );
    }

    #[test]
    fn tonics_own_timeout_is_ours_whenever_it_is_read() {
        // What tonic's client makes of the grpc-timeout it enforces: CANCELLED, TimeoutExpired as
        // its source.
        let local = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(local.code(), Code::Cancelled);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(ran_out_of_time(
            &local,
            deadline,
            deadline - Duration::from_millis(500)
        ));
    }
}
