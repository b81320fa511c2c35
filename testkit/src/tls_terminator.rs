//! A TLS terminator in front of a plaintext broker: how the tests reach a broker over TLS only,
//! since tansu does not serve TLS itself.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result};

/// A TLS terminator in front of a plaintext Kafka listener, as a load balancer or a sidecar
/// terminates TLS for a broker: it accepts TLS on loopback with the given certificate and copies
/// bytes both ways to `upstream`. tansu 0.6 accepts `--cert`/`--key` but does not serve TLS yet, so
/// this is how the tests put a TLS-only broker address in front of it. The broker must advertise
/// [`TlsTerminator::addr`], so that clients come back through TLS after the bootstrap.
#[derive(Debug)]
pub struct TlsTerminator {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsTerminator {
    /// Listens on a free loopback port; connections are forwarded to `upstream` from then on.
    pub async fn start(cert: &Path, key: &Path, upstream: SocketAddr) -> Result<Self> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio_rustls::rustls;

        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("{}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed handshake (a plaintext client, a client that does not trust the
                    // certificate) just drops the connection, as a real terminator would.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
