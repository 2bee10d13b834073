//! The agent's own mutual-TLS listener: a rustls server (ring provider,
//! safe default versions, ALPN h2 + http/1.1) that asks for a client
//! certificate, verifies it against the configured client CA, and hands the
//! verified leaf's URI SANs (the SPIFFE ids) to the caller, which maps them
//! to roles (`dpu_api::identity::Role`). A connection without a certificate
//! is let through the handshake so that requests get a clear 401 instead of
//! a TLS alert. Keys are read into zeroizing buffers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} holds no {expect}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expect: &'static str,
    },
    #[error("invalid TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA for verification")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Where the server's identity and the client CA come from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MtlsError> {
    std::fs::read(path).map_err(|source| MtlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, MtlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(MtlsError::Empty {
            what,
            path: path.to_path_buf(),
            expect: "PEM certificate",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, MtlsError> {
    let pem = zeroize::Zeroizing::new(read("server key", path)?);
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| MtlsError::Empty {
            what: "server key",
            path: path.to_path_buf(),
            expect: "PEM private key",
        })
}

/// The rustls server config of the agent's API listener.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, MtlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs("client CA", &files.client_ca)? {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs("server certificate", &files.cert)?,
            load_key(&files.key)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The URI SANs of a connection's verified leaf certificate; `None` when
/// the client sent no certificate.
pub fn peer_uri_sans(certs: Option<&[CertificateDer<'_>]>) -> Option<Vec<String>> {
    certs.and_then(|c| c.first()).map(uri_sans)
}

/// The URI subject alternative names of a DER certificate.
pub fn uri_sans(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}
