//! Encoding and decoding of XFRM netlink messages; pure, no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zeroize::Zeroizing;

use crate::keys::SaKey;

pub const NETLINK_XFRM: i32 = 6;

pub const XFRM_MSG_NEWSA: u16 = 0x10;
pub const XFRM_MSG_DELSA: u16 = 0x11;
pub const XFRM_MSG_GETSA: u16 = 0x12;
pub const XFRM_MSG_NEWPOLICY: u16 = 0x13;
pub const XFRM_MSG_DELPOLICY: u16 = 0x14;
pub const XFRM_MSG_GETPOLICY: u16 = 0x15;
pub const XFRM_MSG_UPDPOLICY: u16 = 0x19;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_DUMP: u16 = 0x300;

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

const NLMSG_HDRLEN: usize = 16;
const USERSA_INFO_LEN: usize = 224;
const USERPOLICY_INFO_LEN: usize = 168;
const USER_TMPL_LEN: usize = 64;
const ALGO_AEAD_HDR_LEN: usize = 72;
const REPLAY_ESN_HDR_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {what}: {got} bytes, need {need}")]
    Truncated {
        what: &'static str,
        got: usize,
        need: usize,
    },
    #[error("bad netlink message length {len} at offset {offset}")]
    BadLength { len: usize, offset: usize },
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

// ---- encoding ----

struct Buf(Vec<u8>);

impl Buf {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn be16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn be32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn pad(&mut self, n: usize) {
        self.0.extend(std::iter::repeat_n(0u8, n));
    }
    fn addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(v4) => {
                self.0.extend_from_slice(&v4.octets());
                self.pad(12);
            }
            IpAddr::V6(v6) => self.0.extend_from_slice(&v6.octets()),
        }
    }
    fn align4(&mut self) {
        let rem = self.0.len() % 4;
        if rem != 0 {
            self.pad(4 - rem);
        }
    }
    /// An attribute whose payload `f` writes; padded to 4 bytes.
    fn attr(&mut self, type_: u16, f: impl FnOnce(&mut Buf)) {
        let start = self.0.len();
        self.u16(0);
        self.u16(type_);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.align4();
    }
}

fn put_selector(b: &mut Buf, s: &Selector) {
    b.addr(s.daddr);
    b.addr(s.saddr);
    b.be16(s.dport);
    b.be16(s.dport_mask);
    b.be16(s.sport);
    b.be16(s.sport_mask);
    b.u16(s.family);
    b.u8(s.prefixlen_d);
    b.u8(s.prefixlen_s);
    b.u8(s.proto);
    b.pad(3);
    b.i32(s.ifindex);
    b.u32(s.user);
}

fn put_lifetime_cfg_infinite(b: &mut Buf) {
    // Byte and packet limits infinite, no expiry by time (what `ip xfrm` does).
    for _ in 0..4 {
        b.u64(XFRM_INF);
    }
    for _ in 0..4 {
        b.u64(0);
    }
}

fn put_counters(b: &mut Buf, c: &Counters) {
    b.u64(c.bytes);
    b.u64(c.packets);
    b.u64(c.add_time);
    b.u64(c.use_time);
}

fn put_common_attrs(b: &mut Buf, mark: Option<Mark>, if_id: Option<u32>, off: Option<OffloadDev>) {
    if let Some(m) = mark {
        b.attr(XFRMA_MARK, |b| {
            b.u32(m.value);
            b.u32(m.mask);
        });
    }
    if let Some(id) = if_id {
        b.attr(XFRMA_IF_ID, |b| b.u32(id));
    }
    if let Some(o) = off {
        b.attr(XFRMA_OFFLOAD_DEV, |b| {
            b.i32(o.ifindex);
            b.u8(o.flags);
            b.pad(3);
        });
    }
}

fn put_sa(b: &mut Buf, sa: &Sa) {
    put_selector(b, &sa.sel);
    // xfrm_id
    b.addr(sa.daddr);
    b.be32(sa.spi);
    b.u8(sa.proto);
    b.pad(3);
    b.addr(sa.saddr);
    put_lifetime_cfg_infinite(b);
    put_counters(b, &sa.counters);
    b.u32(sa.stats.replay_window);
    b.u32(sa.stats.replay);
    b.u32(sa.stats.integrity_failed);
    b.u32(0); // seq
    b.u32(sa.reqid);
    b.u16(sa.family);
    b.u8(sa.mode);
    b.u8(sa.replay_window);
    b.u8(sa.flags);
    b.pad(7);
    if let Some(a) = &sa.aead {
        b.attr(XFRMA_ALG_AEAD, |b| {
            let mut name = [0u8; 64];
            let n = a.name.len().min(63);
            name[..n].copy_from_slice(&a.name.as_bytes()[..n]);
            b.0.extend_from_slice(&name);
            b.u32((a.key.len() * 8) as u32);
            b.u32(a.icv_bits);
            b.0.extend_from_slice(a.key.as_bytes());
        });
    }
    if let Some(r) = &sa.replay_esn {
        b.attr(XFRMA_REPLAY_ESN_VAL, |b| {
            let bmp_len = r.replay_window.div_ceil(32);
            b.u32(bmp_len);
            b.u32(r.oseq);
            b.u32(r.seq);
            b.u32(r.oseq_hi);
            b.u32(r.seq_hi);
            b.u32(r.replay_window);
            b.pad(bmp_len as usize * 4);
        });
    }
    put_common_attrs(b, sa.mark, sa.if_id, sa.offload);
}

fn put_policy(b: &mut Buf, p: &Policy) {
    put_selector(b, &p.sel);
    put_lifetime_cfg_infinite(b);
    put_counters(b, &Counters::default());
    b.u32(p.priority);
    b.u32(p.index);
    b.u8(p.dir.to_u8());
    b.u8(p.action);
    b.u8(p.flags);
    b.u8(p.share);
    b.pad(4);
    if !p.tmpls.is_empty() {
        b.attr(XFRMA_TMPL, |b| {
            for t in &p.tmpls {
                b.addr(t.daddr);
                b.be32(t.spi);
                b.u8(t.proto);
                b.pad(3);
                b.u16(t.family);
                b.pad(2);
                b.addr(t.saddr);
                b.u32(t.reqid);
                b.u8(t.mode);
                b.u8(t.share);
                b.u8(t.optional);
                b.pad(1);
                b.u32(t.aalgos);
                b.u32(t.ealgos);
                b.u32(t.calgos);
            }
        });
    }
    put_common_attrs(b, p.mark, p.if_id, p.offload);
}

impl Request {
    pub fn message_type(&self) -> u16 {
        match self {
            Request::NewSa(_) => XFRM_MSG_NEWSA,
            Request::DelSa(_) => XFRM_MSG_DELSA,
            Request::DumpSa => XFRM_MSG_GETSA,
            Request::UpdPolicy(_) => XFRM_MSG_UPDPOLICY,
            Request::DelPolicy(_) => XFRM_MSG_DELPOLICY,
            Request::DumpPolicy => XFRM_MSG_GETPOLICY,
        }
    }

    pub fn is_dump(&self) -> bool {
        matches!(self, Request::DumpSa | Request::DumpPolicy)
    }

    /// The whole netlink message. The caller zeroizes it after sending (it
    /// may hold key bytes), hence the `Zeroizing` buffer.
    pub fn encode(&self, seq: u32) -> Zeroizing<Vec<u8>> {
        let flags = match self {
            Request::NewSa(_) => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            Request::UpdPolicy(_) => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            Request::DelSa(_) | Request::DelPolicy(_) => NLM_F_REQUEST | NLM_F_ACK,
            Request::DumpSa | Request::DumpPolicy => NLM_F_REQUEST | NLM_F_DUMP,
        };
        let mut b = Buf(Vec::with_capacity(512));
        b.u32(0);
        b.u16(self.message_type());
        b.u16(flags);
        b.u32(seq);
        b.u32(0);
        match self {
            Request::NewSa(sa) => put_sa(&mut b, sa),
            Request::DelSa(id) => {
                b.addr(id.daddr);
                b.be32(id.spi);
                b.u16(id.family);
                b.u8(id.proto);
                b.pad(1);
                put_common_attrs(
                    &mut b,
                    id.mark.map(|(value, mask)| Mark { value, mask }),
                    None,
                    None,
                );
            }
            Request::UpdPolicy(p) => put_policy(&mut b, p),
            Request::DelPolicy(id) => {
                put_selector(&mut b, &id.sel);
                b.u32(0); // index: look up by selector
                b.u8(id.dir.to_u8());
                b.pad(3);
                put_common_attrs(
                    &mut b,
                    id.mark.map(|(value, mask)| Mark { value, mask }),
                    id.if_id,
                    None,
                );
            }
            Request::DumpSa | Request::DumpPolicy => {}
        }
        let len = b.0.len() as u32;
        b.0[0..4].copy_from_slice(&len.to_ne_bytes());
        Zeroizing::new(b.0)
    }
}

// ---- decoding ----

struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8], what: &'static str, need: usize) -> Result<Rd<'a>, WireError> {
        if b.len() < need {
            return Err(WireError::Truncated {
                what,
                got: b.len(),
                need,
            });
        }
        Ok(Rd { b, at: 0 })
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        // Callers check the length up front in `new`.
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.take())
    }
    fn be16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    fn be32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_ne_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }
    fn skip(&mut self, n: usize) {
        self.at += n;
    }
    fn raw_addr(&mut self) -> [u8; 16] {
        self.take()
    }
}

fn addr_of(raw: [u8; 16], family: u16) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

fn get_selector(r: &mut Rd<'_>) -> Selector {
    let d = r.raw_addr();
    let s = r.raw_addr();
    let dport = r.be16();
    let dport_mask = r.be16();
    let sport = r.be16();
    let sport_mask = r.be16();
    let family = r.u16();
    let prefixlen_d = r.u8();
    let prefixlen_s = r.u8();
    let proto = r.u8();
    r.skip(3);
    let ifindex = r.i32();
    let user = r.u32();
    Selector {
        family,
        daddr: addr_of(d, family),
        prefixlen_d,
        saddr: addr_of(s, family),
        prefixlen_s,
        dport,
        dport_mask,
        sport,
        sport_mask,
        proto,
        ifindex,
        user,
    }
}

fn get_counters(r: &mut Rd<'_>) -> Counters {
    Counters {
        bytes: r.u64(),
        packets: r.u64(),
        add_time: r.u64(),
        use_time: r.u64(),
    }
}

/// Attributes after a fixed header: (type without flags, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let type_ = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((type_, &b[4..len]));
        let next = len.div_ceil(4) * 4;
        b = &b[next.min(b.len())..];
    }
    out
}

struct CommonAttrs {
    mark: Option<Mark>,
    if_id: Option<u32>,
    offload: Option<OffloadDev>,
}

fn common_attr(c: &mut CommonAttrs, type_: u16, p: &[u8]) {
    match type_ {
        XFRMA_MARK if p.len() >= 8 => {
            c.mark = Some(Mark {
                value: u32::from_ne_bytes([p[0], p[1], p[2], p[3]]),
                mask: u32::from_ne_bytes([p[4], p[5], p[6], p[7]]),
            })
        }
        XFRMA_IF_ID if p.len() >= 4 => c.if_id = Some(u32::from_ne_bytes([p[0], p[1], p[2], p[3]])),
        XFRMA_OFFLOAD_DEV if p.len() >= 5 => {
            c.offload = Some(OffloadDev {
                ifindex: i32::from_ne_bytes([p[0], p[1], p[2], p[3]]),
                flags: p[4],
            })
        }
        _ => {}
    }
}

fn decode_sa(body: &[u8]) -> Result<Sa, WireError> {
    let mut r = Rd::new(body, "xfrm_usersa_info", USERSA_INFO_LEN)?;
    let sel = get_selector(&mut r);
    let daddr = r.raw_addr();
    let spi = r.be32();
    let proto = r.u8();
    r.skip(3);
    let saddr = r.raw_addr();
    r.skip(64); // lifetime_cfg
    let counters = get_counters(&mut r);
    let stats = SaStats {
        replay_window: r.u32(),
        replay: r.u32(),
        integrity_failed: r.u32(),
    };
    let _seq = r.u32();
    let reqid = r.u32();
    let family = r.u16();
    let mode = r.u8();
    let replay_window = r.u8();
    let flags = r.u8();
    let mut sa = Sa {
        sel,
        daddr: addr_of(daddr, family),
        spi,
        proto,
        saddr: addr_of(saddr, family),
        family,
        reqid,
        mode,
        replay_window,
        flags,
        counters,
        stats,
        aead: None,
        replay_esn: None,
        offload: None,
        mark: None,
        if_id: None,
    };
    let mut common = CommonAttrs {
        mark: None,
        if_id: None,
        offload: None,
    };
    for (type_, p) in attrs(&body[USERSA_INFO_LEN..]) {
        match type_ {
            XFRMA_ALG_AEAD if p.len() >= ALGO_AEAD_HDR_LEN => {
                let name_end = p[..64].iter().position(|&c| c == 0).unwrap_or(64);
                let name = String::from_utf8_lossy(&p[..name_end]).into_owned();
                let key_bits = u32::from_ne_bytes([p[64], p[65], p[66], p[67]]) as usize;
                let icv_bits = u32::from_ne_bytes([p[68], p[69], p[70], p[71]]);
                let key_len = key_bits.div_ceil(8).min(p.len() - ALGO_AEAD_HDR_LEN);
                let key =
                    Zeroizing::new(p[ALGO_AEAD_HDR_LEN..ALGO_AEAD_HDR_LEN + key_len].to_vec());
                sa.aead = Some(Aead {
                    name,
                    icv_bits,
                    key: SaKey::from_bytes(key),
                });
            }
            XFRMA_LTIME_CUR if p.len() >= 32 => {
                // The kernel writes both copies from `x->curlft` in one
                // call; the attribute is the one iproute2 prints, so it wins.
                let mut lr = Rd::new(p, "XFRMA_LTIME_CUR", 32)?;
                sa.counters = get_counters(&mut lr);
            }
            XFRMA_REPLAY_ESN_VAL if p.len() >= REPLAY_ESN_HDR_LEN => {
                let w = |i: usize| u32::from_ne_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                sa.replay_esn = Some(ReplayEsn {
                    oseq: w(4),
                    seq: w(8),
                    oseq_hi: w(12),
                    seq_hi: w(16),
                    replay_window: w(20),
                });
            }
            t => common_attr(&mut common, t, p),
        }
    }
    sa.mark = common.mark;
    sa.if_id = common.if_id;
    sa.offload = common.offload;
    Ok(sa)
}

fn decode_policy(body: &[u8]) -> Result<Policy, WireError> {
    let mut r = Rd::new(body, "xfrm_userpolicy_info", USERPOLICY_INFO_LEN)?;
    let sel = get_selector(&mut r);
    r.skip(64 + 32); // lifetime_cfg, lifetime_cur
    let priority = r.u32();
    let index = r.u32();
    let dir = Dir::from_u8(r.u8());
    let action = r.u8();
    let flags = r.u8();
    let share = r.u8();
    let mut p = Policy {
        sel,
        priority,
        index,
        dir,
        action,
        flags,
        share,
        tmpls: Vec::new(),
        mark: None,
        if_id: None,
        offload: None,
    };
    let mut common = CommonAttrs {
        mark: None,
        if_id: None,
        offload: None,
    };
    for (type_, a) in attrs(&body[USERPOLICY_INFO_LEN..]) {
        if type_ == XFRMA_TMPL {
            for chunk in a.chunks_exact(USER_TMPL_LEN) {
                let mut r = Rd::new(chunk, "xfrm_user_tmpl", USER_TMPL_LEN)?;
                let daddr = r.raw_addr();
                let spi = r.be32();
                let proto = r.u8();
                r.skip(3);
                let family = r.u16();
                r.skip(2);
                let saddr = r.raw_addr();
                let reqid = r.u32();
                let mode = r.u8();
                let share = r.u8();
                let optional = r.u8();
                r.skip(1);
                p.tmpls.push(Tmpl {
                    daddr: addr_of(daddr, family),
                    spi,
                    proto,
                    family,
                    saddr: addr_of(saddr, family),
                    reqid,
                    mode,
                    share,
                    optional,
                    aalgos: r.u32(),
                    ealgos: r.u32(),
                    calgos: r.u32(),
                });
            }
        } else {
            common_attr(&mut common, type_, a);
        }
    }
    p.mark = common.mark;
    p.if_id = common.if_id;
    p.offload = common.offload;
    Ok(p)
}

/// Decodes every netlink message in `buf` (one `recv`).
pub fn decode(buf: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let h = &buf[at..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > h.len() {
            return Err(WireError::BadLength { len, offset: at });
        }
        let type_ = u16::from_ne_bytes([h[4], h[5]]);
        let flags = u16::from_ne_bytes([h[6], h[7]]);
        let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        let body = &h[NLMSG_HDRLEN..len];
        let reply = match type_ {
            NLMSG_ERROR => {
                let r = Rd::new(body, "nlmsgerr", 4)?;
                Reply::Error(i32::from_ne_bytes([r.b[0], r.b[1], r.b[2], r.b[3]]))
            }
            NLMSG_DONE => Reply::Done,
            XFRM_MSG_NEWSA => Reply::Sa(Box::new(decode_sa(body)?)),
            XFRM_MSG_NEWPOLICY => Reply::Policy(Box::new(decode_policy(body)?)),
            t => Reply::Other(t),
        };
        out.push(Message { seq, flags, reply });
        at += len.div_ceil(4) * 4;
    }
    Ok(out)
}

/// Encodes an SA as the kernel reports it in a dump (`XFRM_MSG_NEWSA`), for
/// tests and fuzzing seeds.
pub fn encode_sa_report(sa: &Sa, seq: u32) -> Vec<u8> {
    let mut m = Request::NewSa(sa.clone()).encode(seq).to_vec();
    m[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
    m
}

/// Encodes a policy as the kernel reports it in a dump.
pub fn encode_policy_report(p: &Policy, seq: u32) -> Vec<u8> {
    let mut m = Request::UpdPolicy(p.clone()).encode(seq).to_vec();
    m[4..6].copy_from_slice(&XFRM_MSG_NEWPOLICY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
    m
}

#[cfg(test)]
mod tests;
