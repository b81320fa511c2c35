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
pub(crate) struct Serving {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn stop(mut self) {
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
pub(crate) async fn raw_echo() -> Result<Serving> {
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
/// SQLite files in a temporary directory; the notifier too when asked for ([`Mesh::start_whole`]),
/// since it is no part of CreateOrder but is part of what an order costs.
pub(crate) struct Mesh {
    payment: Serving,
    pub(crate) order: Serving,
    notifier: Option<Serving>,
    /// The notifier's outcome counters per channel (empty without a notifier).
    notified: ordermesh_notifier::ChannelStats,
    pub(crate) broker: ordermesh_kafka::EmbeddedBroker,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Payment and order.
    pub(crate) async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Payment, order and the notifier with its default channels (email and SMS, each in its own
    /// consumer group), delivering to the log as the runner does when no mail server or SMS
    /// gateway is set. No tracing subscriber is installed in the bench process, so those lines
    /// cost nothing here.
    pub(crate) async fn start_whole() -> Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(notifier: bool) -> Result<Self> {
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
            events_topic: topic.clone(),
            ..ordermesh_order::Config::from_env()?
        };
        let order = spawn(|listener, stop| async move {
            ordermesh_order::run(listener, order_config, stop)
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        let mut notified = ordermesh_notifier::ChannelStats::new();
        let notifier = if notifier {
            use ordermesh_notifier::{Channel, dead_letter};
            // The mock cluster does not create topics on request (the runner makes these too).
            for channel in Channel::ALL {
                broker.create_topic(&dead_letter::topic(&topic, channel), 3)?;
                notified.insert(channel, std::sync::Arc::default());
            }
            let config = ordermesh_notifier::Config {
                database_url: db("notifier.db"),
                kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
                events_topic: topic,
                smtp_url: None,
                sms_webhook_url: None,
                ..ordermesh_notifier::Config::from_env()?
            };
            let stats = notified.clone();
            Some(
                spawn(|listener, stop| async move {
                    ordermesh_notifier::run_with_stats(listener, config, stop, stats)
                        .await
                        .map_err(anyhow::Error::from)
                })
                .await?,
            )
        } else {
            None
        };
        Ok(Self {
            payment,
            order,
            notifier,
            notified,
            broker,
            _dir: dir,
        })
    }

    /// Notifications the notifier has sent so far, all channels together.
    pub(crate) fn sent(&self) -> u64 {
        self.notified
            .values()
            .map(|stats| stats.sent.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    pub(crate) async fn stop(self) {
        if let Some(notifier) = self.notifier {
            notifier.stop().await;
        }
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
