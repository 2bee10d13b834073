//! The rustls client configuration: trust only the given CA, present the
//! given client identity. PEM errors name their source, never its content.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::error::ClientError;

/// PEM text and where it came from (a file name, for messages).
pub(crate) struct Pem<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a key file into memory that is wiped when dropped.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    read_file(path).map(Zeroizing::new)
}

fn pem_error(name: &str, reason: impl Into<String>) -> ClientError {
    ClientError::Pem {
        source_name: name.to_string(),
        reason: reason.into(),
    }
}

fn certificates(pem: &Pem<'_>) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let mut reader = pem.bytes;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem_error(pem.name, "is not valid PEM"))?;
    if certs.is_empty() {
        return Err(pem_error(pem.name, "contains no CERTIFICATE block"));
    }
    Ok(certs)
}

fn private_key(pem: &Pem<'_>) -> Result<PrivateKeyDer<'static>, ClientError> {
    let mut reader = pem.bytes;
    // The parser's own error text is not passed on: it could quote the key.
    rustls_pemfile::private_key(&mut reader)
        .map_err(|_| pem_error(pem.name, "is not valid PEM"))?
        .ok_or_else(|| {
            pem_error(
                pem.name,
                "contains no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1)",
            )
        })
}

/// A client configuration trusting only the CA certificates in `ca`, with
/// the client certificate chain and key when given; offers h2 and
/// http/1.1.
pub(crate) fn client_config(
    ca: Pem<'_>,
    identity: Option<(Pem<'_>, Pem<'_>)>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(&ca)?.into_iter().enumerate() {
        roots.add(cert).map_err(|_| {
            pem_error(
                ca.name,
                format!("certificate {} is not a usable CA certificate", i + 1),
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = certificates(&cert)?;
            let key = private_key(&key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(ClientError::Tls)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
