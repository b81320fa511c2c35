//! The notifier: an email consumer and an SMS consumer of OrderPlaced events, each in its own consumer
//! group so each channel reads every event on its own, plus a gRPC API listing what was sent.
//!
//! Layout, one concept per module:
//! - `config`: what the binary and the runner fill in; `channel`: the channels;
//! - `letter`: a Kafka message as read, owned (what every path below carries);
//! - `outcome`: what handling a message came to, and the counts of it (`Stats`);
//! - `handler`: the step every path shares, what one message needs decided and done;
//! - `consumer`: the at-least-once batch loop around that step, one per channel;
//! - `rebalance`: the commits when partitions leave a consumer, and its context (lag included);
//! - `retry`: sends failed notifications again; `dead_letter`: parks what cannot be sent, and
//!   `replay` brings it back;
//! - `delivery`: sends (SMTP, SMS webhook, or log only);
//! - `status`: a notification's status, typed, with its stored text; `store`: every SQL statement;
//! - `metrics`: the instruments; `api`: serves ListNotifications.
#![forbid(unsafe_code)]

mod api;
mod channel;
mod config;
mod consumer;
pub mod dead_letter;
mod delivery;
mod handler;
mod letter;
mod metrics;
mod notice;
mod outcome;
mod read_again;
mod rebalance;
mod replay;
mod retry;
mod status;
mod store;

use std::{collections::HashMap, future::Future, sync::Arc};

use ordermesh::proto::notification::v1::notification_service_server::NotificationServiceServer;
use ordermesh_platform::{
    admin::Admin, auth::AuthKey, auth::AuthLayer, cli::ServiceSettings, grpc, limits,
    listeners::Listeners, metrics::Metrics,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tower::Layer;

pub use channel::Channel;
pub use config::{Command, Config};
pub use consumer::client_config as consumer_client_config;

/// The notifier service's schema migrations, for SQLite and for PostgreSQL (run at start-up by [`run`];
/// public for the test that checks both backends end in the same schema).
pub fn migrations() -> ordermesh_platform::db::Migrations {
    store::migrations()
}
pub use delivery::DeliveryConfigError;
pub use outcome::{Outcome, Stats};
pub use replay::{ReplayReport, replay_dead_letters};

/// Errors that stop the notifier.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] ordermesh_platform::db::DbError),
    #[error("Kafka at {brokers} (KAFKA_BROKERS): {source}")]
    Kafka {
        brokers: String,
        source: ordermesh_kafka::BrokerError,
    },
    #[error("replay of dead letters failed: {0}")]
    Replay(String),
    #[error(transparent)]
    Delivery(#[from] DeliveryConfigError),
    #[error("no channel configured (NOTIFIER_CHANNELS): give email, sms or both")]
    NoChannel,
    #[error(
        "NOTIFIER_MAX_POLL_INTERVAL_MS ({max_poll_ms} ms) must be at least NOTIFIER_SESSION_TIMEOUT_MS ({session_ms} ms)"
    )]
    PollBelowSession { max_poll_ms: u128, session_ms: u128 },
    #[error(
        "NOTIFIER_SEND_TIMEOUT_MS ({send_ms} ms) must be at most a fifth of NOTIFIER_MAX_POLL_INTERVAL_MS ({max_poll_ms} ms), so that a batch's last send ends before the group drops the consumer: raise the interval or lower the timeout"
    )]
    SendOutlastsPoll { send_ms: u128, max_poll_ms: u128 },
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

/// The scope each NotificationService method needs.
const AUTH_RULES: &[(&str, &str)] = &[(
    "/ordermesh.notification.v1.NotificationService/ListNotifications",
    ordermesh_platform::auth::NOTIFICATIONS_READ,
)];

/// Outcome counters per channel, shared with whoever started the notifier.
pub type ChannelStats = HashMap<Channel, Arc<Stats>>;

/// Runs the configured channel consumers and serves the notification API on `listeners` (gRPC,
/// and metrics on the admin port if given) until `shutdown` completes; then the consumers commit
/// and leave their groups and the server drains.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with_stats(listeners, config, shutdown, ChannelStats::new()).await
}

/// [`run`], counting outcomes into `stats` (entries are added for channels that lack one).
pub async fn run_with_stats(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut stats: ChannelStats,
) -> Result<(), RunError> {
    // Settings first: nothing is opened, bound or migrated with settings that cannot work.
    config.check()?;
    let Listeners {
        grpc: listener,
        admin,
    } = listeners.into();
    let metrics = Metrics::new("notifier")?;
    let admin = Admin::start(admin, &metrics);
    let db = ordermesh_platform::unit_of_work::Db::open(&config.database_url, &store::migrations())
        .await?;
    let store = store::Store::new(db);
    let kafka_error = |source| RunError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source,
    };
    // The consumers wait for the topics if the broker is not up yet.
    let mut topics = vec![config.events_topic.clone()];
    topics.extend(
        config
            .channels
            .iter()
            .map(|c| dead_letter::topic(&config.events_topic, *c)),
    );
    let ensured = ordermesh_kafka::ensure_topics_in_background(
        config.kafka.clone(),
        topics,
        ordermesh_kafka::DEFAULT_PARTITIONS,
    );
    let dead_letters = dead_letter::DeadLetters::new(&config.kafka, config.park_timeout())
        .map_err(|e| kafka_error(e.into()))?;

    // One token stops the consumers and the server alike.
    let stop = CancellationToken::new();
    let mut consumers = JoinSet::new();
    for &channel in &config.channels {
        let stats = stats.entry(channel).or_default().clone();
        let handler = handler::Handler::new(
            &config,
            channel,
            store.clone(),
            delivery::Sender::new(channel, &config)?,
            dead_letters.clone(),
            metrics.meter(),
        );
        // Each channel: a consumer of new events, and a loop sending failed ones again.
        consumers.spawn(retry::run(handler.clone(), stats.clone(), stop.clone()));
        let consumer = consumer::ChannelConsumer::new(&config, handler, stats, metrics.meter())
            .map_err(|e| kafka_error(e.into()))?;
        consumers.spawn(consumer.run(stop.clone()));
    }

    let tls = config.tls();
    let (health, router) = grpc::router(
        config.max_concurrent_requests as usize,
        &metrics,
        tls.load_for("notifier", &listener)?,
    )?;
    // Every NotificationService call needs a bearer token with its scope, if a key is set.
    let key = config
        .auth_key
        .as_ref()
        .map(|secret| AuthKey::new("NOTIFIER_AUTH_KEY", secret))
        .transpose()?;
    ordermesh_platform::auth::warn_if_open(
        "notifier",
        &listener,
        key.is_some(),
        "NOTIFIER_AUTH_KEY",
    );
    let router = router.add_service(
        AuthLayer::new(key, AUTH_RULES).layer(
            NotificationServiceServer::new(api::NotificationApi::new(store))
                .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
                .accept_compressed(limits::ACCEPTED_COMPRESSION),
        ),
    );
    health
        .set_serving::<NotificationServiceServer<api::NotificationApi>>()
        .await;
    for channel in &config.channels {
        let name = format!("ordermesh.notifier.{}", channel.as_str().to_lowercase());
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    grpc::serve(router, health, listener, signal, config.drain_grace).await?;
    // The server has stopped; wait for each consumer to finish its message and commit.
    stop.cancel();
    ensured.abort();
    while let Some(joined) = consumers.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "consumer task panicked");
        }
    }
    admin.stop().await;
    metrics.shutdown();
    Ok(())
}
