//! Logs and traces, set up by a function the binary calls once, so libraries and tests never install
//! a global subscriber behind anyone's back.
//!
//! Every span is a `tracing` span; the `tracing-opentelemetry` layer turns them into OpenTelemetry
//! spans. Spans are always recorded (so trace ids reach the logs and the trace context is passed on
//! to payment and Kafka even when this process exports nothing), and exported over OTLP only when
//! the standard `OTEL_*` variables ask for it: the quick start needs no collector.

use std::{
    env, fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{
    Dispatch, Event, Subscriber,
    dispatcher::WeakDispatch,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    field::{RecordFields, VisitOutput},
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{DefaultVisitor, Format, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What is logged when `RUST_LOG` is not set: our crates at info, the transport crates' chatter kept
/// out (h2 and hyper log every frame at debug).
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,sqlx=warn";

/// Which spans become OpenTelemetry spans. Separate from `RUST_LOG`, so quieting the logs does not
/// break the trace; the OTLP exporter's own transport is kept out so exporting cannot trace itself.
const SPAN_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tower=off,tonic=off,sqlx=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Where to send OTLP (gRPC, e.g. `http://jaeger:4317`); unset: nothing is exported.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces-only endpoint, overriding [`OTEL_EXPORTER_OTLP_ENDPOINT`].
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The metrics-only endpoint, overriding [`OTEL_EXPORTER_OTLP_ENDPOINT`].
pub const OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// `otlp` or `none`; unset: `otlp` when an endpoint is set.
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// `otlp` or `none`; unset: `otlp` when an endpoint is set.
pub const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
/// The `service.name` of everything this process exports; default: the service's own name.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Sampling, read by the OpenTelemetry SDK (default `parentbased_always_on`).
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The sampler's argument, e.g. the ratio of `parentbased_traceidratio`.
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Milliseconds between two OTLP metric exports, read by the SDK (default 60000).
pub const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";

/// An environment variable read outside the command line (by name, as the standards define them),
/// for the configuration reference: its name, its default, what it does here.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every variable telemetry reads by name (`RUST_LOG` and the standard `OTEL_*` ones), the same for
/// every service and the runner.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "RUST_LOG",
        default: "our crates at info, transport crates at warn",
        meaning: "Which log lines are written (tracing-subscriber's filter syntax, e.g. `info,ordermesh_order=debug`)",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_ENDPOINT,
        default: "unset: nothing is exported",
        meaning: "OpenTelemetry collector for traces and metrics, OTLP over gRPC only (port 4317), e.g. `http://jaeger:4317`",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        default: "`OTEL_EXPORTER_OTLP_ENDPOINT`",
        meaning: "Collector for traces only, instead of the one above",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
        default: "`OTEL_EXPORTER_OTLP_ENDPOINT`",
        meaning: "Collector for metrics only, instead of the one above",
    },
    Variable {
        name: OTEL_SERVICE_NAME,
        default: "the service's name; the runner: `ordermesh`",
        meaning: "Service name on everything exported (the service in Jaeger)",
    },
    Variable {
        name: OTEL_TRACES_EXPORTER,
        default: "`otlp` when an endpoint is set, else `none`",
        meaning: "`otlp` or `none`",
    },
    Variable {
        name: OTEL_METRICS_EXPORTER,
        default: "`otlp` when an endpoint is set, else `none`",
        meaning: "`otlp` or `none`; `/metrics` on the admin port is served either way",
    },
    Variable {
        name: OTEL_TRACES_SAMPLER,
        default: "`parentbased_always_on`",
        meaning: "Standard sampler: `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`",
    },
    Variable {
        name: OTEL_TRACES_SAMPLER_ARG,
        default: "`1.0`",
        meaning: "The `traceidratio` samplers' ratio, `0.0` to `1.0`",
    },
    Variable {
        name: OTEL_METRIC_EXPORT_INTERVAL,
        default: "`60000`",
        meaning: "Milliseconds between two OTLP metric exports",
    },
];

/// What is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

/// Whether `signal` goes out over OTLP, per the standard variables: `OTEL_<SIGNAL>_EXPORTER=none`
/// turns it off, `=otlp` on (to the default endpoint if none is set); unset, it is on when an
/// endpoint is set.
pub(crate) fn otlp_enabled(signal: Signal) -> bool {
    let (exporter, endpoint) = match signal {
        Signal::Traces => (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
        Signal::Metrics => (OTEL_METRICS_EXPORTER, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT),
    };
    let set = |name: &str| env::var(name).is_ok_and(|v| !v.trim().is_empty());
    match env::var(exporter).ok().as_deref().map(str::trim) {
        Some("none") => false,
        Some("otlp") => true,
        Some(other) if !other.is_empty() => {
            // Only OTLP is built in; say so rather than silently exporting nothing.
            eprintln!("{exporter}={other} is not supported (otlp or none); not exporting");
            false
        }
        _ => set(OTEL_EXPORTER_OTLP_ENDPOINT) || set(endpoint),
    }
}

/// The `service.name` to report: `OTEL_SERVICE_NAME` if set, else `default`.
pub fn service_name(default: &str) -> String {
    env::var(OTEL_SERVICE_NAME)
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The resource every span and metric of `service` carries (plus `OTEL_RESOURCE_ATTRIBUTES`).
pub(crate) fn resource(service: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name(service))
        .build()
}

/// Errors of setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter (OTEL_EXPORTER_OTLP_*): {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot set up the Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("a global subscriber is already installed: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// The tracer provider of `service`: batching spans to OTLP if the environment says so, else
/// recording them for context propagation and log correlation only. Call it inside the Tokio
/// runtime (the OTLP exporter is a tonic client).
pub fn tracer_provider(service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
    if otlp_enabled(Signal::Traces) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installed telemetry; flushes the spans still batched when shut down or dropped.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is still batched and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            // Already shut down, or the collector is gone: nothing more can be done.
            tracing::debug!(%error, "tracer provider shutdown");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs logging and tracing for `service` from the environment: `RUST_LOG` (else
/// [`DEFAULT_FILTER`]) for the logs, `OTEL_*` for the export. Fails if a global subscriber was
/// already installed.
pub fn init(format: LogFormat, service: &str) -> Result<Telemetry, TelemetryError> {
    install(format, tracer_provider(service)?)
}

/// Installs logging to stdout and tracing with spans going to `provider`: what [`init`] does.
pub fn install(
    format: LogFormat,
    provider: SdkTracerProvider,
) -> Result<Telemetry, TelemetryError> {
    install_to(format, provider, std::io::stdout)
}

/// [`install`], with log lines going to `writer`: what a test does, with an in-memory span exporter
/// and the test harness's writer.
pub fn install_to<W>(
    format: LogFormat,
    provider: SdkTracerProvider,
    writer: W,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ordermesh"))
        // Busy/idle time attributes on every span are noise next to the span's own duration.
        .with_tracked_inactivity(false)
        // The thread a span started on says nothing of a task that moves between threads, and
        // naming it cost an allocation per span.
        .with_threads(false)
        // Nothing here reads OpenTelemetry's current context (propagation takes each span's own,
        // `trace_context`), so entering a span need not make its context current: that was
        // work on every poll of every instrumented future.
        .with_context_activation(false)
        .with_filter(EnvFilter::new(SPAN_FILTER));
    tracing_subscriber::registry()
        .with(spans)
        .with(log_layer(format, filter, writer))
        .try_init()?;
    Ok(Telemetry { provider })
}

/// The log lines: `format`, filtered by `filter`, to `writer`, each with its trace and span ids
/// (added by this module's `WithTraceIds`).
pub fn log_layer<S, W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = Arc::new(OnceLock::new());
    let ids = WithTraceIds {
        format,
        dispatch: dispatch.clone(),
    };
    let lines = match format {
        // Plain text: lines carrying trace ids are formatted through a buffer, which has no
        // colours, and half-coloured output is worse than none.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(PlainFields)
            .event_format(ids)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        // The JSON formatter expects span fields recorded as JSON too.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(ids)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    DispatchHook(dispatch).and_then(lines).boxed()
}

/// The fields of a text line and of the spans it is in, without the spans' OpenTelemetry
/// attributes: every dotted name (`otel.name`, `rpc.method`, `network.peer.port`,
/// `messaging.kafka.offset`, `ordermesh.attempt`) is an attribute of the trace, which the line's
/// `trace_id` leads to, and the plain fields (`order_id`, `event_id`, `channel`) say what the line
/// is about. They were more than half of every line (a notification's line was 930 bytes, its
/// two spans' attributes 500 of them), and the fmt layer formats each span's fields when the span
/// starts, whether or not a line is ever written in it. JSON lines keep them all, for shippers.
struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = WithoutAttributes(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }

    /// A value recorded into a span later: added after a space only if anything is written, so
    /// an attribute recorded later (`ordermesh.outcome`) leaves no stray space.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        if !added.is_empty() {
            if !current.fields.is_empty() {
                current.fields.push(' ');
            }
            current.fields.push_str(&added);
        }
        Ok(())
    }
}

/// tracing-subscriber's own field formatting, skipping dotted names (see [`PlainFields`]).
struct WithoutAttributes<'a>(DefaultVisitor<'a>);

impl WithoutAttributes<'_> {
    fn keeps(field: &Field) -> bool {
        !field.name().contains('.')
    }
}

impl Visit for WithoutAttributes<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if Self::keeps(field) {
            self.0.record_debug(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::keeps(field) {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if Self::keeps(field) {
            self.0.record_error(field, value);
        }
    }
}

/// Remembers the dispatcher the layers are registered with: formatting a line happens inside the
/// dispatch, where the current dispatcher cannot be asked for, and the span's OpenTelemetry
/// context is read through it.
struct DispatchHook(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for DispatchHook {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

/// A log line formatter that adds the trace and span ids of the current span, if it has them: as
/// ` trace_id=… span_id=…` at the end of a text line, as top-level `"trace_id"` and `"span_id"` in a
/// JSON one. Lines are the `tracing-subscriber` formats otherwise.
struct WithTraceIds {
    format: LogFormat,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let text = Format::default();
        let json = Format::default().json();
        let ids = match (
            ctx.lookup_current(),
            self.dispatch.get().and_then(WeakDispatch::upgrade),
        ) {
            (Some(span), Some(dispatch)) => trace_ids(&span.id(), &dispatch),
            _ => None,
        };
        let Some((trace_id, span_id)) = ids else {
            return match self.format {
                LogFormat::Text => text.format_event(ctx, writer, event),
                LogFormat::Json => json.format_event(ctx, writer, event),
            };
        };
        // The line is formatted into a buffer so the ids can go at its end.
        let mut line = String::new();
        match self.format {
            LogFormat::Text => text.format_event(ctx, Writer::new(&mut line), event)?,
            LogFormat::Json => json.format_event(ctx, Writer::new(&mut line), event)?,
        }
        let line = line.trim_end_matches('\n');
        match (self.format, line.strip_suffix('}')) {
            (LogFormat::Json, Some(object)) => writeln!(
                writer,
                "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            _ => writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}"),
        }
    }
}

/// The OpenTelemetry trace and span id of the `tracing` span `id`, if it is part of a trace.
fn trace_ids(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_variable_read_by_name_is_in_the_reference_list() {
        let source = include_str!("telemetry.rs");
        // The needle split in two, so this line is not one of the definitions it looks for.
        let needle = concat!("pub const ", "OTEL_");
        let consts: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix(needle))
            .filter_map(|rest| rest.split(':').next())
            .collect();
        assert_eq!(consts.len(), 9, "{consts:?}");
        for name in consts {
            let name = format!("OTEL_{name}");
            assert!(
                super::VARIABLES.iter().any(|v| v.name == name),
                "{name} is missing from VARIABLES"
            );
        }
    }

    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line outside any span and one inside a traced span, in `format`; returns the
    /// output and the span's trace and span ids.
    fn log_in(format: LogFormat) -> (String, String, String) {
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(log_layer(format, EnvFilter::new("info"), move || {
                writer.clone()
            }));
        let dispatch = Dispatch::new(subscriber);
        let ids = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("outside");
            let span = tracing::info_span!("work", field = "value", otel.kind = "server");
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            trace_ids(&span.id().expect("enabled"), &dispatch).expect("traced")
        });
        let out = String::from_utf8(lines.0.lock().expect("lock").clone()).expect("utf-8");
        (out, ids.0, ids.1)
    }

    #[test]
    fn text_lines_in_a_span_end_with_its_ids() {
        let (out, trace_id, span_id) = log_in(LogFormat::Text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with("outside"), "{out}");
        assert!(!lines[0].contains("trace_id"), "{out}");
        // The span's plain field is on the line; its OpenTelemetry attribute is in the trace only.
        assert!(lines[1].contains("work{field=\"value\"}"), "{out}");
        assert!(!lines[1].contains("otel.kind"), "{out}");
        assert!(lines[1].contains("inside answer=42"), "{out}");
        assert!(
            lines[1].ends_with(&format!(" trace_id={trace_id} span_id={span_id}")),
            "{out}"
        );
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span_id.len(), 16);
    }

    #[test]
    fn json_lines_in_a_span_carry_its_ids_as_fields() {
        let (out, trace_id, span_id) = log_in(LogFormat::Json);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].get("trace_id").is_none(), "{out}");
        assert_eq!(lines[1]["fields"]["message"], "inside");
        assert_eq!(lines[1]["fields"]["answer"], 42);
        assert_eq!(lines[1]["span"]["field"], "value");
        assert_eq!(lines[1]["span"]["otel.kind"], "server");
        assert_eq!(lines[1]["trace_id"], trace_id.as_str());
        assert_eq!(lines[1]["span_id"], span_id.as_str());
    }
}
