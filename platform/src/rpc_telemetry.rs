//! Every gRPC call observed once, in tower's shape ([`RpcTelemetryLayer`], [`RpcTelemetry<S>`],
//! [`ResponseFuture`], [`ObservedBody`]): the same layer on the server (every service's router) and
//! on a client channel (order's channel to payment), so no handler writes tracing code.
//!
//! Per call it makes a span following the OpenTelemetry RPC conventions (name
//! `package.Service/Method`, kind server or client, `rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`), carries the W3C trace context in the metadata (read on the server,
//! written on the client), and records the call's duration in `rpc.server.call.duration` or
//! `rpc.client.call.duration`, labelled with the status code: the one histogram gives the rate
//! (its count), the errors by code, and the latency.
//!
//! The status of a gRPC call is not always known when the response headers arrive: an error
//! answered at once comes in the headers ("trailers-only"), but a call that started answering ends
//! with its status in the trailers. So the call is finished from the headers when they carry the
//! status, and otherwise by the response body when it yields its trailers, or ends, or is dropped
//! (a cancelled call).

use std::{
    any::Any,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter},
};
use tonic::{Code, transport::server::TcpConnectInfo};
use tower::{Layer, Service};
use tracing::{Instrument, instrument::Instrumented};

use crate::{metrics, trace_context};

/// Calls not traced (they are still measured): health checks come every few seconds from every
/// orchestrator and would bury the traces people look for; reflection is tooling.
const UNTRACED: [&str; 2] = ["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Which end of the call this layer sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Adds [`RpcTelemetry`] to a gRPC server or client.
#[derive(Debug, Clone)]
pub struct RpcTelemetryLayer {
    side: Side,
    duration: Histogram<f64>,
    /// A client's server: `server.address` and `server.port` of its spans.
    server: Option<(String, u16)>,
}

impl RpcTelemetryLayer {
    /// For a server: continues the caller's trace, measures `rpc.server.call.duration`.
    pub fn server(meter: &Meter) -> Self {
        Self {
            side: Side::Server,
            duration: metrics::duration_histogram(
                meter,
                "rpc.server.call.duration",
                "Duration of gRPC calls served, by method and status code",
            ),
            server: None,
        }
    }

    /// For a client channel to `endpoint`: passes the trace on, measures
    /// `rpc.client.call.duration`. (The endpoint is given because a channel's requests carry only
    /// the path; the channel adds the origin below this layer.)
    pub fn client(meter: &Meter, endpoint: &http::Uri) -> Self {
        let default_port = if endpoint.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        Self {
            side: Side::Client,
            duration: metrics::duration_histogram(
                meter,
                "rpc.client.call.duration",
                "Duration of gRPC calls made (each attempt), by method and status code",
            ),
            server: endpoint
                .host()
                .map(|host| (host.to_owned(), endpoint.port_u16().unwrap_or(default_port))),
        }
    }
}

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> RpcTelemetry<S> {
        RpcTelemetry {
            inner,
            layer: self.clone(),
        }
    }
}

/// Traces and measures each call to `S`.
#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    layer: RpcTelemetryLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcTelemetry<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = split_path(path);
        let (service, method) = (service.to_owned(), method.to_owned());
        let span = if UNTRACED.iter().any(|prefix| path.starts_with(prefix)) {
            tracing::Span::none()
        } else {
            // Field values are only evaluated when the span is enabled: the name is formatted
            // only for calls that are traced.
            // Field names are the OpenTelemetry ones; `otel.*` are read by tracing-opentelemetry.
            match self.layer.side {
                Side::Server => {
                    // Who called, as tonic's TCP listener saw it.
                    let peer = request
                        .extensions()
                        .get::<TcpConnectInfo>()
                        .and_then(TcpConnectInfo::remote_addr);
                    tracing::info_span!(
                        "grpc_server",
                        otel.name = %format_args!("{service}/{method}"),
                        otel.kind = "server",
                        otel.status_code = tracing::field::Empty,
                        rpc.system = "grpc",
                        rpc.service = %service,
                        rpc.method = %method,
                        rpc.grpc.status_code = tracing::field::Empty,
                        network.peer.address = peer.map(|p| p.ip().to_string()),
                        network.peer.port = peer.map(|p| p.port()),
                    )
                }
                Side::Client => {
                    let (host, port) = self.layer.server.clone().unzip();
                    tracing::info_span!(
                        "grpc_client",
                        otel.name = %format_args!("{service}/{method}"),
                        otel.kind = "client",
                        otel.status_code = tracing::field::Empty,
                        rpc.system = "grpc",
                        rpc.service = %service,
                        rpc.method = %method,
                        rpc.grpc.status_code = tracing::field::Empty,
                        server.address = host,
                        server.port = port,
                    )
                }
            }
        };
        match self.layer.side {
            Side::Server => {
                trace_context::set_parent(&span, trace_context::extract_http(request.headers()))
            }
            Side::Client => trace_context::inject_http(&span, request.headers_mut()),
        }
        let call = Call {
            side: self.layer.side,
            span: span.clone(),
            started: Instant::now(),
            duration: self.layer.duration.clone(),
            service,
            method,
            finished: false,
        };
        // The handler runs inside the span, so its logs carry the trace ids.
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner: inner.instrument(span),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an observed call; its body finishes the observation if the headers did not.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: 'static,
{
    type Output = Result<Response<ObservedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = status_in(response.headers())
                    && let Some(call) = call.as_mut()
                {
                    // Trailers-only: the call is over.
                    call.finish(code);
                }
                Ok(response.map(|body| ObservedBody {
                    inner: body,
                    call: call.filter(|c| !c.finished),
                }))
            }
            Err(error) => {
                if let Some(call) = call.as_mut() {
                    // No gRPC status at all. On a client either the call's own deadline passed
                    // (tonic's channel enforces the `grpc-timeout` it sends) or the transport
                    // failed, which its caller sees as UNAVAILABLE; on a server nothing was
                    // answered.
                    call.finish(match call.side {
                        Side::Client if deadline_passed(&error) => Code::DeadlineExceeded,
                        Side::Client => Code::Unavailable,
                        Side::Server => Code::Unknown,
                    });
                }
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's observation when the status arrives in the
    /// trailers, when it ends without one, or when it is dropped before either (cancelled).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let status = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|trailers| status_in(trailers).unwrap_or(Code::Unknown)),
            // The stream broke: the call did not complete.
            Some(Err(_)) => Some(Code::Unknown),
            // Ended without trailers: no status, which gRPC calls UNKNOWN.
            None => Some(Code::Unknown),
        };
        if let Some(code) = status
            && let Some(mut call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call being observed.
#[derive(Debug)]
struct Call {
    side: Side,
    span: tracing::Span,
    started: Instant,
    duration: Histogram<f64>,
    service: String,
    method: String,
    finished: bool,
}

impl Call {
    /// Records the call's outcome, once.
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let number = code as i64;
        self.span.record("rpc.grpc.status_code", number);
        if is_error(self.side, code) {
            self.span.record("otel.status_code", "ERROR");
        }
        // A server answers UNIMPLEMENTED to any path a client makes up: those are not labelled
        // with the path, so made-up names cannot grow the metric without bound.
        let (service, method) = if self.side == Side::Server && code == Code::Unimplemented {
            ("_OTHER".to_owned(), "_OTHER".to_owned())
        } else {
            (
                std::mem::take(&mut self.service),
                std::mem::take(&mut self.method),
            )
        };
        self.duration.record(
            metrics::seconds(self.started.elapsed()),
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
                KeyValue::new("rpc.grpc.status_code", number),
            ],
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before the status arrived: the call was cancelled (by the caller, or by the
        // server shutting down).
        self.finish(Code::Cancelled);
    }
}

/// Whether a call's error says its deadline passed before an answer: tonic's channel ends such a
/// call with `TimeoutExpired` somewhere in the error's sources. (Counted as UNAVAILABLE, an
/// attempt cut off at its deadline would read as payment being down.)
fn deadline_passed(error: &dyn Any) -> bool {
    let error: &(dyn std::error::Error + 'static) =
        if let Some(error) = error.downcast_ref::<tonic::transport::Error>() {
            error
        } else if let Some(error) = error.downcast_ref::<tower::BoxError>() {
            error.as_ref()
        } else {
            return false;
        };
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<tonic::TimeoutExpired>())
}

/// Whether `code` marks the span as failed: every non-OK code for a client; for a server only the
/// codes that say the server failed, not those that say the request was wrong (the conventions'
/// rule, so a flood of INVALID_ARGUMENT does not look like an outage).
fn is_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}

/// The `grpc-status` in headers or trailers, if there is one.
fn status_in(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.trim().parse().ok()?))
}

/// `("package.Service", "Method")` from `/package.Service/Method`.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("_OTHER", "_OTHER"))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    use super::*;
    use crate::metrics::Metrics;

    type TestBody =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// A server answering with `headers` and then `frames`, behind the server layer.
    fn server(
        metrics: &Metrics,
        headers: &'static [(&'static str, &'static str)],
        frames: fn() -> Vec<Result<Frame<Bytes>, Infallible>>,
    ) -> RpcTelemetry<
        impl Service<Request<()>, Response = Response<TestBody>, Error = Infallible, Future: Send>
        + Clone,
    > {
        RpcTelemetryLayer::server(metrics.meter()).layer(tower::service_fn(
            move |_: Request<()>| async move {
                let mut response = Response::new(StreamBody::new(futures::stream::iter(frames())));
                for (name, value) in headers {
                    response
                        .headers_mut()
                        .insert(*name, value.parse().expect("value"));
                }
                Ok::<_, Infallible>(response)
            },
        ))
    }

    fn trailers(code: &str) -> Result<Frame<Bytes>, Infallible> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", code.parse().expect("value"));
        Ok(Frame::trailers(trailers))
    }

    fn request() -> Request<()> {
        Request::builder()
            .uri("/pkg.Svc/Do")
            .body(())
            .expect("request")
    }

    fn recorded(metrics: &Metrics, code: &str) -> bool {
        metrics.render().lines().any(|line| {
            line.starts_with("rpc_server_call_duration_seconds_count")
                && line.contains(&format!("rpc_grpc_status_code=\"{code}\""))
                && line.contains("rpc_method=\"Do\"")
                && line.ends_with(" 1")
        })
    }

    /// A client whose channel fails with `error` before any answer.
    fn failing_client(
        metrics: &Metrics,
        error: fn() -> tower::BoxError,
    ) -> RpcTelemetry<
        impl Service<Request<()>, Response = Response<TestBody>, Error = tower::BoxError, Future: Send>
        + Clone,
    > {
        let endpoint: http::Uri = "http://payment:50052".parse().expect("uri");
        RpcTelemetryLayer::client(metrics.meter(), &endpoint).layer(tower::service_fn(
            move |_: Request<()>| async move { Err::<Response<TestBody>, _>(error()) },
        ))
    }

    fn client_recorded(metrics: &Metrics, code: &str) -> bool {
        metrics.render().lines().any(|line| {
            line.starts_with("rpc_client_call_duration_seconds_count")
                && line.contains(&format!("rpc_grpc_status_code=\"{code}\""))
                && line.ends_with(" 1")
        })
    }

    #[tokio::test]
    async fn a_client_call_past_its_deadline_is_deadline_exceeded_and_a_broken_one_unavailable() {
        let metrics = Metrics::local("test").expect("metrics");
        let timed_out = failing_client(&metrics, || tonic::TimeoutExpired(()).into())
            .oneshot(request())
            .await;
        assert!(timed_out.is_err());
        assert!(client_recorded(&metrics, "4"), "{}", metrics.render());

        let metrics = Metrics::local("test").expect("metrics");
        let refused = failing_client(&metrics, || "connection refused".into())
            .oneshot(request())
            .await;
        assert!(refused.is_err());
        assert!(client_recorded(&metrics, "14"), "{}", metrics.render());
        assert!(!client_recorded(&metrics, "4"), "{}", metrics.render());
    }

    #[tokio::test]
    async fn the_status_is_taken_from_the_trailers_the_headers_or_the_cancellation() {
        // Answered, status in the trailers after the data.
        let metrics = Metrics::local("test").expect("metrics");
        let response = server(&metrics, &[], || {
            vec![Ok(Frame::data(Bytes::from_static(b"x"))), trailers("0")]
        })
        .oneshot(request())
        .await
        .expect("response");
        assert!(!recorded(&metrics, "0"), "not before the trailers");
        response.into_body().collect().await.expect("body");
        assert!(recorded(&metrics, "0"), "{}", metrics.render());

        // Trailers-only: the status is in the headers.
        let metrics = Metrics::local("test").expect("metrics");
        let response = server(&metrics, &[("grpc-status", "3")], Vec::new)
            .oneshot(request())
            .await
            .expect("response");
        assert!(recorded(&metrics, "3"), "{}", metrics.render());
        drop(response);

        // The caller went away after the first message: cancelled.
        let metrics = Metrics::local("test").expect("metrics");
        let response = server(&metrics, &[], || {
            vec![Ok(Frame::data(Bytes::from_static(b"x"))), trailers("0")]
        })
        .oneshot(request())
        .await
        .expect("response");
        let mut body = response.into_body();
        body.frame().await.expect("a frame").expect("data");
        drop(body);
        assert!(recorded(&metrics, "1"), "{}", metrics.render());
        assert!(!recorded(&metrics, "0"), "{}", metrics.render());
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/ordermesh.order.v1.OrderService/CreateOrder"),
            ("ordermesh.order.v1.OrderService", "CreateOrder")
        );
        assert_eq!(split_path("/nonsense"), ("_OTHER", "_OTHER"));
    }

    #[test]
    fn server_spans_fail_only_on_server_faults() {
        assert!(is_error(Side::Server, Code::Internal));
        assert!(is_error(Side::Server, Code::Unavailable));
        assert!(!is_error(Side::Server, Code::InvalidArgument));
        assert!(!is_error(Side::Server, Code::Ok));
        assert!(is_error(Side::Client, Code::InvalidArgument));
        assert!(!is_error(Side::Client, Code::Ok));
    }

    #[test]
    fn status_is_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", "3".parse().expect("value"));
        assert_eq!(status_in(&headers), Some(Code::InvalidArgument));
        headers.insert("grpc-status", "x".parse().expect("value"));
        assert_eq!(status_in(&headers), None);
    }
}
