//! The kinds of object the v1 API manages, their URL paths and envelope names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One kind of API object. The path segment is `/v1/{path}`; the envelope's
/// `kind` is the CamelCase singular.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Tenant,
    Function,
    Network,
    Port,
    Endpoint,
    Volume,
    IpsecTunnel,
    TlsListener,
}

impl Kind {
    /// Every kind, in dependency order: an object only references kinds that
    /// come before it, so creating in this order and deleting in reverse never
    /// trips a reference check.
    pub const ALL: [Kind; 8] = [
        Kind::Tenant,
        Kind::Function,
        Kind::Network,
        Kind::Port,
        Kind::Endpoint,
        Kind::Volume,
        Kind::IpsecTunnel,
        Kind::TlsListener,
    ];

    /// The URL path segment, e.g. `ipsec-tunnels`.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Tenant => "tenants",
            Kind::Function => "functions",
            Kind::Network => "networks",
            Kind::Port => "ports",
            Kind::Endpoint => "endpoints",
            Kind::Volume => "volumes",
            Kind::IpsecTunnel => "ipsec-tunnels",
            Kind::TlsListener => "tls-listeners",
        }
    }

    /// The envelope name, e.g. `IpsecTunnel`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tenant => "Tenant",
            Kind::Function => "Function",
            Kind::Network => "Network",
            Kind::Port => "Port",
            Kind::Endpoint => "Endpoint",
            Kind::Volume => "Volume",
            Kind::IpsecTunnel => "IpsecTunnel",
            Kind::TlsListener => "TlsListener",
        }
    }

    pub fn from_path(path: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.path() == path)
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Accepts what an operator types on the command line: the path
    /// (`ipsec-tunnels`), the envelope name (`IpsecTunnel`), or either in
    /// lower case and singular (`ipsec-tunnel`, `ipsectunnel`, `port`).
    pub fn parse_loose(s: &str) -> Option<Kind> {
        let norm = |x: &str| x.to_ascii_lowercase().replace(['-', '_'], "");
        let want = norm(s);
        Kind::ALL.into_iter().find(|k| {
            let path = norm(k.path());
            let name = norm(k.name());
            want == path || want == name || want.strip_suffix('s') == Some(name.as_str())
        })
    }

    /// Spec fields that are write-only: accepted on write, sealed at rest,
    /// never returned (a read shows `<field>_set: true`).
    pub fn secret_fields(self) -> &'static [&'static str] {
        match self {
            Kind::IpsecTunnel => &["key_in", "key_out"],
            Kind::TlsListener => &["private_key_pem"],
            _ => &[],
        }
    }

    /// Whether the object is its own tenant (tenants have `tenant == id`).
    pub fn is_tenant(self) -> bool {
        self == Kind::Tenant
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::parse_loose(s).ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// A kind name that is not one of the v1 kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?}; expected one of tenants, functions, networks, ports, endpoints, volumes, ipsec-tunnels, tls-listeners"
)]
pub struct UnknownKind(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_path(k.path()), Some(k));
            assert_eq!(Kind::from_name(k.name()), Some(k));
            assert_eq!(Kind::parse_loose(k.path()), Some(k));
        }
    }

    #[test]
    fn loose_parsing_accepts_operator_spellings() {
        assert_eq!(Kind::parse_loose("port"), Some(Kind::Port));
        assert_eq!(Kind::parse_loose("ipsec-tunnel"), Some(Kind::IpsecTunnel));
        assert_eq!(Kind::parse_loose("TlsListener"), Some(Kind::TlsListener));
        assert_eq!(Kind::parse_loose("tenant"), Some(Kind::Tenant));
        assert_eq!(Kind::parse_loose("bogus"), None);
    }
}
