//! Metrics of one service: OpenTelemetry instruments, read in the Prometheus text format on the
//! service's admin port and, when `OTEL_*` says so, pushed over OTLP too.
//!
//! Each service has its own [`Metrics`] rather than a process-wide global, so services sharing a
//! process (the runner, the tests) each show only their own figures on their own port.

use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::telemetry::{self, Signal, TelemetryError};

/// Histogram boundaries for durations in seconds: 0.5 ms to 10 s, dense where calls usually are.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metrics of one service.
#[derive(Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    meter: Meter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of `service` (its `service.name`, unless `OTEL_SERVICE_NAME` says otherwise), read
    /// by Prometheus scrapes, and exported over OTLP if `OTEL_*` asks for it. Call it inside the
    /// Tokio runtime (the OTLP exporter is a tonic client).
    pub fn new(service: &str) -> Result<Self, TelemetryError> {
        let otlp = if telemetry::otlp_enabled(Signal::Metrics) {
            Some(
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()?,
            )
        } else {
            None
        };
        Self::build(service, otlp)
    }

    /// Metrics read by Prometheus scrapes only: for tests and tools.
    pub fn local(service: &str) -> Result<Self, TelemetryError> {
        Self::build(service, None)
    }

    fn build(
        service: &str,
        otlp: Option<opentelemetry_otlp::MetricExporter>,
    ) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Our instruments are already named by their domain; no `otel_scope_*` labels on
            // every series.
            .scope_info_enabled(false)
            .build()
            .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(telemetry::resource(service))
            .with_reader(prometheus);
        if let Some(exporter) = otlp {
            // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
            builder = builder.with_reader(PeriodicReader::builder(exporter).build());
        }
        let provider = builder.build();
        let meter = provider.meter("ordermesh");
        Ok(Self {
            provider,
            registry,
            meter,
        })
    }

    /// Where instruments are made.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let encoded = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        if let Err(error) = encoded {
            tracing::warn!(%error, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Pushes what OTLP has not seen yet and stops the exporters.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::debug!(%error, "meter provider shutdown");
        }
    }
}

/// A duration histogram in seconds with [`DURATION_BUCKETS`].
pub fn duration_histogram(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(DURATION_BUCKETS.to_vec())
        .build()
}

/// Seconds, as histograms record them.
pub fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64()
}
