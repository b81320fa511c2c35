//! Whatever is on the topic, the notifier neither panics nor stops: messages it can never act on
//! (garbage, random bytes, JSON of the wrong shape or absurd nesting, events without a recipient)
//! are parked on its dead-letter topics with the reason, events of other types are passed over, and
//! the events behind them are still handled. The fuzz target `event_decode` covers the decoder
//! itself far more widely; this is the whole consumer on a real broker.

use ordermesh_testkit::{Backend, on_both_backends};
use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Result, ensure};
use ordermesh::{
    events::CloudEventHeaders, events::encode_order_placed, proto::events::v1::OrderPlaced,
};
use ordermesh_kafka::KafkaHeaders;
use ordermesh_notifier::Channel;
use rdkafka::{
    ClientConfig, Message,
    producer::{FutureProducer, FutureRecord},
};

use super::support::helpers::{
    MeshOptions, eventually_sync, header, order_request, spawn_mesh_with,
};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_messages_are_parked_on_dead_letter_topics_and_do_not_block_the_partition(
    backend: Backend,
) -> Result<()> {
    // Arrange: garbage, half-events and another event type on partition 0, then a valid OrderPlaced
    // behind them on the same partition.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: false,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    let foreign = CloudEventHeaders {
        r#type: "example.v1.SomethingElse".into(),
        ..Default::default()
    };
    let mut bad: Vec<(Vec<u8>, Option<CloudEventHeaders>)> = vec![
        (b"not json".to_vec(), None),
        (Vec::new(), None),
        (b"{\"eventId\": 7}".to_vec(), None),
        (b"{\"orderId\": \"o-1\"}".to_vec(), None),
        (vec![0xff, 0xfe, 0x00], None),
        // Valid shape, but no recipient for either channel.
        (
            b"{\"eventId\":\"e\",\"orderId\":\"o\",\"customer\":{}}".to_vec(),
            None,
        ),
    ];
    // Well-formed JSON of the wrong shape, and nesting deeper than the decoder's recursion limit.
    for json in [
        "[1, 2, 3]".to_owned(),
        "\"an event\"".to_owned(),
        "{\"eventId\": \"e\", \"orderId\": \"o\", \"customer\": 5}".to_owned(),
        "{\"eventId\": \"e\", \"orderId\": \"o\", \"total\": \"lots\"}".to_owned(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
    ] {
        bad.push((json.into_bytes(), None));
    }
    // Random bytes of random lengths (a fixed seed, so a failure can be replayed).
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20 {
        let len = (next() % 512) as usize + 1;
        bad.push(((0..len).map(|_| next() as u8).collect(), None));
    }
    // Last: an event of another type, passed over rather than parked.
    bad.push((b"{}".to_vec(), Some(foreign)));
    let valid = OrderPlaced {
        event_id: "evt_after_poison".into(),
        order_id: "ord_after_poison".into(),
        customer: order_request("x", "tok_visa").customer,
        ..Default::default()
    };
    let valid_message = (
        encode_order_placed(&valid)?,
        Some(CloudEventHeaders::order_placed(&valid)),
    );
    for (payload, headers) in bad.iter().chain([&valid_message]) {
        let mut record = FutureRecord::to(&mesh.topic)
            .key("same-partition")
            .payload(payload)
            .partition(0);
        if let Some(headers) = headers {
            record = record.headers(headers.to_kafka());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }

    // Act
    mesh.start_notifier().await?;

    // Assert: each channel got past every bad message to the valid one, parking each unusable one on
    // its dead-letter topic and skipping the foreign one.
    eventually_sync(
        "the valid event behind the poison is handled by both channels",
        || {
            Channel::ALL
                .iter()
                .all(|c| mesh.notifier_stats[c].sent.load(Ordering::Relaxed) > 0)
        },
    )
    .await?;
    for channel in Channel::ALL {
        let stats = &mesh.notifier_stats[&channel];
        assert_eq!(stats.sent.load(Ordering::Relaxed), 1, "{channel:?}");
        assert_eq!(
            stats.skipped.load(Ordering::Relaxed),
            1,
            "{channel:?}: the foreign event"
        );
        assert_eq!(
            stats.dead_lettered.load(Ordering::Relaxed),
            bad.len() as u64 - 1,
            "{channel:?}"
        );
    }
    // Operators see the same on the metrics endpoint, per consumer group.
    let metrics = mesh.notifier.as_ref().expect("running").scrape().await?;
    for channel in Channel::ALL {
        let group = mesh.notifier_config()?.group(channel).to_owned();
        let group = [("messaging_consumer_group_name", group.as_str())];
        assert_eq!(
            metrics.sum("ordermesh_consumer_dead_lettered_total", &group),
            (bad.len() - 1) as f64,
            "{}",
            metrics.0
        );
        let skipped = [group[0], ("outcome", "skipped")];
        assert_eq!(
            metrics.sum("ordermesh_consumer_handled_total", &skipped),
            1.0
        );
    }
    let notifications = mesh.all_notifications().await?;
    assert_eq!(notifications.len(), 2);
    assert!(notifications.iter().all(|n| n.event_id == valid.event_id));

    // Each dead-letter topic holds the unusable messages as they were, with why and where from.
    for channel in Channel::ALL {
        let topic = ordermesh_notifier::dead_letter::topic(&mesh.topic, channel);
        let parked = mesh.read_topic(&topic, bad.len() - 1).await?;
        let mut offsets = Vec::new();
        for message in &parked {
            assert_eq!(message.key(), Some(&b"same-partition"[..]));
            assert!(
                header(message, "dlq_error").is_some_and(|e| !e.is_empty()),
                "{channel:?}"
            );
            assert_eq!(
                header(message, "dlq_original_topic").as_deref(),
                Some(mesh.topic.as_str())
            );
            assert_eq!(
                header(message, "dlq_original_partition").as_deref(),
                Some("0")
            );
            assert!(header(message, "dlq_first_failure_time").is_some_and(|t| t.ends_with('Z')));
            assert_eq!(header(message, "dlq_attempts").as_deref(), Some("1"));
            assert_eq!(
                header(message, "dlq_channel").as_deref(),
                Some(channel.as_str().to_lowercase().as_str())
            );
            offsets.push(
                header(message, "dlq_original_offset")
                    .and_then(|o| o.parse::<usize>().ok())
                    .unwrap_or(usize::MAX),
            );
        }
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..bad.len() - 1).collect::<Vec<_>>(),
            "{channel:?}: every unusable message, once"
        );
    }
    mesh.shutdown().await
}

/// A header whose name is not UTF-8 (sent by kcat, which passes the bytes through) made rdkafka
/// panic inside the notifier's read of the message. Now the message is parked, payload kept, and
/// the valid event behind it is still handled.
#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_parked_not_a_crash(backend: Backend) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(kcat) = ordermesh_testkit::tool("kcat")? else {
        return Ok(());
    };
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: false,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let status = std::process::Command::new(kcat)
        .args(["-b", &mesh.broker.bootstrap_servers(), "-t", &mesh.topic])
        .args(["-p", "0", "-P", "-k", "same-partition", "-H"])
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe-not-utf8=x"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(b"{\"eventId\":\"e\"}\n")?;
            child.wait()
        })?;
    ensure!(status.success(), "kcat produced the message: {status}");
    let valid = OrderPlaced {
        event_id: "evt_after_bad_header".into(),
        order_id: "ord_after_bad_header".into(),
        customer: order_request("x", "tok_visa").customer,
        ..Default::default()
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    producer
        .send(
            FutureRecord::to(&mesh.topic)
                .key("same-partition")
                .partition(0)
                .payload(&encode_order_placed(&valid)?)
                .headers(CloudEventHeaders::order_placed(&valid).to_kafka()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;

    mesh.start_notifier().await?;

    eventually_sync(
        "the valid event behind the bad header is handled by both channels",
        || {
            Channel::ALL
                .iter()
                .all(|c| mesh.notifier_stats[c].sent.load(Ordering::Relaxed) > 0)
        },
    )
    .await?;
    for channel in Channel::ALL {
        let stats = &mesh.notifier_stats[&channel];
        assert_eq!(
            stats.dead_lettered.load(Ordering::Relaxed),
            1,
            "{channel:?}"
        );
        let topic = ordermesh_notifier::dead_letter::topic(&mesh.topic, channel);
        let parked = mesh.read_topic(&topic, 1).await?;
        assert_eq!(parked[0].payload(), Some(&b"{\"eventId\":\"e\"}"[..]));
        assert!(
            header(&parked[0], "dlq_error").is_some_and(|e| e.contains("not UTF-8")),
            "{channel:?}"
        );
    }
    mesh.shutdown().await
}
