//! Load shedding for a whole gRPC server, in tower's shape: [`Shed<S>`], [`ShedLayer`],
//! [`ResponseFuture`].
//!
//! At most `limit` calls are served at once; a call beyond that is answered RESOURCE_EXHAUSTED at
//! once instead of waiting in an unbounded queue, so an overloaded server stays responsive and the
//! client (or its retry policy) decides what to do. Health checks and reflection are exempt: an
//! overloaded server is still alive, and operators must be able to see it.
//!
//! tonic's own `concurrency_limit_per_connection` + `load_shed` counts per connection; gRPC clients
//! multiplex every call over one connection, so that would not bound the server.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use opentelemetry::metrics::{Counter, Meter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

/// Paths never shed.
const EXEMPT: [&str; 2] = ["/grpc.health.v1.Health/", "/grpc.reflection."];

#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Option<Counter<u64>>,
}

impl ShedLayer {
    /// Serves at most `limit` calls at once (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: None,
        }
    }

    /// Counts refused calls in `ordermesh.requests.shed`.
    pub fn counting(mut self, meter: &Meter) -> Self {
        self.shed = Some(
            meter
                .u64_counter("ordermesh.requests.shed")
                .with_description("gRPC calls refused with RESOURCE_EXHAUSTED because the server was at its concurrency limit")
                .build(),
        );
        self
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
            shed: self.shed.clone(),
        }
    }
}

/// Refuses calls beyond the limit with RESOURCE_EXHAUSTED.
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Option<Counter<u64>>,
}

impl<S, B> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT.iter().any(|prefix| path.starts_with(prefix)) {
            return ResponseFuture::Called {
                inner: Box::pin(self.inner.call(request)),
                _permit: None,
            };
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => ResponseFuture::Called {
                inner: Box::pin(self.inner.call(request)),
                _permit: Some(permit),
            },
            Err(_) => {
                tracing::debug!(path, limit = self.limit, "shedding call");
                if let Some(shed) = &self.shed {
                    shed.add(1, &[]);
                }
                let status = Status::resource_exhausted(format!(
                    "server busy: {} calls in progress, the most it serves at once; retry with backoff",
                    self.limit
                ));
                ResponseFuture::Shed(Some(status.into_http()))
            }
        }
    }
}

/// The inner response, holding its permit until it is ready; or the refusal.
pub enum ResponseFuture<F> {
    Called {
        inner: Pin<Box<F>>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    Shed(Option<Response<Body>>),
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseFuture::Called { .. } => "ResponseFuture::Called",
            ResponseFuture::Shed(_) => "ResponseFuture::Shed",
        })
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin (the inner future is boxed).
        match self.get_mut() {
            ResponseFuture::Called { inner, .. } => inner.as_mut().poll(cx),
            ResponseFuture::Shed(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_status(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn calls_over_the_limit_are_refused_at_once_and_health_is_exempt() {
        let (release, released) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_request: Request<()>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, std::convert::Infallible>(Response::new(Body::default()))
            }
        });
        let service = ShedLayer::new(2).layer(inner);

        let first = tokio::spawn(service.clone().oneshot(request("/pkg.Svc/Call")));
        let second = tokio::spawn(service.clone().oneshot(request("/pkg.Svc/Call")));
        tokio::time::sleep(Duration::from_millis(20)).await;

        let third = service
            .clone()
            .oneshot(request("/pkg.Svc/Call"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&third), Some("8"), "RESOURCE_EXHAUSTED");
        let health = tokio::spawn(
            service
                .clone()
                .oneshot(request("/grpc.health.v1.Health/Check")),
        );

        release.send_replace(true);
        for call in [first, second, health] {
            assert_eq!(grpc_status(&call.await.unwrap().unwrap()), None, "served");
        }
        // Permits came back.
        let after = service.oneshot(request("/pkg.Svc/Call")).await.unwrap();
        assert_eq!(grpc_status(&after), None);
    }
}
