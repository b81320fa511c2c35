//! The W3C trace context (`traceparent`, `tracestate`) across process boundaries: in gRPC metadata,
//! in Kafka message headers, and in the order outbox, whose events are published after the call
//! that wrote them has returned.
//!
//! The propagator is W3C Trace Context, named here rather than taken from a global, so propagation
//! does not depend on what a binary installed.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The context of `span`, as the `traceparent` and `tracestate` headers (none if it is not traced).
pub fn headers_of(span: &tracing::Span) -> Vec<(String, String)> {
    let mut pairs = Pairs::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut pairs);
    pairs.0
}

/// The context carried by `headers` (name, value), ignoring every other header. An empty context if
/// there is none or it does not parse, so a bad `traceparent` starts a new trace rather than failing.
pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let pairs = Pairs(
        headers
            .into_iter()
            .filter(|(name, _)| is_trace_header(name))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect(),
    );
    TraceContextPropagator::new().extract(&pairs)
}

/// Whether `name` is one of the headers this module reads and writes.
pub fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate")
}

/// Writes the context of `span` into gRPC metadata / HTTP headers.
pub fn inject_http(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The context carried by gRPC metadata / HTTP headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the remote context `parent`, if `parent` is part of a trace. Without an
/// OpenTelemetry layer installed (tests, tools) there is nothing to do, and nothing is done.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace context as stored beside a deferred message: the headers as a JSON object, or None
/// when there is no trace.
pub fn to_json(headers: &[(String, String)]) -> Option<String> {
    if headers.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(map).to_string())
}

/// The headers stored by [`to_json`]; none if absent or unreadable (a trace is not worth failing
/// an event for).
pub fn from_json(json: Option<&str>) -> Vec<(String, String)> {
    let Some(Ok(serde_json::Value::Object(map))) = json.map(serde_json::from_str) else {
        return Vec::new();
    };
    map.into_iter()
        .filter(|(k, _)| is_trace_header(k))
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
        .collect()
}

#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

impl Extractor for Pairs {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::prelude::*;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_context_travels_through_headers_json_and_back() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("child");
            set_parent(
                &span,
                from_headers([("TraceParent", PARENT), ("other", "x")]),
            );
            let headers = headers_of(&span);
            let traceparent = &headers
                .iter()
                .find(|(k, _)| k == "traceparent")
                .expect("traceparent written")
                .1;
            // Same trace, a new span id (the child's), sampled.
            assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
            assert!(!traceparent.contains("00f067aa0ba902b7"));
            assert!(traceparent.ends_with("-01"));

            let stored = to_json(&headers).expect("a trace");
            assert_eq!(from_json(Some(&stored)), headers);

            let mut metadata = http::HeaderMap::new();
            inject_http(&span, &mut metadata);
            let extracted = extract_http(&metadata);
            assert_eq!(
                extracted.span().span_context().trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        });
    }

    #[test]
    fn bad_or_missing_context_is_no_context() {
        for headers in [
            vec![],
            vec![("traceparent", "garbage")],
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
        ] {
            let cx = from_headers(headers.clone());
            assert!(!cx.span().span_context().is_valid(), "{headers:?}");
        }
        assert!(from_json(None).is_empty());
        assert!(from_json(Some("not json")).is_empty());
        assert!(from_json(Some(r#"{"x":"y","traceparent":5}"#)).is_empty());
        assert_eq!(to_json(&[]), None);
        // Without an OpenTelemetry layer, a span has no context to pass on.
        assert!(headers_of(&tracing::info_span!("untraced")).is_empty());
    }
}
