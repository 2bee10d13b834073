//! The desired state of one IPsec tunnel as the crypto crate sees it,
//! independent of the API's JSON: addresses parsed, keys opened. Planning
//! uses [`Tunnel`] without ever reading its keys except to compare them.

use std::net::Ipv4Addr;

pub use ipnet::Ipv4Net;

use crate::keys::SaKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    AesGcm128,
    AesGcm256,
}

impl Cipher {
    /// AES key length in bytes, without the 4-byte salt.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::AesGcm128 => 16,
            Cipher::AesGcm256 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::AesGcm128 => "aes-gcm-128",
            Cipher::AesGcm256 => "aes-gcm-256",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tunnel,
    Transport,
}

/// What the operator asked for. `Auto` tries packet, then crypto, then none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadRequest {
    Auto,
    Packet,
    Crypto,
    None,
}

/// What the kernel really does for an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OffloadActive {
    None,
    Crypto,
    Packet,
}

impl OffloadActive {
    pub fn name(self) -> &'static str {
        match self {
            OffloadActive::None => "none",
            OffloadActive::Crypto => "crypto",
            OffloadActive::Packet => "packet",
        }
    }
}

/// One direction's SA parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaSpec {
    pub spi: u32,
    pub key: SaKey,
}

/// One tunnel, desired. `reqid` is the agent's ownership mark on every SA
/// and policy template of this tunnel (see [`crate::plan::REQID_RANGE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// `tenant/id`, for messages.
    pub name: String,
    pub reqid: u32,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub local_subnets: Vec<Ipv4Net>,
    pub remote_subnets: Vec<Ipv4Net>,
    pub mode: Mode,
    pub cipher: Cipher,
    pub inbound: SaSpec,
    pub outbound: SaSpec,
    pub replay_window: u32,
    pub esn: bool,
    pub offload: OffloadRequest,
    /// The uplink's ifindex for offload requests; `None`: no offload.
    pub offload_dev: Option<u32>,
    /// `XFRMA_IF_ID` on every SA and policy of the tunnel: a tenant tunnel
    /// carries its tenant's id, so its policies match only packets that go
    /// through that tenant's XFRM interface, never the agent's or another
    /// tenant's traffic. `None` (infrastructure tunnels): unscoped. Never
    /// `Some(0)` (0 is the kernel's "no interface").
    pub if_id: Option<u32>,
}

impl Tunnel {
    /// The traffic selectors: every local × remote subnet pair; in transport
    /// mode without subnets, the two hosts.
    pub fn selector_pairs(&self) -> Vec<(Ipv4Net, Ipv4Net)> {
        let host = |a: Ipv4Addr| Ipv4Net::new(a, 32).expect("/32 is valid");
        let locals = if self.local_subnets.is_empty() {
            vec![host(self.local)]
        } else {
            self.local_subnets.clone()
        };
        let remotes = if self.remote_subnets.is_empty() {
            vec![host(self.remote)]
        } else {
            self.remote_subnets.clone()
        };
        let mut pairs = Vec::new();
        for l in &locals {
            for r in &remotes {
                pairs.push((l.trunc(), r.trunc()));
            }
        }
        pairs
    }
}
