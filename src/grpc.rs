//! Serving gRPC the same way in every service: standard health, server reflection in both versions
//! (grpcurl 1.8 speaks only v1alpha), and a bounded graceful drain.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    Code, Status,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use tower::layer::util::{Identity, Stack};

use crate::{metrics::Metrics, oversize::OversizeLayer, rpc_telemetry::RpcTelemetryLayer};

/// How long in-flight calls may run after shutdown was asked for before they are cut off.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Errors of setting up or running a gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read the listener's address: {0}")]
    Io(#[from] std::io::Error),
}

/// The router of every ordermesh server: its layers are fixed here, so the type is too.
pub type Router = tonic::transport::server::Router<
    Stack<crate::shed::ShedLayer, Stack<OversizeLayer, Stack<RpcTelemetryLayer, Identity>>>,
>;

/// The largest request message a service decodes (each API service sets it on its generated
/// server). Far above any valid request (a CreateOrder of 100 items is about 10 KiB), and small
/// enough that a hostile sender cannot make a service buffer much: tonic refuses a larger message
/// from its length prefix, before reading it.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The request compression every API service accepts (each sets it on its generated server):
/// gzip, which grpcurl, grpc-go and grpc-java clients can send. [`MAX_REQUEST_BYTES`] also bounds
/// the decompressed message: tonic inflates into a buffer limited to it and refuses the rest with
/// RESOURCE_EXHAUSTED, so a small frame that inflates to gigabytes (a compression bomb) costs at
/// most 64 KiB. Other encodings are refused with UNIMPLEMENTED.
pub const ACCEPTED_COMPRESSION: tonic::codec::CompressionEncoding =
    tonic::codec::CompressionEncoding::Gzip;

/// Concurrent HTTP/2 streams (calls) one connection may have open; more wait for the client's
/// flow control, so one connection cannot take the whole server.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// A router with the parts every ordermesh server has: TLS if `tls` says so, a span and duration
/// metrics for every call,
/// load shedding beyond `max_concurrent` calls, the health service (its reporter is returned so the caller can say SERVING once it is really
/// ready) and reflection v1 and v1alpha knowing our protos, the health proto and the `google.rpc`
/// error details, so grpcurl needs no .proto files and shows BadRequest field violations as fields
/// rather than bytes.
pub fn router(
    max_concurrent: usize,
    metrics: &Metrics,
    tls: Option<ServerTlsConfig>,
) -> Result<(HealthReporter, Router), ServeError> {
    let mut builder = Server::builder().max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    // TLS (or mutual TLS, if the config names a client CA) on every connection; None: plaintext.
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let mut server = builder
        // Outermost, so every call is traced and measured, shed ones included: continue the
        // caller's trace, record the span and `rpc.server.call.duration` by status code.
        .layer(RpcTelemetryLayer::server(metrics.meter()))
        // The answer to an oversized request as RESOURCE_EXHAUSTED (see `oversize`), inside the
        // telemetry layer so that traces and metrics count it as such.
        .layer(OversizeLayer)
        // Refuse calls beyond the limit at once (RESOURCE_EXHAUSTED) instead of queueing them.
        .layer(crate::shed::ShedLayer::new(max_concurrent).counting(metrics.meter()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let router = server
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((reporter, router))
}

/// Serves `router` on `listener` until `shutdown` completes, then reports NOT_SERVING (for the whole
/// server, the `""` service health checks ask about by default), stops accepting and gives in-flight
/// calls `grace` to finish. The caller binds, so tests can pass a listener on port 0.
pub async fn serve(
    router: Router,
    health: HealthReporter,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gRPC server listening");
    // Small unary calls must not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = draining_tx.send(());
    };
    // Completes `grace` after shutdown began; never, if it never does.
    let grace_over = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        // Normal path: tonic stopped accepting and every connection finished.
        result = router.serve_with_incoming_shutdown(incoming, signal) => result?,
        // The grace period ran out first: stop waiting for slow calls (dropping them).
        () = grace_over => {
            tracing::warn!(%addr, ?grace, "drain grace period over, dropping in-flight calls");
        }
    }
    tracing::info!(%addr, "gRPC server stopped");
    Ok(())
}

/// When the caller's deadline runs out, from the `grpc-timeout` it sent (measured from now, which in
/// a handler is when the call arrived, give or take the time to route it). None without one or with
/// one that does not parse.
pub fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    // At most 8 digits and a unit, per the gRPC HTTP/2 protocol.
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(tokio::time::Instant::now() + timeout)
}

/// An INVALID_ARGUMENT status whose message names every bad field and whose details carry the standard
/// `google.rpc.BadRequest` field violations, so clients can point at the field programmatically.
pub fn invalid_argument(mut violations: Vec<FieldViolation>) -> Status {
    // The message and the details travel in HTTP/2 headers, and clients refuse headers over 16 KiB
    // (tonic's default) with INTERNAL, which would hide the real answer. So each text is cut short
    // and violations are reported while their text fits a budget: the headers then stay under
    // about 11 KiB even if every byte is non-ASCII (percent-encoded, three bytes each, in the
    // message; base64 in the details). A request wrong in a handful of places still gets all of
    // them; one wrong everywhere gets the first ones and a count of the rest.
    const MAX_TEXT_CHARS: usize = 200;
    const TEXT_BUDGET_BYTES: usize = 2 * 1024;
    let mut spent = 0;
    let mut reported = 0;
    for v in &mut violations {
        for text in [&mut v.field, &mut v.description] {
            if let Some((cut, _)) = text.char_indices().nth(MAX_TEXT_CHARS) {
                text.truncate(cut);
                text.push('…');
            }
        }
        spent += v.field.len() + v.description.len();
        if reported > 0 && spent > TEXT_BUDGET_BYTES {
            break;
        }
        reported += 1;
    }
    let more = violations.len() - reported;
    violations.truncate(reported);
    let mut message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {message}"),
        ErrorDetails::with_bad_request(violations),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_request_wrong_everywhere_gets_an_answer_that_fits_in_headers() {
        use tonic_types::{FieldViolation, StatusExt};
        let violations: Vec<FieldViolation> = (0..400)
            .map(|i| FieldViolation::new(format!("items[{i}].sku"), "é".repeat(5_000)))
            .collect();
        let status = super::invalid_argument(violations);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let reported = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let shown = reported.field_violations.len();
        assert!(shown >= 1, "at least the first is reported");
        assert!(
            status
                .message()
                .ends_with(&format!("; and {} more", 400 - shown)),
            "{}",
            status.message()
        );
        let response = status.into_http::<()>();
        let size: usize = response
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(size < 16 * 1024, "{size} bytes of headers");
    }

    use tonic::metadata::MetadataMap;

    use super::caller_deadline;

    #[tokio::test(start_paused = true)]
    async fn grpc_timeout_becomes_a_deadline() {
        let now = tokio::time::Instant::now();
        for (value, expected) in [
            ("250m", Some(Duration::from_millis(250))),
            ("3S", Some(Duration::from_secs(3))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("1500u", Some(Duration::from_micros(1500))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-5m", None),
            ("", None),
        ] {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(
                caller_deadline(&metadata),
                expected.map(|d| now + d),
                "{value:?}"
            );
        }
        assert_eq!(caller_deadline(&MetadataMap::new()), None);
    }
}
