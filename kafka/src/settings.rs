//! How a service reaches Kafka (brokers, TLS, SASL), checked before any client is made, and the
//! librdkafka configuration every producer, consumer and admin client starts from.

use std::path::PathBuf;

use ordermesh_platform::auth::Secret;
use rdkafka::ClientConfig;

use crate::DEFAULT_EMBEDDED_ADDR;

/// How a service reaches Kafka: the brokers and, for a secured cluster, TLS and SASL. Flattened into
/// each service's settings; every producer, consumer and admin client a service makes starts from
/// [`KafkaSettings::client_config`], so securing the cluster needs no other change. Each field is
/// passed through to the librdkafka property named in its doc.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = DEFAULT_EMBEDDED_ADDR)]
    pub brokers: String,

    /// How to talk to the brokers (`security.protocol`): plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value_t
    )]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism (`sasl.mechanism`): SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN. Required with sasl_*.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name (`sasl.username`). Required with sasl_*.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password (`sasl.password`). Required with sasl_*; never logged.
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,

    /// TLS: the CA certificates (PEM) the brokers' certificates must chain to (`ssl.ca.location`).
    /// Unset: the system's trusted roots.
    #[arg(long = "kafka-ssl-ca", env = "KAFKA_SSL_CA")]
    pub ssl_ca: Option<PathBuf>,

    /// TLS client certificate (PEM) for brokers that authenticate clients by certificate
    /// (`ssl.certificate.location`). With KAFKA_SSL_KEY.
    #[arg(long = "kafka-ssl-cert", env = "KAFKA_SSL_CERT")]
    pub ssl_cert: Option<PathBuf>,

    /// The TLS client certificate's private key (PEM, `ssl.key.location`).
    #[arg(long = "kafka-ssl-key", env = "KAFKA_SSL_KEY")]
    pub ssl_key: Option<PathBuf>,
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    // librdkafka's (and Kafka's) spelling, not clap's kebab-case.
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`, the ones that need nothing beyond a user name and password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// Kafka settings that contradict each other or name files that cannot be read. Each message names
/// the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSettingsError {
    #[error("KAFKA_SECURITY_PROTOCOL={protocol} needs {missing}")]
    Missing {
        protocol: &'static str,
        missing: &'static str,
    },
    #[error(
        "{setting} is set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use it (did you mean {instead}?)"
    )]
    Unused {
        setting: &'static str,
        protocol: &'static str,
        instead: &'static str,
    },
    #[error("KAFKA_SSL_CERT and KAFKA_SSL_KEY go together: set both or neither")]
    HalfPair,
    #[error("{setting}: cannot read {path}: {source}")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl KafkaSettings {
    /// Plaintext to `brokers`, as the quick start and the tests' own clients use it.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }

    /// Checks the settings before any client is made: librdkafka would take most mistakes silently
    /// (SASL settings on a plaintext connection are ignored) or report them later, per client,
    /// without the setting's name.
    pub fn check(&self) -> Result<(), KafkaSettingsError> {
        let protocol = self.security_protocol.as_str();
        if self.security_protocol.sasl() {
            let missing = [
                (self.sasl_mechanism.is_none(), "KAFKA_SASL_MECHANISM"),
                (self.sasl_username.is_none(), "KAFKA_SASL_USERNAME"),
                (self.sasl_password.is_none(), "KAFKA_SASL_PASSWORD"),
            ];
            if let Some((_, missing)) = missing.into_iter().find(|(absent, _)| *absent) {
                return Err(KafkaSettingsError::Missing { protocol, missing });
            }
        } else {
            let sasl = [
                (self.sasl_mechanism.is_some(), "KAFKA_SASL_MECHANISM"),
                (self.sasl_username.is_some(), "KAFKA_SASL_USERNAME"),
                (self.sasl_password.is_some(), "KAFKA_SASL_PASSWORD"),
            ];
            if let Some((_, setting)) = sasl.into_iter().find(|(present, _)| *present) {
                let instead = if self.security_protocol.tls() {
                    "sasl_ssl"
                } else {
                    "sasl_plaintext or sasl_ssl"
                };
                return Err(KafkaSettingsError::Unused {
                    setting,
                    protocol,
                    instead,
                });
            }
        }
        let files = [
            ("KAFKA_SSL_CA", &self.ssl_ca),
            ("KAFKA_SSL_CERT", &self.ssl_cert),
            ("KAFKA_SSL_KEY", &self.ssl_key),
        ];
        for (setting, path) in files {
            let Some(path) = path else { continue };
            if !self.security_protocol.tls() {
                let instead = if self.security_protocol.sasl() {
                    "sasl_ssl"
                } else {
                    "ssl or sasl_ssl"
                };
                return Err(KafkaSettingsError::Unused {
                    setting,
                    protocol,
                    instead,
                });
            }
            if let Err(source) = std::fs::File::open(path) {
                return Err(KafkaSettingsError::Unreadable {
                    setting,
                    path: path.clone(),
                    source,
                });
            }
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            return Err(KafkaSettingsError::HalfPair);
        }
        Ok(())
    }

    /// Client settings every ordermesh Kafka client starts from.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Network requests time out after 10 s instead of librdkafka's 60 s, so an unreachable
            // broker surfaces as an error while a caller is still waiting for it.
            .set("socket.timeout.ms", "10000")
            .set("security.protocol", self.security_protocol.as_str());
        if self.security_protocol.tls() {
            // librdkafka checks the broker's certificate against its host name by default
            // (`ssl.endpoint.identification.algorithm=https`); that stays. Without a CA file,
            // "probe" finds the system's roots (OpenSSL is built in, and its own default path
            // would point into the build directory).
            let ca = self
                .ssl_ca
                .as_deref()
                .map_or("probe".into(), |p| p.display().to_string());
            config.set("ssl.ca.location", ca);
            if let (Some(cert), Some(key)) = (&self.ssl_cert, &self.ssl_key) {
                config
                    .set("ssl.certificate.location", cert.display().to_string())
                    .set("ssl.key.location", key.display().to_string());
            }
        }
        if self.security_protocol.sasl() {
            if let Some(mechanism) = self.sasl_mechanism {
                config.set("sasl.mechanism", mechanism.as_str());
            }
            if let Some(username) = &self.sasl_username {
                config.set("sasl.username", username);
            }
            if let Some(password) = &self.sasl_password {
                config.set("sasl.password", password.expose());
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_ssl(ca: PathBuf) -> KafkaSettings {
        KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("ordermesh".into()),
            sasl_password: Some("pw".into()),
            ssl_ca: Some(ca),
            ..KafkaSettings::plaintext("kafka:9093")
        }
    }

    #[test]
    fn each_setting_reaches_librdkafka_under_its_own_name() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").expect("write");
        let settings = sasl_ssl(ca.clone());
        settings.check().expect("complete");
        let config = settings.client_config("test");
        let get = |key| config.get(key).unwrap_or_default().to_owned();
        assert_eq!(get("bootstrap.servers"), "kafka:9093");
        assert_eq!(get("security.protocol"), "sasl_ssl");
        assert_eq!(get("sasl.mechanism"), "SCRAM-SHA-512");
        assert_eq!(get("sasl.username"), "ordermesh");
        assert_eq!(get("sasl.password"), "pw");
        assert_eq!(get("ssl.ca.location"), ca.display().to_string());

        let plain = KafkaSettings::plaintext("localhost:9092").client_config("test");
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.password"), None);
        let system_roots = KafkaSettings {
            security_protocol: SecurityProtocol::Ssl,
            ..KafkaSettings::plaintext("kafka:9093")
        };
        assert_eq!(
            system_roots.client_config("t").get("ssl.ca.location"),
            Some("probe")
        );
    }

    #[test]
    fn contradictory_or_incomplete_settings_are_refused_naming_the_setting() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").expect("write");
        let error = |settings: KafkaSettings| settings.check().expect_err("refused").to_string();

        let no_password = KafkaSettings {
            sasl_password: None,
            ..sasl_ssl(ca.clone())
        };
        assert_eq!(
            error(no_password),
            "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_PASSWORD"
        );
        let sasl_on_plaintext = KafkaSettings {
            sasl_username: Some("u".into()),
            ..KafkaSettings::plaintext("k:9092")
        };
        assert_eq!(
            error(sasl_on_plaintext),
            "KAFKA_SASL_USERNAME is set, but KAFKA_SECURITY_PROTOCOL=plaintext does not use it \
             (did you mean sasl_plaintext or sasl_ssl?)"
        );
        let ca_without_tls = KafkaSettings {
            security_protocol: SecurityProtocol::SaslPlaintext,
            ssl_ca: Some(ca.clone()),
            ..sasl_ssl(ca.clone())
        };
        assert!(error(ca_without_tls).starts_with("KAFKA_SSL_CA is set"));
        let missing_file = sasl_ssl(dir.path().join("nope.pem"));
        assert!(error(missing_file).starts_with("KAFKA_SSL_CA: cannot read"));
        let half_pair = KafkaSettings {
            ssl_cert: Some(ca.clone()),
            ..sasl_ssl(ca.clone())
        };
        assert_eq!(
            error(half_pair),
            "KAFKA_SSL_CERT and KAFKA_SSL_KEY go together: set both or neither"
        );
    }

    #[test]
    fn the_password_never_prints() {
        let settings = sasl_ssl("ca.pem".into());
        assert!(!format!("{settings:?}").contains("pw\""), "{settings:?}");
    }
}
