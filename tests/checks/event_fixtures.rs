//! The events earlier versions published (`tests/fixtures/events/`, frozen) still read with
//! today's codec: each value decodes as the type its `ce_type` names, and re-encodes to the same
//! JSON, so no field an earlier version wrote is dropped as unknown or read as something else. A
//! change to events.proto or the codec that cannot read an old event fails here, naming the file.
//! (notifier/tests/event_fixtures.rs publishes the same files to a running notifier.)

use anyhow::{Context, Result, bail, ensure};
use ordermesh::{
    events::{self, Event, ORDER_CANCELLED_TYPE, ORDER_PLACED_TYPE},
    proto::events::v1::{OrderCancelled, OrderPlaced},
};
use ordermesh_testkit::EventFixture;

/// Decodes the fixture's value as `E`, checks it is keyed by its order, and that encoding it again
/// gives the JSON that was published.
fn reads_back<E: Event>(fixture: &EventFixture, order_id: impl Fn(&E) -> &str) -> Result<()> {
    let event: E = events::decode(&fixture.payload)?;
    ensure!(
        order_id(&event) == fixture.key && fixture.header("ce_subject") == Some(&fixture.key),
        "the key and ce_subject are the order id"
    );
    let published: serde_json::Value = serde_json::from_slice(&fixture.payload)?;
    let again: serde_json::Value = serde_json::from_slice(&events::encode(&event)?)?;
    ensure!(
        published == again,
        "a field it was published with is lost or changed when read today:\npublished: \
         {published}\nread back: {again}"
    );
    Ok(())
}

#[test]
fn every_event_an_earlier_version_published_still_reads() -> Result<()> {
    let fixtures = ordermesh_testkit::event_fixtures()?;
    let mut seen = Vec::new();
    for fixture in &fixtures {
        let ce_type = fixture.header("ce_type").unwrap_or_default();
        match ce_type {
            ORDER_PLACED_TYPE => reads_back(fixture, |e: &OrderPlaced| &e.order_id),
            ORDER_CANCELLED_TYPE => reads_back(fixture, |e: &OrderCancelled| &e.order_id),
            other => bail!("no event type {other:?} to read it as"),
        }
        .with_context(|| format!("tests/fixtures/events/{} ({ce_type})", fixture.file))?;
        seen.push(ce_type);
    }
    // Every event type has at least one fixture, so a new type cannot go without.
    for ce_type in [ORDER_PLACED_TYPE, ORDER_CANCELLED_TYPE] {
        ensure!(seen.contains(&ce_type), "no fixture of {ce_type}");
    }
    println!("read {} event fixtures", fixtures.len());
    Ok(())
}
