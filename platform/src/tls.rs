//! TLS for the gRPC servers and clients: identities from PEM files, mutual TLS, the names a client
//! certificate carries (the development CA, `ordermesh dev-certs`, is the runner's).
//!
//! Plaintext stays the default so the quick start needs no certificates; a service listening in
//! plaintext anywhere but loopback says so loudly at start-up. Everything here is rustls (on ring)
//! through tonic: no OpenSSL.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tonic::{
    Request, Status,
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig},
};

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting} ({path}): {source}")]
    Read {
        setting: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{set} is set but {unset} is not: set both for TLS, or neither for plaintext")]
    Half { set: String, unset: String },
    #[error("{setting} needs TLS: set {prefix}_TLS_CERT and {prefix}_TLS_KEY too")]
    NeedsTls { setting: String, prefix: String },
}

/// A server's TLS files, as its settings name them (`<PREFIX>_TLS_CERT`, `_TLS_KEY`,
/// `_TLS_CLIENT_CA`).
#[derive(Debug, Clone, Default)]
pub struct ServerTlsFiles {
    /// The settings' prefix, e.g. `PAYMENT`, for error messages.
    pub prefix: &'static str,
    /// The server's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// With it, mutual TLS: only clients whose certificate chains to this CA (PEM) get through the
    /// handshake.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// The server's TLS configuration, or None for plaintext.
    pub fn load(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let prefix = self.prefix;
        let setting = |name: &str| format!("{prefix}_TLS_{name}");
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None) => {
                return match &self.client_ca {
                    Some(_) => Err(TlsError::NeedsTls {
                        setting: setting("CLIENT_CA"),
                        prefix: prefix.to_owned(),
                    }),
                    None => Ok(None),
                };
            }
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err(half(setting("CERT"), setting("KEY"))),
            (None, Some(_)) => return Err(half(setting("KEY"), setting("CERT"))),
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read(&setting("CERT"), cert)?,
            read(&setting("KEY"), key)?,
        ));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(&setting("CLIENT_CA"), ca)?));
        }
        Ok(Some(config))
    }

    /// [`ServerTlsFiles::load`] for a server about to serve `service` on `listener`, saying loudly
    /// if that is plaintext off loopback.
    pub fn load_for(
        &self,
        service: &str,
        listener: &TcpListener,
    ) -> Result<Option<ServerTlsConfig>, TlsError> {
        let config = self.load()?;
        warn_if_plaintext(service, listener, config.is_some(), self.prefix);
        Ok(config)
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }
}

/// A client's TLS files for calling a server over TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    /// The settings' prefix, e.g. `ORDER_PAYMENT`, for error messages.
    pub prefix: &'static str,
    /// The CA the server's certificate must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// This client's own certificate and key (PEM), for servers that require mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, if not the URL's host.
    pub domain: Option<String>,
}

impl ClientTlsFiles {
    /// The client's TLS configuration, or None for plaintext (no CA set).
    pub fn load(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        let prefix = self.prefix;
        let setting = |name: &str| format!("{prefix}_TLS_{name}");
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err(half(setting("CERT"), setting("CA")));
            }
            return Ok(None);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&setting("CA"), ca)?));
        match (&self.cert, &self.key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(&setting("CERT"), cert)?,
                    read(&setting("KEY"), key)?,
                ));
            }
            (Some(_), None) => return Err(half(setting("CERT"), setting("KEY"))),
            (None, Some(_)) => return Err(half(setting("KEY"), setting("CERT"))),
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(Some(config))
    }
}

fn half(set: String, unset: String) -> TlsError {
    TlsError::Half { set, unset }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting: setting.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Says loudly that `addr` is served in plaintext, unless that is only loopback: a copy of this
/// template must not go to production without TLS by accident.
fn warn_if_plaintext(service: &str, listener: &TcpListener, tls: bool, prefix: &str) {
    if let Some(addr) = crate::listeners::off_loopback(listener)
        && !tls
    {
        tracing::warn!(
            service,
            %addr,
            "PLAINTEXT gRPC on a non-loopback address: anyone on the network can read and forge \
             calls; set {prefix}_TLS_CERT and {prefix}_TLS_KEY"
        );
    }
}

/// Lets a call through only if the caller's certificate (mutual TLS) names one of `allowed`, as
/// a DNS name in its subject alternative names: the mesh CA vouches for who the caller is, this
/// decides what that caller may call. Without TLS there is no certificate to check, and everyone
/// is let through (the plaintext quick start).
#[derive(Debug, Clone)]
pub struct AllowClients {
    allowed: Option<Arc<[String]>>,
    service: &'static str,
}

impl AllowClients {
    /// Checks callers of `service` against `allowed`.
    pub fn only(service: &'static str, allowed: Vec<String>) -> Self {
        Self {
            allowed: Some(allowed.into()),
            service,
        }
    }

    /// Lets everyone through: the server does not use mutual TLS.
    pub fn anyone(service: &'static str) -> Self {
        Self {
            allowed: None,
            service,
        }
    }
}

impl Interceptor for AllowClients {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(allowed) = &self.allowed else {
            return Ok(request);
        };
        let service = self.service;
        let wanted = allowed.join(", ");
        let Some(leaf) = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
        else {
            return Err(Status::permission_denied(format!(
                "{service} accepts only {wanted}: connect with mutual TLS and a client certificate"
            )));
        };
        let names = certificate_names(&leaf);
        if names.iter().any(|name| allowed.iter().any(|a| a == name)) {
            return Ok(request);
        }
        Err(Status::permission_denied(format!(
            "{service} accepts only {wanted}; the client certificate names {}",
            if names.is_empty() {
                "nothing".to_owned()
            } else {
                names.join(", ")
            }
        )))
    }
}

/// The DNS names in a certificate's subject alternative names (none if it does not parse).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let der = CertificateDer::from(der);
    match webpki::EndEntityCert::try_from(&der) {
        Ok(cert) => cert.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_setting_pair_is_an_error_naming_both() {
        let files = ServerTlsFiles {
            prefix: "PAYMENT",
            cert: Some("payment.pem".into()),
            ..Default::default()
        };
        let error = files.load().expect_err("no key").to_string();
        assert!(
            error.contains("PAYMENT_TLS_CERT") && error.contains("PAYMENT_TLS_KEY"),
            "{error}"
        );
        let files = ServerTlsFiles {
            prefix: "PAYMENT",
            client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        let error = files.load().expect_err("client CA without TLS").to_string();
        assert!(error.contains("PAYMENT_TLS_CLIENT_CA needs TLS"), "{error}");
        let missing = ServerTlsFiles {
            prefix: "ORDER",
            cert: Some("/nonexistent/order.pem".into()),
            key: Some("/nonexistent/order.key".into()),
            client_ca: None,
        };
        let error = missing.load().expect_err("no such file").to_string();
        assert!(
            error.contains("ORDER_TLS_CERT (/nonexistent/order.pem)"),
            "{error}"
        );
        assert!(
            ServerTlsFiles::default()
                .load()
                .expect("plaintext")
                .is_none()
        );
    }
}
