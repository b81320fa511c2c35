//! The deployment files and the README's configuration table, read against the code.
//!
//! compose.yaml cannot be run here (no Docker engine), so it is kept honest by reading it against the
//! code: every variable it sets is one a service reads, every published port is the port the service
//! listens on, every binary it runs is built by the Dockerfile, and the topic it creates is the one
//! the services use.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(Path::new(ROOT).join(path)).with_context(|| path.to_owned())
}

/// The Rust sources of a crate directory, concatenated.
fn sources(dir: &str) -> Result<String> {
    let mut out = String::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join(dir))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(out)
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_matches_the_code() -> Result<()> {
    let compose: Value = serde_yaml::from_str(&read("compose.yaml")?)?;
    let dockerfile = read("Dockerfile")?;
    let services = &compose["services"];
    let shared = sources("src")?;
    let default_topic = ordermesh::kafka::DEFAULT_ORDER_EVENTS_TOPIC;

    // The topics the one-shot job creates are the services' defaults.
    let init = services["kafka-init"]["command"][0]
        .as_str()
        .context("kafka-init command")?;
    for topic in [
        default_topic.to_owned(),
        ordermesh_notifier::dead_letter::topic(default_topic, ordermesh_notifier::Channel::Email),
        ordermesh_notifier::dead_letter::topic(default_topic, ordermesh_notifier::Channel::Sms),
    ] {
        let creates = init
            .split_whitespace()
            .any(|word| word.trim_end_matches(';') == topic);
        assert!(creates, "kafka-init creates {topic}: {init}");
    }

    for (name, dir, port) in [
        ("payment", "payment/src", 50052),
        ("order", "order/src", 50051),
        ("notifier", "notifier/src", 50053),
    ] {
        let service = &services[name];
        let code = sources(dir)? + &shared;

        let binary = service["command"][0].as_str().context("command")?;
        assert!(
            dockerfile.contains(&format!("--bin {binary}")),
            "the Dockerfile builds {binary}"
        );
        assert!(
            read(&format!("{name}/Cargo.toml"))?.contains(&format!("name = \"{binary}\"")),
            "{binary} is a binary of {name}"
        );

        // The health check runs the service's own binary, with a subcommand it has.
        let check: Vec<&str> = service["healthcheck"]["test"]
            .as_sequence()
            .context("healthcheck")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(check, ["CMD", binary, "healthcheck"], "{name} health check");
        assert!(
            read(&format!("{name}/src/main.rs"))?.contains("    Healthcheck,"),
            "{binary} has a healthcheck subcommand"
        );

        let env = environment(service);
        assert!(!env.is_empty(), "{name} has an environment");
        for (key, value) in &env {
            assert!(
                code.contains(&format!("env = \"{key}\"")),
                "{name} reads {key}"
            );
            if key == "ORDER_EVENTS_TOPIC" {
                assert_eq!(value, default_topic);
            }
            if key.ends_with("_LISTEN_ADDR") {
                assert!(
                    value.ends_with(&format!(":{port}")),
                    "{name} listens on {port}: {value}"
                );
            }
        }
        let ports: Vec<&str> = service["ports"]
            .as_sequence()
            .context("ports")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            ports,
            [format!("{port}:{port}")],
            "{name} publishes its port"
        );
    }
    // The notifier's mail server is a service of the file, listening where the URL says.
    let smtp_url = &environment(&services["notifier"])["NOTIFIER_SMTP_URL"];
    let (host, port) = smtp_url
        .trim_start_matches("smtp://")
        .split_once(':')
        .context("NOTIFIER_SMTP_URL is smtp://host:port")?;
    assert!(services[host].is_mapping(), "{host} is a compose service");
    assert_eq!(port, "1025", "Mailpit takes SMTP on 1025");
    assert!(
        services["notifier"]["depends_on"][host].is_mapping(),
        "the notifier starts after {host}"
    );
    // Host clients reach Kafka where the README says.
    let kafka_ports: Vec<&str> = services["kafka"]["ports"]
        .as_sequence()
        .context("kafka ports")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(kafka_ports, ["9092:9092"]);
    assert!(
        environment(&services["kafka"])["KAFKA_ADVERTISED_LISTENERS"].contains("127.0.0.1:9092")
    );
    Ok(())
}

#[test]
fn every_setting_the_code_reads_is_in_the_readme_table() -> Result<()> {
    let readme = read("README.md")?;
    let mut code = String::new();
    for dir in [
        "src",
        "order/src",
        "payment/src",
        "notifier/src",
        "runner/src",
    ] {
        code.push_str(&sources(dir)?);
    }
    let settings: Vec<&str> = code
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(settings.len() >= 20, "found the settings: {settings:?}");
    for setting in settings {
        assert!(
            readme.contains(&format!("| `{setting}` |")),
            "README's configuration table has {setting}"
        );
    }
    Ok(())
}
