//! docs/asyncapi.yaml read against the code: the topics are the ones the services use (the events
//! topic and each channel's dead-letter topic), each event message carries exactly the CloudEvents
//! headers the producer writes with its own `ce_type`, a dead letter the headers the notifier adds,
//! and each payload schema has exactly the JSON names of its proto message's fields, with the
//! proto3 JSON mapping's types (int64 as a string, timestamps as RFC 3339 strings), through every
//! nested message.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, bail, ensure};
use ordermesh::events::{CloudEventHeaders, ORDER_CANCELLED_TYPE, ORDER_PLACED_TYPE};
use ordermesh_notifier::{Channel, dead_letter};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn document() -> Result<Value> {
    let path = Path::new(ROOT).join("docs/asyncapi.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_yaml::from_str(&text)?)
}

/// `value`, or what its `$ref` (a local JSON pointer, `#/components/...`) points to.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Result<&'a Value> {
    let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
        return Ok(value);
    };
    let Some(pointer) = reference.strip_prefix("#/") else {
        bail!("{reference}: only local references are used here");
    };
    let target = pointer
        .split('/')
        .try_fold(doc, |at, key| at.get(key))
        .with_context(|| format!("{reference} points nowhere"))?;
    resolve(doc, target)
}

fn strings(value: Option<&Value>) -> BTreeSet<String> {
    value
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The parts of a schema: itself, or each of its `allOf`, resolved.
fn parts<'a>(doc: &'a Value, schema: &'a Value) -> Result<Vec<&'a Value>> {
    let schema = resolve(doc, schema)?;
    match schema.get("allOf").and_then(Value::as_sequence) {
        Some(all) => all.iter().map(|s| resolve(doc, s)).collect(),
        None => Ok(vec![schema]),
    }
}

/// The required properties of a (possibly `allOf`) schema, and the `const` of property `name`.
fn required_and_const(
    doc: &Value,
    schema: &Value,
    name: &str,
) -> Result<(BTreeSet<String>, String)> {
    let mut required = BTreeSet::new();
    let mut constant = String::new();
    for part in parts(doc, schema)? {
        required.extend(strings(part.get("required")));
        if let Some(c) = part
            .get("properties")
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("const"))
            .and_then(Value::as_str)
        {
            constant = c.to_owned();
        }
    }
    Ok((required, constant))
}

/// The message `name` of the channel at `channel`, resolved.
fn message<'a>(doc: &'a Value, channel: &str, name: &str) -> Result<&'a Value> {
    let found = doc["channels"][channel]["messages"]
        .get(name)
        .with_context(|| format!("channel {channel} has no message {name}"))?;
    resolve(doc, found)
}

#[test]
fn the_topics_are_the_ones_the_services_use() -> Result<()> {
    let doc = document()?;
    ensure!(doc["asyncapi"].as_str() == Some("3.0.0"), "AsyncAPI 3.0.0");
    let topic = ordermesh_kafka::DEFAULT_ORDER_EVENTS_TOPIC;
    let expected: BTreeSet<String> = [topic.to_owned()]
        .into_iter()
        .chain(Channel::ALL.map(|c| dead_letter::topic(topic, c)))
        .collect();
    let documented: BTreeSet<String> = doc["channels"]
        .as_mapping()
        .context("no channels")?
        .values()
        .filter_map(|c| c["address"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        documented == expected,
        "docs/asyncapi.yaml describes the topics {documented:?}, the code uses {expected:?}"
    );
    ensure!(doc["channels"]["orderEvents"]["address"].as_str() == Some(topic));
    for (channel, dlq) in [
        ("emailDeadLetters", Channel::Email),
        ("smsDeadLetters", Channel::Sms),
    ] {
        ensure!(
            doc["channels"][channel]["address"].as_str() == Some(&dead_letter::topic(topic, dlq)),
            "{channel} is {dlq:?}'s dead-letter topic"
        );
    }
    Ok(())
}

#[test]
fn each_event_carries_the_cloudevents_headers_the_producer_writes() -> Result<()> {
    let doc = document()?;
    let written: BTreeSet<String> = CloudEventHeaders::default()
        .headers()
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let documented_messages: BTreeSet<&str> = doc["channels"]["orderEvents"]["messages"]
        .as_mapping()
        .context("orderEvents has no messages")?
        .keys()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        documented_messages == BTreeSet::from(["OrderCancelled", "OrderPlaced"]),
        "the events topic's messages: {documented_messages:?}"
    );
    for (name, ce_type) in [
        ("OrderPlaced", ORDER_PLACED_TYPE),
        ("OrderCancelled", ORDER_CANCELLED_TYPE),
    ] {
        let message = message(&doc, "orderEvents", name)?;
        let (required, constant) = required_and_const(&doc, &message["headers"], "ce_type")?;
        ensure!(
            required == written,
            "{name}: the headers it requires {required:?}, the producer writes {written:?}"
        );
        ensure!(
            constant == ce_type,
            "{name}: ce_type is {ce_type}, the document says {constant:?}"
        );
        ensure!(
            message["bindings"]["kafka"]["key"]["type"].as_str() == Some("string"),
            "{name}: the Kafka key (the order id) is described"
        );
    }
    Ok(())
}

#[test]
fn a_dead_letter_carries_the_headers_the_notifier_adds() -> Result<()> {
    let doc = document()?;
    // The names are private to the notifier; read them where it writes them: the `("dlq_...", _)`
    // pairs of notifier/src/dead_letter.rs.
    let path = Path::new(ROOT).join("notifier/src/dead_letter.rs");
    let source = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let written: BTreeSet<String> = source
        .split("(\"dlq_")
        .skip(1)
        .filter_map(|rest| rest.split_once('"'))
        // A bare `("dlq_")` is the prefix of the filter that drops earlier dead-letter headers.
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, _)| format!("dlq_{name}"))
        .collect();
    ensure!(
        written.len() >= 7,
        "found the dead-letter headers written: {written:?}"
    );
    for channel in ["emailDeadLetters", "smsDeadLetters"] {
        let message = message(&doc, channel, "DeadLetter")?;
        let mut documented = BTreeSet::new();
        for part in parts(&doc, &message["headers"])? {
            documented.extend(strings(part.get("required")));
            if let Some(properties) = part.get("properties").and_then(Value::as_mapping) {
                documented.extend(
                    properties
                        .keys()
                        .filter_map(Value::as_str)
                        .map(str::to_owned),
                );
            }
        }
        ensure!(
            documented == written,
            "{channel}: the document lists {documented:?}, the notifier writes {written:?}"
        );
    }
    Ok(())
}

/// What a field of `kind` is in the proto3 JSON mapping, as a JSON Schema `type` (and `format`).
fn json_type(kind: &Kind) -> (&'static str, Option<&'static str>) {
    match kind {
        Kind::Double | Kind::Float => ("number", None),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => ("integer", Some("int32")),
        Kind::Uint32 | Kind::Fixed32 => ("integer", Some("uint32")),
        // 64-bit integers are strings: JSON numbers lose precision past 2^53.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            ("string", None)
        }
        Kind::Bool => ("boolean", None),
        Kind::String | Kind::Bytes | Kind::Enum(_) => ("string", None),
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            ("string", Some("date-time"))
        }
        Kind::Message(_) => ("object", None),
    }
}

/// Checks that `schema` describes `proto`: exactly its fields' JSON names, each of the mapping's
/// type, nested messages through their own schemas.
fn matches(doc: &Value, schema: &Value, proto: &MessageDescriptor) -> Result<()> {
    let schema = resolve(doc, schema)?;
    let properties = schema["properties"]
        .as_mapping()
        .with_context(|| format!("no properties for {}", proto.full_name()))?;
    let documented: BTreeSet<String> = properties
        .keys()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let fields: BTreeSet<String> = proto.fields().map(|f| f.json_name().to_owned()).collect();
    ensure!(
        documented == fields,
        "{}: the document has {documented:?}, the proto's JSON names are {fields:?}",
        proto.full_name()
    );
    for field in proto.fields() {
        let property = &schema["properties"][field.json_name()];
        field_matches(doc, property, &field)
            .with_context(|| format!("{}.{}", proto.full_name(), field.json_name()))?;
    }
    Ok(())
}

fn field_matches(doc: &Value, property: &Value, field: &FieldDescriptor) -> Result<()> {
    let property = resolve(doc, property)?;
    let single = if field.is_list() {
        ensure!(
            property["type"].as_str() == Some("array"),
            "a repeated field is an array"
        );
        resolve(doc, &property["items"])?
    } else {
        property
    };
    let kind = field.kind();
    let (ty, format) = json_type(&kind);
    ensure!(
        single["type"].as_str() == Some(ty),
        "is a {ty} in the proto3 JSON mapping, the document says {}",
        single["type"].as_str().unwrap_or("no type")
    );
    if let Some(format) = format {
        ensure!(
            single["format"].as_str() == Some(format),
            "has format {format}"
        );
    }
    match kind {
        Kind::Message(m) if ty == "object" => matches(doc, single, &m),
        _ => Ok(()),
    }
}

#[test]
fn each_payload_has_exactly_the_fields_of_its_proto_message() -> Result<()> {
    let doc = document()?;
    let pool = DescriptorPool::decode(ordermesh::proto::FILE_DESCRIPTOR_SET)?;
    for (name, ce_type) in [
        ("OrderPlaced", ORDER_PLACED_TYPE),
        ("OrderCancelled", ORDER_CANCELLED_TYPE),
    ] {
        let proto = pool
            .get_message_by_name(ce_type)
            .with_context(|| format!("{ce_type} is not in the descriptor set"))?;
        let message = message(&doc, "orderEvents", name)?;
        matches(&doc, &message["payload"], &proto).with_context(|| format!("message {name}"))?;
    }
    Ok(())
}
