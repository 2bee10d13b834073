//! The API's TLS: a rustls server that asks for a client certificate,
//! verifies it against the configured CA, and turns its SPIFFE URI SAN into
//! the caller's role. A connection without a certificate is let through the
//! handshake so that requests get a clear 401 instead of a TLS alert.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dpu_api::identity::Role;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::authz::Caller;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expect: "PEM certificate",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = zeroize::Zeroizing::new(read("server key", path)?);
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            what: "server key",
            path: path.to_path_buf(),
            expect: "PEM private key",
        })
}

/// A rustls server config for the API.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
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

/// The caller of a connection, from its verified peer certificate chain.
pub fn caller_from_peer(certs: Option<&[CertificateDer<'_>]>, trust_domain: &str) -> Caller {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return Caller::Anonymous;
    };
    let uris = uri_sans(leaf);
    for uri in &uris {
        if let Some(role) = Role::from_spiffe_id(uri, trust_domain) {
            return Caller::Role(role);
        }
    }
    Caller::Unrecognized(
        uris.first()
            .cloned()
            .unwrap_or_else(|| "<no URI SAN>".to_string()),
    )
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
