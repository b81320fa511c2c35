//! The deployment files and the README's configuration table, read against the code.
//!
//! compose.yaml cannot be run here (no Docker engine), so it is kept honest by reading it against the
//! code: every variable it sets is one a service reads, every published port is a port the service
//! listens on (gRPC and admin, on all interfaces), every binary it runs is built by the Dockerfile,
//! the topic it creates is the one the services use, and the traces go to a collector of the file
//! that takes OTLP over gRPC.

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

/// A service's `ports` (or `expose`) entries, as written.
fn strings(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Asserts that `addr` (`host:port`) takes connections from outside the container on `port`: a
/// published port arrives on the container's network interface, never on its loopback.
fn assert_reachable(name: &str, key: &str, addr: &str, port: u16) {
    let (host, bound) = addr.rsplit_once(':').unwrap_or((addr, ""));
    assert_eq!(
        bound,
        port.to_string(),
        "{name}: {key}={addr} is on port {port}"
    );
    assert!(
        host == "0.0.0.0" || host == "[::]",
        "{name}: {key}={addr} binds all interfaces, or its published port reaches nothing"
    );
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

    // The OpenTelemetry settings are read by name in src/telemetry.rs, not by clap.
    let telemetry = read("src/telemetry.rs")?;
    for (name, dir, port, admin_port) in [
        ("payment", "payment/src", 50052, 9462),
        ("order", "order/src", 50051, 9461),
        ("notifier", "notifier/src", 50053, 9463),
    ] {
        let service = &services[name];
        let code = sources(dir)? + &shared;
        let prefix = name.to_uppercase();

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
        assert_eq!(
            check,
            ["CMD", binary, "healthcheck", "--ca", "/certs/ca.pem"],
            "{name} health check, over TLS"
        );
        assert!(
            read(&format!("{name}/src/main.rs"))?
                .contains("    Healthcheck(ordermesh::service::HealthcheckArgs),"),
            "{binary} has a healthcheck subcommand taking --ca"
        );

        let env = environment(service);
        assert!(!env.is_empty(), "{name} has an environment");
        for (key, value) in &env {
            let clap_setting = code.contains(&format!("env = \"{key}\""));
            let otel_setting =
                key.starts_with("OTEL_") && telemetry.contains(&format!("\"{key}\""));
            assert!(
                clap_setting || otel_setting,
                "{name} reads {key}: no `env = \"{key}\"` in {dir} or src/ \
                 (nor, for an OTEL_ variable, \"{key}\" in src/telemetry.rs)"
            );
            if key == "ORDER_EVENTS_TOPIC" {
                assert_eq!(value, default_topic);
            }
        }

        // gRPC and admin (metrics) are published, each on the port its address says, and nothing
        // else is.
        let listen_key = format!("{prefix}_LISTEN_ADDR");
        let admin_key = format!("{prefix}_ADMIN_ADDR");
        for (key, port) in [(&listen_key, port), (&admin_key, admin_port)] {
            let addr = env.get(key).with_context(|| format!("{name} sets {key}"))?;
            assert_reachable(name, key, addr, port);
        }
        let mut ports = strings(&service["ports"]);
        ports.sort_unstable();
        let mut expected = [
            format!("{port}:{port}"),
            format!("{admin_port}:{admin_port}"),
        ];
        expected.sort_unstable();
        assert_eq!(
            ports, expected,
            "{name} publishes its gRPC port {port} and its admin port {admin_port}, and only those"
        );

        // Traces go to a collector of this file over OTLP/gRPC (the only protocol the code has),
        // one that is up before the service and takes OTLP/gRPC on the port the endpoint names.
        assert_eq!(
            env.get("OTEL_SERVICE_NAME").map(String::as_str),
            Some(name),
            "{name}'s spans are named for it in Jaeger"
        );
        let endpoint = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .with_context(|| format!("{name} sets OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let (host, otlp_port) = endpoint
            .strip_prefix("http://")
            .and_then(|rest| rest.trim_end_matches('/').split_once(':'))
            .with_context(|| format!("{name}: {endpoint} is http://host:port"))?;
        assert_eq!(
            otlp_port, "4317",
            "{name}: {endpoint} is OTLP/gRPC's 4317 (4318 is OTLP/HTTP, which the code lacks)"
        );
        let collector = &services[host];
        assert!(
            collector.is_mapping(),
            "{name}: the OTLP host {host} is a compose service"
        );
        let image = collector["image"].as_str().unwrap_or_default();
        let takes_otlp_grpc = strings(&collector["expose"]).contains(&"4317")
            || strings(&collector["ports"])
                .iter()
                .any(|p| p.rsplit(':').next() == Some("4317"))
            || image.starts_with("jaegertracing/jaeger:")
            || image.starts_with("otel/opentelemetry-collector");
        assert!(
            takes_otlp_grpc,
            "{host} takes OTLP/gRPC on 4317 (exposed, published, or implied by its image {image:?})"
        );
        assert!(
            service["depends_on"][host].is_mapping(),
            "{name} starts after {host}"
        );
        if image.starts_with("jaegertracing/") {
            assert_eq!(
                env.get("OTEL_METRICS_EXPORTER").map(String::as_str),
                Some("none"),
                "{name}: Jaeger takes traces only and refuses OTLP metrics (scrape the admin port)"
            );
        }
    }
    // Jaeger's UI is where the README sends the reader.
    let jaeger_ports = strings(&services["jaeger"]["ports"]);
    assert!(
        jaeger_ports.contains(&"16686:16686"),
        "Jaeger's UI is published on 16686: {jaeger_ports:?}"
    );
    // Two services cannot publish the same host port: compose would fail to start the second.
    let mut host_ports = Vec::new();
    for service in services.as_mapping().context("services")?.values() {
        for published in strings(&service["ports"]) {
            // HOST:CONTAINER or IP:HOST:CONTAINER; a lone CONTAINER port gets a random host port.
            let parts: Vec<&str> = published.split(':').collect();
            if parts.len() >= 2 {
                host_ports.push(parts[parts.len() - 2]);
            }
        }
    }
    host_ports.sort_unstable();
    let mut unique = host_ports.clone();
    unique.dedup();
    assert_eq!(unique, host_ports, "each host port is published once");
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

/// The compose deployment is the secure setup: TLS on every gRPC port from certificates the `certs`
/// job makes with `ordermesh dev-certs`, mutual TLS from order to payment, tokens on both APIs.
/// Checked against what the code writes and reads: the file names `write_dev_certs` produces, the
/// names in the certificates, the settings' pairing rules.
#[test]
fn compose_serves_tls_mutual_tls_and_tokens_from_the_certs_job() -> Result<()> {
    let compose: Value = serde_yaml::from_str(&read("compose.yaml")?)?;
    let services = &compose["services"];
    let certs = &services["certs"];
    let dir = "/certs";

    // The job runs the runner's dev-certs subcommand into a directory it shares with the host.
    let script = certs["command"][0].as_str().context("certs command")?;
    assert!(
        script.contains(&format!("ordermesh dev-certs --dir {dir}")),
        "{script}"
    );
    assert!(read("Dockerfile")?.contains("--bin ordermesh"));
    assert!(read("runner/src/main.rs")?.contains("DevCerts {"));
    assert_eq!(strings(&certs["volumes"]), [format!("./certs:{dir}")]);

    // What the subcommand writes.
    let written = tempfile::tempdir()?;
    let files: Vec<String> = ordermesh::tls::write_dev_certs(written.path())?
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    let names_in = |file: &str| -> Result<Vec<String>> {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_file(written.path().join(file))?;
        Ok(ordermesh::tls::certificate_names(&der))
    };

    for name in ["payment", "order", "notifier"] {
        let service = &services[name];
        let prefix = name.to_uppercase();
        let env = environment(service);
        assert_eq!(
            service["depends_on"]["certs"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} starts once the certificates exist"
        );
        assert!(
            strings(&service["volumes"]).contains(&format!("./certs:{dir}:ro").as_str()),
            "{name} reads the certificates, read-only"
        );
        // Every file a setting names is one the job writes.
        let mut paths: Vec<&str> = env
            .values()
            .map(String::as_str)
            .filter(|v| v.starts_with(dir))
            .collect();
        paths.extend(
            strings(&service["healthcheck"]["test"])
                .into_iter()
                .filter(|v| v.starts_with(dir)),
        );
        for path in paths {
            let file = path.trim_start_matches(dir).trim_start_matches('/');
            assert!(
                files.iter().any(|f| f == file),
                "{name}: {path} is not written by dev-certs ({files:?})"
            );
        }
        // TLS on its own port, with its own certificate.
        assert_eq!(
            env.get(&format!("{prefix}_TLS_CERT")),
            Some(&format!("{dir}/{name}.pem"))
        );
        assert_eq!(
            env.get(&format!("{prefix}_TLS_KEY")),
            Some(&format!("{dir}/{name}.key"))
        );
    }

    // Payment: mutual TLS, charging for order only.
    let payment = environment(&services["payment"]);
    assert_eq!(payment["PAYMENT_TLS_CLIENT_CA"], format!("{dir}/ca.pem"));
    let allowed: Vec<&str> = payment["PAYMENT_ALLOWED_CLIENTS"].split(',').collect();
    assert_eq!(allowed, ["order"]);

    // Order reaches payment over TLS by a name payment's certificate carries, presenting a
    // certificate that names a client payment allows.
    let order = environment(&services["order"]);
    let url = &order["ORDER_PAYMENT_URL"];
    let (host, port) = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once(':'))
        .with_context(|| format!("ORDER_PAYMENT_URL {url} is https://host:port"))?;
    assert!(services[host].is_mapping(), "{host} is a compose service");
    assert!(
        payment["PAYMENT_LISTEN_ADDR"].ends_with(&format!(":{port}")),
        "payment listens on {port}"
    );
    assert!(
        !order.contains_key("ORDER_PAYMENT_TLS_DOMAIN"),
        "the URL's host is the name checked"
    );
    assert!(
        names_in("payment.pem")?.contains(&host.to_owned()),
        "payment's certificate names {host}"
    );
    assert_eq!(order["ORDER_PAYMENT_TLS_CA"], format!("{dir}/ca.pem"));
    let client_cert = order["ORDER_PAYMENT_TLS_CERT"]
        .trim_start_matches(dir)
        .trim_start_matches('/');
    assert_eq!(
        order["ORDER_PAYMENT_TLS_KEY"],
        format!("{dir}/{}", client_cert.replace(".pem", ".key"))
    );
    assert!(
        names_in(client_cert)?
            .iter()
            .any(|n| allowed.contains(&n.as_str())),
        "order's client certificate names a client payment allows"
    );

    // Tokens on both public APIs, one key from the user's environment, required to start.
    let notifier = environment(&services["notifier"]);
    let key = &order["ORDER_AUTH_KEY"];
    assert!(key.starts_with("${ORDERMESH_AUTH_KEY:?"), "{key}");
    assert_eq!(&notifier["NOTIFIER_AUTH_KEY"], key);
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

    // The OpenTelemetry variables are not clap settings: src/telemetry.rs names them as strings.
    let telemetry = read("src/telemetry.rs")?;
    let otel = otel_names(&telemetry);
    assert!(
        otel.contains(&"OTEL_EXPORTER_OTLP_ENDPOINT"),
        "found the OpenTelemetry variables in src/telemetry.rs: {otel:?}"
    );

    for setting in settings.iter().chain(&otel) {
        assert!(
            readme.contains(&format!("| `{setting}` |")),
            "README's configuration table has {setting}"
        );
    }
    // And the other way round for those: a row for a variable nobody reads would mislead.
    for row in readme.lines().filter_map(|l| l.strip_prefix("| `OTEL_")) {
        let name = format!("OTEL_{}", row.split('`').next().unwrap_or_default());
        assert!(
            otel.contains(&name.as_str()),
            "README documents {name}, which src/telemetry.rs does not name"
        );
    }
    Ok(())
}

/// The quoted `"OTEL_[A-Z_]+"` strings of a source file.
fn otel_names(source: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("\"OTEL_") {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let name = &after[..end];
        if name.len() > "OTEL_".len() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            names.push(name);
        }
        rest = &after[end + 1..];
    }
    names.sort_unstable();
    names.dedup();
    names
}
