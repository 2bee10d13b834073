//! The XFRM netlink message types: constants from
//! `include/uapi/linux/xfrm.h` and `linux/netlink.h`, the typed requests and
//! replies, and the SA and policy structs they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::keys::SaKey;

pub use dpu_netlink::NETLINK_XFRM;

pub const XFRM_MSG_NEWSA: u16 = 0x10;
pub const XFRM_MSG_DELSA: u16 = 0x11;
pub const XFRM_MSG_GETSA: u16 = 0x12;
pub const XFRM_MSG_NEWPOLICY: u16 = 0x13;
pub const XFRM_MSG_DELPOLICY: u16 = 0x14;
pub const XFRM_MSG_GETPOLICY: u16 = 0x15;
pub const XFRM_MSG_UPDPOLICY: u16 = 0x19;

pub use dpu_netlink::msg::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR,
};

pub const XFRMA_TMPL: u16 = 5;
/// `struct xfrm_lifetime_cur`, the kernel's copy of the SA's counters
/// (`copy_to_user_state_extra` puts it beside the one in the body).
pub const XFRMA_LTIME_CUR: u16 = 6;
pub const XFRMA_ALG_AEAD: u16 = 18;
pub const XFRMA_MARK: u16 = 21;
pub const XFRMA_REPLAY_ESN_VAL: u16 = 23;
pub const XFRMA_OFFLOAD_DEV: u16 = 28;
pub const XFRMA_IF_ID: u16 = 31;

/// `xfrm_user_offload.flags`.
pub const XFRM_OFFLOAD_IPV6: u8 = 1;
pub const XFRM_OFFLOAD_INBOUND: u8 = 2;
/// Full packet offload (Linux 6.2, d14f28b8c1de); must be set on SA and policy.
pub const XFRM_OFFLOAD_PACKET: u8 = 4;

/// `xfrm_usersa_info.flags`.
pub const XFRM_STATE_ESN: u8 = 128;

pub const IPPROTO_ESP: u8 = 50;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

pub const XFRM_MODE_TRANSPORT: u8 = 0;
pub const XFRM_MODE_TUNNEL: u8 = 1;

/// `XFRM_INF`: no byte or packet limit.
pub const XFRM_INF: u64 = u64::MAX;

pub const AEAD_RFC4106_GCM_AES: &str = "rfc4106(gcm(aes))";

pub(super) const USERSA_INFO_LEN: usize = 224;
pub(super) const USERPOLICY_INFO_LEN: usize = 168;
pub(super) const USER_TMPL_LEN: usize = 64;
pub(super) const ALGO_AEAD_HDR_LEN: usize = 72;
pub(super) const REPLAY_ESN_HDR_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {what}: {got} bytes, need {need}")]
    Truncated {
        what: &'static str,
        got: usize,
        need: usize,
    },
    /// The netlink framing (message lengths, `NLMSG_ERROR`) is malformed,
    /// as `dpu-netlink` reports it.
    #[error("{0}")]
    Netlink(String),
}

/// Policy direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    In,
    Out,
    Fwd,
    Other(u8),
}

impl Dir {
    pub fn to_u8(self) -> u8 {
        match self {
            Dir::In => 0,
            Dir::Out => 1,
            Dir::Fwd => 2,
            Dir::Other(v) => v,
        }
    }
    pub fn from_u8(v: u8) -> Dir {
        match v {
            0 => Dir::In,
            1 => Dir::Out,
            2 => Dir::Fwd,
            v => Dir::Other(v),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
            Dir::Fwd => "fwd",
            Dir::Other(_) => "other",
        }
    }
}

/// `xfrm_selector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub family: u16,
    pub daddr: IpAddr,
    pub prefixlen_d: u8,
    pub saddr: IpAddr,
    pub prefixlen_s: u8,
    pub dport: u16,
    pub dport_mask: u16,
    pub sport: u16,
    pub sport_mask: u16,
    pub proto: u8,
    pub ifindex: i32,
    pub user: u32,
}

impl Selector {
    /// Any IPv4 traffic from `src` to `dst`.
    pub fn v4(src: ipnet::Ipv4Net, dst: ipnet::Ipv4Net) -> Selector {
        Selector {
            family: AF_INET,
            daddr: IpAddr::V4(dst.network()),
            prefixlen_d: dst.prefix_len(),
            saddr: IpAddr::V4(src.network()),
            prefixlen_s: src.prefix_len(),
            dport: 0,
            dport_mask: 0,
            sport: 0,
            sport_mask: 0,
            proto: 0,
            ifindex: 0,
            user: 0,
        }
    }

    /// Matches everything of the family (SAs' default selector).
    pub fn any(family: u16) -> Selector {
        let zero = if family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Selector {
            family,
            daddr: zero,
            prefixlen_d: 0,
            saddr: zero,
            prefixlen_s: 0,
            dport: 0,
            dport_mask: 0,
            sport: 0,
            sport_mask: 0,
            proto: 0,
            ifindex: 0,
            user: 0,
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "src {}/{} dst {}/{}",
            self.saddr, self.prefixlen_s, self.daddr, self.prefixlen_d
        )?;
        if self.proto != 0 {
            write!(f, " proto {}", self.proto)?;
        }
        Ok(())
    }
}

/// `xfrm_lifetime_cur`: what the kernel counted for an SA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes: u64,
    pub packets: u64,
    /// Seconds since the epoch when the SA was added.
    pub add_time: u64,
    pub use_time: u64,
}

/// `xfrm_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaStats {
    pub replay_window: u32,
    pub replay: u32,
    pub integrity_failed: u32,
}

/// `XFRMA_ALG_AEAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aead {
    pub name: String,
    pub icv_bits: u32,
    /// Key followed by the salt; `alg_key_len` is its length in bits.
    pub key: SaKey,
}

/// `XFRMA_REPLAY_ESN_VAL` (the bitmap is not kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayEsn {
    pub replay_window: u32,
    pub oseq: u32,
    pub seq: u32,
    pub oseq_hi: u32,
    pub seq_hi: u32,
}

/// `XFRMA_OFFLOAD_DEV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadDev {
    pub ifindex: i32,
    pub flags: u8,
}

/// `XFRMA_MARK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub value: u32,
    pub mask: u32,
}

/// An SA: `xfrm_usersa_info` plus the attributes the agent knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sa {
    pub sel: Selector,
    pub daddr: IpAddr,
    pub spi: u32,
    pub proto: u8,
    pub saddr: IpAddr,
    pub family: u16,
    pub reqid: u32,
    pub mode: u8,
    /// Legacy replay window (0 when [`Sa::replay_esn`] carries it).
    pub replay_window: u8,
    pub flags: u8,
    pub counters: Counters,
    pub stats: SaStats,
    pub aead: Option<Aead>,
    pub replay_esn: Option<ReplayEsn>,
    pub offload: Option<OffloadDev>,
    pub mark: Option<Mark>,
    pub if_id: Option<u32>,
}

impl Sa {
    /// An ESP SA with all limits infinite and no attributes.
    pub fn esp_v4(saddr: Ipv4Addr, daddr: Ipv4Addr, spi: u32, reqid: u32, mode: u8) -> Sa {
        Sa {
            // Family 0 like iproute2; the kernel fills in the SA's family.
            sel: Selector::any(0),
            daddr: IpAddr::V4(daddr),
            spi,
            proto: IPPROTO_ESP,
            saddr: IpAddr::V4(saddr),
            family: AF_INET,
            reqid,
            mode,
            replay_window: 0,
            flags: 0,
            counters: Counters::default(),
            stats: SaStats::default(),
            aead: None,
            replay_esn: None,
            offload: None,
            mark: None,
            if_id: None,
        }
    }

    /// The replay window in effect, wherever it is carried.
    pub fn effective_replay_window(&self) -> u32 {
        match &self.replay_esn {
            Some(r) => r.replay_window,
            None => u32::from(self.replay_window),
        }
    }
}

/// `xfrm_user_tmpl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tmpl {
    pub daddr: IpAddr,
    pub spi: u32,
    pub proto: u8,
    pub family: u16,
    pub saddr: IpAddr,
    pub reqid: u32,
    pub mode: u8,
    pub share: u8,
    pub optional: u8,
    pub aalgos: u32,
    pub ealgos: u32,
    pub calgos: u32,
}

impl Tmpl {
    /// Any ESP SA with `reqid` between the two tunnel endpoints.
    pub fn esp_v4(saddr: Ipv4Addr, daddr: Ipv4Addr, reqid: u32, mode: u8) -> Tmpl {
        Tmpl {
            daddr: IpAddr::V4(daddr),
            spi: 0,
            proto: IPPROTO_ESP,
            family: AF_INET,
            saddr: IpAddr::V4(saddr),
            reqid,
            mode,
            share: 0,
            optional: 0,
            aalgos: u32::MAX,
            ealgos: u32::MAX,
            calgos: u32::MAX,
        }
    }
}

/// A policy: `xfrm_userpolicy_info` plus its templates and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub sel: Selector,
    pub priority: u32,
    pub index: u32,
    pub dir: Dir,
    pub action: u8,
    pub flags: u8,
    pub share: u8,
    pub tmpls: Vec<Tmpl>,
    pub mark: Option<Mark>,
    pub if_id: Option<u32>,
    pub offload: Option<OffloadDev>,
}

/// What identifies a policy to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub sel: Selector,
    pub dir: Dir,
    pub mark: Option<(u32, u32)>,
    pub if_id: Option<u32>,
}

impl Policy {
    /// A policy applying `tmpls` to `sel` in direction `dir`: priority 0,
    /// index 0 (the kernel picks it), action allow, no flags, no attributes.
    pub fn new(sel: Selector, dir: Dir, tmpls: Vec<Tmpl>) -> Policy {
        Policy {
            sel,
            priority: 0,
            index: 0,
            dir,
            action: 0,
            flags: 0,
            share: 0,
            tmpls,
            mark: None,
            if_id: None,
            offload: None,
        }
    }

    pub fn id(&self) -> PolicyId {
        PolicyId {
            sel: self.sel,
            dir: self.dir,
            mark: self.mark.map(|m| (m.value, m.mask)),
            if_id: self.if_id,
        }
    }
}

/// What identifies an SA to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SaId {
    pub daddr: IpAddr,
    pub spi: u32,
    pub proto: u8,
    pub family: u16,
    pub mark: Option<(u32, u32)>,
}

impl Sa {
    pub fn id(&self) -> SaId {
        SaId {
            daddr: self.daddr,
            spi: self.spi,
            proto: self.proto,
            family: self.family,
            mark: self.mark.map(|m| (m.value, m.mask)),
        }
    }
}

/// A request to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NewSa(Sa),
    DelSa(SaId),
    DumpSa,
    /// Create or replace (`XFRM_MSG_UPDPOLICY`).
    UpdPolicy(Policy),
    DelPolicy(PolicyId),
    DumpPolicy,
}

/// A message from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Sa(Box<Sa>),
    Policy(Box<Policy>),
    /// `NLMSG_ERROR`: 0 is an ack, otherwise a negative errno.
    Error(i32),
    Done,
    Other(u16),
}

/// One decoded netlink message with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u32,
    pub flags: u16,
    pub reply: Reply,
}
