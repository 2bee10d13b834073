//! Roles, decided by the SPIFFE-style URI SAN of the caller's certificate.

use std::fmt;

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "dpu.local";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// `spiffe://<td>/fleet-controller`: everything.
    FleetController,
    /// `spiffe://<td>/tenant/<tenant>`: that tenant's objects only.
    Tenant(String),
    /// `spiffe://<td>/host-stub/<host>`: report inventory, read its assignments.
    HostStub(String),
}

impl Role {
    /// Parses a URI SAN under `trust_domain`. Any other URI is no role.
    pub fn from_spiffe_id(uri: &str, trust_domain: &str) -> Option<Role> {
        let rest = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(trust_domain)?
            .strip_prefix('/')?;
        let label_ok = |s: &str| crate::validate::check_label("", s).is_ok();
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["fleet-controller"] => Some(Role::FleetController),
            ["tenant", t] if label_ok(t) => Some(Role::Tenant((*t).to_string())),
            ["host-stub", h] if label_ok(h) => Some(Role::HostStub((*h).to_string())),
            _ => None,
        }
    }

    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        match self {
            Role::FleetController => format!("spiffe://{trust_domain}/fleet-controller"),
            Role::Tenant(t) => format!("spiffe://{trust_domain}/tenant/{t}"),
            Role::HostStub(h) => format!("spiffe://{trust_domain}/host-stub/{h}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::FleetController => f.write_str("fleet-controller"),
            Role::Tenant(t) => write!(f, "tenant/{t}"),
            Role::HostStub(h) => write!(f, "host-stub/{h}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_map_to_roles() {
        let td = "dpu.local";
        assert_eq!(
            Role::from_spiffe_id("spiffe://dpu.local/fleet-controller", td),
            Some(Role::FleetController)
        );
        assert_eq!(
            Role::from_spiffe_id("spiffe://dpu.local/tenant/acme", td),
            Some(Role::Tenant("acme".into()))
        );
        assert_eq!(
            Role::from_spiffe_id("spiffe://dpu.local/host-stub/h1", td),
            Some(Role::HostStub("h1".into()))
        );
        assert_eq!(
            Role::from_spiffe_id("spiffe://other.td/fleet-controller", td),
            None
        );
        assert_eq!(
            Role::from_spiffe_id("spiffe://dpu.local/tenant/Bad_Name", td),
            None
        );
        assert_eq!(
            Role::from_spiffe_id("spiffe://dpu.local/tenant/a/b", td),
            None
        );
        assert_eq!(
            Role::from_spiffe_id("https://dpu.local/fleet-controller", td),
            None
        );
        assert_eq!(
            Role::from_spiffe_id("spiffe://dpu.localx/fleet-controller", td),
            None
        );
    }

    #[test]
    fn round_trip() {
        for r in [
            Role::FleetController,
            Role::Tenant("a".into()),
            Role::HostStub("h".into()),
        ] {
            assert_eq!(Role::from_spiffe_id(&r.spiffe_id("td"), "td"), Some(r));
        }
    }
}
