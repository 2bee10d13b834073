//! The API's TLS, on `dpu_crypto::mtls` (the listener's rustls config and
//! the peer's SPIFFE ids): here only the mapping of a connection's verified
//! certificate to the caller's role.

use dpu_api::identity::Role;
use rustls::pki_types::CertificateDer;

pub use dpu_crypto::mtls::{MtlsError as TlsError, TlsFiles, load_certs, server_config, uri_sans};

use super::authz::Caller;

/// The caller of a connection, from its verified peer certificate chain.
pub fn caller_from_peer(certs: Option<&[CertificateDer<'_>]>, trust_domain: &str) -> Caller {
    let Some(uris) = dpu_crypto::mtls::peer_uri_sans(certs) else {
        return Caller::Anonymous;
    };
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
