//! The documented maximum of every list and string in a spec (TENANCY.md
//! invariant 6). [`crate::validate::validate_spec`] enforces them with a 422
//! naming the field; the served OpenAPI document states the same numbers
//! (`maxItems` / `maxLength`), and a test keeps the two in step.
//!
//! The numbers are generous for real use and small enough that the pairwise
//! checks of admission (IPs of a port against its network's peers, IPsec
//! selectors against other tunnels to the same remote) stay cheap.

/// `Tenant.spec.description`, in bytes.
pub const DESCRIPTION_BYTES: usize = 1024;
/// Any address-like string (`ip`, `ip:port`, CIDR, MAC, port range) before it
/// is parsed.
pub const ADDRESS_BYTES: usize = 64;
/// `Port.spec.ips` and `Endpoint.spec.ips`.
pub const IPS: usize = 64;
/// `Port.spec.security.ingress` and `.egress`, each.
pub const RULES: usize = 128;
/// `IpsecTunnel.spec.local_subnets` and `.remote_subnets`, each.
pub const SUBNETS: usize = 16;
/// `TlsListener.spec.certificate_pem` (the chain), in bytes.
pub const CERTIFICATE_PEM_BYTES: usize = 64 * 1024;
/// `TlsListener.spec.client_ca_pem`, in bytes.
pub const CLIENT_CA_PEM_BYTES: usize = 256 * 1024;
/// `TlsListener.spec.private_key_pem`, in bytes.
pub const PRIVATE_KEY_PEM_BYTES: usize = 16 * 1024;
/// `TlsListener.spec.alpn`.
pub const ALPN: usize = 16;
/// One ALPN protocol id, in bytes (RFC 7301).
pub const ALPN_BYTES: usize = 255;
/// `Tenant.spec.grants.vni_ranges`.
pub const VNI_RANGES: usize = 64;
/// `Tenant.spec.grants.functions.pfs`.
pub const GRANT_PFS: usize = 64;
/// `Tenant.spec.grants.functions.hosts`.
pub const GRANT_HOSTS: usize = 256;
/// A physical function name (a Linux netdev name).
pub const PF_BYTES: usize = 15;
/// An NVMe Qualified Name (NVMe base specification).
pub const NQN_BYTES: usize = 223;
/// Objects of one kind a tenant may own when its `spec.quotas` sets no
/// number for that kind.
pub const DEFAULT_QUOTA: u32 = 16_384;
/// Objects in one `POST /v1/apply` or `/v1/plan` body.
pub const APPLY_OBJECTS: usize = 16_384;
