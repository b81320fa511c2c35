//! The order service: takes orders, has them paid synchronously by the payment service, and
//! announces paid orders asynchronously as OrderPlaced events on Kafka.
//!
//! Layout: `config` is what the binary and the runner fill in (CreateOrder's validation is part of
//! the contract, `ordermesh::validate`); `api` is the gRPC service and the CreateOrder state machine; `payment_client` is the synchronous
//! hop; `settle` is every way an order leaves PENDING_PAYMENT, and `reconciler` settles the
//! orders no call did; `relay` publishes the outbox through `publisher`, the asynchronous hop;
//! `convert` shows a stored order as the API and the event do; `store` holds every SQL statement;
//! `error` is the one error type, mapped to `tonic::Status` in one place.
#![forbid(unsafe_code)]

mod api;
mod cancel;
mod config;
mod convert;
mod error;
pub mod payment_client;
pub mod publisher;
mod reconciler;
mod relay;
mod request_lock;
mod settle;
mod store;

use std::future::Future;

use ordermesh::proto::order::v1::order_service_server::OrderServiceServer;
use ordermesh_platform::{
    admin::Admin, auth, auth::AuthKey, auth::AuthLayer, cli::ServiceSettings, grpc, limits,
    listeners::Listeners, metrics::Metrics,
};
use payment_client::breaker::BreakerState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::Layer;

pub use config::Config;

/// The order service's schema migrations, for SQLite and for PostgreSQL (run at start-up by [`run`];
/// public for the test that checks both backends end in the same schema).
pub fn migrations() -> ordermesh_platform::db::Migrations {
    store::migrations()
}
pub use error::OrderError;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] ordermesh_platform::db::DbError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error(transparent)]
    PaymentClient(#[from] payment_client::ClientConfigError),
    #[error("Kafka at {brokers} (KAFKA_BROKERS): {source}")]
    Kafka {
        brokers: String,
        source: ordermesh_kafka::BrokerError,
    },
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
    #[error(transparent)]
    Telemetry(#[from] ordermesh_platform::telemetry::TelemetryError),
    #[error(transparent)]
    Tls(#[from] ordermesh_platform::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] ordermesh_platform::auth::AuthError),
    #[error(transparent)]
    KafkaSettings(#[from] ordermesh_kafka::KafkaSettingsError),
}

/// The scope each OrderService method needs.
const AUTH_RULES: &[(&str, &str)] = &[
    (
        "/ordermesh.order.v1.OrderService/CreateOrder",
        auth::ORDERS_WRITE,
    ),
    (
        "/ordermesh.order.v1.OrderService/GetOrder",
        auth::ORDERS_READ,
    ),
    (
        "/ordermesh.order.v1.OrderService/ListOrders",
        auth::ORDERS_READ,
    ),
];

/// The health entry of the payment dependency, as the order service sees it: SERVING while the
/// circuit of any payment endpoint is closed, NOT_SERVING while none is.
pub const PAYMENT_HEALTH: &str = "payment";

/// Mirrors the payment breaker's state into the health service, so a health `Watch` on
/// [`PAYMENT_HEALTH`] sees the circuit open and close. Ends when the breaker is dropped.
async fn report_breaker(mut states: watch::Receiver<BreakerState>, health: HealthReporter) {
    let mut reported = ServingStatus::Serving;
    while states.changed().await.is_ok() {
        let status = match *states.borrow_and_update() {
            BreakerState::Closed => ServingStatus::Serving,
            BreakerState::Open { .. } | BreakerState::HalfOpen => ServingStatus::NotServing,
        };
        // Open -> half-open is no news to a health watcher: only report changes.
        if status != reported {
            health.set_service_status(PAYMENT_HEALTH, status).await;
            reported = status;
        }
    }
}

/// Serves the order API on `listeners` (gRPC, and metrics on the admin port if given) until
/// `shutdown` completes, then drains.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // Settings first: nothing is opened, bound or migrated with settings that cannot work.
    config.check()?;
    let Listeners {
        grpc: listener,
        admin,
    } = listeners.into();
    let metrics = Metrics::new("order")?;
    let admin = Admin::start(admin, &metrics);
    let db = ordermesh_platform::unit_of_work::Db::open(&config.database_url, &store::migrations())
        .await?;
    let payments = payment_client::PaymentClient::new(&config.payment_client(), metrics.meter())?;
    let kafka_error = |source| RunError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source,
    };
    // The broker may be down now: orders are still taken (their events wait in the outbox), and the
    // topic is made sure of as soon as the broker answers.
    let topics = ordermesh_kafka::ensure_topics_in_background(
        config.kafka.clone(),
        vec![config.events_topic.clone()],
        ordermesh_kafka::DEFAULT_PARTITIONS,
    );
    let publisher = publisher::EventPublisher::new(
        &config.kafka,
        &config.events_topic,
        config.publish_timeout,
        metrics.meter(),
    )
    .map_err(|e| kafka_error(e.into()))?;
    let breaker_states = payments.subscribe();
    let store = store::Store::new(db);
    // The relay is the only publisher; it runs until the server has drained, so calls in flight
    // still get their events acknowledged.
    let relay = relay::Relay::new(store.clone(), config.publish_timeout, metrics.meter());
    let stop_background = CancellationToken::new();
    let relay_task = tokio::spawn(
        relay
            .clone()
            .run(publisher.clone(), stop_background.clone()),
    );
    // The reconciler settles the orders left pending; like the relay, it stops after the drain.
    let reconciler = reconciler::Reconciler::new(
        store.clone(),
        payments.clone(),
        relay.clone(),
        config.reconciler(),
        metrics.meter(),
    );
    let reconciler_task = tokio::spawn(reconciler.run(stop_background.clone()));
    let api = api::OrderApi::new(store, payments, relay, config.create_settings());

    let tls = config.tls();
    let (health, router) = grpc::router(
        config.max_concurrent_requests as usize,
        &metrics,
        tls.load_for("order", &listener)?,
    )?;
    health
        .set_service_status(PAYMENT_HEALTH, ServingStatus::Serving)
        .await;
    tokio::spawn(report_breaker(breaker_states, health.clone()));
    // Every OrderService call needs a bearer token with its method's scope, if a key is set.
    let key = config
        .auth_key
        .as_ref()
        .map(|secret| AuthKey::new("ORDER_AUTH_KEY", secret))
        .transpose()?;
    ordermesh_platform::auth::warn_if_open("order", &listener, key.is_some(), "ORDER_AUTH_KEY");
    let router = router.add_service(
        AuthLayer::new(key, AUTH_RULES).layer(
            OrderServiceServer::new(api)
                .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
                .accept_compressed(limits::ACCEPTED_COMPRESSION),
        ),
    );
    // Ready: database migrated. Payment is reached lazily per call, so its
    // absence shows as UNAVAILABLE answers, not as this service being down.
    health
        .set_serving::<OrderServiceServer<api::OrderApi>>()
        .await;
    grpc::serve(router, health, listener, shutdown, config.drain_grace).await?;
    stop_background.cancel();
    topics.abort();
    if let Err(error) = relay_task.await {
        tracing::error!(%error, "outbox relay panicked");
    }
    if let Err(error) = reconciler_task.await {
        tracing::error!(%error, "reconciler panicked");
    }
    // Flushing blocks until the broker answers: keep it off the async workers.
    let timeout = config.publish_timeout;
    match tokio::task::spawn_blocking(move || publisher.flush(timeout)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "events still queued at shutdown"),
        Err(error) => tracing::warn!(%error, "flush at shutdown did not run"),
    }
    admin.stop().await;
    metrics.shutdown();
    Ok(())
}
