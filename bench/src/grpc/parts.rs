//! The raw parts of CreateOrder other than its two gRPC hops, the baseline of the low-load latency
//! benchmark: a produce acknowledged by the broker with the order publisher's settings, and a
//! durable SQLite commit with the services' database settings. Their latencies, added to two raw
//! hops, are what CreateOrder would cost if it were nothing but its parts.

use std::sync::Arc;

use anyhow::Result;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::drive::no_errors;
use crate::load::{self, Pace, Summary, Until};

/// The two raw parts, set up once before the rounds, so that no round times a connection being
/// made or a table being created.
pub(super) struct Parts {
    producer: FutureProducer,
    topic: String,
    pool: sqlx::SqlitePool,
    _dir: tempfile::TempDir,
}

impl Parts {
    pub(super) async fn new(broker: &ordermesh_kafka::EmbeddedBroker) -> Result<Self> {
        let topic = format!("bench-parts-{}", uuid::Uuid::new_v4().simple());
        // The mock cluster does not create topics on request.
        broker.create_topic(&topic, 3)?;
        let brokers = &broker.bootstrap_servers();
        // The publisher's settings (order/src/publisher.rs).
        let producer = ordermesh_kafka::KafkaSettings::plaintext(brokers)
            .client_config("bench-raw")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "5000")
            .create()?;
        let dir = tempfile::tempdir()?;
        // The services' database settings (src/db.rs): WAL, synchronous=NORMAL.
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("parts.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(Self {
            producer,
            topic,
            pool,
            _dir: dir,
        })
    }

    pub(super) async fn produce(&self, pace: Pace, calls: u64) -> Result<Summary> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let payload = vec![b'x'; 400];
        let summary = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
            let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
            async move {
                let key = seq.to_string();
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                producer
                    .send(record, rdkafka::util::Timeout::Never)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            }
        })
        .await;
        no_errors("raw produce", &summary)?;
        Ok(summary)
    }

    pub(super) async fn commit(&self, pace: Pace, calls: u64) -> Result<Summary> {
        let pool = self.pool.clone();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let summary = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
            let pool = pool.clone();
            let id = format!("{run}-{seq}");
            async move {
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                sqlx::query("INSERT INTO t (id, body) VALUES (?, ?)")
                    .bind(id)
                    .bind(vec![0u8; 400])
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())
            }
        })
        .await;
        no_errors("raw commit", &summary)?;
        Ok(summary)
    }
}
