//! A development CA and a certificate for each service (`ordermesh dev-certs`), for trying TLS and
//! mutual TLS locally and for the tests. A runner tool: the services only read certificates.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

/// Why the development certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertsError {
    #[error("cannot create the development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The services a development CA issues certificates for: each gets `<name>.pem` and
/// `<name>.key`, valid as a server and as a client, for its name, `localhost` and 127.0.0.1.
/// `kafka` is for a broker (or a TLS proxy in front of one) the services reach with KAFKA_SSL_CA.
pub const DEV_SERVICES: [&str; 4] = ["order", "payment", "notifier", "kafka"];

/// Writes a new development CA (`ca.pem`) and a certificate and key for each of
/// [`DEV_SERVICES`] into `dir`, plus `outsider.pem`/`.key` from a second, unrelated CA (what a
/// stranger would present). For development and tests only: the CA's key is not kept, so nothing
/// more can be signed by it, and the keys are written unencrypted.
pub fn write_dev_certs(dir: &Path) -> Result<Vec<PathBuf>, DevCertsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    std::fs::create_dir_all(dir).map_err(|source| DevCertsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    let mut write = |name: &str, contents: String| -> Result<(), DevCertsError> {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| DevCertsError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok(())
    };

    let ca = |common_name: &str| -> Result<(String, Issuer<'static, KeyPair>), DevCertsError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), Issuer::new(params, key)))
    };
    let leaf =
        |name: &str, issuer: &Issuer<'_, KeyPair>| -> Result<(String, String), DevCertsError> {
            let mut params = CertificateParams::new(vec![name.to_owned(), "localhost".to_owned()])?;
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };

    let (ca_pem, issuer) = ca("ordermesh development CA")?;
    write("ca.pem", ca_pem)?;
    for service in DEV_SERVICES {
        let (cert, key) = leaf(service, &issuer)?;
        write(&format!("{service}.pem"), cert)?;
        write(&format!("{service}.key"), key)?;
    }
    let (_, stranger) = ca("not the ordermesh CA")?;
    let (cert, key) = leaf("order", &stranger)?;
    write("outsider.pem", cert)?;
    write("outsider.key", key)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use ordermesh_platform::tls::certificate_names;
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    use super::*;

    #[test]
    fn development_certificates_name_their_service_and_loopback() {
        let dir = tempfile::tempdir().expect("dir");
        let written = write_dev_certs(dir.path()).expect("certificates");
        assert_eq!(written.len(), 11, "{written:?}");
        let pem = std::fs::read(dir.path().join("payment.pem")).expect("payment.pem");
        let der = CertificateDer::from_pem_slice(&pem).expect("a PEM certificate");
        assert_eq!(certificate_names(&der), ["payment", "localhost"]);
    }
}
