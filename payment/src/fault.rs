//! Fault injection, so the order service's deadlines, retries and breaker can be watched at work
//! from grpcurl.
//!
//! A Charge or a Refund call can carry (and the order service passes them on from CreateOrder):
//!
//! | header | meaning |
//! |---|---|
//! | `x-fault-delay-ms: N` | wait N ms before doing anything |
//! | `x-fault-abort: CODE` | fail with this gRPC code (`unavailable`, `deadline_exceeded`, `aborted`, ... or its number) |
//! | `x-fault-stage: before` / `after` | delay and abort before charging or refunding (default), or after the charge or refund is stored, so the answer comes late or is lost but the write stands |
//! | `x-fault-percent: P` | inject on P% of calls (default 100) |
//! | `x-fault-until-attempt: N` | only on attempts 1 to N (the order service numbers its attempts in `ordermesh-attempt`) |
//!
//! The same faults can be set for every call in the configuration; headers override it field by
//! field. With faults disabled, headers and configuration are both ignored.

use std::time::Duration;

use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::FieldViolation;
use tower::util::rng::{HasherRng, Rng};

pub(crate) use ordermesh::{
    headers::ATTEMPT, headers::FAULT_ABORT as ABORT, headers::FAULT_DELAY_MS as DELAY,
    headers::FAULT_PERCENT as PERCENT, headers::FAULT_STAGE as STAGE,
    headers::FAULT_UNTIL_ATTEMPT as UNTIL_ATTEMPT,
};

/// Longest injectable delay: long enough for any demo, short enough not to pin a server.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// When a delay and an abort happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Before anything is done: nothing is charged or refunded.
    #[default]
    Before,
    /// After the charge or refund is stored: it stands, the answer is late or lost.
    After,
}

/// Faults applied to every Charge and Refund call (headers override them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    pub enabled: bool,
    pub delay: Duration,
    pub abort: Option<Code>,
    pub stage: Stage,
    pub percent: u32,
}

/// What to do to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    delay: Duration,
    abort: Option<Code>,
    stage: Stage,
}

impl Fault {
    /// Before the write: waits the delay and fails if the fault's stage is `before`.
    pub(crate) async fn before(&self) -> Result<(), Status> {
        self.at(Stage::Before).await
    }

    /// After the write is stored: waits the delay and fails if the fault's stage is `after` (the
    /// charge or refund stands; the answer comes late, or not at all).
    pub(crate) async fn after(&self) -> Result<(), Status> {
        self.at(Stage::After).await
    }

    async fn at(&self, stage: Stage) -> Result<(), Status> {
        if self.stage != stage {
            return Ok(());
        }
        if !self.delay.is_zero() {
            tracing::info!(
                delay_ms = self.delay.as_millis(),
                ?stage,
                "fault injection: delaying the call"
            );
            tokio::time::sleep(self.delay).await;
        }
        self.abort_at(stage)
    }

    fn abort_at(&self, stage: Stage) -> Result<(), Status> {
        match self.abort {
            Some(code) if self.stage == stage => {
                tracing::info!(?code, ?stage, "fault injection: aborting the call");
                Err(Status::new(
                    code,
                    format!("fault injected ({ABORT}, {STAGE}: {stage:?})"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The fault for a call with `metadata`, if any. Bad fault headers are INVALID_ARGUMENT, naming the
/// header.
pub(crate) fn for_call(
    config: &FaultConfig,
    metadata: &MetadataMap,
) -> Result<Option<Fault>, Vec<FieldViolation>> {
    if !config.enabled {
        return Ok(None);
    }
    let mut violations = Vec::new();
    let mut header = |name: &str| -> Option<String> {
        let value = metadata.get(name)?;
        match value.to_str() {
            Ok(text) => Some(text.trim().to_owned()),
            Err(_) => {
                violations.push(FieldViolation::new(name, "must be ASCII"));
                None
            }
        }
    };
    let delay = header(DELAY);
    let abort = header(ABORT);
    let stage = header(STAGE);
    let percent = header(PERCENT);
    let until = header(UNTIL_ATTEMPT);
    let attempt = header(ATTEMPT);

    let mut fault = Fault {
        delay: config.delay,
        abort: config.abort,
        stage: config.stage,
    };
    let mut percent_value = config.percent;
    if let Some(delay) = delay {
        match delay.parse::<u64>().map(Duration::from_millis) {
            Ok(d) if d <= MAX_DELAY => fault.delay = d,
            _ => violations.push(FieldViolation::new(
                DELAY,
                format!("milliseconds, at most {}", MAX_DELAY.as_millis()),
            )),
        }
    }
    if let Some(abort) = abort {
        match parse_code(&abort) {
            Some(code) => fault.abort = Some(code),
            None => violations.push(FieldViolation::new(
                ABORT,
                "a gRPC status code other than OK, by name (unavailable) or number (14)",
            )),
        }
    }
    if let Some(stage) = stage {
        match stage.to_ascii_lowercase().as_str() {
            "before" => fault.stage = Stage::Before,
            "after" => fault.stage = Stage::After,
            _ => violations.push(FieldViolation::new(STAGE, "before or after")),
        }
    }
    if let Some(percent) = percent {
        match percent.parse::<u32>() {
            Ok(p) if p <= 100 => percent_value = p,
            _ => violations.push(FieldViolation::new(PERCENT, "a whole number from 0 to 100")),
        }
    }
    let until = match until.map(|u| u.parse::<u32>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            violations.push(FieldViolation::new(
                UNTIL_ATTEMPT,
                "a whole number of attempts",
            ));
            None
        }
    };
    if !violations.is_empty() {
        return Err(violations);
    }

    let attempt = attempt.and_then(|a| a.parse::<u32>().ok()).unwrap_or(1);
    let nothing_to_do = fault.delay.is_zero() && fault.abort.is_none();
    let past_attempts = until.is_some_and(|until| attempt > until);
    let rolled_out =
        percent_value < 100 && HasherRng::default().next_f64() * 100.0 >= f64::from(percent_value);
    if nothing_to_do || past_attempts || rolled_out {
        return Ok(None);
    }
    Ok(Some(fault))
}

/// A gRPC status code by name (any case, `_` or not) or number; OK is not a fault.
pub fn parse_code(text: &str) -> Option<Code> {
    let code = match text.parse::<i32>() {
        Ok(number) => Code::from_i32(number),
        Err(_) => {
            let name: String = text
                .chars()
                .filter(|c| *c != '_' && *c != '-')
                .collect::<String>()
                .to_ascii_lowercase();
            CODE_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, code)| *code)?
        }
    };
    (code != Code::Ok).then_some(code)
}

/// [`parse_code`] for a command-line flag.
pub(crate) fn parse_code_arg(text: &str) -> Result<Code, String> {
    parse_code(text).ok_or_else(|| format!("{text:?} is not a gRPC status code other than OK"))
}

const CODE_NAMES: [(&str, Code); 16] = [
    ("cancelled", Code::Cancelled),
    ("unknown", Code::Unknown),
    ("invalidargument", Code::InvalidArgument),
    ("deadlineexceeded", Code::DeadlineExceeded),
    ("notfound", Code::NotFound),
    ("alreadyexists", Code::AlreadyExists),
    ("permissiondenied", Code::PermissionDenied),
    ("resourceexhausted", Code::ResourceExhausted),
    ("failedprecondition", Code::FailedPrecondition),
    ("aborted", Code::Aborted),
    ("outofrange", Code::OutOfRange),
    ("unimplemented", Code::Unimplemented),
    ("internal", Code::Internal),
    ("unavailable", Code::Unavailable),
    ("dataloss", Code::DataLoss),
    ("unauthenticated", Code::Unauthenticated),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> FaultConfig {
        FaultConfig {
            enabled: true,
            percent: 100,
            ..Default::default()
        }
    }

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn code_names_and_numbers() {
        assert_eq!(parse_code("unavailable"), Some(Code::Unavailable));
        assert_eq!(
            parse_code("DEADLINE_EXCEEDED"),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(parse_code("14"), Some(Code::Unavailable));
        assert_eq!(parse_code("ok"), None);
        assert_eq!(parse_code("0"), Some(Code::Ok).filter(|c| *c != Code::Ok));
        assert_eq!(parse_code("nonsense"), None);
    }

    #[test]
    fn headers_override_the_configuration() {
        let config = FaultConfig {
            delay: Duration::from_millis(10),
            ..enabled()
        };
        let fault = for_call(&config, &metadata(&[(ABORT, "aborted"), (STAGE, "after")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            fault,
            Fault {
                delay: Duration::from_millis(10),
                abort: Some(Code::Aborted),
                stage: Stage::After
            }
        );
        assert_eq!(
            for_call(&enabled(), &MetadataMap::new()).unwrap(),
            None,
            "nothing configured, nothing sent"
        );
    }

    #[test]
    fn disabled_ignores_everything() {
        let config = FaultConfig {
            enabled: false,
            abort: Some(Code::Internal),
            ..enabled()
        };
        assert_eq!(
            for_call(&config, &metadata(&[(ABORT, "unavailable")])).unwrap(),
            None
        );
    }

    #[test]
    fn only_the_first_attempts_when_asked() {
        let headers = |attempt: &str| {
            metadata(&[
                (ABORT, "unavailable"),
                (UNTIL_ATTEMPT, "1"),
                (ATTEMPT, attempt),
            ])
        };
        assert!(for_call(&enabled(), &headers("1")).unwrap().is_some());
        assert!(for_call(&enabled(), &headers("2")).unwrap().is_none());
    }

    #[test]
    fn percent_zero_never_and_hundred_always() {
        assert!(
            for_call(
                &enabled(),
                &metadata(&[(ABORT, "internal"), (PERCENT, "0")])
            )
            .unwrap()
            .is_none()
        );
        assert!(
            for_call(
                &enabled(),
                &metadata(&[(ABORT, "internal"), (PERCENT, "100")])
            )
            .unwrap()
            .is_some()
        );
    }

    #[test]
    fn bad_headers_are_named() {
        let violations = for_call(
            &enabled(),
            &metadata(&[
                (DELAY, "soon"),
                (ABORT, "ok"),
                (STAGE, "during"),
                (PERCENT, "101"),
                (UNTIL_ATTEMPT, "x"),
            ]),
        )
        .unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, [DELAY, ABORT, STAGE, PERCENT, UNTIL_ATTEMPT]);
    }
}
