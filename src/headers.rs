//! The gRPC metadata names both sides of a call read: written once here so the order service
//! (which sends them) and the payment service (which reads them) cannot drift apart.

/// Set by the order service on every attempt of a payment call (1 for the first), so the payment
/// service can tell a retry from a first try (and fault injection can fail only the first ones).
pub const ATTEMPT: &str = "ordermesh-attempt";

/// What every fault injection header starts with: a CreateOrder's headers with this prefix are
/// passed on to payment (when the order service is set to), and payment acts on them (when its
/// faults are enabled).
pub const FAULT_PREFIX: &str = "x-fault-";
/// Delay the answer this many milliseconds.
pub const FAULT_DELAY_MS: &str = "x-fault-delay-ms";
/// Answer with this gRPC code (by name, as `unavailable`).
pub const FAULT_ABORT: &str = "x-fault-abort";
/// When the delay and abort happen: `before` the charge is stored, or `after`.
pub const FAULT_STAGE: &str = "x-fault-stage";
/// Apply the fault to this percentage of calls.
pub const FAULT_PERCENT: &str = "x-fault-percent";
/// Apply the fault only up to this attempt (see [`ATTEMPT`]).
pub const FAULT_UNTIL_ATTEMPT: &str = "x-fault-until-attempt";
