//! The payment service: charges a payment method at most once per idempotency key.
//!
//! Layout: `config` is what the binary and the runner fill in; `api` implements the gRPC service and
//! its validation; `decide` is the (deterministic, demo) card processor; `store` holds every SQL
//! statement; `error` is the one error type, mapped to `tonic::Status` in one place.
#![forbid(unsafe_code)]

mod api;
mod config;
mod decide;
mod error;
pub mod fault;
mod store;

use std::future::Future;

use ordermesh::proto::payment::v1::payment_service_server::PaymentServiceServer;
use ordermesh_platform::{
    admin::Admin, cli::ServiceSettings, grpc, limits, listeners::Listeners, metrics::Metrics,
    tls::AllowClients, unit_of_work::Db,
};
use tonic::service::interceptor::InterceptedService;

pub use config::Config;

/// The payment service's schema migrations, for SQLite and for PostgreSQL (run at start-up by [`run`];
/// public for the test that checks both backends end in the same schema).
pub fn migrations() -> ordermesh_platform::db::Migrations {
    store::migrations()
}
pub use error::PaymentError;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] ordermesh_platform::db::DbError),
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
    #[error(transparent)]
    Telemetry(#[from] ordermesh_platform::telemetry::TelemetryError),
    #[error(transparent)]
    Tls(#[from] ordermesh_platform::tls::TlsError),
}

/// Serves the payment API on `listeners` (gRPC, and metrics on the admin port if given) until
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
    let metrics = Metrics::new("payment")?;
    let admin = Admin::start(admin, &metrics);
    let db = Db::open(&config.database_url, &store::migrations()).await?;
    let api = api::PaymentApi::new(store::Store::new(db), config.faults());

    let tls = config.tls();
    let (health, router) = grpc::router(
        config.max_concurrent_requests as usize,
        &metrics,
        tls.load_for("payment", &listener)?,
    )?;
    // With mutual TLS, the CA says who a caller is; this says that only the order service may
    // charge. (Without it there is no certificate to check: the plaintext quick start.)
    let callers = if tls.mutual() {
        AllowClients::only("payment", config.allowed_clients.clone())
    } else {
        AllowClients::anyone("payment")
    };
    let router = router.add_service(InterceptedService::new(
        PaymentServiceServer::new(api)
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
            .accept_compressed(limits::ACCEPTED_COMPRESSION),
        callers,
    ));
    // Ready: the database is open and migrated, so every call can be answered.
    health
        .set_serving::<PaymentServiceServer<api::PaymentApi>>()
        .await;
    grpc::serve(router, health, listener, shutdown, config.drain_grace).await?;
    admin.stop().await;
    metrics.shutdown();
    Ok(())
}
