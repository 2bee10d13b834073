//! Why a stored object cannot be turned into what its backend needs. Each
//! variant names the spec field; the typed cause is its `#[source]`, and the
//! controller prints the chain ([`crate::error_chain`]) into the object's
//! condition message.

use std::net::AddrParseError;

use dpu_crypto::keys::KeyError;
use dpu_crypto::model::Ipv4Net;

use crate::store::StoreError;

/// A spec field the controller cannot use.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot open sealed spec.{field}")]
    Sealed {
        field: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("spec.{field} is not set")]
    NotSet { field: &'static str },
    #[error("spec.{field}")]
    Key {
        field: &'static str,
        #[source]
        source: KeyError,
    },
    #[error("spec.{field} is not an IPv4 address")]
    NotIpv4 {
        field: &'static str,
        #[source]
        source: AddrParseError,
    },
    #[error("spec.{field}[{index}] is not an IPv4 CIDR")]
    NotIpv4Cidr {
        field: &'static str,
        index: usize,
        #[source]
        source: <Ipv4Net as std::str::FromStr>::Err,
    },
    #[error("spec.{field} is not an ip:port")]
    NotSocketAddr {
        field: &'static str,
        #[source]
        source: AddrParseError,
    },
    #[error("function {function:?} (spec.function) does not exist in tenant {tenant:?}")]
    NoFunction { function: String, tenant: String },
    #[error("function {function:?} has no function spec")]
    NotAFunction { function: String },
    #[error("function {function:?} has pf {pf:?}, not pfN")]
    BadPf { function: String, pf: String },
}

/// An agent-wide id space is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("all 65536 agent reqids are in use")]
    Reqids,
    #[error("all 65536 tenant XFRM interface ids are in use")]
    IfIds,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain;

    /// Bad input gets an error naming the field, with its typed cause printed
    /// once after it (STYLE.md: an error never repeats its source). No
    /// TENANCY.md invariant: this is the error-shape rule of common.md.
    #[test]
    fn spec_errors_name_the_field_and_print_the_cause_once() {
        let e = SpecError::NotIpv4 {
            field: "local",
            source: "10.0.0".parse::<std::net::Ipv4Addr>().unwrap_err(),
        };
        assert_eq!(
            error_chain(&e),
            "spec.local is not an IPv4 address: invalid IPv4 address syntax"
        );
        let e = SpecError::NotIpv4Cidr {
            field: "remote_subnets",
            index: 2,
            source: "10.0.0.0/33".parse::<Ipv4Net>().unwrap_err(),
        };
        let chain = error_chain(&e);
        assert!(
            chain.starts_with("spec.remote_subnets[2] is not an IPv4 CIDR: "),
            "{chain}"
        );
        let e = SpecError::Key {
            field: "key_in",
            source: KeyError::NotHex { expected: 40 },
        };
        let chain = error_chain(&e);
        assert_eq!(chain.matches("spec.key_in").count(), 1, "{chain}");
        assert!(chain.contains("is not hex"), "{chain}");
        assert_eq!(
            AllocError::Reqids.to_string(),
            "all 65536 agent reqids are in use"
        );
    }
}
