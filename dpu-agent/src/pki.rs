//! Identities for `dpu-agent dev` and for tests: a private CA and
//! certificates whose URI SAN is the caller's SPIFFE ID. Production agents
//! get their server certificate and the fleet's CA at provisioning time and
//! never use this.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use dpu_api::identity::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write or read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &"<pem>")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A CA that issues identities.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(<key>)")
    }
}

impl Ca {
    /// A new self-signed CA.
    pub fn generate(name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            key_pem,
        })
    }

    /// A CA loaded from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
            key_pem: key_pem.to_string(),
        })
    }

    /// Issues a certificate for `spiffe_id`, usable as a TLS client and, when
    /// `dns` is not empty, as a server for those names and addresses.
    pub fn issue(&self, spiffe_id: &str, dns: &[&str]) -> Result<Identity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id);
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into()?));
        for name in dns {
            match name.parse::<std::net::IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params
                    .subject_alt_names
                    .push(SanType::DnsName((*name).try_into()?)),
            }
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if !dns.is_empty() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// The files `dpu-agent dev` writes under `DIR/pki/`.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server-key.pem"))
    }
    pub fn admin(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("admin.pem"), self.dir.join("admin-key.pem"))
    }
    pub fn host_stub(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("host-stub.pem"),
            self.dir.join("host-stub-key.pem"),
        )
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates what is missing of the dev PKI in `dir` (keeps what exists, so a
/// restarted dev agent keeps its identities): the CA, the server identity
/// for `server_names`, an admin (fleet-controller) and a host-stub
/// (`host-stub/localhost`) identity.
pub fn ensure_dev_pki(
    dir: &Path,
    trust_domain: &str,
    server_names: &[&str],
) -> Result<DevPki, PkiError> {
    // Owner-only: it holds the CA's and the identities' private keys.
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    let pki = DevPki {
        dir: dir.to_path_buf(),
    };
    let ca_key_path = dir.join("ca-key.pem");
    let ca = if pki.ca().exists() && ca_key_path.exists() {
        Ca::from_pem(&read(&pki.ca())?, &read(&ca_key_path)?)?
    } else {
        let ca = Ca::generate("dpu-agent dev CA")?;
        write_file(&ca_key_path, ca.key_pem(), 0o600)?;
        write_file(&pki.ca(), &ca.cert_pem, 0o644)?;
        ca
    };
    let wanted: [((PathBuf, PathBuf), String, &[&str]); 3] = [
        (
            pki.server(),
            format!("spiffe://{trust_domain}/dpu-agent"),
            server_names,
        ),
        (
            pki.admin(),
            Role::FleetController.spiffe_id(trust_domain),
            &[],
        ),
        (
            pki.host_stub(),
            Role::HostStub("localhost".into()).spiffe_id(trust_domain),
            &[],
        ),
    ];
    for ((cert, key), id, names) in wanted {
        if cert.exists() && key.exists() {
            continue;
        }
        let ident = ca.issue(&id, names)?;
        write_file(&key, &ident.key_pem, 0o600)?;
        write_file(&cert, &ident.cert_pem, 0o644)?;
    }
    Ok(pki)
}
