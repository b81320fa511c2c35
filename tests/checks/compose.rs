//! The deployment files and the configuration reference, read against the code.
//!
//! compose.yaml cannot be run here (no Docker engine), so it is kept honest by reading it, and the
//! files it mounts (compose/haproxy.cfg, compose/postgres-init.sql), against the code and
//! docs/compose.md: every variable it sets is one a service reads, every port is a port the service listens
//! on (gRPC and admin, on all interfaces), every binary it runs is built by the Dockerfile, the
//! topic it creates is the one the services use, and the traces go to a collector of the file that
//! takes OTLP over gRPC. It runs scaled out (`docker compose up --scale order=3 ...`, as
//! docs/compose.md says): no replica holds a fixed host port, every database URL names a database of the
//! postgres service that its init script creates, and the front door forwards the documented ports
//! to the ports the services listen on, finding the replicas through Docker's DNS.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, Result, bail, ensure};
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every service of compose.yaml. Each is checked below; a service added to the file (or removed)
/// fails [`compose_runs_the_services_these_tests_check`] until this list, and its checks, follow.
const SERVICES: [&str; 12] = [
    "certs",
    "front-door",
    "grafana",
    "jaeger",
    "kafka",
    "kafka-init",
    "mailpit",
    "notifier",
    "order",
    "payment",
    "postgres",
    "prometheus",
];

/// The services `--scale` runs several of, with the gRPC and admin ports each listens on.
const SCALED: [(&str, u16, u16); 3] = [
    ("payment", 50052, 9462),
    ("order", 50051, 9461),
    ("notifier", 50053, 9463),
];

/// The proxy that holds the host ports of the scaled public APIs, and its configuration file.
const FRONT_DOOR: &str = "front-door";
const HAPROXY_CFG: &str = "compose/haproxy.cfg";
/// Where the official HAProxy image reads its configuration.
const HAPROXY_CFG_IN_IMAGE: &str = "/usr/local/etc/haproxy/haproxy.cfg";
/// Docker's embedded DNS server, as every container on a compose network reaches it.
const DOCKER_DNS: &str = "127.0.0.11:53";

/// The database server, and the script that creates the services' databases on it.
const POSTGRES: &str = "postgres";
const POSTGRES_INIT: &str = "compose/postgres-init.sql";

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

fn compose() -> Result<Value> {
    Ok(serde_yaml::from_str(&read("compose.yaml")?)?)
}

/// A service's `ports` (or `expose`) entries, as written.
fn strings(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The fixed host port of a short-syntax `ports` entry (`HOST:CONTAINER`, `IP:HOST:CONTAINER`),
/// or `None` for a lone `CONTAINER` or `IP::CONTAINER`, which Docker gives a host port it picks
/// (one per replica).
fn host_port(entry: &str) -> Option<&str> {
    let mapping = entry.split('/').next().unwrap_or(entry);
    let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [_, host] | [_, host, _] if !host.is_empty() => Some(host),
        _ => None,
    }
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

/// The port of a `HOST:PORT` address.
fn port_of(addr: &str) -> Result<u16> {
    let (_, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr} is HOST:PORT"))?;
    port.parse()
        .with_context(|| format!("{addr}: {port} is a port number"))
}

/// The command line the binary of service `name` parses.
fn command_line(name: &str) -> Result<clap::Command> {
    use ordermesh_platform::cli::{NoCommands, command};
    Ok(match name {
        "payment" => command::<ordermesh_payment::Config, NoCommands>(),
        "order" => command::<ordermesh_order::Config, NoCommands>(),
        "notifier" => command::<ordermesh_notifier::Config, ordermesh_notifier::Command>(),
        _ => bail!("no service {name}"),
    })
}

/// The compose page of the docs.
fn compose_page() -> Result<String> {
    read("docs/compose.md")
}

/// docs/compose.md's `docker compose up ... --scale NAME=N ...` line, and the replicas it asks for.
fn readme_scale() -> Result<(String, BTreeMap<String, u32>)> {
    let section = compose_page()?;
    let command = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("docker compose up ") && l.contains("--scale"))
        .context("docs/compose.md runs `docker compose up ... --scale NAME=N`")?;
    let mut scale = BTreeMap::new();
    let mut words = command.split_whitespace();
    while let Some(word) = words.next() {
        if word == "--scale" {
            let arg = words.next().context("--scale takes NAME=N")?;
            let (name, n) = arg
                .split_once('=')
                .with_context(|| format!("--scale {arg} is NAME=N"))?;
            scale.insert(name.to_owned(), n.parse()?);
        }
    }
    Ok((command.to_owned(), scale))
}

/// The names each development certificate (`order.pem`, ...) is valid for, as `ordermesh
/// dev-certs` writes them.
fn dev_cert_names() -> Result<BTreeMap<String, Vec<String>>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let written = tempfile::tempdir()?;
    let mut names = BTreeMap::new();
    for path in ordermesh_runner::dev_certs::write_dev_certs(written.path())? {
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if file.ends_with(".pem") && file != "ca.pem" {
            let der = CertificateDer::from_pem_file(&path)?;
            names.insert(
                file.to_owned(),
                ordermesh_platform::tls::certificate_names(&der),
            );
        }
    }
    Ok(names)
}

/// One section of an HAProxy configuration (`backend order`) with its directives, each split into
/// words, comments dropped.
#[derive(Debug)]
struct Section {
    kind: String,
    name: String,
    directives: Vec<Vec<String>>,
}

impl Section {
    /// The arguments of each `keyword` directive of the section.
    fn args(&self, keyword: &str) -> Vec<&[String]> {
        self.directives
            .iter()
            .filter(|d| d[0] == keyword)
            .map(|d| &d[1..])
            .collect()
    }

    /// The arguments of the section's one `keyword` directive.
    fn one(&self, keyword: &str) -> Result<&[String]> {
        match self.args(keyword).as_slice() {
            [args] => Ok(args),
            other => bail!(
                "{HAPROXY_CFG}: {} {} has one `{keyword}`, not {}",
                self.kind,
                self.name,
                other.len()
            ),
        }
    }
}

/// The sections of an HAProxy configuration, strictly: a line at the margin opens a section of a
/// kind these tests know, every indented line belongs to one.
fn haproxy_sections(cfg: &str) -> Result<Vec<Section>> {
    let mut sections: Vec<Section> = Vec::new();
    for (number, line) in cfg.lines().enumerate() {
        let at = format!("{HAPROXY_CFG}:{}", number + 1);
        let code = line.split('#').next().unwrap_or_default();
        let words: Vec<String> = code.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            let kind = words[0].clone();
            ensure!(
                ["global", "defaults", "resolvers", "frontend", "backend"].contains(&kind.as_str()),
                "{at}: section `{kind}` is not one these tests read (global, defaults, resolvers, \
                 frontend, backend; a `listen` is a frontend and a backend)"
            );
            let name = words.get(1).cloned().unwrap_or_default();
            ensure!(
                !sections.iter().any(|s| s.kind == kind && s.name == name),
                "{at}: a second `{kind} {name}`"
            );
            sections.push(Section {
                kind,
                name,
                directives: Vec::new(),
            });
        } else {
            let section = sections
                .last_mut()
                .with_context(|| format!("{at}: a directive before any section"))?;
            section.directives.push(words);
        }
    }
    Ok(sections)
}

fn section<'a>(sections: &'a [Section], kind: &str, name: &str) -> Result<&'a Section> {
    sections
        .iter()
        .find(|s| s.kind == kind && s.name == name)
        .with_context(|| format!("{HAPROXY_CFG} has a `{kind} {name}` section"))
}

/// SQL keywords that cannot name a database unquoted (PostgreSQL's reserved words, the ones a
/// service or its data could plausibly be called).
const RESERVED: [&str; 12] = [
    "all", "check", "default", "from", "group", "order", "select", "table", "to", "union", "user",
    "where",
];

/// The databases a PostgreSQL init script creates, strictly: the script holds `--` comments and
/// `CREATE DATABASE name;` lines only, and a name that is a reserved word is quoted.
fn created_databases(sql: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for line in sql.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("--") {
            continue;
        }
        let name = line
            .strip_prefix("CREATE DATABASE ")
            .and_then(|rest| rest.strip_suffix(';'))
            .with_context(|| format!("{POSTGRES_INIT}: `{line}` is not `CREATE DATABASE name;`"))?;
        let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted,
            None => {
                ensure!(
                    !RESERVED.contains(&name.to_lowercase().as_str()),
                    "{POSTGRES_INIT}: `{line}` fails: {name} is a reserved word in SQL, quote it"
                );
                ensure!(
                    name.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{POSTGRES_INIT}: `{name}`, unquoted, is folded to lower case: write it so"
                );
                name
            }
        };
        names.push(name.to_owned());
    }
    Ok(names)
}

/// A `postgres://user:password@host:port/database` URL, in parts.
#[derive(Debug)]
struct PostgresUrl<'a> {
    user: &'a str,
    password: &'a str,
    host: &'a str,
    port: &'a str,
    database: &'a str,
}

fn postgres_url(url: &str) -> Result<PostgresUrl<'_>> {
    let parsed = (|| {
        let rest = url.strip_prefix("postgres://")?;
        let (credentials, location) = rest.rsplit_once('@')?;
        let (user, password) = credentials.split_once(':')?;
        let (address, database) = location.split_once('/')?;
        let (host, port) = address.split_once(':')?;
        Some(PostgresUrl {
            user,
            password,
            host,
            port,
            database,
        })
    })();
    parsed.with_context(|| format!("{url} is postgres://user:password@host:port/database"))
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
    let compose = compose()?;
    let dockerfile = read("Dockerfile")?;
    let services = &compose["services"];
    let default_topic = ordermesh_kafka::DEFAULT_ORDER_EVENTS_TOPIC;

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

    for (name, port, admin_port) in SCALED {
        let service = &services[name];
        let command = command_line(name)?;
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
        let takes_ca = command
            .find_subcommand("healthcheck")
            .is_some_and(|check| check.get_arguments().any(|a| a.get_long() == Some("ca")));
        assert!(
            takes_ca,
            "{binary} has a healthcheck subcommand taking --ca"
        );

        let env = environment(service);
        assert!(!env.is_empty(), "{name} has an environment");
        for (key, value) in &env {
            // A variable of the binary's own command line, or one telemetry reads by name.
            let clap_setting = command
                .get_arguments()
                .any(|arg| arg.get_env().is_some_and(|env| env == key.as_str()));
            let by_name = ordermesh_platform::telemetry::VARIABLES
                .iter()
                .any(|variable| variable.name == key);
            assert!(
                clap_setting || by_name,
                "{name} reads {key}: its binary has no setting of that name, nor does telemetry \
                 read it (ordermesh_platform::telemetry::VARIABLES)"
            );
            if key == "ORDER_EVENTS_TOPIC" {
                assert_eq!(value, default_topic);
            }
        }

        // gRPC and admin (metrics) listen on all interfaces, each on the port its address says:
        // gRPC is reached from other containers (the front door, or order for payment), admin is
        // published. Each replica publishes its admin port on a host port Docker picks, and
        // nothing else (a fixed host port would stop --scale: see
        // the_scaled_services_publish_no_fixed_host_port).
        let listen_key = format!("{prefix}_LISTEN_ADDR");
        let admin_key = format!("{prefix}_ADMIN_ADDR");
        for (key, port) in [(&listen_key, port), (&admin_key, admin_port)] {
            let addr = env.get(key).with_context(|| format!("{name} sets {key}"))?;
            assert_reachable(name, key, addr, port);
        }
        assert_eq!(
            strings(&service["ports"]),
            [admin_port.to_string()],
            "{name} publishes its admin port {admin_port} (to a host port Docker picks), and only \
             that: its gRPC port {port} is reached through the front door or the compose network"
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
    // Jaeger's UI is where docs/compose.md sends the reader.
    let jaeger_ports = strings(&services["jaeger"]["ports"]);
    assert!(
        jaeger_ports.contains(&"16686:16686"),
        "Jaeger's UI is published on 16686: {jaeger_ports:?}"
    );
    // Two services cannot publish the same host port: compose would fail to start the second.
    let mut host_ports = Vec::new();
    for service in services.as_mapping().context("services")?.values() {
        host_ports.extend(strings(&service["ports"]).into_iter().filter_map(host_port));
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
    // Host clients reach Kafka where docs/compose.md says.
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

/// Every service of the file is one these tests check, every image is pinned, and every named
/// volume a service mounts is declared (and every declared one mounted).
#[test]
fn compose_runs_the_services_these_tests_check() -> Result<()> {
    let compose = compose()?;
    let services = compose["services"].as_mapping().context("services")?;
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(SERVICES),
        "compose.yaml's services are the ones tests/checks/compose.rs checks: a service added to the \
         file needs its checks here (and a place in SERVICES)"
    );

    let mut mounted = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        // Built from this repository, or an image at a version that cannot move under the user.
        if let Some(image) = service["image"].as_str() {
            let tag = image
                .rsplit_once(':')
                .map(|(_, tag)| tag)
                .unwrap_or_default();
            assert!(
                tag.starts_with(|c: char| c.is_ascii_digit() || c == 'v'),
                "{name}: image {image} is pinned to a version (not untagged, not latest)"
            );
        } else {
            assert_eq!(
                service["build"].as_str(),
                Some("."),
                "{name} builds the Dockerfile"
            );
        }
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap_or_default();
            if !source.starts_with(['.', '/']) {
                mounted.insert(source);
            }
        }
    }
    let declared: BTreeSet<&str> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        mounted, declared,
        "the named volumes mounted are the ones declared under `volumes:`"
    );
    Ok(())
}

/// `docker compose up --scale order=3 --scale payment=2 --scale notifier=2` (docs/compose.md's command)
/// can start every replica: none holds a fixed host port or a fixed container name, which only one
/// container could have. And the notifier's replicas have partitions to share.
#[test]
fn the_scaled_services_publish_no_fixed_host_port() -> Result<()> {
    let text = read("compose.yaml")?;
    let compose = compose()?;
    let services = &compose["services"];
    let (command, scale) = readme_scale()?;
    assert!(
        text.contains(&command),
        "compose.yaml's header gives docs/compose.md's command: {command}"
    );
    let scaled: BTreeSet<&str> = SCALED.iter().map(|(name, ..)| *name).collect();
    assert_eq!(
        scale.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        scaled,
        "docs/compose.md scales the services these tests check as scaled: {command}"
    );

    for name in scaled {
        let service = &services[name];
        assert!(
            service.get("container_name").is_none(),
            "{name} has no container_name: only one container could have it, so --scale would fail"
        );
        for entry in service["ports"].as_sequence().into_iter().flatten() {
            let published = entry.as_str().with_context(|| {
                format!("{name}: ports entry {entry:?} is in the short syntax these tests read")
            })?;
            assert_eq!(
                host_port(published),
                None,
                "{name} publishes {published:?}: a fixed host port can be bound by one replica \
                 only, so `{command}` would fail; publish the container port alone (Docker picks \
                 a host port per replica) or go through the front door"
            );
        }
        assert!(
            service.get("network_mode").is_none(),
            "{name}: on the host's network every replica would want the same ports"
        );
    }

    // Each channel's consumer group splits the events topic's partitions among the notifier's
    // replicas: with fewer partitions than replicas, some replicas would get none.
    let init = services["kafka-init"]["command"][0]
        .as_str()
        .context("kafka-init command")?;
    let mut words = init.split_whitespace();
    let partitions: i32 = words
        .find(|w| *w == "--partitions")
        .and_then(|_| words.next())
        .with_context(|| format!("kafka-init creates its topics with --partitions N: {init}"))?
        .parse()?;
    assert_eq!(
        partitions,
        ordermesh_kafka::DEFAULT_PARTITIONS,
        "kafka-init creates as many partitions as the services would (kafka::DEFAULT_PARTITIONS)"
    );
    let notifiers = scale["notifier"];
    assert!(
        i64::from(partitions) >= i64::from(notifiers),
        "{partitions} partitions for {notifiers} notifier replicas: some would have nothing to do"
    );
    Ok(())
}

/// Every service stores its data in a database of its own on the postgres service, which the init
/// script creates before any service starts, and the replicas of a service share it.
#[test]
fn every_database_is_on_postgres_and_created_by_its_init_script() -> Result<()> {
    let compose = compose()?;
    let services = &compose["services"];
    let postgres = &services[POSTGRES];

    // The official image, at a pinned major version.
    let image = postgres["image"].as_str().context("postgres image")?;
    let tag = image
        .strip_prefix("postgres:")
        .with_context(|| format!("{POSTGRES} runs the official image: {image}"))?;
    let major: u32 = tag
        .split(['-', '.'])
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("{POSTGRES}: {image} is pinned to a major version"))?;
    // A named volume at the image's data directory, so the data outlive the container. (The image
    // of PostgreSQL 18 moved it: a volume left here would keep nothing.)
    let data = "/var/lib/postgresql/data";
    assert!(
        major <= 17,
        "{image}: PostgreSQL 18's image keeps its data under /var/lib/postgresql, not {data}"
    );
    let volumes = strings(&postgres["volumes"]);
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(&format!(":{data}")) && !v.starts_with(['.', '/'])),
        "{POSTGRES} keeps {data} in a named volume: {volumes:?}"
    );

    // The init script, where the image runs it on first start.
    let mount = format!("./{POSTGRES_INIT}:/docker-entrypoint-initdb.d/");
    let script = volumes
        .iter()
        .find(|v| v.starts_with(&mount))
        .with_context(|| {
            format!("{POSTGRES} mounts {POSTGRES_INIT} in /docker-entrypoint-initdb.d")
        })?;
    assert!(
        script.ends_with(".sql:ro"),
        "{script}: the image runs *.sql files there with psql; read-only"
    );
    let created = created_databases(&read(POSTGRES_INIT)?)?;

    let env = environment(postgres);
    let user = env.get("POSTGRES_USER").context("POSTGRES_USER")?;
    let password = env.get("POSTGRES_PASSWORD").context("POSTGRES_PASSWORD")?;
    assert!(
        password.starts_with("${") && password.contains(":-") && password.ends_with('}'),
        "POSTGRES_PASSWORD={password} comes from the user's environment, with a demo default"
    );

    // Healthy only once the server takes connections over TCP: while the init script runs, the
    // image's temporary server listens on its Unix socket alone, so a check there passes before
    // the databases exist.
    let check = strings(&postgres["healthcheck"]["test"]);
    assert_eq!(
        check.get(..2),
        Some(["CMD", "pg_isready"].as_slice()),
        "{POSTGRES} is checked with pg_isready: {check:?}"
    );
    let after = |flag: &str| check.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
    assert!(
        after("-h").is_some_and(|host| !host.starts_with('/')),
        "{POSTGRES}'s pg_isready goes over TCP (-h 127.0.0.1), not the socket: {check:?}"
    );
    assert_eq!(after("-U"), Some(user.as_str()), "pg_isready as {user}");

    // Every database URL names the postgres service, its user and password, and a database the
    // script creates: the service's own, named after it.
    let mut with_database = BTreeSet::new();
    for (name, service) in services.as_mapping().context("services")? {
        let name = name.as_str().unwrap_or_default();
        for (key, url) in environment(service) {
            if !key.ends_with("_DATABASE_URL") {
                continue;
            }
            let url = postgres_url(&url).with_context(|| format!("{name}: {key}"))?;
            assert_eq!(
                url.host, POSTGRES,
                "{name}: {key} is on the postgres service"
            );
            assert_eq!(url.port, "5432", "{name}: {key} is on PostgreSQL's port");
            assert_eq!(url.user, user, "{name}: {key} logs in as POSTGRES_USER");
            assert_eq!(
                url.password, password,
                "{name}: {key} has POSTGRES_PASSWORD"
            );
            assert!(
                created.iter().any(|db| db == url.database),
                "{name}: {key} names database {:?}, which {POSTGRES_INIT} does not create \
                 (it creates {created:?}), and the services do not create databases",
                url.database
            );
            assert_eq!(
                url.database, name,
                "{name}: {key} names the database of {name}, not another service's"
            );
            with_database.insert(name.to_owned());
            assert_eq!(
                service["depends_on"][POSTGRES]["condition"].as_str(),
                Some("service_healthy"),
                "{name} starts once {POSTGRES} is healthy (its database exists)"
            );
        }
    }
    for (name, ..) in SCALED {
        assert!(
            with_database.contains(name),
            "{name} sets {}_DATABASE_URL: its replicas share one database",
            name.to_uppercase()
        );
    }
    Ok(())
}

/// The front door publishes the ports the grpcurl commands of docs/compose.md dial and passes each
/// connection, TLS untouched, to a replica of the service that listens there, finding the
/// replicas through Docker's DNS.
#[test]
fn the_front_door_forwards_the_readme_ports_to_every_replica() -> Result<()> {
    let compose = compose()?;
    let services = &compose["services"];
    let door = &services[FRONT_DOOR];
    let (_, scale) = readme_scale()?;
    let certificates = dev_cert_names()?;

    let image = door["image"].as_str().context("front-door image")?;
    assert!(
        image.starts_with("haproxy:"),
        "{FRONT_DOOR} runs the official HAProxy image: {image}"
    );
    assert_eq!(
        strings(&door["volumes"]),
        [format!("./{HAPROXY_CFG}:{HAPROXY_CFG_IN_IMAGE}:ro")],
        "{FRONT_DOOR} reads {HAPROXY_CFG} where the image looks for its configuration"
    );
    let sections = haproxy_sections(&read(HAPROXY_CFG)?)?;

    // TCP: the proxy neither ends TLS nor reads HTTP, so grpcurl checks the replica's own
    // certificate.
    let defaults = section(&sections, "defaults", "")?;
    assert_eq!(
        defaults.one("mode")?,
        ["tcp"],
        "{HAPROXY_CFG}: defaults are mode tcp"
    );
    for s in &sections {
        for mode in s.args("mode") {
            assert_eq!(
                mode,
                ["tcp"],
                "{HAPROXY_CFG}: {} {} is mode tcp",
                s.kind,
                s.name
            );
        }
    }

    // The host:port each grpcurl command of docs/compose.md dials.
    let section_text = compose_page()?;
    let mut dialled = BTreeMap::new();
    for line in section_text.lines().filter(|l| l.starts_with("grpcurl ")) {
        let address = line
            .split_whitespace()
            .find_map(|w| {
                let (host, port) = w.rsplit_once(':')?;
                Some((host, port.parse::<u16>().ok()?))
            })
            .with_context(|| format!("docs/compose.md: `{line}` dials host:port"))?;
        dialled.insert(address.1, address.0.to_owned());
    }
    let mut published = BTreeMap::new();
    for entry in strings(&door["ports"]) {
        let host = host_port(entry)
            .with_context(|| format!("{FRONT_DOOR} publishes {entry} on a fixed host port"))?;
        let container = entry.rsplit(':').next().unwrap_or_default();
        published.insert(host.parse::<u16>()?, container.parse::<u16>()?);
    }
    assert_eq!(
        published.keys().collect::<Vec<_>>(),
        dialled.keys().collect::<Vec<_>>(),
        "{FRONT_DOOR} publishes the ports docs/compose.md dials with grpcurl, and \
         only those"
    );

    let mut fronted = BTreeSet::new();
    for (public_port, container_port) in published {
        // The frontend listening on the container port, on every interface (a published port
        // arrives on the container's network interface), passing TLS through.
        let frontends: Vec<&Section> = sections
            .iter()
            .filter(|s| {
                s.kind == "frontend"
                    && s.args("bind")
                        .iter()
                        .any(|b| b.first().and_then(|a| port_of(a).ok()) == Some(container_port))
            })
            .collect();
        let [frontend] = frontends.as_slice() else {
            bail!(
                "{HAPROXY_CFG}: one frontend binds {container_port}, not {}",
                frontends.len()
            );
        };
        let bind = frontend.one("bind")?;
        assert!(
            [":", "*:", "0.0.0.0:", "[::]:"]
                .iter()
                .any(|all| bind == [format!("{all}{container_port}")]),
            "{HAPROXY_CFG}: frontend {} binds {container_port} on all interfaces, without \
             options (`ssl` would end TLS at the proxy): {bind:?}",
            frontend.name
        );
        assert!(
            frontend.args("use_backend").is_empty(),
            "{HAPROXY_CFG}: frontend {} sends everything to its default_backend",
            frontend.name
        );
        let [backend_name] = frontend.one("default_backend")? else {
            bail!("{HAPROXY_CFG}: default_backend takes one name");
        };
        let backend = section(&sections, "backend", backend_name)?;

        // One server-template: server slots filled from the DNS answer for the service name, so
        // every replica gets connections; no fixed `server`.
        assert!(
            backend.args("server").is_empty(),
            "{HAPROXY_CFG}: backend {backend_name} finds its servers through DNS \
             (server-template), no fixed `server`"
        );
        let template = backend.one("server-template")?;
        let [_prefix, slots, target, options @ ..] = template else {
            bail!("{HAPROXY_CFG}: server-template PREFIX COUNT HOST:PORT OPTIONS: {template:?}");
        };
        let (service, port) = target
            .rsplit_once(':')
            .with_context(|| format!("{HAPROXY_CFG}: {target} is SERVICE:PORT"))?;
        let Some((_, listen_port, _)) = SCALED.iter().find(|(name, ..)| *name == service) else {
            bail!(
                "{HAPROXY_CFG}: backend {backend_name} forwards to {service}, not a scaled service"
            );
        };
        let listen_addr = environment(&services[service])
            .remove(&format!("{}_LISTEN_ADDR", service.to_uppercase()))
            .with_context(|| format!("{service} sets its listen address"))?;
        assert_eq!(
            port.parse::<u16>()?,
            port_of(&listen_addr)?,
            "{HAPROXY_CFG}: backend {backend_name} forwards to {service}:{port}, where {service} \
             listens ({listen_addr})"
        );
        assert_eq!(
            port_of(&listen_addr)?,
            *listen_port,
            "{service} listens on its own port"
        );
        let replicas = scale.get(service).copied().unwrap_or(1);
        let slots: u32 = slots
            .parse()
            .with_context(|| format!("{HAPROXY_CFG}: server-template count {slots} is a number"))?;
        assert!(
            slots >= replicas,
            "{HAPROXY_CFG}: {slots} server slots for {service}, docs/compose.md runs {replicas} replicas"
        );
        let option = |name: &str| {
            options
                .iter()
                .position(|o| o == name)
                .map(|i| options.get(i + 1))
        };
        assert!(
            option("check").is_some(),
            "{HAPROXY_CFG}: backend {backend_name} checks its servers, so a replica that does not \
             take connections gets none"
        );
        assert_eq!(
            option("init-addr").flatten().map(String::as_str),
            Some("none"),
            "{HAPROXY_CFG}: backend {backend_name} starts with no address (init-addr none), so the \
             proxy starts before the replicas"
        );
        assert!(
            option("ssl").is_none(),
            "{HAPROXY_CFG}: backend {backend_name} passes TLS through, it does not start its own"
        );
        let resolvers = option("resolvers").flatten().with_context(|| {
            format!(
                "{HAPROXY_CFG}: backend {backend_name} resolves {service} at run time, \
                 through a `resolvers` section"
            )
        })?;
        let nameservers = section(&sections, "resolvers", resolvers)?.args("nameserver");
        assert!(
            !nameservers.is_empty()
                && nameservers
                    .iter()
                    .all(|n| n.get(1).map(String::as_str) == Some(DOCKER_DNS)),
            "{HAPROXY_CFG}: resolvers {resolvers} asks Docker's DNS ({DOCKER_DNS}), which names \
             every replica: {nameservers:?}"
        );

        // TLS passes through, so the replica's own certificate must name the host grpcurl dials.
        let host = &dialled[&public_port];
        let pem = format!("{service}.pem");
        assert!(
            certificates
                .get(&pem)
                .is_some_and(|names| names.contains(host)),
            "{pem} names {host}, which grpcurl dials through the front door ({certificates:?})"
        );
        fronted.insert(service.to_owned());
    }
    assert_eq!(
        fronted,
        BTreeSet::from(["notifier".to_owned(), "order".to_owned()]),
        "the front door serves the public APIs, order and the notifier (payment is for order only)"
    );
    Ok(())
}

/// The compose deployment is the secure setup: TLS on every gRPC port from certificates the `certs`
/// job makes with `ordermesh dev-certs`, mutual TLS from order to payment, tokens on both APIs.
/// Checked against what the code writes and reads: the file names `write_dev_certs` produces, the
/// names in the certificates, the settings' pairing rules.
#[test]
fn compose_serves_tls_mutual_tls_and_tokens_from_the_certs_job() -> Result<()> {
    let compose = compose()?;
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
    let files: Vec<String> = ordermesh_runner::dev_certs::write_dev_certs(written.path())?
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    let names_in = |file: &str| -> Result<Vec<String>> {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_file(written.path().join(file))?;
        Ok(ordermesh_platform::tls::certificate_names(&der))
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
fn every_setting_the_code_reads_is_in_the_configuration_reference() -> Result<()> {
    let readme = read("docs/configuration.md")?;
    let mut code = String::new();
    for dir in [
        "src",
        "platform/src",
        "kafka/src",
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

    // The OpenTelemetry variables are not clap settings: platform/src/telemetry.rs names them as strings.
    let telemetry = read("platform/src/telemetry.rs")?;
    let otel = otel_names(&telemetry);
    assert!(
        otel.contains(&"OTEL_EXPORTER_OTLP_ENDPOINT"),
        "found the OpenTelemetry variables in platform/src/telemetry.rs: {otel:?}"
    );

    for setting in settings.iter().chain(&otel) {
        assert!(
            readme.contains(&format!("| `{setting}` |")),
            "docs/configuration.md has {setting}"
        );
    }
    // And the other way round for those: a row for a variable nobody reads would mislead.
    for row in readme.lines().filter_map(|l| l.strip_prefix("| `OTEL_")) {
        let name = format!("OTEL_{}", row.split('`').next().unwrap_or_default());
        assert!(
            otel.contains(&name.as_str()),
            "docs/configuration.md documents {name}, which platform/src/telemetry.rs does not name"
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

/// The image holds what its build made: every binary the Dockerfile builds is copied from the
/// directory of the profile it is built with (`--profile production` writes to
/// `target/production/`, `--release` to `target/release/`), and that profile is one Cargo.toml
/// defines. A build switched to another profile with the copies left behind would copy nothing.
#[test]
fn the_image_copies_the_binaries_of_the_profile_it_builds() -> Result<()> {
    let dockerfile = read("Dockerfile")?;
    let build = dockerfile
        .lines()
        .find(|line| line.starts_with("RUN cargo build"))
        .context("the Dockerfile's cargo build")?;
    let words: Vec<&str> = build.split_whitespace().collect();
    let profile = match words.iter().position(|word| *word == "--profile") {
        Some(at) => *words.get(at + 1).context("--profile names a profile")?,
        None if words.contains(&"--release") => "release",
        None => bail!("the Dockerfile builds without optimisation: {build}"),
    };
    if !["release", "dev"].contains(&profile) {
        ensure!(
            read("Cargo.toml")?.contains(&format!("[profile.{profile}]")),
            "the Dockerfile builds with profile {profile}, which Cargo.toml does not define"
        );
    }
    let binaries: Vec<&str> = words
        .windows(2)
        .filter(|pair| pair[0] == "--bin")
        .map(|pair| pair[1])
        .collect();
    ensure!(
        !binaries.is_empty(),
        "the Dockerfile builds no --bin: {build}"
    );
    // The COPY lines continue over several: read as one.
    let joined = dockerfile.replace('\n', " ");
    for binary in binaries {
        let copied = format!("/src/target/{profile}/{binary} ");
        ensure!(
            joined.contains(&copied),
            "the Dockerfile builds {binary} with profile {profile} but does not copy {copied}"
        );
    }
    Ok(())
}

/// Prometheus scrapes every replica of every scaled service on its admin port, as a job named for
/// the service (the dashboards select on `job`), finding the replicas through Docker's DNS, and
/// loads the rules file beside its configuration; Grafana gets the dashboards and data sources
/// from the directories its provisioning names, and the dashboards query the data source it
/// provisions.
#[test]
fn prometheus_scrapes_every_replica_and_grafana_draws_from_it() -> Result<()> {
    let compose = compose()?;
    let services = &compose["services"];

    let prometheus = &services["prometheus"];
    assert_eq!(
        strings(&prometheus["volumes"]),
        ["./compose/prometheus:/etc/prometheus:ro"],
        "prometheus mounts compose/prometheus/"
    );
    let command = strings(&prometheus["command"]);
    assert!(
        command.contains(&"--config.file=/etc/prometheus/prometheus.yml"),
        "prometheus reads compose/prometheus/prometheus.yml: {command:?}"
    );
    let config: Value = serde_yaml::from_str(&read("compose/prometheus/prometheus.yml")?)?;
    for rules in strings(&config["rule_files"]) {
        ensure!(
            Path::new(ROOT)
                .join("compose/prometheus")
                .join(rules)
                .is_file(),
            "prometheus.yml loads {rules}, which is not in compose/prometheus/"
        );
    }
    let jobs = config["scrape_configs"]
        .as_sequence()
        .context("scrape_configs")?;
    for (name, _, admin_port) in SCALED {
        let job = jobs
            .iter()
            .find(|job| job["job_name"].as_str() == Some(name))
            .with_context(|| format!("prometheus.yml has no job {name}"))?;
        let discovery = &job["dns_sd_configs"][0];
        assert_eq!(
            strings(&discovery["names"]),
            [name],
            "job {name} finds every replica of {name} by its compose service name"
        );
        assert_eq!(
            discovery["port"].as_u64(),
            Some(u64::from(admin_port)),
            "job {name} scrapes {name}'s admin port"
        );
        let admin = format!("{}_ADMIN_ADDR", name.to_uppercase());
        assert_eq!(
            services[name]["environment"][admin.as_str()].as_str(),
            Some(format!("0.0.0.0:{admin_port}").as_str()),
            "{name} serves its admin port on every interface, where Prometheus reaches it"
        );
    }

    let grafana = &services["grafana"];
    let volumes = strings(&grafana["volumes"]);
    for (source, target) in [
        (
            "./compose/grafana/provisioning",
            "/etc/grafana/provisioning",
        ),
        (
            "./compose/grafana/dashboards",
            "/var/lib/grafana/dashboards",
        ),
    ] {
        assert!(
            volumes.contains(&format!("{source}:{target}:ro").as_str()),
            "grafana mounts {source} at {target}: {volumes:?}"
        );
    }
    let providers: Value = serde_yaml::from_str(&read(
        "compose/grafana/provisioning/dashboards/dashboards.yml",
    )?)?;
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards"),
        "the dashboard provider reads the mounted dashboards"
    );
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .context("a home dashboard")?;
    let home = home
        .strip_prefix("/var/lib/grafana/dashboards/")
        .context("the home dashboard is one of ours")?;
    ensure!(
        Path::new(ROOT)
            .join("compose/grafana/dashboards")
            .join(home)
            .is_file(),
        "the home dashboard {home} is in compose/grafana/dashboards/"
    );
    let sources: Value = serde_yaml::from_str(&read(
        "compose/grafana/provisioning/datasources/datasources.yml",
    )?)?;
    let prometheus_source = sources["datasources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|source| source["type"].as_str() == Some("prometheus"))
        .context("a Prometheus data source")?;
    assert_eq!(
        prometheus_source["url"].as_str(),
        Some("http://prometheus:9090"),
        "Grafana reaches the prometheus service"
    );
    let uid = prometheus_source["uid"].as_str().context("uid")?;
    for board in ordermesh_testkit::dashboards(Path::new(ROOT))? {
        for panel in &board.panels {
            assert_eq!(
                panel.datasource_uid, uid,
                "{}: panel {:?} queries the provisioned Prometheus",
                board.file, panel.title
            );
        }
    }
    Ok(())
}
