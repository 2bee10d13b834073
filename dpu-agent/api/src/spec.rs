//! Typed specs of every kind. Parsing rejects unknown fields and parses the
//! values that have a type of their own ([`crate::types`]: MAC, IPv4
//! network, port range; IPv4 addresses), naming the field that is wrong;
//! [`crate::validate`] checks the rest (ranges, labels, keys, context).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::net::Ipv4Addr;

use crate::kind::Kind;
use crate::types::{Ipv4Cidr, Mac, Nqn, PfName, PortRange, Secret};
use crate::validate::FieldError;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
    /// What hardware and overlay ids the tenant's own identity may use.
    /// Written by the fleet controller only (tenants cannot write their
    /// tenant object); see `TENANCY.md` and the crate README.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
}

/// What a tenant identity may ask for inside its specs. The fleet
/// controller, which writes these, is not bounded by them; every other
/// caller is. An absent grant allows nothing of its kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// VNI ranges (`"100"` or `"100-199"`) reserved to this tenant
    /// fleet-wide: its networks use VNIs inside them, and no other tenant's
    /// network may use a VNI inside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vni_ranges: Vec<String>,
    /// The hardware the tenant may carve functions from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<FunctionGrant>,
}

/// Hardware a tenant identity may name in `Function` specs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionGrant {
    /// Physical functions (`pf0`) the tenant may carve from.
    #[serde(default)]
    pub pfs: Vec<PfName>,
    /// VF indices (`"0-15"`) the tenant may name or be given; absent: any
    /// free VF (allocated by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs: Option<String>,
    /// SF numbers (`"1000-1999"`) the tenant may name or be given for
    /// functions carved as sub-functions; absent: no sub-functions at all
    /// (unlike `vfs`, fail closed: SFs came after grants did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfs: Option<String>,
    /// Host stubs the tenant may place functions on; empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Whether `trust: true` is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_trust: bool,
    /// Whether `spoof_check: false` is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_spoof_check_off: bool,
    /// Whether `rdma: true` is allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_rdma: bool,
}

/// Upper bounds on what a tenant may own; an absent bound is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnels: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listeners: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionType {
    Net,
    Nvme,
    VirtioBlk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    Kernel,
    Vfio,
}

/// How a function is carved from its PF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Carve {
    /// An SR-IOV virtual function (`vf`).
    Vf,
    /// A scalable function (`sf`: devlink `port add … flavour pcisf`),
    /// net functions only.
    Sf,
}

/// Where a function is (or asks to be) carved on its PF: a VF index or an
/// SF number — one typed key, so VF 3 and SF 3 never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Vf(u32),
    Sf(u32),
}

impl Slot {
    /// The slot of `carve` with number `n`.
    pub fn new(carve: Carve, n: u32) -> Slot {
        match carve {
            Carve::Vf => Slot::Vf(n),
            Carve::Sf => Slot::Sf(n),
        }
    }

    pub fn carve(self) -> Carve {
        match self {
            Slot::Vf(_) => Carve::Vf,
            Slot::Sf(_) => Carve::Sf,
        }
    }

    pub fn number(self) -> u32 {
        match self {
            Slot::Vf(n) | Slot::Sf(n) => n,
        }
    }

    /// The VF index, for a VF.
    pub fn vf_index(self) -> Option<u32> {
        match self {
            Slot::Vf(n) => Some(n),
            Slot::Sf(_) => None,
        }
    }
}

/// `vf N` or `sf N`.
impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Vf(n) => write!(f, "vf {n}"),
            Slot::Sf(n) => write!(f, "sf {n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    #[serde(rename = "type")]
    pub type_: FunctionType,
    pub pf: PfName,
    /// `vf` (default) or `sf`; `sf` is implied by `spec.sf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carve: Option<Carve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf: Option<u32>,
    /// The SF number (`sfnum`) of a function carved as a sub-function;
    /// allocated when absent. Exclusive with `vf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sf: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<Attach>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tx_rate_mbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoof_check: Option<bool>,
    /// A `net` function that also carries RDMA (RoCE v2): the agent turns
    /// RoCE on for it where the driver offers it (devlink `enable_roce`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rdma: bool,
}

impl FunctionSpec {
    /// How the function is carved: `spec.carve`, else `sf` when `spec.sf`
    /// is set, else `vf`.
    pub fn carve(&self) -> Carve {
        match (self.carve, self.sf) {
            (Some(c), _) => c,
            (None, Some(_)) => Carve::Sf,
            (None, None) => Carve::Vf,
        }
    }

    /// The slot the spec names (`vf` or `sf`, by its carve), if any.
    pub fn requested_slot(&self) -> Option<Slot> {
        match self.carve() {
            Carve::Vf => self.vf.map(Slot::Vf),
            Carve::Sf => self.sf.map(Slot::Sf),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    Vxlan,
    Geneve,
    Local,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub vni: u32,
    pub cidr: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    pub encap: Encap,
}

impl NetworkSpec {
    pub const DEFAULT_MTU: u16 = 1450;

    pub fn mtu(&self) -> u16 {
        self.mtu.unwrap_or(Self::DEFAULT_MTU)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityRule {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Ipv4Cidr>,
    /// `"80"` or `"1000-2000"`; only for tcp and udp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
}

/// Stateful security groups: with no rules, ingress is denied and egress
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    #[serde(default)]
    pub ingress: Vec<SecurityRule>,
    /// `None` means "allow all egress"; `Some(rules)` allows only those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<SecurityRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortQos {
    pub max_rate_mbps: u32,
    pub burst_kb: u32,
}

/// A spec field by which an object names another object of its tenant,
/// as [`Spec::refers`] reads it: what the store indexes, so that "the
/// ports on this network" or "the volumes on this function" cost what they
/// find, not the tenant's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefField {
    /// `spec.network` of a port or an endpoint.
    Network,
    /// `spec.function` of a port or a volume.
    Function,
}

impl RefField {
    /// In the order [`Spec::references`] lists them.
    pub const ALL: [RefField; 2] = [RefField::Network, RefField::Function];

    /// The field's name in a spec, as problems name it.
    pub fn name(self) -> &'static str {
        match self {
            RefField::Network => "spec.network",
            RefField::Function => "spec.function",
        }
    }

    /// The kind of object the field names.
    pub fn kind(self) -> Kind {
        match self {
            RefField::Network => Kind::Network,
            RefField::Function => Kind::Function,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub network: String,
    pub function: String,
    pub mac: Mac,
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<PortQos>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub network: String,
    pub mac: Mac,
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    pub vtep: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NvmeofTransport {
    Tcp,
    Rdma,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeofSource {
    pub transport: NvmeofTransport,
    pub address: String,
    pub port: u16,
    pub subnqn: Nqn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnqn: Option<Nqn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSource {
    pub size_mib: u64,
}

/// Exactly one of the two sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum VolumeSource {
    Nvmeof(NvmeofSource),
    Local(LocalSource),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeQos {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mbps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
    pub source: VolumeSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<VolumeQos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpsecMode {
    Tunnel,
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cipher {
    #[serde(rename = "aes-gcm-128")]
    AesGcm128,
    #[serde(rename = "aes-gcm-256")]
    AesGcm256,
}

impl Cipher {
    /// Key length in bytes, without the 4-byte salt.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::AesGcm128 => 16,
            Cipher::AesGcm256 => 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadRequest {
    #[default]
    Auto,
    Packet,
    Crypto,
    None,
}

/// An IPsec tunnel. `key_in` and `key_out` are write-only secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpsecTunnelSpec {
    pub local: String,
    pub remote: String,
    #[serde(default)]
    pub local_subnets: Vec<String>,
    #[serde(default)]
    pub remote_subnets: Vec<String>,
    pub mode: IpsecMode,
    pub cipher: Cipher,
    pub spi_in: u32,
    pub spi_out: u32,
    /// Hex: key followed by the 4-byte salt.
    pub key_in: Secret,
    pub key_out: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esn: Option<bool>,
    /// `auto` when left out.
    #[serde(default)]
    pub offload: OffloadRequest,
    /// Whose packets the tunnel may match: `tenant` (default) confines its
    /// XFRM state and policies to the tenant's network context; an
    /// `infrastructure` tunnel (underlay, VTEP to VTEP) is written by the
    /// fleet controller only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<IpsecScope>,
}

/// See [`IpsecTunnelSpec::scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpsecScope {
    #[default]
    Tenant,
    Infrastructure,
}

impl IpsecTunnelSpec {
    pub fn scope(&self) -> IpsecScope {
        self.scope.unwrap_or_default()
    }
}

impl std::fmt::Debug for IpsecTunnelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpsecTunnelSpec")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("local_subnets", &self.local_subnets)
            .field("remote_subnets", &self.remote_subnets)
            .field("mode", &self.mode)
            .field("cipher", &self.cipher)
            .field("spi_in", &self.spi_in)
            .field("spi_out", &self.spi_out)
            .field("key_in", &self.key_in)
            .field("key_out", &self.key_out)
            .field("replay_window", &self.replay_window)
            .field("esn", &self.esn)
            .field("offload", &self.offload)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ktls {
    #[default]
    Auto,
    Off,
}

/// TLS terminated on the DPU. `private_key_pem` is a write-only secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerSpec {
    pub listen: String,
    pub upstream: String,
    pub certificate_pem: String,
    pub private_key_pem: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// `auto` when left out.
    #[serde(default)]
    pub ktls: Ktls,
}

impl std::fmt::Debug for TlsListenerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListenerSpec")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("certificate_pem", &"<pem>")
            .field("private_key_pem", &self.private_key_pem)
            .field(
                "client_ca_pem",
                &self.client_ca_pem.as_ref().map(|_| "<pem>"),
            )
            .field("alpn", &self.alpn)
            .field("ktls", &self.ktls)
            .finish()
    }
}

/// A spec of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Tenant(TenantSpec),
    Function(FunctionSpec),
    Network(NetworkSpec),
    Port(PortSpec),
    Endpoint(EndpointSpec),
    Volume(VolumeSpec),
    IpsecTunnel(IpsecTunnelSpec),
    TlsListener(TlsListenerSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Tenant(_) => Kind::Tenant,
            Spec::Function(_) => Kind::Function,
            Spec::Network(_) => Kind::Network,
            Spec::Port(_) => Kind::Port,
            Spec::Endpoint(_) => Kind::Endpoint,
            Spec::Volume(_) => Kind::Volume,
            Spec::IpsecTunnel(_) => Kind::IpsecTunnel,
            Spec::TlsListener(_) => Kind::TlsListener,
        }
    }

    /// Parses a JSON spec of `kind`, naming the offending field (as
    /// `spec.<path>`) on an unknown field, a missing one or a wrong type.
    pub fn parse(kind: Kind, value: &Value) -> Result<Spec, FieldError> {
        fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, FieldError> {
            serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." || path.is_empty() {
                    "spec".to_string()
                } else {
                    format!("spec.{path}")
                };
                let inner = e.into_inner().to_string();
                // serde names the missing field in the message, not the path.
                let field = match missing_field(&inner) {
                    Some(name) if field == "spec" => format!("spec.{name}"),
                    Some(name) => format!("{field}.{name}"),
                    None => field,
                };
                FieldError::new(field, inner)
            })
        }
        if !value.is_object() {
            return Err(FieldError::new("spec", "must be a JSON object"));
        }
        // A field is given or left out; `null` is neither (the document
        // types no field as nullable).
        if let Some(path) = null_at(value, "spec") {
            return Err(FieldError::new(
                path,
                "null is not allowed; leave the field out instead",
            ));
        }
        Ok(match kind {
            Kind::Tenant => Spec::Tenant(de(value)?),
            Kind::Function => Spec::Function(de(value)?),
            Kind::Network => Spec::Network(de(value)?),
            Kind::Port => Spec::Port(de(value)?),
            Kind::Endpoint => Spec::Endpoint(de(value)?),
            Kind::Volume => Spec::Volume(de(value)?),
            Kind::IpsecTunnel => Spec::IpsecTunnel(de(value)?),
            Kind::TlsListener => Spec::TlsListener(de(value)?),
        })
    }

    /// A spec as the store wrote it: typed straight from its JSON text,
    /// without the intermediate [`Value`] of [`Spec::parse`] (a restart
    /// reads thousands). Only for specs that passed [`Spec::parse`] when
    /// written; one that does not decode is read again through it, for the
    /// same error naming the field.
    pub fn parse_stored(kind: Kind, json: &str) -> Result<Spec, FieldError> {
        fn de<T: serde::de::DeserializeOwned>(json: &str) -> serde_json::Result<T> {
            serde_json::from_str(json)
        }
        let typed = match kind {
            Kind::Tenant => de(json).map(Spec::Tenant),
            Kind::Function => de(json).map(Spec::Function),
            Kind::Network => de(json).map(Spec::Network),
            Kind::Port => de(json).map(Spec::Port),
            Kind::Endpoint => de(json).map(Spec::Endpoint),
            Kind::Volume => de(json).map(Spec::Volume),
            Kind::IpsecTunnel => de(json).map(Spec::IpsecTunnel),
            Kind::TlsListener => de(json).map(Spec::TlsListener),
        };
        typed.or_else(|e| {
            let value: Value =
                serde_json::from_str(json).map_err(|_| FieldError::new("spec", e.to_string()))?;
            Spec::parse(kind, &value)
        })
    }

    /// The objects this spec references by id, with the field that names
    /// each (all within the same tenant).
    pub fn references(&self) -> Vec<(&'static str, Kind, &str)> {
        RefField::ALL
            .into_iter()
            .filter_map(|field| Some((field.name(), field.kind(), self.refers(field)?)))
            .collect()
    }

    /// The write-only field `field` of this spec (see
    /// [`Kind::secret_fields`]), to fill in or withhold.
    pub fn secret_mut(&mut self, field: &str) -> Option<&mut Secret> {
        match (self, field) {
            (Spec::IpsecTunnel(s), "key_in") => Some(&mut s.key_in),
            (Spec::IpsecTunnel(s), "key_out") => Some(&mut s.key_out),
            (Spec::TlsListener(s), "private_key_pem") => Some(&mut s.private_key_pem),
            _ => None,
        }
    }

    /// Takes the write-only fields out, leaving each an empty string
    /// ("withheld"), and returns them with their names.
    pub fn take_secrets(&mut self) -> Vec<(&'static str, String)> {
        let kind = self.kind();
        kind.secret_fields()
            .iter()
            .filter_map(|f| Some((*f, self.secret_mut(f)?.take())))
            .collect()
    }

    /// This spec with its write-only fields withheld.
    pub fn without_secrets(&self) -> Spec {
        let mut s = self.clone();
        for f in s.kind().secret_fields() {
            if let Some(v) = s.secret_mut(f) {
                v.clear();
            }
        }
        s
    }

    pub fn as_tenant(&self) -> Option<&TenantSpec> {
        match self {
            Spec::Tenant(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_function(&self) -> Option<&FunctionSpec> {
        match self {
            Spec::Function(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_network(&self) -> Option<&NetworkSpec> {
        match self {
            Spec::Network(s) => Some(s),
            _ => None,
        }
    }

    /// The id this spec names through `field`, if its kind has that field:
    /// a port's and a volume's function, a port's and an endpoint's network
    /// (always one of the same tenant's objects).
    pub fn refers(&self, field: RefField) -> Option<&str> {
        match (self, field) {
            (Spec::Port(p), RefField::Function) => Some(&p.function),
            (Spec::Volume(v), RefField::Function) => Some(&v.function),
            (Spec::Port(p), RefField::Network) => Some(&p.network),
            (Spec::Endpoint(e), RefField::Network) => Some(&e.network),
            _ => None,
        }
    }

    pub fn as_port(&self) -> Option<&PortSpec> {
        match self {
            Spec::Port(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_endpoint(&self) -> Option<&EndpointSpec> {
        match self {
            Spec::Endpoint(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_volume(&self) -> Option<&VolumeSpec> {
        match self {
            Spec::Volume(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_ipsec_tunnel(&self) -> Option<&IpsecTunnelSpec> {
        match self {
            Spec::IpsecTunnel(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_tls_listener(&self) -> Option<&TlsListenerSpec> {
        match self {
            Spec::TlsListener(s) => Some(s),
            _ => None,
        }
    }

    pub fn to_value(&self) -> Value {
        let v = match self {
            Spec::Tenant(s) => serde_json::to_value(s),
            Spec::Function(s) => serde_json::to_value(s),
            Spec::Network(s) => serde_json::to_value(s),
            Spec::Port(s) => serde_json::to_value(s),
            Spec::Endpoint(s) => serde_json::to_value(s),
            Spec::Volume(s) => serde_json::to_value(s),
            Spec::IpsecTunnel(s) => serde_json::to_value(s),
            Spec::TlsListener(s) => serde_json::to_value(s),
        };
        // Plain structs of strings, numbers and enums always serialize.
        v.unwrap_or(Value::Null)
    }
}

/// The path of the first JSON `null` inside `v`, if any.
fn null_at(v: &Value, path: &str) -> Option<String> {
    null_below(v).map(|below| format!("{path}{below}"))
}

/// The path below `v` to its first null (`""` for `v` itself), made only
/// once a null is found: a spec without one allocates nothing here.
fn null_below(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| null_below(v).map(|below| format!(".{k}{below}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_below(v).map(|below| format!("[{i}]{below}"))),
        _ => None,
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_field_is_named() {
        let err = Spec::parse(
            Kind::Network,
            &json!({"vni": 5, "cidr": "10.0.0.0/24", "encap": "vxlan", "colour": 1}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.colour");
    }

    #[test]
    fn missing_field_is_named() {
        let err = Spec::parse(
            Kind::Network,
            &json!({"cidr": "10.0.0.0/24", "encap": "vxlan"}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.vni");
        let err = Spec::parse(
            Kind::Volume,
            &json!({"function": "f", "source": {"nvmeof": {"transport": "tcp", "address": "1.2.3.4", "port": 4420}}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.source.nvmeof.subnqn");
    }

    #[test]
    fn null_is_refused_where_it_stands() {
        let err = Spec::parse(
            Kind::Tenant,
            &json!({"grants": {"functions": {"pfs": ["pf0"], "vfs": null}}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.grants.functions.vfs");
        let err = Spec::parse(
            Kind::Port,
            &json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01", "ips": [null]}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.ips[0]");
        let err = Spec::parse(
            Kind::Port,
            &json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01",
                    "security": {"ingress": [{"protocol": "tcp"}, {"protocol": "tcp", "cidr": null}]}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.security.ingress[1].cidr");
    }

    /// The store's reading of a spec it wrote is the admission's reading.
    #[test]
    fn parse_stored_reads_what_parse_reads() {
        for (kind, spec) in [
            (
                Kind::Port,
                json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01",
                        "ips": ["10.0.0.2"],
                        "security": {"ingress": [{"protocol": "tcp", "ports": "80-81"}]}}),
            ),
            (
                Kind::Network,
                json!({"vni": 5, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
            ),
            (
                Kind::Tenant,
                json!({"grants": {"functions": {"pfs": ["pf0"], "vfs": "0-7"}}}),
            ),
        ] {
            let want = Spec::parse(kind, &spec).unwrap();
            assert_eq!(Spec::parse_stored(kind, &spec.to_string()).unwrap(), want);
        }
        // One that does not decode is named as the admission names it.
        let bad = json!({"vni": "five", "cidr": "10.0.0.0/24", "encap": "vxlan"});
        let err = Spec::parse_stored(Kind::Network, &bad.to_string()).unwrap_err();
        assert_eq!(err.field, "spec.vni");
        let err = Spec::parse_stored(Kind::Network, "{").unwrap_err();
        assert_eq!(err.field, "spec");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Spec::parse(
            Kind::Network,
            &json!({"vni": "five", "cidr": "10.0.0.0/24", "encap": "vxlan"}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.vni");
        let err = Spec::parse(
            Kind::Port,
            &json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01",
                    "security": {"ingress": [{"protocol": "sctp"}]}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.security.ingress[0].protocol");
    }

    #[test]
    fn every_secret_field_of_every_kind_is_reachable_typed() {
        let ipsec = json!({"local": "192.0.2.1", "remote": "192.0.2.2", "mode": "tunnel",
                "cipher": "aes-gcm-128", "spi_in": 256, "spi_out": 257,
                "key_in": "k-in", "key_out": "k-out"});
        let tls = json!({"listen": "10.0.0.1:443", "upstream": "10.0.0.2:80",
                "certificate_pem": "c", "private_key_pem": "p"});
        for (kind, value) in [(Kind::IpsecTunnel, ipsec), (Kind::TlsListener, tls)] {
            let mut spec = Spec::parse(kind, &value).unwrap();
            let taken = spec.take_secrets();
            assert_eq!(taken.len(), kind.secret_fields().len(), "{kind:?}");
            for (field, plain) in taken {
                assert_eq!(value[field], json!(plain), "{kind:?}.{field}");
                assert_eq!(spec.secret_mut(field).map(|s| s.expose()), Some(""));
            }
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let spec = Spec::parse(
            Kind::IpsecTunnel,
            &json!({"local": "192.0.2.1", "remote": "192.0.2.2", "mode": "tunnel",
                    "cipher": "aes-gcm-128", "spi_in": 256, "spi_out": 257,
                    "key_in": "00112233445566778899aabbccddeeff01020304",
                    "key_out": "00112233445566778899aabbccddeeff01020305", "offload": "auto"}),
        )
        .unwrap();
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("00112233"), "{dbg}");
    }
}
