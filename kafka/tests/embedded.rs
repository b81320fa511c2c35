//! The embedded broker: clients only ever talk to its stable address, and it can be taken down and
//! brought back there (what the broker-outage tests rely on) without losing what it stored.

use std::time::Duration;

use ordermesh_kafka::{EmbeddedBroker, RETAINED_BYTES_PER_PARTITION};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};

const TOPIC: &str = "embedded-test";

fn start() -> EmbeddedBroker {
    EmbeddedBroker::start("127.0.0.1:0".parse().expect("addr"), &[TOPIC], 1).expect("broker")
}

fn producer(broker: &EmbeddedBroker) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("producer")
}

/// The broker a client learns from metadata, as (host, port).
fn advertised(broker: &EmbeddedBroker, timeout: Duration) -> Result<(String, u16), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), timeout)
        .map_err(|e| e.to_string())?;
    let first = metadata.brokers().first().ok_or("no broker in metadata")?;
    Ok((
        first.host().to_owned(),
        u16::try_from(first.port()).map_err(|e| e.to_string())?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_told_the_stable_address_not_the_mocks_own() {
    let broker = start();
    let (host, port) = tokio::task::block_in_place(|| advertised(&broker, Duration::from_secs(10)))
        .expect("metadata");
    assert_eq!((host.as_str(), port), ("127.0.0.1", broker.addr().port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_turns_clients_away_and_up_brings_back_what_was_stored() {
    let broker = start();
    let producer = producer(&broker);
    let send = |payload: &'static str| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(TOPIC).key("k").payload(payload),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(error, _)| error)
        }
    };
    send("before").await.expect("delivered while up");

    // Several outages on the same port: each turns clients away, none loses the stored messages.
    for outage in 0..3 {
        broker.down();
        let metadata = tokio::task::block_in_place(|| advertised(&broker, Duration::from_secs(1)));
        assert!(
            metadata.is_err(),
            "outage {outage}: metadata answered while down: {metadata:?}"
        );
        let pending = tokio::spawn(send("during"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !pending.is_finished(),
            "outage {outage}: a send finished while the broker was down"
        );
        broker.up();
        pending
            .await
            .expect("task")
            .expect("delivered once back up");
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "embedded-test-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut payloads = Vec::new();
    while payloads.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("in time")
            .expect("message");
        payloads.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
    }
    assert_eq!(payloads, ["before", "during", "during", "during"]);
}

/// What the README says of the quick start's broker: it keeps only the newest 5 MiB or so of a
/// partition, so events older than that are gone for a consumer that was not there to read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_newest_five_mib_of_a_partition_and_drops_what_is_older() {
    const SIZE: usize = 64 * 1024;
    let broker = start();
    let producer = producer(&broker);
    let payload = vec![b'x'; SIZE];
    // 8 MiB, one message per produce request (each its own message set), into one partition.
    let count = 8 * 1024 * 1024 / SIZE;
    for i in 0..count {
        producer
            .send(
                FutureRecord::to(TOPIC).key("k").payload(&payload),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap_or_else(|error| panic!("message {i} not delivered: {error}"));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
        .expect("consumer");
    let (low, high) = tokio::task::block_in_place(|| {
        consumer.fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
    })
    .expect("watermarks");
    assert_eq!(high, count as i64, "every message was appended");
    let kept = usize::try_from(high - low).expect("high >= low");
    assert!(low > 0, "nothing was dropped: {low}..{high}");
    // Whole message sets are dropped, so what is kept is within one message of the bound.
    let kept_bytes = kept * SIZE;
    assert!(
        kept_bytes <= RETAINED_BYTES_PER_PARTITION
            && kept_bytes + 2 * SIZE > RETAINED_BYTES_PER_PARTITION,
        "kept {kept} messages of {SIZE} bytes ({low}..{high}), against {RETAINED_BYTES_PER_PARTITION}"
    );
}
