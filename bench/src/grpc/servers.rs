//! What the gRPC benchmarks call, all in this process on port-0 listeners: ours (payment and order
//! as the binaries run them), the raw tonic echo server, and a stub payment server that answers at
//! once. Each is a [`Serving`], so every benchmark starts, reaches and stops them the same way.

use std::net::SocketAddr;

use anyhow::Result;
use ordermesh::proto::payment::v1::{
    ChargeOutcome, ChargeRequest, CloseChargeKeyRequest, GetChargeOutcomeRequest,
    GetPaymentRequest, ListPaymentsRequest, ListPaymentsResponse, Payment, PaymentStatus, Refund,
    RefundRequest,
    payment_service_server::{PaymentService, PaymentServiceServer},
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Channel, Endpoint, Server};

use crate::echo;

/// A server task on a port-0 listener, stopped when dropped.
pub(super) struct Serving {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(super) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

pub(super) async fn channel(url: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// The raw tonic server (see [`echo`]), in this process.
pub(super) async fn raw_echo() -> Result<Serving> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = echo::serve(listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(Serving {
        addr,
        stop: Some(stop),
        task,
    })
}

/// A payment server that charges nothing and answers at once.
#[derive(Debug, Default)]
struct StubPayment;

#[tonic::async_trait]
impl PaymentService for StubPayment {
    async fn charge(
        &self,
        request: tonic::Request<ChargeRequest>,
    ) -> Result<tonic::Response<Payment>, tonic::Status> {
        let request = request.into_inner();
        Ok(tonic::Response::new(Payment {
            payment_id: format!("pay_{}", request.idempotency_key),
            order_id: request.order_id,
            status: PaymentStatus::Succeeded as i32,
            amount: request.amount,
            ..Default::default()
        }))
    }

    async fn get_payment(
        &self,
        _: tonic::Request<GetPaymentRequest>,
    ) -> Result<tonic::Response<Payment>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn get_charge_outcome(
        &self,
        _: tonic::Request<GetChargeOutcomeRequest>,
    ) -> Result<tonic::Response<ChargeOutcome>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn close_charge_key(
        &self,
        _: tonic::Request<CloseChargeKeyRequest>,
    ) -> Result<tonic::Response<ChargeOutcome>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn list_payments(
        &self,
        _: tonic::Request<ListPaymentsRequest>,
    ) -> Result<tonic::Response<ListPaymentsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn refund(
        &self,
        _: tonic::Request<RefundRequest>,
    ) -> Result<tonic::Response<Refund>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }
}

pub(super) async fn stub_payment() -> Result<Serving> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(PaymentServiceServer::new(StubPayment))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Serving {
        addr,
        stop: Some(stop),
        task,
    })
}

/// Payment and order as the binaries run them (order's defaults), on the embedded broker, with
/// SQLite files in a temporary directory. The notifier is not part of CreateOrder.
pub(super) struct Mesh {
    payment: Serving,
    pub(super) order: Serving,
    pub(super) broker: ordermesh_kafka::EmbeddedBroker,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub(super) async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let broker = ordermesh_kafka::EmbeddedBroker::start("127.0.0.1:0".parse()?, &[&topic], 3)?;
        let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());

        let payment_config = ordermesh_payment::Config {
            database_url: db("payment.db"),
            ..ordermesh_payment::Config::from_env()?
        };
        let payment = spawn(|listener, stop| async move {
            ordermesh_payment::run(listener, payment_config, stop)
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        let order_config = ordermesh_order::Config {
            database_url: db("order.db"),
            payment_url: payment.url(),
            kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
            events_topic: topic,
            ..ordermesh_order::Config::from_env()?
        };
        let order = spawn(|listener, stop| async move {
            ordermesh_order::run(listener, order_config, stop)
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        Ok(Self {
            payment,
            order,
            broker,
            _dir: dir,
        })
    }

    pub(super) async fn stop(self) {
        self.order.stop().await;
        self.payment.stop().await;
        drop(self.broker);
    }
}

/// Runs a service on a fresh port-0 listener and returns once it says SERVING, as the tests wait.
async fn spawn<F, Fut>(run: F) -> Result<Serving>
where
    F: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let future = run(
        listener,
        Box::pin(async move {
            let _ = stopped.await;
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(error) = future.await {
            tracing::error!("{error:#}");
        }
    });
    let serving = Serving {
        addr,
        stop: Some(stop),
        task,
    };
    let addr = serving.addr;
    ordermesh_testkit::eventually(&format!("{addr} SERVING"), || async {
        Ok(ordermesh_testkit::is_serving(addr).await)
    })
    .await?;
    Ok(serving)
}
