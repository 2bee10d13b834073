//! Who may do what: the role × operation matrix of API.md, enforced in one
//! place. Handlers describe the operation; [`authorize`] answers. Pure, and
//! tested cell by cell.

use dpu_api::identity::Role;
use dpu_api::{Kind, Problem};

/// What a request wants to do, as far as authorization cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation<'a> {
    /// GET of one object owned by `tenant`.
    Read { kind: Kind, tenant: &'a str },
    /// List of `kind`, restricted to `tenant` when given.
    List { kind: Kind, tenant: Option<&'a str> },
    /// PUT or DELETE of an object owned (or to be owned) by `tenant`.
    Write { kind: Kind, tenant: &'a str },
    /// Watch, restricted to `tenant` when given.
    Watch { tenant: Option<&'a str> },
    /// `GET /v1/inventory`.
    ReadInventory,
    /// `PUT /v1/host/inventory`.
    ReportHostInventory,
    /// `GET /v1/host/assignments`.
    ReadHostAssignments,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/openapi.json`.
    OpenApi,
}

/// The caller as the TLS layer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A certificate whose URI SAN is no role of this trust domain.
    Unrecognized(String),
    Role(Role),
}

/// Allows or refuses `op` for `caller`: 401 without a certificate, 403 for a
/// role that may not do this.
pub fn authorize(caller: &Caller, op: &Operation<'_>) -> Result<(), Problem> {
    let role = match caller {
        Caller::Anonymous => {
            return Err(Problem::new(401, "a client certificate is required"));
        }
        Caller::Unrecognized(id) => {
            return Err(Problem::new(
                403,
                format!("certificate identity {id:?} has no role in this trust domain"),
            ));
        }
        Caller::Role(role) => role,
    };
    let allowed = match (role, op) {
        (Role::FleetController, _) => true,
        (Role::Tenant(t), Operation::Read { tenant, .. }) => t == tenant,
        (Role::Tenant(t), Operation::List { tenant, .. }) => tenant.is_some_and(|x| x == t),
        // Tenants do not change their own tenant object: quotas are the
        // fleet controller's.
        (
            Role::Tenant(_),
            Operation::Write {
                kind: Kind::Tenant, ..
            },
        ) => false,
        (Role::Tenant(t), Operation::Write { tenant, .. }) => t == tenant,
        (Role::Tenant(t), Operation::Watch { tenant }) => tenant.is_some_and(|x| x == t),
        (Role::Tenant(_), Operation::OpenApi) => true,
        (Role::Tenant(_), _) => false,
        (Role::HostStub(_), Operation::ReportHostInventory | Operation::ReadHostAssignments) => {
            true
        }
        (Role::HostStub(_), _) => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Problem::new(
            403,
            format!("role {role} may not {}", describe(op)),
        ))
    }
}

fn describe(op: &Operation<'_>) -> String {
    match op {
        Operation::Read { kind, tenant } => format!("read {} of tenant {tenant:?}", kind.path()),
        Operation::List {
            kind,
            tenant: Some(t),
        } => format!("list {} of tenant {t:?}", kind.path()),
        Operation::List { kind, tenant: None } => format!("list {} of every tenant", kind.path()),
        Operation::Write { kind, tenant } => format!("write {} of tenant {tenant:?}", kind.path()),
        Operation::Watch { tenant: Some(t) } => format!("watch tenant {t:?}"),
        Operation::Watch { tenant: None } => "watch every tenant".into(),
        Operation::ReadInventory => "read the inventory".into(),
        Operation::ReportHostInventory => "report host inventory".into(),
        Operation::ReadHostAssignments => "read host assignments".into(),
        Operation::Metrics => "read metrics".into(),
        Operation::OpenApi => "read the OpenAPI document".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(caller: &Caller, op: &Operation<'_>) -> u16 {
        match authorize(caller, op) {
            Ok(()) => 200,
            Err(p) => p.status,
        }
    }

    /// Every role against every operation, as API.md's table says.
    #[test]
    fn matrix_cell_by_cell() {
        let fleet = Caller::Role(Role::FleetController);
        let a = Caller::Role(Role::Tenant("a".into()));
        let host = Caller::Role(Role::HostStub("h1".into()));
        let anon = Caller::Anonymous;
        let other = Caller::Unrecognized("spiffe://evil/x".into());
        use Operation::*;
        let ops: Vec<Operation<'_>> = vec![
            Read {
                kind: Kind::Port,
                tenant: "a",
            },
            Read {
                kind: Kind::Port,
                tenant: "b",
            },
            Read {
                kind: Kind::Tenant,
                tenant: "a",
            },
            List {
                kind: Kind::Port,
                tenant: Some("a"),
            },
            List {
                kind: Kind::Port,
                tenant: Some("b"),
            },
            List {
                kind: Kind::Port,
                tenant: None,
            },
            Write {
                kind: Kind::Port,
                tenant: "a",
            },
            Write {
                kind: Kind::Port,
                tenant: "b",
            },
            Write {
                kind: Kind::Tenant,
                tenant: "a",
            },
            Watch { tenant: Some("a") },
            Watch { tenant: Some("b") },
            Watch { tenant: None },
            ReadInventory,
            ReportHostInventory,
            ReadHostAssignments,
            Metrics,
            OpenApi,
        ];
        #[rustfmt::skip]
        let expected: [(&Caller, [u16; 17]); 5] = [
            (&fleet, [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
            (&a,     [200, 403, 200, 200, 403, 403, 200, 403, 403, 200, 403, 403, 403, 403, 403, 403, 200]),
            (&host,  [403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
            (&anon,  [401; 17]),
            (&other, [403; 17]),
        ];
        for (caller, row) in expected {
            for (op, want) in ops.iter().zip(row) {
                assert_eq!(status(caller, op), want, "{caller:?} {op:?}");
            }
        }
    }
}
