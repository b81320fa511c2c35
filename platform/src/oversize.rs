//! The answer to a request over the size limit as RESOURCE_EXHAUSTED.
//!
//! tonic refuses a request message longer than the service's `max_decoding_message_size` from its
//! length prefix, before reading it, and answers OUT_OF_RANGE. gRPC's status code guide says
//! RESOURCE_EXHAUSTED (which tonic itself answers for a decompressed message over the limit), and
//! clients treat the two differently, so this layer rewrites that one answer. It is recognised by
//! tonic's message in the trailers (a unary call has sent its headers by then).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

use crate::limits::MAX_REQUEST_BYTES;

/// Rewrites tonic's OUT_OF_RANGE for an oversized request as RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner }
    }
}

/// A service behind [`OversizeLayer`].
#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Oversize<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<OversizeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a call behind [`OversizeLayer`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<OversizeBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.poll(cx));
        Poll::Ready(result.map(|mut response| {
            // A trailers-only answer carries the status in the headers.
            rewrite(response.headers_mut());
            response.map(|inner| OversizeBody { inner })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers are rewritten if they refuse an oversized request.
    pub struct OversizeBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for OversizeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut frame = ready!(self.project().inner.poll_frame(cx));
        if let Some(Ok(frame)) = &mut frame
            && let Some(trailers) = frame.trailers_mut()
        {
            rewrite(trailers);
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

fn rewrite(status: &mut HeaderMap) {
    let oversize = status.get("grpc-status").is_some_and(|s| s == "11")
        && status
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // grpc-message is percent-encoded; tonic's prefix has only spaces to decode.
            .is_some_and(|m| {
                m.replace("%20", " ")
                    .starts_with("Error, decoded message length too large")
            });
    if !oversize {
        return;
    }
    status.insert(
        "grpc-status",
        HeaderValue::from(Code::ResourceExhausted as i32),
    );
    let message = format!(
        "request message too large (the limit is {MAX_REQUEST_BYTES} bytes): send less per call"
    );
    if let Ok(message) = HeaderValue::from_str(&message) {
        status.insert("grpc-message", message);
    }
}
