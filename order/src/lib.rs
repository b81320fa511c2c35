//! The order service: takes orders, has them paid synchronously by the payment service, and
//! announces paid orders asynchronously as OrderPlaced events on Kafka.
//!
//! Layout: `config` is what the binary and the runner fill in; `validate` checks CreateOrder;
//! `api` is the gRPC service and the CreateOrder state machine; `payment_client` is the synchronous
//! hop; `publisher` the asynchronous one; `store` holds every SQL statement; `error` is the one error
//! type, mapped to `tonic::Status` in one place.
#![forbid(unsafe_code)]

mod api;
mod config;
mod error;
mod payment_client;
pub mod publisher;
mod request_lock;
mod store;
mod validate;

use std::future::Future;

use ordermesh::{grpc, kafka, proto::order::v1::order_service_server::OrderServiceServer};
use tokio::net::TcpListener;

pub use config::Config;
pub use error::OrderError;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] ordermesh::db::DbError),
    #[error("ORDER_PAYMENT_URL {url:?} is not a URL: {source}")]
    PaymentUrl {
        url: String,
        source: tonic::codegen::http::uri::InvalidUri,
    },
    #[error("Kafka at {brokers} (KAFKA_BROKERS): {source}")]
    Kafka {
        brokers: String,
        source: kafka::BrokerError,
    },
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
}

/// Serves the order API on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let pool = ordermesh::db::open(&config.database_url, &sqlx::migrate!()).await?;
    let payments =
        payment_client::PaymentClient::new(&config.payment_url, config.payment_timeout()).map_err(
            |source| RunError::PaymentUrl {
                url: config.payment_url.clone(),
                source,
            },
        )?;
    let kafka_error = |source| RunError::Kafka {
        brokers: config.kafka_brokers.clone(),
        source,
    };
    kafka::ensure_topics(
        &config.kafka_brokers,
        &[&config.events_topic],
        kafka::DEFAULT_PARTITIONS,
    )
    .await
    .map_err(kafka_error)?;
    let publisher = publisher::EventPublisher::new(
        &config.kafka_brokers,
        &config.events_topic,
        config.publish_timeout(),
    )
    .map_err(|e| kafka_error(e.into()))?;
    let api = api::OrderApi::new(store::Store::new(pool), payments, publisher.clone());

    let mut server = tonic::transport::Server::builder();
    let (health, router) = grpc::router(&mut server)?;
    let router = router.add_service(OrderServiceServer::new(api));
    // Ready: database migrated and the events topic exists. Payment is reached lazily per call, so its
    // absence shows as UNAVAILABLE answers, not as this service being down.
    health
        .set_serving::<OrderServiceServer<api::OrderApi>>()
        .await;
    grpc::serve(router, health, listener, shutdown, config.drain_grace()).await?;
    // Flushing blocks until the broker answers: keep it off the async workers.
    let timeout = config.publish_timeout();
    match tokio::task::spawn_blocking(move || publisher.flush(timeout)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "events still queued at shutdown"),
        Err(error) => tracing::warn!(%error, "flush at shutdown did not run"),
    }
    Ok(())
}
