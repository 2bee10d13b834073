//! `dpu-pki`: a private CA and certificates whose URI SAN is the caller's
//! SPIFFE ID, for `dpu-agent dev` (its `STATE_DIR/pki/`) and for tests.
//! Production agents get their server certificate and the fleet's CA at
//! provisioning time and never link this crate (the agent takes it only
//! with its `dev` feature). See README.md.

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

/// The files of a dev PKI directory (`dpu-agent dev` writes them under
/// `STATE_DIR/pki/`).
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

/// No TENANCY.md invariant is proven here: these check the CA and identities
/// that the tests proving them (mutual TLS roles, tenant TLS listeners) and
/// `dpu-agent dev` rely on.
#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    /// Parses the one certificate of `pem` and hands it to `f`.
    fn with_cert<T>(
        pem: &str,
        f: impl FnOnce(&x509_parser::certificate::X509Certificate) -> T,
    ) -> T {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        f(&cert)
    }

    fn sans(pem: &str) -> Vec<String> {
        with_cert(pem, |c| {
            let mut out = Vec::new();
            for ext in c.extensions() {
                if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                    for n in &san.general_names {
                        out.push(match n {
                            GeneralName::URI(u) => format!("uri:{u}"),
                            GeneralName::DNSName(d) => format!("dns:{d}"),
                            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                            other => format!("{other:?}"),
                        });
                    }
                }
            }
            out
        })
    }

    /// Whether `leaf`'s signature verifies with `ca`'s public key (ECDSA
    /// P-256, SHA-256: rcgen's default key), checked with ring, not with
    /// what rcgen says it did.
    fn signed_by(leaf: &str, ca: &str) -> bool {
        let ca_key = with_cert(ca, |c| c.public_key().subject_public_key.data.to_vec());
        with_cert(leaf, |c| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &ca_key,
            )
            .verify(c.tbs_certificate.as_ref(), &c.signature_value.data)
            .is_ok()
        })
    }

    #[test]
    fn issued_identity_names_the_spiffe_id_and_is_signed_by_the_ca() {
        let ca = Ca::generate("test CA").unwrap();
        let id = ca
            .issue("spiffe://td.example/dpu-agent", &["localhost", "127.0.0.1"])
            .unwrap();
        let sans = sans(&id.cert_pem);
        assert!(
            sans.contains(&"uri:spiffe://td.example/dpu-agent".to_string()),
            "{sans:?}"
        );
        assert!(sans.contains(&"dns:localhost".to_string()), "{sans:?}");
        assert!(sans.contains(&"ip:[127, 0, 0, 1]".to_string()), "{sans:?}");
        assert!(signed_by(&id.cert_pem, &ca.cert_pem));
        let other = Ca::generate("another CA").unwrap();
        assert!(!signed_by(&id.cert_pem, &other.cert_pem));
        with_cert(&ca.cert_pem, |c| assert!(c.is_ca()));
        with_cert(&id.cert_pem, |c| {
            assert!(!c.is_ca());
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && eku.server_auth);
        });
    }

    #[test]
    fn identity_without_names_is_a_client_only() {
        let ca = Ca::generate("test CA").unwrap();
        let id = ca
            .issue("spiffe://td.example/fleet-controller", &[])
            .unwrap();
        assert_eq!(
            sans(&id.cert_pem),
            ["uri:spiffe://td.example/fleet-controller"]
        );
        with_cert(&id.cert_pem, |c| {
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
        });
    }

    #[test]
    fn a_ca_loaded_from_pem_issues_for_the_same_ca() {
        let ca = Ca::generate("test CA").unwrap();
        let loaded = Ca::from_pem(&ca.cert_pem, ca.key_pem()).unwrap();
        let id = loaded.issue("spiffe://td.example/x", &[]).unwrap();
        assert!(signed_by(&id.cert_pem, &ca.cert_pem));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Ca::from_pem("not a certificate", "not a key").is_err());
        let ca = Ca::generate("test CA").unwrap();
        // A key that is not PEM, or none.
        assert!(Ca::from_pem(&ca.cert_pem, "garbage").is_err());
        assert!(Ca::from_pem(&ca.cert_pem, "").is_err());
        // Not IA5 (ASCII) text: neither a URI nor a DNS name.
        assert!(ca.issue("spiffe://td.example/\u{e9}", &[]).is_err());
        assert!(ca.issue("spiffe://td.example/x", &["h\u{f6}st"]).is_err());
    }

    #[test]
    fn dev_pki_is_created_once_owner_only_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = ensure_dev_pki(&dir, "td.example", &["localhost"]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
        let ca = fs::read_to_string(pki.ca()).unwrap();
        for (cert, key) in [pki.server(), pki.admin(), pki.host_stub()] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
            assert_eq!(mode(&cert), 0o644, "{}", cert.display());
            assert!(signed_by(&fs::read_to_string(&cert).unwrap(), &ca));
        }
        let admin = fs::read_to_string(pki.admin().0).unwrap();
        assert_eq!(
            sans(&admin),
            [format!(
                "uri:{}",
                Role::FleetController.spiffe_id("td.example")
            )]
        );
        let stub = fs::read_to_string(pki.host_stub().0).unwrap();
        assert_eq!(
            sans(&stub),
            [format!(
                "uri:{}",
                Role::HostStub("localhost".into()).spiffe_id("td.example")
            )]
        );
        let server = fs::read_to_string(pki.server().0).unwrap();
        assert!(sans(&server).contains(&"uri:spiffe://td.example/dpu-agent".to_string()));

        // A second run keeps every file (a restarted dev agent keeps its
        // identities), and tightens a directory someone opened up.
        let before: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dev_pki(&dir, "td.example", &["localhost"]).unwrap();
        let after: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(before, after);
        assert_eq!(mode(&dir), 0o700);

        // A missing identity is issued again by the kept CA.
        fs::remove_file(pki.admin().0).unwrap();
        ensure_dev_pki(&dir, "td.example", &["localhost"]).unwrap();
        let admin2 = fs::read_to_string(pki.admin().0).unwrap();
        assert_ne!(admin, admin2);
        assert!(signed_by(&admin2, &ca));
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let err = ensure_dev_pki(&file.join("pki"), "td.example", &[]).unwrap_err();
        assert!(
            matches!(&err, PkiError::Io { path, .. } if path == &file.join("pki")),
            "{err:?}"
        );
    }
}
