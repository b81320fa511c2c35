//! The raw parts of CreateOrder other than its two gRPC hops, the baseline of the low-load latency
//! benchmark and of the cost of one order: a produce acknowledged by the broker with the order
//! publisher's settings, and a durable SQLite commit with the services' database settings, made
//! the way the services make theirs (through sqlx) and the most direct way (SQLite's own library
//! on one thread). Their latencies, added to two raw hops, are what CreateOrder would cost if it
//! were nothing but its parts.

use std::sync::Arc;

use anyhow::Result;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{cpu::cpu_seconds, drive::no_errors};
use crate::load::{self, Pace, Summary, Until};

/// The two raw parts, set up once before the rounds, so that no round times a connection being
/// made or a table being created.
pub(crate) struct Parts {
    producer: FutureProducer,
    topic: String,
    pool: sqlx::SqlitePool,
    dir: tempfile::TempDir,
}

impl Parts {
    pub(crate) async fn new(broker: &ordermesh_kafka::EmbeddedBroker) -> Result<Self> {
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
            dir,
        })
    }

    pub(crate) async fn produce(&self, pace: Pace, calls: u64) -> Result<Summary> {
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

    /// This process's CPU time per commit, in microseconds, of `calls` commits of one row each
    /// made with SQLite's own library on one thread, with the services' settings (WAL,
    /// synchronous=NORMAL) on a file of its own: what a durable write costs when no statement
    /// crosses a thread. Run on a blocking thread, so it holds no async worker.
    pub(crate) async fn direct_commit_cpu_us(&self, calls: u64) -> Result<f64> {
        let path = self.fresh_file("direct");
        tokio::task::spawn_blocking(move || {
            let db = open_direct(path)?;
            let body = vec![0u8; 400];
            let before = cpu_seconds();
            for seq in 0..calls {
                let tx = db.unchecked_transaction()?;
                tx.prepare_cached("INSERT INTO t (id, body) VALUES (?1, ?2)")?
                    .execute(rusqlite::params![seq.to_string(), body])?;
                tx.commit()?;
            }
            Ok((cpu_seconds() - before) * 1e6 / calls.max(1) as f64)
        })
        .await?
    }

    /// `calls` one-row commits from async callers under `pace`, each handed as a unit of work to
    /// the platform's SQLite writer thread ([`ordermesh_platform::sqlite_writer`]), which owns the
    /// connection (SQLite's own library, the services' settings) and commits whatever units are
    /// waiting in one transaction, a savepoint each: group commit, one hand-off to the thread and
    /// one back per unit, whatever its statements. Not what the services do yet; measured beside
    /// their way (sqlx, [`Parts::commit`]) as the case for changing it.
    pub(crate) async fn grouped_commit(&self, pace: Pace, calls: u64) -> Result<Summary> {
        use futures::TryFutureExt;
        use ordermesh_platform::sqlite_writer::SqliteWriter;
        let writer = SqliteWriter::open(&self.fresh_file("grouped"))?;
        writer
            .unit(|db| -> anyhow::Result<()> {
                db.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, body BLOB NOT NULL)")?;
                Ok(())
            })
            .await?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let summary = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
            let id = format!("{run}-{seq}");
            writer
                .unit(move |db| -> anyhow::Result<()> {
                    db.prepare_cached("INSERT INTO t (id, body) VALUES ($1, $2)")?
                        .execute(rusqlite::params![id, [0u8; 400]])?;
                    Ok(())
                })
                .map_err(|e| e.to_string())
        })
        .await;
        no_errors("grouped commit", &summary)?;
        Ok(summary)
    }

    /// A database file nobody used, in this run's directory.
    fn fresh_file(&self, what: &str) -> std::path::PathBuf {
        let name = format!("{what}-{}.db", uuid::Uuid::new_v4().simple());
        self.dir.path().join(name)
    }

    pub(crate) async fn commit(&self, pace: Pace, calls: u64) -> Result<Summary> {
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

/// SQLite's own library on `path`, with the services' settings (WAL, synchronous=NORMAL) and the
/// one-row table every commit part writes to.
fn open_direct(path: std::path::PathBuf) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         CREATE TABLE t (id TEXT PRIMARY KEY, body BLOB NOT NULL);",
    )?;
    Ok(db)
}
