//! What the pipeline compiler takes: the desired tenant networks, ports and
//! endpoints, already validated by the API, plus what the switch says (the
//! OpenFlow port number of each port's representor and of each tunnel port).
//! These types are independent of the API crate so the compiler stays pure
//! and reusable.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Tunnel encapsulation of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Encap {
    Vxlan,
    Geneve,
    /// No tunnel: the network lives on this DPU only; endpoints get no flows.
    Local,
}

impl Encap {
    /// The OVS interface type of the flow-based tunnel port, if any.
    pub fn interface_type(self) -> Option<&'static str> {
        match self {
            Encap::Vxlan => Some("vxlan"),
            Encap::Geneve => Some("geneve"),
            Encap::Local => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDesc {
    pub id: String,
    pub tenant: String,
    /// Tunnel key, unique on the DPU (the API enforces it); also the network's
    /// tag in the OpenFlow metadata field.
    pub vni: u32,
    pub encap: Encap,
}

/// Protocol of a security rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleProtocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// One allow rule. `cidr` is the remote side (source for ingress,
/// destination for egress); `ports` the destination port range (tcp/udp).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleDesc {
    pub protocol: RuleProtocol,
    pub cidr: Option<(Ipv4Addr, u8)>,
    pub ports: Option<(u16, u16)>,
}

/// Stateful security of a port: ingress is denied except `ingress`; egress is
/// allowed entirely when `egress` is `None`, else only those rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityDesc {
    pub ingress: Vec<RuleDesc>,
    pub egress: Option<Vec<RuleDesc>>,
}

/// Rate limit of what a port's function sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QosDesc {
    pub max_rate_kbps: u32,
    pub burst_kbits: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDesc {
    pub id: String,
    pub tenant: String,
    pub network: String,
    pub mac: [u8; 6],
    pub ips: Vec<Ipv4Addr>,
    pub security: SecurityDesc,
    pub qos: Option<QosDesc>,
    /// The netdev of the port's function's representor: the bridge port
    /// the switch makes for it; `None` while the function has none. The
    /// compiler does not read it (the flows match `ofport`).
    pub representor: Option<String>,
    /// OpenFlow port number of the function's representor on the bridge;
    /// `None` while the function or its representor is not there yet (the
    /// port then gets no flows).
    pub ofport: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDesc {
    pub id: String,
    pub tenant: String,
    pub network: String,
    pub mac: [u8; 6],
    pub ips: Vec<Ipv4Addr>,
    /// Underlay address of the DPU where this endpoint lives.
    pub vtep: Ipv4Addr,
}

/// The ports of each network, in id order: a [`DesiredNetworking`]'s
/// ports grouped by the network they name (whether it exists or not), each
/// group shared so that a copy of the map copies no port list.
pub type PortsByNetwork = BTreeMap<String, Arc<[Arc<PortDesc>]>>;

/// Everything the compiler needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredNetworking {
    pub networks: Vec<NetworkDesc>,
    /// Shared, so that an input built from the one before keeps the ports
    /// that did not change: cloned, compared (`Arc`'s `==` is a pointer
    /// test first) and dropped without touching their contents.
    pub ports: Vec<Arc<PortDesc>>,
    pub endpoints: Vec<EndpointDesc>,
    /// OpenFlow port number of the flow-based tunnel port per encapsulation.
    pub tunnel_ofports: BTreeMap<Encap, u32>,
}
