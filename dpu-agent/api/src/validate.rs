//! Validation as pure functions. Each check returns the first problem as a
//! [`FieldError`] naming the field by its path in the request body
//! (`spec.vni`, `spec.ips[1]`, `id`).
//!
//! [`validate_spec`] checks one spec on its own; [`validate_in_context`] checks
//! what depends on other objects of the same tenant (references, addresses
//! inside the network, duplicate MACs and IPs), given a read-only view of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::limits;
use crate::spec::*;
use crate::types::Mac;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix.` in front of the field (for objects inside
    /// an apply body: `objects[3].spec.vni`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

type Check = Result<(), FieldError>;

fn fail(field: impl Into<String>, message: impl Into<String>) -> Check {
    Err(FieldError::new(field, message))
}

/// `s` quoted for an error message, cut to 80 characters: a 1 MiB string
/// in a request is not echoed back.
pub fn quote(s: &str) -> String {
    const SHOWN: usize = 80;
    match s.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
        None => format!("{s:?}"),
    }
}

/// At most `max` bytes.
pub fn check_len(field: &str, s: &str, max: usize) -> Check {
    if s.len() > max {
        return fail(
            field,
            format!("is {} bytes long; at most {max} are allowed", s.len()),
        );
    }
    Ok(())
}

/// At most `max` entries.
pub fn check_count<T>(field: &str, list: &[T], max: usize) -> Check {
    if list.len() > max {
        return fail(
            field,
            format!("has {} entries; at most {max} are allowed", list.len()),
        );
    }
    Ok(())
}

/// A DNS label: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn check_label(field: &str, s: &str) -> Check {
    let b = s.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !b.is_empty()
        && b.len() <= 63
        && ok_char(&b[0])
        && ok_char(&b[b.len() - 1])
        && b.iter().all(|c| ok_char(c) || *c == b'-');
    if valid {
        Ok(())
    } else {
        fail(
            field,
            format!(
                "{} is not a DNS label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                quote(s)
            ),
        )
    }
}

/// A unicast MAC address `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], FieldError> {
    check_len(field, s, limits::ADDRESS_BYTES)?;
    let bad = || {
        FieldError::new(
            field,
            format!("{} is not a MAC address like 02:00:00:00:00:01", quote(s)),
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        // from_str_radix alone would take a sign: "+2" is not a MAC octet.
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(FieldError::new(
            field,
            format!("{s} is a multicast address; a unicast MAC is required"),
        ));
    }
    if mac == [0; 6] {
        return Err(FieldError::new(
            field,
            "the all-zero MAC address is not allowed",
        ));
    }
    Ok(mac)
}

pub fn parse_ipv4(field: &str, s: &str) -> Result<Ipv4Addr, FieldError> {
    check_len(field, s, limits::ADDRESS_BYTES)?;
    s.parse::<Ipv4Addr>()
        .map_err(|_| FieldError::new(field, format!("{} is not an IPv4 address", quote(s))))
}

pub fn parse_ip(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    check_len(field, s, limits::ADDRESS_BYTES)?;
    s.parse::<IpAddr>()
        .map_err(|_| FieldError::new(field, format!("{} is not an IP address", quote(s))))
}

/// A CIDR whose host bits are zero (`10.0.0.0/24`, not `10.0.0.1/24`).
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet, FieldError> {
    check_len(field, s, limits::ADDRESS_BYTES)?;
    let net = s.parse::<IpNet>().map_err(|_| {
        FieldError::new(
            field,
            format!("{} is not a CIDR like 10.0.0.0/24", quote(s)),
        )
    })?;
    if net.trunc() != net {
        return Err(FieldError::new(
            field,
            format!("{s} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

pub fn parse_ipv4_cidr(field: &str, s: &str) -> Result<Ipv4Net, FieldError> {
    match parse_cidr(field, s)? {
        IpNet::V4(n) => Ok(n),
        IpNet::V6(_) => Err(FieldError::new(field, "only IPv4 networks are supported")),
    }
}

/// `"80"` or `"1000-2000"`, within 1..=65535 and ascending.
pub fn parse_port_range(field: &str, s: &str) -> Result<(u16, u16), FieldError> {
    check_len(field, s, limits::ADDRESS_BYTES)?;
    let bad = || {
        FieldError::new(
            field,
            format!(
                "{} is not a port (\"80\") or range (\"1000-2000\") in 1-65535",
                quote(s)
            ),
        )
    };
    // Digits only: `str::parse` would also take "+80", and " 80" is not
    // what the flow compiler should see.
    let one = |p: &str| {
        (!p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|p| *p != 0)
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (one(a).ok_or_else(bad)?, one(b).ok_or_else(bad)?),
        None => {
            let p = one(s).ok_or_else(bad)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(FieldError::new(field, format!("range {s} runs backwards")));
    }
    Ok((lo, hi))
}

/// `ip:port` with a non-zero port.
pub fn parse_socket_addr(field: &str, s: &str) -> Result<SocketAddr, FieldError> {
    check_len(field, s, limits::ADDRESS_BYTES)?;
    let addr = s.parse::<SocketAddr>().map_err(|_| {
        FieldError::new(
            field,
            format!("{} is not an address like 10.0.0.5:443", quote(s)),
        )
    })?;
    if addr.port() == 0 {
        return Err(FieldError::new(field, "port 0 is not allowed"));
    }
    Ok(addr)
}

/// Hex of `key_len` key bytes and a 4-byte salt.
pub fn check_hex_key(field: &str, s: &str, cipher: Cipher) -> Check {
    let want = (cipher.key_len() + 4) * 2;
    if s.len() != want || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        // Never echo the key itself.
        return fail(
            field,
            format!(
                "must be {want} hex digits ({} key bytes and a 4-byte salt for {})",
                cipher.key_len(),
                cipher_name(cipher)
            ),
        );
    }
    Ok(())
}

fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::AesGcm128 => "aes-gcm-128",
        Cipher::AesGcm256 => "aes-gcm-256",
    }
}

/// The number of PEM blocks of `label` (e.g. `CERTIFICATE`) in `pem`; an
/// error when there is none or the PEM does not parse.
pub fn check_pem(field: &str, pem: &str, want: PemWant) -> Result<usize, FieldError> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let mut count = 0;
    for item in rustls_pemfile::read_all(&mut reader) {
        let item = item.map_err(|_| FieldError::new(field, "is not valid PEM"))?;
        let matches = match (&item, want) {
            (rustls_pemfile::Item::X509Certificate(der), PemWant::Certificates) => {
                x509_parser::parse_x509_certificate(der).map_err(|_| {
                    FieldError::new(
                        field,
                        format!("certificate {} does not parse as X.509", count + 1),
                    )
                })?;
                true
            }
            (
                rustls_pemfile::Item::Pkcs1Key(_)
                | rustls_pemfile::Item::Pkcs8Key(_)
                | rustls_pemfile::Item::Sec1Key(_),
                PemWant::PrivateKey,
            ) => true,
            _ => false,
        };
        if matches {
            count += 1;
        }
    }
    match (want, count) {
        (PemWant::Certificates, 0) => Err(FieldError::new(field, "contains no PEM certificate")),
        (PemWant::PrivateKey, 0) => Err(FieldError::new(field, "contains no PEM private key")),
        (PemWant::PrivateKey, n) if n > 1 => {
            Err(FieldError::new(field, "contains more than one private key"))
        }
        (_, n) => Ok(n),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemWant {
    Certificates,
    PrivateKey,
}

/// Checks the envelope: kind-independent rules for `id` and `tenant`.
pub fn validate_envelope(kind: Kind, id: &str, tenant: &str) -> Check {
    check_label("id", id)?;
    check_label("tenant", tenant)?;
    if kind.is_tenant() && tenant != id {
        return fail(
            "tenant",
            format!("a tenant's tenant must be its own id {id:?}"),
        );
    }
    Ok(())
}

/// Checks one spec on its own.
pub fn validate_spec(spec: &Spec) -> Check {
    match spec {
        Spec::Tenant(t) => validate_tenant(t),
        Spec::Function(f) => validate_function(f),
        Spec::Network(n) => validate_network(n),
        Spec::Port(p) => validate_port(p),
        Spec::Endpoint(e) => validate_endpoint(e),
        Spec::Volume(v) => validate_volume(v),
        Spec::IpsecTunnel(t) => validate_ipsec(t),
        Spec::TlsListener(t) => validate_tls(t),
    }
}

fn validate_tenant(t: &TenantSpec) -> Check {
    if let Some(d) = &t.description {
        check_len("spec.description", d, limits::DESCRIPTION_BYTES)?;
    }
    let Some(g) = &t.grants else { return Ok(()) };
    check_count("spec.grants.vni_ranges", &g.vni_ranges, limits::VNI_RANGES)?;
    let mut ranges = Vec::with_capacity(g.vni_ranges.len());
    for (i, r) in g.vni_ranges.iter().enumerate() {
        let field = format!("spec.grants.vni_ranges[{i}]");
        ranges.push((parse_vni_range(&field, r)?, field));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0.0 <= w[0].0.1 {
            return fail(
                w[1].1.clone(),
                format!("overlaps {}", w[0].1.trim_start_matches("spec.")),
            );
        }
    }
    if let Some(f) = &g.functions {
        // Each name was checked when the spec was decoded (`PfName`).
        check_count("spec.grants.functions.pfs", &f.pfs, limits::GRANT_PFS)?;
        if let Some(vfs) = &f.vfs {
            parse_index_range("spec.grants.functions.vfs", vfs, u32::MAX - 1)?;
        }
        if let Some(sfs) = &f.sfs {
            parse_index_range("spec.grants.functions.sfs", sfs, u32::MAX - 1)?;
        }
        check_count("spec.grants.functions.hosts", &f.hosts, limits::GRANT_HOSTS)?;
        for (i, h) in f.hosts.iter().enumerate() {
            check_label(&format!("spec.grants.functions.hosts[{i}]"), h)?;
        }
    }
    Ok(())
}

/// `"100"` or `"100-199"` within 1-16777215.
pub fn parse_vni_range(field: &str, s: &str) -> Result<(u32, u32), FieldError> {
    let (lo, hi) = parse_index_range(field, s, 16_777_215)?;
    if lo == 0 {
        return Err(FieldError::new(field, "VNI 0 is not allowed (1-16777215)"));
    }
    Ok((lo, hi))
}

/// `"7"` or `"0-15"`: ascending, each at most `max`.
pub fn parse_index_range(field: &str, s: &str, max: u32) -> Result<(u32, u32), FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!(
                "{} is not a number or range like \"0-15\" (at most {max})",
                quote(s)
            ),
        )
    };
    let one = |p: &str| {
        (!p.is_empty() && p.len() <= 10 && p.bytes().all(|c| c.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (one(a).ok_or_else(bad)?, one(b).ok_or_else(bad)?),
        None => {
            let v = one(s).ok_or_else(bad)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(FieldError::new(
            field,
            format!("range {} runs backwards", quote(s)),
        ));
    }
    Ok((lo, hi))
}

/// A physical function's netdev name, like `pf0` or `p0`.
pub fn check_pf_name(field: &str, pf: &str) -> Check {
    let ok = pf.len() <= limits::PF_BYTES
        && !pf.is_empty()
        && pf
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        fail(
            field,
            format!("{} is not a physical function name like pf0", quote(pf)),
        )
    }
}

fn validate_function(f: &FunctionSpec) -> Check {
    if let Some(host) = &f.host {
        check_label("spec.host", host)?;
    }
    validate_carve(f)?;
    let net_only = [
        ("spec.mac", f.mac.is_some()),
        ("spec.vlan", f.vlan.is_some()),
        ("spec.max_tx_rate_mbps", f.max_tx_rate_mbps.is_some()),
        ("spec.trust", f.trust.is_some()),
        ("spec.spoof_check", f.spoof_check.is_some()),
        ("spec.rdma", f.rdma),
    ];
    match f.type_ {
        FunctionType::Net => {
            if f.mac.is_none() {
                return fail("spec.mac", "is required for a net function");
            }
            if let Some(vlan) = f.vlan
                && !(1..=4094).contains(&vlan)
            {
                return fail("spec.vlan", format!("{vlan} is outside 1-4094"));
            }
            if f.max_tx_rate_mbps == Some(0) {
                return fail(
                    "spec.max_tx_rate_mbps",
                    "must be positive; leave it out for no limit",
                );
            }
        }
        FunctionType::Nvme | FunctionType::VirtioBlk => {
            if let Some((field, _)) = net_only.iter().find(|(_, set)| *set) {
                return fail(*field, "only applies to net functions");
            }
        }
    }
    Ok(())
}

/// `carve`, `vf` and `sf` agree: a function is a VF or a sub-function,
/// never both; sub-functions are net functions on the DPU (no host stub
/// places them).
fn validate_carve(f: &FunctionSpec) -> Check {
    if f.vf.is_some() && f.sf.is_some() {
        return fail(
            "spec.sf",
            "is exclusive with spec.vf: a function is a VF or a sub-function",
        );
    }
    match (f.carve, f.vf, f.sf) {
        (Some(Carve::Vf), _, Some(_)) => {
            return fail("spec.sf", "needs carve sf (or leave spec.carve out)");
        }
        (Some(Carve::Sf), Some(_), _) => {
            return fail(
                "spec.vf",
                "a function carved as sf has no VF index; name its SF number in spec.sf",
            );
        }
        _ => {}
    }
    if f.carve() == Carve::Sf {
        if f.type_ != FunctionType::Net {
            return fail(
                "spec.carve",
                "only net functions can be carved as sub-functions",
            );
        }
        if f.sf == Some(u32::MAX) {
            return fail(
                "spec.sf",
                format!("{} is outside 0-{}", u32::MAX, u32::MAX - 1),
            );
        }
        for (field, set) in [
            ("spec.host", f.host.is_some()),
            ("spec.attach", f.attach.is_some()),
        ] {
            if set {
                return fail(
                    field,
                    "does not apply to a sub-function: host stubs are assigned VFs only",
                );
            }
        }
    }
    Ok(())
}

fn validate_network(n: &NetworkSpec) -> Check {
    if !(1..=16_777_215).contains(&n.vni) {
        return fail("spec.vni", format!("{} is outside 1-16777215", n.vni));
    }
    if n.cidr.prefix_len() > 30 {
        return fail(
            "spec.cidr",
            "needs at least 4 addresses (prefix /30 or shorter)",
        );
    }
    if let Some(mtu) = n.mtu
        && !(576..=9000).contains(&mtu)
    {
        return fail("spec.mtu", format!("{mtu} is outside 576-9000"));
    }
    Ok(())
}

fn validate_ips(field: &str, ips: &[Ipv4Addr]) -> Check {
    check_count(field, ips, limits::IPS)?;
    let mut seen = std::collections::HashSet::with_capacity(ips.len());
    for (i, ip) in ips.iter().enumerate() {
        if !seen.insert(ip) {
            return fail(format!("{field}[{i}]"), format!("{ip} is listed twice"));
        }
    }
    Ok(())
}

fn validate_rules(field: &str, rules: &[SecurityRule]) -> Check {
    check_count(field, rules, limits::RULES)?;
    for (i, r) in rules.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if r.ports.is_some() && !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
            return fail(format!("{f}.ports"), "ports apply only to tcp and udp");
        }
    }
    Ok(())
}

fn validate_port(p: &PortSpec) -> Check {
    check_label("spec.network", &p.network)?;
    check_label("spec.function", &p.function)?;
    validate_ips("spec.ips", &p.ips)?;
    if let Some(sec) = &p.security {
        validate_rules("spec.security.ingress", &sec.ingress)?;
        if let Some(egress) = &sec.egress {
            validate_rules("spec.security.egress", egress)?;
        }
    }
    if let Some(q) = &p.qos {
        if q.max_rate_mbps == 0 {
            return fail("spec.qos.max_rate_mbps", "must be positive");
        }
        if q.burst_kb == 0 {
            return fail("spec.qos.burst_kb", "must be positive");
        }
    }
    Ok(())
}

fn validate_endpoint(e: &EndpointSpec) -> Check {
    check_label("spec.network", &e.network)?;
    validate_ips("spec.ips", &e.ips)?;
    let vtep = e.vtep;
    if vtep.is_unspecified() || vtep.is_broadcast() || vtep.is_multicast() {
        return fail("spec.vtep", format!("{vtep} is not a unicast address"));
    }
    Ok(())
}

/// An NVMe Qualified Name: `nqn.yyyy-mm.reverse.domain:...` or the UUID form,
/// at most 223 bytes.
pub fn check_nqn(field: &str, s: &str) -> Check {
    check_len(field, s, limits::NQN_BYTES)?;
    let well_formed = s.len() <= 223
        && s.starts_with("nqn.")
        && s.len() > 12
        && s.as_bytes()[4..8].iter().all(u8::is_ascii_digit)
        && s.as_bytes()[8] == b'-'
        && s.as_bytes()[9..11].iter().all(u8::is_ascii_digit)
        && s.as_bytes()[11] == b'.'
        && !s
            .bytes()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control());
    if well_formed {
        Ok(())
    } else {
        fail(
            field,
            format!(
                "{} is not an NQN like nqn.2014-08.org.example:vol1 (at most 223 bytes)",
                quote(s)
            ),
        )
    }
}

fn validate_volume(v: &VolumeSpec) -> Check {
    check_label("spec.function", &v.function)?;
    if v.nsid == Some(0) || v.nsid == Some(u32::MAX) {
        return fail("spec.nsid", "must be between 1 and 4294967294");
    }
    match &v.source {
        VolumeSource::Nvmeof(n) => {
            parse_ip("spec.source.nvmeof.address", &n.address)?;
            if n.port == 0 {
                return fail("spec.source.nvmeof.port", "port 0 is not allowed");
            }
            // subnqn and hostnqn were checked when decoded (`Nqn`).
        }
        VolumeSource::Local(l) => {
            if l.size_mib == 0 || l.size_mib > 16 * 1024 * 1024 {
                return fail(
                    "spec.source.local.size_mib",
                    "must be between 1 and 16777216 (16 TiB)",
                );
            }
        }
    }
    if let Some(q) = &v.qos {
        if q.max_iops == Some(0) {
            return fail(
                "spec.qos.max_iops",
                "must be positive; leave it out for no limit",
            );
        }
        if q.max_mbps == Some(0) {
            return fail(
                "spec.qos.max_mbps",
                "must be positive; leave it out for no limit",
            );
        }
    }
    Ok(())
}

fn validate_ipsec(t: &IpsecTunnelSpec) -> Check {
    let local = parse_ipv4("spec.local", &t.local)?;
    let remote = parse_ipv4("spec.remote", &t.remote)?;
    if local == remote {
        return fail("spec.remote", "must differ from spec.local");
    }
    for (field, list) in [
        ("spec.local_subnets", &t.local_subnets),
        ("spec.remote_subnets", &t.remote_subnets),
    ] {
        check_count(field, list, limits::SUBNETS)?;
        for (i, s) in list.iter().enumerate() {
            parse_ipv4_cidr(&format!("{field}[{i}]"), s)?;
        }
    }
    if t.mode == IpsecMode::Tunnel {
        if t.local_subnets.is_empty() {
            return fail(
                "spec.local_subnets",
                "a tunnel-mode tunnel needs at least one subnet",
            );
        }
        if t.remote_subnets.is_empty() {
            return fail(
                "spec.remote_subnets",
                "a tunnel-mode tunnel needs at least one subnet",
            );
        }
    }
    // SPIs 0-255 are reserved by IANA (RFC 4303 §2.1).
    if t.spi_in < 256 {
        return fail("spec.spi_in", "SPIs 0-255 are reserved");
    }
    if t.spi_out < 256 {
        return fail("spec.spi_out", "SPIs 0-255 are reserved");
    }
    check_hex_key("spec.key_in", t.key_in.expose(), t.cipher)?;
    check_hex_key("spec.key_out", t.key_out.expose(), t.cipher)?;
    if let Some(w) = t.replay_window
        && w > 4096
    {
        return fail("spec.replay_window", "must be at most 4096");
    }
    Ok(())
}

/// An address a tenant's network function may use: never loopback,
/// link-local, unspecified, multicast or broadcast (TENANCY.md invariant
/// 1). Whether it lies in the tenant's own networks is checked in context.
pub fn check_tenant_address(field: &str, ip: IpAddr) -> Check {
    let refused = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some()
        }
    };
    if refused {
        return fail(
            field,
            format!(
                "{ip} is a loopback, link-local, unspecified or multicast address; \
                 a tenant's listener and upstream live on the tenant's own networks"
            ),
        );
    }
    Ok(())
}

fn validate_tls(t: &TlsListenerSpec) -> Check {
    for (field, addr) in [("spec.listen", &t.listen), ("spec.upstream", &t.upstream)] {
        let a = parse_socket_addr(field, addr)?;
        check_tenant_address(field, a.ip())?;
    }
    check_len(
        "spec.certificate_pem",
        &t.certificate_pem,
        limits::CERTIFICATE_PEM_BYTES,
    )?;
    check_len(
        "spec.private_key_pem",
        t.private_key_pem.expose(),
        limits::PRIVATE_KEY_PEM_BYTES,
    )?;
    if let Some(ca) = &t.client_ca_pem {
        check_len("spec.client_ca_pem", ca, limits::CLIENT_CA_PEM_BYTES)?;
    }
    if let Some(alpn) = &t.alpn {
        check_count("spec.alpn", alpn, limits::ALPN)?;
    }
    check_pem(
        "spec.certificate_pem",
        &t.certificate_pem,
        PemWant::Certificates,
    )?;
    check_pem(
        "spec.private_key_pem",
        t.private_key_pem.expose(),
        PemWant::PrivateKey,
    )?;
    check_key_matches_certificate(&t.certificate_pem, t.private_key_pem.expose())?;
    if let Some(ca) = &t.client_ca_pem {
        check_pem("spec.client_ca_pem", ca, PemWant::Certificates)?;
    }
    if let Some(alpn) = &t.alpn {
        for (i, p) in alpn.iter().enumerate() {
            if p.is_empty() || p.len() > limits::ALPN_BYTES {
                return fail(format!("spec.alpn[{i}]"), "must be 1-255 bytes");
            }
        }
    }
    Ok(())
}

/// The private key in `key_pem` parses (with rustls' ring provider) and its
/// public key is the one in the leaf (first) certificate of `cert_pem`.
/// Errors name `spec.private_key_pem` and never quote the key.
fn check_key_matches_certificate(cert_pem: &str, key_pem: &str) -> Check {
    const FIELD: &str = "spec.private_key_pem";
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| FieldError::new(FIELD, "the private key does not parse"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        FieldError::new(
            FIELD,
            "the private key does not parse, or its type is unsupported \
             (supported: RSA, ECDSA P-256 or P-384, Ed25519)",
        )
    })?;
    let Some(key_spki) = signing_key.public_key() else {
        return fail(
            FIELD,
            format!(
                "the key type ({:?}) is unsupported: its public key cannot be compared \
                 with the certificate",
                signing_key.algorithm()
            ),
        );
    };
    // check_pem has already accepted the certificates; an error here names
    // the certificate field all the same.
    let leaf = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| FieldError::new("spec.certificate_pem", "contains no PEM certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|_| {
        FieldError::new(
            "spec.certificate_pem",
            "certificate 1 does not parse as X.509",
        )
    })?;
    if key_spki.as_ref() != cert.tbs_certificate.subject_pki.raw {
        return fail(
            FIELD,
            "does not match the certificate: its public key differs from the one in \
             the leaf (first) certificate of spec.certificate_pem",
        );
    }
    Ok(())
}

/// A test of an object (its id and spec) for [`ObjectLookup::find`].
pub type SpecTest<'p> = dyn FnMut(&str, &Spec) -> bool + 'p;

/// Read-only view of the other stored objects, for checks that span objects.
pub trait ObjectLookup {
    /// The tenant and spec of an object.
    fn get(&self, kind: Kind, id: &str) -> Option<(String, Spec)>;
    /// Every object of `kind` in `tenant` (all tenants when `None`), with
    /// its id.
    fn list(&self, kind: Kind, tenant: Option<&str>) -> Vec<(String, Spec)>;

    /// The id of the first object of `kind` in `tenant` (all tenants when
    /// `None`) for which `pred` holds, in [`ObjectLookup::list`]'s order.
    /// The default scans `list`; a store overrides it to look at its
    /// objects without copying them, since every network write asks.
    fn find(&self, kind: Kind, tenant: Option<&str>, pred: &mut SpecTest) -> Option<String> {
        self.list(kind, tenant)
            .into_iter()
            .find(|(id, spec)| pred(id, spec))
            .map(|(id, _)| id)
    }

    /// Every object of `kind` in `tenant` whose spec names `target` through
    /// `field` ([`Spec::refers`]), with its id, in [`ObjectLookup::list`]'s
    /// order. The default filters `list`; a store answers from an index,
    /// since every port, endpoint and volume write asks (a scan made the
    /// admission of N ports cost N²).
    fn referring(
        &self,
        kind: Kind,
        tenant: &str,
        field: RefField,
        target: &str,
    ) -> Vec<(String, Spec)> {
        self.list(kind, Some(tenant))
            .into_iter()
            .filter(|(_, spec)| spec.refers(field) == Some(target))
            .collect()
    }

    /// The id of a network other than `except` that uses `vni`. The default
    /// scans [`ObjectLookup::list`]; a store overrides it with something
    /// cheaper, since every network write asks.
    fn network_with_vni(&self, vni: u32, except: &str) -> Option<String> {
        self.list(Kind::Network, None)
            .into_iter()
            .find(|(id, spec)| id != except && matches!(spec, Spec::Network(n) if n.vni == vni))
            .map(|(id, _)| id)
    }
}

/// Who writes a spec. Grants (`Tenant.spec.grants`) bound what a tenant
/// identity may ask for; the fleet controller, which writes the grants, is
/// not bounded by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    FleetController,
    Tenant,
}

/// Checks what depends on other objects: references exist within the tenant,
/// addresses fall inside the network, MACs and IPs are unique in a network,
/// VNIs and IPsec SPIs are unique on the DPU, IPsec tunnels to one remote
/// have disjoint traffic selectors, a tenant's network functions stay inside
/// its networks, and a tenant identity stays inside its grants.
///
/// No message names another tenant's objects, ids or addresses (TENANCY.md
/// invariant 5): a conflict with another tenant reads "is not available".
pub fn validate_in_context(
    id: &str,
    tenant: &str,
    writer: Writer,
    spec: &Spec,
    objects: &dyn ObjectLookup,
) -> Check {
    for (field, kind, ref_id) in spec.references() {
        match objects.get(kind, ref_id) {
            Some((t, _)) if t == tenant => {}
            _ => {
                return fail(
                    field,
                    format!("no {} {ref_id:?} in tenant {tenant:?}", kind.name()),
                );
            }
        }
    }
    let own_tenant = match objects.get(Kind::Tenant, tenant) {
        Some((_, Spec::Tenant(t))) => Some(t),
        _ => None,
    };
    if !spec.kind().is_tenant() && own_tenant.is_none() {
        return fail(
            "tenant",
            format!("tenant {tenant:?} does not exist; create it first"),
        );
    }
    let grants = own_tenant.as_ref().and_then(|t| t.grants.as_ref());
    match spec {
        Spec::Tenant(t) => check_tenant_grants_against_others(tenant, t, objects),
        Spec::Function(f) => match writer {
            Writer::Tenant => check_function_grant(f, grants.and_then(|g| g.functions.as_ref())),
            Writer::FleetController => Ok(()),
        },
        Spec::Network(n) => check_network_vni(id, tenant, writer, n, grants, objects),
        Spec::Port(p) => {
            check_addresses_in_network(id, tenant, &p.network, &p.mac, &p.ips, objects)?;
            for (other_id, other) in
                objects.referring(Kind::Port, tenant, RefField::Function, &p.function)
            {
                if let Spec::Port(o) = other
                    && other_id != id
                    && o.function == p.function
                {
                    return fail(
                        "spec.function",
                        format!(
                            "function {:?} is already attached by port {other_id:?}",
                            p.function
                        ),
                    );
                }
            }
            if let Some((_, Spec::Function(f))) = objects.get(Kind::Function, &p.function)
                && f.type_ != FunctionType::Net
            {
                return fail(
                    "spec.function",
                    format!("function {:?} is not a net function", p.function),
                );
            }
            Ok(())
        }
        Spec::Endpoint(e) => {
            check_addresses_in_network(id, tenant, &e.network, &e.mac, &e.ips, objects)
        }
        Spec::Volume(v) => {
            if let Some((_, Spec::Function(f))) = objects.get(Kind::Function, &v.function)
                && f.type_ == FunctionType::Net
            {
                return fail(
                    "spec.function",
                    format!(
                        "function {:?} is a net function; volumes need nvme or virtio-blk",
                        v.function
                    ),
                );
            }
            // One namespace id per function: SNAP and SPDK present all of a
            // function's volumes on one controller. No nsid means 1. The
            // function is the tenant's own, so are the volumes on it.
            let nsid = v.nsid.unwrap_or(1);
            for (other_id, other) in
                objects.referring(Kind::Volume, tenant, RefField::Function, &v.function)
            {
                if let Spec::Volume(o) = other
                    && other_id != id
                    && o.function == v.function
                    && o.nsid.unwrap_or(1) == nsid
                {
                    return fail(
                        "spec.nsid",
                        format!(
                            "volume {other_id:?} already uses nsid {nsid} on function {:?}; \
                             choose another nsid",
                            v.function
                        ),
                    );
                }
            }
            check_host_nqn(id, tenant, v, objects)
        }
        Spec::IpsecTunnel(t) => {
            match (t.scope(), writer) {
                (IpsecScope::Infrastructure, Writer::Tenant) => {
                    return fail(
                        "spec.scope",
                        "infrastructure tunnels are the fleet controller's; a tenant's tunnels \
                         have scope tenant",
                    );
                }
                (IpsecScope::Tenant, _) => {
                    let nets = tenant_networks(tenant, objects);
                    for (i, sub) in t.local_subnets.iter().enumerate() {
                        let field = format!("spec.local_subnets[{i}]");
                        let sub = parse_ipv4_cidr(&field, sub)?;
                        if !nets.iter().any(|n| n.contains(&sub)) {
                            return fail(
                                field,
                                format!(
                                    "{sub} is not inside one of tenant {tenant:?}'s networks; \
                                     a tenant tunnel protects its own networks' traffic"
                                ),
                            );
                        }
                    }
                }
                (IpsecScope::Infrastructure, Writer::FleetController) => {}
            }
            check_ipsec_against_others(id, tenant, t, objects)
        }
        Spec::TlsListener(t) => {
            let nets = tenant_networks(tenant, objects);
            for (field, addr) in [("spec.listen", &t.listen), ("spec.upstream", &t.upstream)] {
                let ip = match parse_socket_addr(field, addr)?.ip() {
                    IpAddr::V4(ip) => ip,
                    IpAddr::V6(_) => {
                        return fail(field, "must be an IPv4 address of the tenant's networks");
                    }
                };
                let inside = nets
                    .iter()
                    .any(|n| n.contains(&ip) && ip != n.network() && ip != n.broadcast());
                if !inside {
                    return fail(
                        field,
                        format!(
                            "{ip} is not a host address of one of tenant {tenant:?}'s networks; \
                             a listener runs in the tenant's network context and reaches \
                             nothing else"
                        ),
                    );
                }
            }
            Ok(())
        }
    }
}

/// The CIDRs of a tenant's networks.
fn tenant_networks(tenant: &str, objects: &dyn ObjectLookup) -> Vec<Ipv4Net> {
    let mut cidrs = Vec::new();
    objects.find(Kind::Network, Some(tenant), &mut |_, s| {
        if let Spec::Network(n) = s {
            cidrs.push(n.cidr.0);
        }
        false
    });
    cidrs
}

/// The VNI ranges of a tenant spec's grant; entries that do not parse are
/// skipped (validation of that tenant names them).
fn vni_ranges(t: &TenantSpec) -> Vec<(u32, u32)> {
    t.grants
        .iter()
        .flat_map(|g| g.vni_ranges.iter())
        .filter_map(|r| parse_vni_range("", r).ok())
        .collect()
}

/// A tenant's VNI ranges are its own fleet-wide: they overlap no other
/// tenant's ranges and hold no other tenant's networks. Only the fleet
/// controller writes tenants, so the messages may name the others.
fn check_tenant_grants_against_others(
    tenant: &str,
    t: &TenantSpec,
    objects: &dyn ObjectLookup,
) -> Check {
    let mine = vni_ranges(t);
    if mine.is_empty() {
        return Ok(());
    }
    for (other, spec) in objects.list(Kind::Tenant, None) {
        let Spec::Tenant(o) = spec else { continue };
        if other == tenant {
            continue;
        }
        for (lo, hi) in vni_ranges(&o) {
            if let Some(i) = mine.iter().position(|(a, b)| *a <= hi && lo <= *b) {
                return fail(
                    format!("spec.grants.vni_ranges[{i}]"),
                    format!("overlaps tenant {other:?}'s VNI range {lo}-{hi}"),
                );
            }
        }
    }
    for (net_id, spec) in objects.list(Kind::Network, None) {
        let Spec::Network(n) = spec else { continue };
        if let Some(i) = mine.iter().position(|(a, b)| (*a..=*b).contains(&n.vni))
            && let Some((owner, _)) = objects.get(Kind::Network, &net_id)
            && owner != tenant
        {
            return fail(
                format!("spec.grants.vni_ranges[{i}]"),
                format!(
                    "holds VNI {} of network {net_id:?} of tenant {owner:?}",
                    n.vni
                ),
            );
        }
    }
    Ok(())
}

/// A network's VNI: unique on the DPU, outside every other tenant's VNI
/// grant, and — written by a tenant identity — inside its own grant.
fn check_network_vni(
    id: &str,
    tenant: &str,
    writer: Writer,
    n: &NetworkSpec,
    grants: Option<&Grants>,
    objects: &dyn ObjectLookup,
) -> Check {
    let unavailable = || {
        fail(
            "spec.vni",
            format!(
                "VNI {} is not available; use a VNI of this tenant's spec.grants.vni_ranges",
                n.vni
            ),
        )
    };
    // VNIs are the DPU-wide tunnel key: two networks must not share one.
    if let Some(other_id) = objects.network_with_vni(n.vni, id) {
        return match objects.get(Kind::Network, &other_id) {
            Some((owner, _)) if owner == tenant => fail(
                "spec.vni",
                format!("VNI {} is already used by network {other_id:?}", n.vni),
            ),
            _ => unavailable(),
        };
    }
    let in_own = grants
        .map(|g| {
            g.vni_ranges
                .iter()
                .filter_map(|r| parse_vni_range("", r).ok())
                .any(|(lo, hi)| (lo..=hi).contains(&n.vni))
        })
        .unwrap_or(false);
    if in_own {
        return Ok(());
    }
    if writer == Writer::Tenant {
        return fail(
            "spec.vni",
            format!(
                "VNI {} is not granted to tenant {tenant:?} (spec.grants.vni_ranges of the \
                 tenant, set by the fleet controller)",
                n.vni
            ),
        );
    }
    let granted_to_other = objects.find(Kind::Tenant, None, &mut |other, spec| {
        other != tenant
            && matches!(spec, Spec::Tenant(o) if vni_ranges(o)
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&n.vni)))
    });
    match granted_to_other {
        Some(_) => unavailable(),
        None => Ok(()),
    }
}

/// A tenant identity's function stays inside its grant: the PF, the VF
/// index, the host, and whether trust or spoof checking off are allowed.
fn check_function_grant(f: &FunctionSpec, grant: Option<&FunctionGrant>) -> Check {
    const HOW: &str = "(the tenant's spec.grants.functions, set by the fleet controller)";
    let Some(g) = grant else {
        return fail(
            "spec.pf",
            format!("the tenant has no grant to carve functions {HOW}"),
        );
    };
    if !g.pfs.contains(&f.pf) {
        return fail(
            "spec.pf",
            format!("physical function {} is not granted {HOW}", quote(&f.pf)),
        );
    }
    if let (Some(vf), Some(range)) = (f.vf, &g.vfs)
        && let Ok((lo, hi)) = parse_index_range("", range, u32::MAX - 1)
        && !(lo..=hi).contains(&vf)
    {
        return fail(
            "spec.vf",
            format!("VF {vf} is outside the granted range {lo}-{hi} {HOW}"),
        );
    }
    if f.carve() == Carve::Sf {
        // No SF range in the grant: no sub-functions (fail closed).
        let Some(Ok((lo, hi))) = g
            .sfs
            .as_deref()
            .map(|r| parse_index_range("", r, u32::MAX - 1))
        else {
            return fail("spec.carve", format!("sub-functions are not granted {HOW}"));
        };
        if let Some(sf) = f.sf
            && !(lo..=hi).contains(&sf)
        {
            return fail(
                "spec.sf",
                format!("SF {sf} is outside the granted range {lo}-{hi} {HOW}"),
            );
        }
    }
    if let Some(host) = &f.host
        && !g.hosts.contains(host)
    {
        return fail("spec.host", format!("host {host:?} is not granted {HOW}"));
    }
    if f.trust == Some(true) && !g.allow_trust {
        return fail("spec.trust", format!("trust is not granted {HOW}"));
    }
    if f.spoof_check == Some(false) && !g.allow_spoof_check_off {
        return fail(
            "spec.spoof_check",
            format!("turning spoof checking off is not granted {HOW}"),
        );
    }
    if f.rdma && !g.allow_rdma {
        return fail("spec.rdma", format!("RDMA is not granted {HOW}"));
    }
    Ok(())
}

/// The prefix of the host NQNs the agent derives for volumes; a tenant may
/// name one only if it is its own volume's.
pub const DERIVED_HOST_NQN_PREFIX: &str = "nqn.2026-11.dev.dpu-agent:";

/// The host NQN the agent uses for a volume that names none.
pub fn derived_host_nqn(tenant: &str, volume: &str) -> String {
    format!("{DERIVED_HOST_NQN_PREFIX}{tenant}:{volume}:initiator")
}

/// A volume's host NQN is its own (TENANCY.md invariant 4): never one the
/// agent derives for another volume, and never one another tenant's volume
/// uses.
fn check_host_nqn(id: &str, tenant: &str, v: &VolumeSpec, objects: &dyn ObjectLookup) -> Check {
    const FIELD: &str = "spec.source.nvmeof.hostnqn";
    let VolumeSource::Nvmeof(n) = &v.source else {
        return Ok(());
    };
    let Some(hostnqn) = &n.hostnqn else {
        return Ok(());
    };
    if hostnqn.starts_with(DERIVED_HOST_NQN_PREFIX)
        && hostnqn.as_str() != derived_host_nqn(tenant, id)
    {
        return fail(
            FIELD,
            format!(
                "host NQNs under {DERIVED_HOST_NQN_PREFIX} are the agent's own; leave \
                 hostnqn out to get this volume's ({})",
                derived_host_nqn(tenant, id)
            ),
        );
    }
    for (other_id, spec) in objects.list(Kind::Volume, None) {
        let Spec::Volume(o) = spec else { continue };
        let VolumeSource::Nvmeof(on) = &o.source else {
            continue;
        };
        if other_id == id || on.hostnqn.as_deref() != Some(hostnqn.as_str()) {
            continue;
        }
        if objects
            .get(Kind::Volume, &other_id)
            .is_some_and(|(owner, _)| owner != tenant)
        {
            return fail(FIELD, "this host NQN is not available; choose another");
        }
    }
    Ok(())
}

/// Whether two IPv4 networks share an address.
fn cidrs_overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The parsed IPv4 subnets of a list; entries that do not parse are skipped
/// (validate_spec names them for the object being written).
fn ipv4_subnets(list: &[String]) -> Vec<Ipv4Net> {
    list.iter()
        .filter_map(|s| parse_ipv4_cidr("", s).ok())
        .collect()
}

/// Tunnels on one DPU, across tenants: no SPI used by two tunnels, and no
/// two tunnels to the same remote with overlapping traffic selectors. Only
/// non-secret fields of the other tunnels are read.
fn check_ipsec_against_others(
    id: &str,
    tenant: &str,
    t: &IpsecTunnelSpec,
    objects: &dyn ObjectLookup,
) -> Check {
    let remote = t.remote.parse::<Ipv4Addr>().ok();
    let local_subnets = ipv4_subnets(&t.local_subnets);
    let remote_subnets = ipv4_subnets(&t.remote_subnets);
    let own: std::collections::HashSet<String> = objects
        .list(Kind::IpsecTunnel, Some(tenant))
        .into_iter()
        .map(|(oid, _)| oid)
        .collect();
    let others: Vec<(String, IpsecTunnelSpec)> = objects
        .list(Kind::IpsecTunnel, None)
        .into_iter()
        .filter_map(|(oid, spec)| match spec {
            Spec::IpsecTunnel(o) if oid != id => Some((oid, o)),
            _ => None,
        })
        .collect();
    // SAs are found by (destination, SPI) in one table for the whole DPU.
    for (field, spi) in [("spec.spi_in", t.spi_in), ("spec.spi_out", t.spi_out)] {
        if let Some((oid, _)) = others
            .iter()
            .find(|(_, o)| o.spi_in == spi || o.spi_out == spi)
        {
            let msg = if own.contains(oid) {
                format!("SPI {spi} is already used by ipsec tunnel {oid:?}")
            } else {
                format!("SPI {spi} is not available; choose another")
            };
            return fail(field, msg);
        }
    }
    // Selectors compete only within one scope: a tenant's tunnels are
    // confined to its own XFRM interface id, infrastructure tunnels share
    // the underlay's.
    let same_scope = |oid: &str, o: &IpsecTunnelSpec| match (t.scope(), o.scope()) {
        (IpsecScope::Infrastructure, IpsecScope::Infrastructure) => true,
        (IpsecScope::Tenant, IpsecScope::Tenant) => own.contains(oid),
        _ => false,
    };
    for (oid, o) in &others {
        if remote.is_none() || o.remote.parse::<Ipv4Addr>().ok() != remote || !same_scope(oid, o) {
            continue;
        }
        let o_local = ipv4_subnets(&o.local_subnets);
        let o_remote = ipv4_subnets(&o.remote_subnets);
        // Bounded by limits::SUBNETS on both sides.
        let local = local_subnets
            .iter()
            .flat_map(|l| o_local.iter().map(move |ol| (l, ol)))
            .find(|(l, ol)| cidrs_overlap(l, ol));
        let remote_pair = remote_subnets
            .iter()
            .flat_map(|r| o_remote.iter().map(move |or| (r, or)))
            .find(|(r, or)| cidrs_overlap(r, or));
        if let (Some((l, ol)), Some((r, or))) = (local, remote_pair) {
            let msg = if own.contains(oid) {
                format!(
                    "traffic selector {l} <-> {r} overlaps {ol} <-> {or} of ipsec tunnel \
                     {oid:?} to the same remote {}",
                    t.remote
                )
            } else {
                format!(
                    "traffic selector {l} <-> {r} overlaps another infrastructure tunnel to \
                     the same remote {}",
                    t.remote
                )
            };
            return fail("spec.local_subnets", msg);
        }
    }
    Ok(())
}

/// Ports and endpoints of one network: IPs inside the CIDR, not the network
/// or broadcast address, and no MAC or IP used twice in the network.
fn check_addresses_in_network(
    id: &str,
    tenant: &str,
    network: &str,
    mac: &Mac,
    ips: &[Ipv4Addr],
    objects: &dyn ObjectLookup,
) -> Check {
    let Some((_, Spec::Network(net))) = objects.get(Kind::Network, network) else {
        return Ok(());
    };
    let cidr = net.cidr.0;
    for (i, ip) in ips.iter().enumerate() {
        let field = format!("spec.ips[{i}]");
        let addr = *ip;
        if !cidr.contains(&addr) {
            return fail(
                field,
                format!("{ip} is outside network {network:?} ({cidr})"),
            );
        }
        if addr == cidr.network() || addr == cidr.broadcast() {
            return fail(
                field,
                format!("{ip} is the network or broadcast address of {cidr}"),
            );
        }
    }
    let mine: std::collections::HashMap<Ipv4Addr, usize> =
        ips.iter().enumerate().map(|(i, ip)| (*ip, i)).collect();
    let peers = objects
        .referring(Kind::Port, tenant, RefField::Network, network)
        .into_iter()
        .filter_map(|(oid, s)| match s {
            Spec::Port(p) if p.network == network => Some((Kind::Port, oid, p.mac, p.ips)),
            _ => None,
        })
        .chain(
            objects
                .referring(Kind::Endpoint, tenant, RefField::Network, network)
                .into_iter()
                .filter_map(|(oid, s)| match s {
                    Spec::Endpoint(e) if e.network == network => {
                        Some((Kind::Endpoint, oid, e.mac, e.ips))
                    }
                    _ => None,
                }),
        );
    for (kind, oid, omac, oips) in peers {
        if oid == id {
            continue;
        }
        if omac == *mac {
            return fail(
                "spec.mac",
                format!(
                    "{mac} is already used in network {network:?} by {} {oid:?}",
                    kind.name()
                ),
            );
        }
        // One pass over the peer's addresses (both lists are bounded by
        // limits::IPS): cost linear in the network's addresses.
        if let Some((i, ip)) = oips.iter().find_map(|o| mine.get(o).map(|i| (*i, o))) {
            return fail(
                format!("spec.ips[{i}]"),
                format!(
                    "{ip} is already used in network {network:?} by {} {oid:?}",
                    kind.name()
                ),
            );
        }
    }
    Ok(())
}
