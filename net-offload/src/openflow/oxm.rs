//! Match fields: the OXM TLVs of OpenFlow 1.2+ (`OFPXMC_OPENFLOW_BASIC`, class
//! 0x8000) and the Nicira NXM fields OVS accepts inside OXM matches (class 0x0001;
//! class 0x0000 is understood when decoding `NXAST_REG_MOVE` operands).
//!
//! A [`Match`] is canonical: fields are kept sorted in the order OVS itself encodes
//! them (`nx_put_raw`), values are normalised under their mask, an all-ones mask is
//! stored as "exact" and a zero mask removes the field. Two matches that mean the
//! same thing therefore compare equal, and our encoding is byte-identical to
//! ovs-ofctl's. Fields outside the supported subset are kept as [`RawOxm`] so a
//! dump of foreign flows still decodes and re-encodes verbatim.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::header::{Reader, pad_to_8, patch_len16};

const OXM_CLASS_BASIC: u16 = 0x8000;
const NXM_CLASS_0: u16 = 0x0000;
const NXM_CLASS_1: u16 = 0x0001;
const OFPMT_OXM: u16 = 1;

/// Number of Nicira 32-bit registers (`reg0`..`reg15`).
pub const NUM_REGS: u8 = 16;

/// A supported match / set_field field. The declaration order is OVS's encoding
/// order, so sorting by `Field` gives the canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    InPort,
    EthSrc,
    EthDst,
    EthType,
    VlanVid,
    Ipv4Src,
    Ipv4Dst,
    IpProto,
    TcpSrc,
    TcpDst,
    UdpSrc,
    UdpDst,
    ArpOp,
    ArpSpa,
    ArpTpa,
    ArpSha,
    ArpTha,
    TunnelId,
    /// Nicira `tun_src` (`NXM_NX_TUN_IPV4_SRC`): the outer IPv4 source of a
    /// packet that came from a tunnel.
    TunIpv4Src,
    /// Nicira `tun_dst` (`NXM_NX_TUN_IPV4_DST`).
    TunIpv4Dst,
    /// Nicira 32-bit register `regN`, N in `0..16`.
    Reg(u8),
    /// Nicira `ct_state`; see [`ct_state`] for the bits.
    CtState,
    /// Nicira `ct_zone`.
    CtZone,
    Metadata,
}

/// `ct_state` bits (`NX_CT_STATE_*`).
pub mod ct_state {
    pub const NEW: u64 = 0x01;
    pub const EST: u64 = 0x02;
    pub const REL: u64 = 0x04;
    pub const RPL: u64 = 0x08;
    pub const INV: u64 = 0x10;
    pub const TRK: u64 = 0x20;
    pub const SNAT: u64 = 0x40;
    pub const DNAT: u64 = 0x80;
    /// Names in bit order, as ovs-ofctl prints them.
    pub const NAMES: [(&str, u64); 8] = [
        ("new", NEW),
        ("est", EST),
        ("rel", REL),
        ("rpl", RPL),
        ("inv", INV),
        ("trk", TRK),
        ("snat", SNAT),
        ("dnat", DNAT),
    ];
}

/// How a field's value is written in ovs-ofctl syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueFormat {
    Decimal,
    Hex,
    Mac,
    Ipv4,
    Port,
    CtState,
}

impl Field {
    /// All fields, in canonical order (registers 0..16 included).
    pub fn all() -> impl Iterator<Item = Field> {
        use Field::*;
        [
            InPort, EthSrc, EthDst, EthType, VlanVid, Ipv4Src, Ipv4Dst, IpProto, TcpSrc, TcpDst,
            UdpSrc, UdpDst, ArpOp, ArpSpa, ArpTpa, ArpSha, ArpTha, TunnelId, TunIpv4Src,
            TunIpv4Dst,
        ]
        .into_iter()
        .chain((0..NUM_REGS).map(Reg))
        .chain([CtState, CtZone, Metadata])
    }

    /// Value width in bytes.
    pub fn width(self) -> u8 {
        use Field::*;
        match self {
            IpProto => 1,
            EthType | VlanVid | TcpSrc | TcpDst | UdpSrc | UdpDst | ArpOp | CtZone => 2,
            InPort | Ipv4Src | Ipv4Dst | ArpSpa | ArpTpa | TunIpv4Src | TunIpv4Dst | Reg(_)
            | CtState => 4,
            EthSrc | EthDst | ArpSha | ArpTha => 6,
            TunnelId | Metadata => 8,
        }
    }

    /// Width in bits.
    pub fn bits(self) -> u16 {
        u16::from(self.width()) * 8
    }

    /// All-ones value of this field's width (for `vlan_vid`, the 13 bits that
    /// carry meaning: the VLAN id and `OFPVID_PRESENT`).
    pub fn full_mask(self) -> u64 {
        if self == Field::VlanVid {
            return 0x1fff;
        }
        match self.width() {
            8 => u64::MAX,
            w => (1u64 << (u32::from(w) * 8)) - 1,
        }
    }

    /// The OVS name used in `set_field:V->NAME` (meta-flow name).
    pub fn name(self) -> String {
        use Field::*;
        match self {
            InPort => "in_port".into(),
            EthSrc => "eth_src".into(),
            EthDst => "eth_dst".into(),
            EthType => "eth_type".into(),
            VlanVid => "vlan_vid".into(),
            Ipv4Src => "ip_src".into(),
            Ipv4Dst => "ip_dst".into(),
            IpProto => "nw_proto".into(),
            TcpSrc => "tcp_src".into(),
            TcpDst => "tcp_dst".into(),
            UdpSrc => "udp_src".into(),
            UdpDst => "udp_dst".into(),
            ArpOp => "arp_op".into(),
            ArpSpa => "arp_spa".into(),
            ArpTpa => "arp_tpa".into(),
            ArpSha => "arp_sha".into(),
            ArpTha => "arp_tha".into(),
            TunnelId => "tun_id".into(),
            TunIpv4Src => "tun_src".into(),
            TunIpv4Dst => "tun_dst".into(),
            Reg(n) => format!("reg{n}"),
            CtState => "ct_state".into(),
            CtZone => "ct_zone".into(),
            Metadata => "metadata".into(),
        }
    }

    pub(crate) fn format(self) -> ValueFormat {
        use Field::*;
        match self {
            InPort => ValueFormat::Port,
            EthSrc | EthDst | ArpSha | ArpTha => ValueFormat::Mac,
            Ipv4Src | Ipv4Dst | ArpSpa | ArpTpa | TunIpv4Src | TunIpv4Dst => ValueFormat::Ipv4,
            EthType | TunnelId | Reg(_) | Metadata => ValueFormat::Hex,
            CtState => ValueFormat::CtState,
            VlanVid | IpProto | TcpSrc | TcpDst | UdpSrc | UdpDst | ArpOp | CtZone => {
                ValueFormat::Decimal
            }
        }
    }

    /// The OXM/NXM header class and field number used in matches and set_field.
    fn oxm(self) -> Result<(u16, u8), EncodeError> {
        use Field::*;
        let basic = |n| Ok((OXM_CLASS_BASIC, n));
        match self {
            InPort => basic(0),
            Metadata => basic(2),
            EthDst => basic(3),
            EthSrc => basic(4),
            EthType => basic(5),
            VlanVid => basic(6),
            IpProto => basic(10),
            Ipv4Src => basic(11),
            Ipv4Dst => basic(12),
            TcpSrc => basic(13),
            TcpDst => basic(14),
            UdpSrc => basic(15),
            UdpDst => basic(16),
            ArpOp => basic(21),
            ArpSpa => basic(22),
            ArpTpa => basic(23),
            ArpSha => basic(24),
            ArpTha => basic(25),
            TunnelId => basic(38),
            Reg(n) if n < NUM_REGS => Ok((NXM_CLASS_1, n)),
            Reg(n) => Err(EncodeError::InvalidRegister(n)),
            TunIpv4Src => Ok((NXM_CLASS_1, 31)),
            TunIpv4Dst => Ok((NXM_CLASS_1, 32)),
            CtState => Ok((NXM_CLASS_1, 105)),
            CtZone => Ok((NXM_CLASS_1, 106)),
        }
    }

    /// The header OVS puts in `NXAST_REG_MOVE` for OpenFlow 1.3/1.4: the NXM
    /// header where one exists, otherwise the OXM one (`in_port` and `vlan_vid`
    /// have NXM forms of a different width or meaning, so OXM is used).
    pub(crate) fn move_header(self) -> Result<u32, EncodeError> {
        use Field::*;
        let nxm0 = |n| Ok((NXM_CLASS_0, n));
        let nxm1 = |n| Ok((NXM_CLASS_1, n));
        let (class, field) = match self {
            EthDst => nxm0(1),
            EthSrc => nxm0(2),
            EthType => nxm0(3),
            IpProto => nxm0(6),
            Ipv4Src => nxm0(7),
            Ipv4Dst => nxm0(8),
            TcpSrc => nxm0(9),
            TcpDst => nxm0(10),
            UdpSrc => nxm0(11),
            UdpDst => nxm0(12),
            ArpOp => nxm0(15),
            ArpSpa => nxm0(16),
            ArpTpa => nxm0(17),
            TunnelId => nxm1(16),
            ArpSha => nxm1(17),
            ArpTha => nxm1(18),
            other => other.oxm(),
        }?;
        Ok(oxm_header(class, field, false, self.width()))
    }

    /// The field an OXM/NXM header names, with the header's value width.
    pub(crate) fn from_header(class: u16, field: u8) -> Option<(Field, u8)> {
        use Field::*;
        let f = match (class, field) {
            (OXM_CLASS_BASIC, n) => match n {
                0 => InPort,
                2 => Metadata,
                3 => EthDst,
                4 => EthSrc,
                5 => EthType,
                6 => VlanVid,
                10 => IpProto,
                11 => Ipv4Src,
                12 => Ipv4Dst,
                13 => TcpSrc,
                14 => TcpDst,
                15 => UdpSrc,
                16 => UdpDst,
                21 => ArpOp,
                22 => ArpSpa,
                23 => ArpTpa,
                24 => ArpSha,
                25 => ArpTha,
                38 => TunnelId,
                _ => return None,
            },
            (NXM_CLASS_1, n) => match n {
                n if n < NUM_REGS => Reg(n),
                16 => TunnelId,
                17 => ArpSha,
                18 => ArpTha,
                31 => TunIpv4Src,
                32 => TunIpv4Dst,
                105 => CtState,
                106 => CtZone,
                _ => return None,
            },
            (NXM_CLASS_0, n) => match n {
                // NXM_OF_IN_PORT is 16 bits wide.
                0 => return Some((InPort, 2)),
                1 => EthDst,
                2 => EthSrc,
                3 => EthType,
                6 => IpProto,
                7 => Ipv4Src,
                8 => Ipv4Dst,
                9 => TcpSrc,
                10 => TcpDst,
                11 => UdpSrc,
                12 => UdpDst,
                15 => ArpOp,
                16 => ArpSpa,
                17 => ArpTpa,
                _ => return None,
            },
            _ => return None,
        };
        Some((f, f.width()))
    }

    /// Decodes a bare 32-bit header (as in `NXAST_REG_MOVE`/`NXAST_CT` operands).
    pub(crate) fn from_header_u32(header: u32) -> Option<Field> {
        let class = (header >> 16) as u16;
        let field = ((header >> 9) & 0x7f) as u8;
        let len = (header & 0xff) as u8;
        let (f, width) = Field::from_header(class, field)?;
        (len == width).then_some(f)
    }
}

fn oxm_header(class: u16, field: u8, has_mask: bool, len: u8) -> u32 {
    (u32::from(class) << 16) | (u32::from(field) << 9) | (u32::from(has_mask) << 8) | u32::from(len)
}

/// Writes `width` low-order bytes of `value`, big-endian.
pub(crate) fn put_value(out: &mut BytesMut, value: u64, width: u8) {
    out.put_slice(&value.to_be_bytes()[8 - usize::from(width)..]);
}

fn read_value(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// One field of a match: `value` under `mask` (`None` = exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldMatch {
    pub field: Field,
    pub value: u64,
    pub mask: Option<u64>,
}

/// An OXM TLV outside the supported subset, kept verbatim (header + payload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawOxm {
    pub header: u32,
    pub payload: Bytes,
}

/// A canonical set of match fields; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    fields: Vec<FieldMatch>,
    raw: Vec<RawOxm>,
}

impl Match {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an exact match (builder style).
    pub fn with(mut self, field: Field, value: u64) -> Self {
        self.set(field, value, None);
        self
    }

    /// Adds a masked match (builder style).
    pub fn with_masked(mut self, field: Field, value: u64, mask: u64) -> Self {
        self.set(field, value, Some(mask));
        self
    }

    /// Sets `field`, replacing any earlier value; normalises as described above.
    pub fn set(&mut self, field: Field, value: u64, mask: Option<u64>) {
        let full = field.full_mask();
        let mask = mask.map_or(full, |m| m & full);
        let pos = self.fields.binary_search_by(|f| f.field.cmp(&field));
        if mask == 0 {
            if let Ok(i) = pos {
                self.fields.remove(i);
            }
            return;
        }
        let fm = FieldMatch {
            field,
            value: value & mask,
            mask: (mask != full).then_some(mask),
        };
        match pos {
            Ok(i) => self.fields[i] = fm,
            Err(i) => {
                let len = self.fields.len();
                if len == self.fields.capacity() && len < 8 {
                    // Room for a usual match at once (also in a copy,
                    // which has no room to spare), not grown 4, then 8.
                    self.fields.reserve_exact(8 - len);
                }
                self.fields.insert(i, fm)
            }
        }
    }

    pub fn get(&self, field: Field) -> Option<&FieldMatch> {
        self.fields
            .binary_search_by(|f| f.field.cmp(&field))
            .ok()
            .map(|i| &self.fields[i])
    }

    /// The supported fields, in canonical order.
    pub fn fields(&self) -> &[FieldMatch] {
        &self.fields
    }

    /// TLVs outside the supported subset, in the order received.
    pub fn raw(&self) -> &[RawOxm] {
        &self.raw
    }

    pub fn push_raw(&mut self, raw: RawOxm) {
        self.raw.push(raw);
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.raw.is_empty()
    }

    /// Encodes `ofp_match` (type OXM) including its trailing padding.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.put_u16(OFPMT_OXM);
        out.put_u16(0);
        for fm in &self.fields {
            put_oxm(out, fm.field, fm.value, fm.mask)?;
        }
        for raw in &self.raw {
            out.put_u32(raw.header);
            out.put_slice(&raw.payload);
        }
        // `length` excludes the padding.
        patch_len16(out, start);
        pad_to_8(out, start);
        Ok(())
    }

    /// Decodes `ofp_match` including its padding; `r` is left after the padding.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let match_type = r.peek_u16(0)?;
        let length = usize::from(r.peek_u16(2)?);
        if match_type != OFPMT_OXM {
            return Err(DecodeError::BadMatchType(match_type));
        }
        if length < 4 {
            return Err(DecodeError::BadLength {
                what: "match",
                length,
            });
        }
        let padded = length.div_ceil(8) * 8;
        let body = r.bytes(length)?;
        r.skip(padded - length)?;
        let mut tlvs = Reader::new(&body[4..], "match field");
        let mut m = Match::new();
        while !tlvs.is_empty() {
            let header = tlvs.u32()?;
            let len = (header & 0xff) as u8;
            let payload = tlvs.bytes(usize::from(len))?;
            let class = (header >> 16) as u16;
            let has_mask = header & 0x100 != 0;
            let known = Field::from_header(class, ((header >> 9) & 0x7f) as u8)
                .filter(|(_, w)| usize::from(len) == usize::from(*w) * (1 + usize::from(has_mask)));
            let Some((field, width)) = known else {
                m.raw.push(RawOxm {
                    header,
                    payload: Bytes::copy_from_slice(payload),
                });
                continue;
            };
            let w = usize::from(width);
            let mut value = read_value(&payload[..w]);
            let mask = has_mask.then(|| read_value(&payload[w..]));
            if field == Field::InPort && width == 2 && value >= 0xff00 {
                // 16-bit reserved port numbers map onto the 32-bit ones.
                value |= 0xffff_0000;
            }
            if m.get(field).is_some() {
                return Err(DecodeError::DuplicateField(field.name()));
            }
            m.set(field, value, mask);
        }
        Ok(m)
    }
}

/// Writes one OXM TLV.
pub(crate) fn put_oxm(
    out: &mut BytesMut,
    field: Field,
    value: u64,
    mask: Option<u64>,
) -> Result<(), EncodeError> {
    let (class, num) = field.oxm()?;
    let width = field.width();
    let len = if mask.is_some() { width * 2 } else { width };
    out.put_u32(oxm_header(class, num, mask.is_some(), len));
    put_value(out, value, width);
    if let Some(mask) = mask {
        put_value(out, mask, width);
    }
    Ok(())
}

/// Decodes one OXM TLV as used by SET_FIELD: a supported field without mask.
pub(crate) fn decode_set_field(body: &[u8]) -> Option<(Field, u64)> {
    let mut r = Reader::new(body, "set_field");
    let header = r.u32().ok()?;
    if header & 0x100 != 0 {
        return None;
    }
    let (field, width) = Field::from_header((header >> 16) as u16, ((header >> 9) & 0x7f) as u8)?;
    if (header & 0xff) as u8 != width || width != field.width() {
        return None;
    }
    let value = read_value(r.bytes(usize::from(width)).ok()?);
    // The remainder is padding.
    r.rest().iter().all(|b| *b == 0).then_some((field, value))
}

/// Packs a MAC address into the low 48 bits of a `u64`.
pub fn mac(octets: [u8; 6]) -> u64 {
    read_value(&octets)
}

/// Unpacks the low 48 bits of `value` into a MAC address.
pub fn mac_octets(value: u64) -> [u8; 6] {
    let b = value.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}
