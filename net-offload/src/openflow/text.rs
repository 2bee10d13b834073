//! ovs-ofctl flow syntax for the supported subset: `Display` for [`Flow`],
//! [`FlowMod`], [`FlowEntry`], [`Match`], [`Action`] and [`Instructions`], and
//! `FromStr` for [`Flow`] and [`Action`].
//!
//! The printed form is accepted by `ovs-ofctl add-flow` and parses back to the
//! same value. The parser also accepts the lines `ovs-ofctl dump-flows` prints
//! (statistics such as `duration` and `n_packets`, and flow flags such as
//! `send_flow_rem`, are skipped) and OVS's alternative spellings (`dl_src` or
//! `eth_src`, `strip_vlan`, `load:V->F[]`, `mod_dl_src:`, NXM or OVS field names
//! in `move`). Our field order may differ from OVS's: compare parsed flows, not
//! strings. Not supported: IPv6, ICMP fields, `exec()`/`nat` in `ct`, partial
//! `load`, `note`, `learn`, groups.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use bytes::Bytes;

use super::action::{Action, Ct, CtZone, RegMove, port};
use super::flow_mod::{Flow, FlowMod, FlowModCommand, TABLE_ALL};
use super::instruction::{Instructions, WriteMetadata};
use super::multipart::FlowEntry;
use super::oxm::{Field, FieldMatch, Match, NUM_REGS, ValueFormat, ct_state, mac_octets};

const ETH_TYPE_IP: u64 = 0x0800;
const ETH_TYPE_ARP: u64 = 0x0806;
const VLAN_PRESENT: u64 = 0x1000;

/// Text that is not a flow or action of the supported subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("invalid {what} `{text}`")]
    Invalid { what: &'static str, text: String },
    #[error("unknown keyword `{0}`")]
    UnknownKey(String),
    #[error("`{0}` is not supported")]
    Unsupported(String),
    #[error("{0} given twice")]
    Duplicate(String),
    #[error("`{0}` needs nw_proto 6 (tcp) or 17 (udp)")]
    PortWithoutProto(String),
}

fn invalid(what: &'static str, text: &str) -> TextError {
    TextError::Invalid {
        what,
        text: text.to_string(),
    }
}

// ---------------------------------------------------------------- printing

fn fmt_port(f: &mut impl fmt::Write, p: u32) -> fmt::Result {
    match port::NAMES.iter().find(|(_, v)| *v == p) {
        Some((name, _)) => f.write_str(name),
        None => write!(f, "{p}"),
    }
}

fn fmt_ipv4(f: &mut impl fmt::Write, v: u64) -> fmt::Result {
    write!(f, "{}", Ipv4Addr::from(v as u32))
}

fn fmt_mac(f: &mut impl fmt::Write, v: u64) -> fmt::Result {
    let o = mac_octets(v);
    write!(
        f,
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        o[0], o[1], o[2], o[3], o[4], o[5]
    )
}

/// Writes a value (not a match) of `field`.
fn fmt_value(f: &mut impl fmt::Write, field: Field, v: u64) -> fmt::Result {
    match field.format() {
        ValueFormat::Port => fmt_port(f, v as u32),
        ValueFormat::Mac => fmt_mac(f, v),
        ValueFormat::Ipv4 => fmt_ipv4(f, v),
        ValueFormat::Hex | ValueFormat::CtState => write!(f, "{v:#x}"),
        ValueFormat::Decimal => write!(f, "{v}"),
    }
}

/// Writes `value[/mask]` of a match field.
fn fmt_field_match(f: &mut impl fmt::Write, fm: &FieldMatch) -> fmt::Result {
    let Some(mask) = fm.mask else {
        return match (fm.field, fm.field.format()) {
            (Field::EthType, _) => write!(f, "{:#06x}", fm.value),
            (_, ValueFormat::CtState) => fmt_ct_state(f, fm.value, fm.field.full_mask()),
            _ => fmt_value(f, fm.field, fm.value),
        };
    };
    match fm.field.format() {
        ValueFormat::Mac => {
            fmt_mac(f, fm.value)?;
            f.write_char('/')?;
            fmt_mac(f, mask)
        }
        ValueFormat::Ipv4 => {
            fmt_ipv4(f, fm.value)?;
            let m = mask as u32;
            if m.leading_ones() + m.trailing_zeros() == 32 {
                write!(f, "/{}", m.leading_ones())
            } else {
                f.write_char('/')?;
                fmt_ipv4(f, mask)
            }
        }
        ValueFormat::CtState if mask & !0xff == 0 => fmt_ct_state(f, fm.value, mask),
        _ => write!(f, "{:#x}/{:#x}", fm.value, mask),
    }
}

fn fmt_ct_state(f: &mut impl fmt::Write, value: u64, mask: u64) -> fmt::Result {
    if mask & !0xff != 0 {
        return write!(f, "{value:#x}/{mask:#x}");
    }
    for (name, bit) in ct_state::NAMES {
        if mask & bit != 0 {
            let sign = if value & bit != 0 { '+' } else { '-' };
            write!(f, "{sign}{name}")?;
        }
    }
    Ok(())
}

/// The name a match field has in ovs-ofctl's flow syntax.
fn match_name(field: Field, l4_implied: bool) -> String {
    use Field::*;
    match field {
        EthSrc => "dl_src".into(),
        EthDst => "dl_dst".into(),
        EthType => "dl_type".into(),
        Ipv4Src => "nw_src".into(),
        Ipv4Dst => "nw_dst".into(),
        TcpSrc | UdpSrc if l4_implied => "tp_src".into(),
        TcpDst | UdpDst if l4_implied => "tp_dst".into(),
        other => other.name(),
    }
}

/// Writes the match as comma-separated items (each preceded by `sep` except the first).
fn fmt_match_items(m: &Match, items: &mut Vec<String>) {
    let eth = m
        .get(Field::EthType)
        .filter(|f| f.mask.is_none())
        .map(|f| f.value);
    let proto = m
        .get(Field::IpProto)
        .filter(|f| f.mask.is_none())
        .map(|f| f.value);
    let (shorthand, eth_used, proto_used) = match (eth, proto) {
        (Some(ETH_TYPE_IP), Some(6)) => (Some("tcp"), true, true),
        (Some(ETH_TYPE_IP), Some(17)) => (Some("udp"), true, true),
        (Some(ETH_TYPE_IP), Some(1)) => (Some("icmp"), true, true),
        (Some(ETH_TYPE_IP), _) => (Some("ip"), true, false),
        (Some(ETH_TYPE_ARP), _) => (Some("arp"), true, false),
        _ => (None, false, false),
    };
    items.extend(shorthand.map(String::from));
    for fm in m.fields() {
        let mut s = String::new();
        match fm.field {
            Field::EthType if eth_used => continue,
            Field::IpProto if proto_used => continue,
            Field::VlanVid => {
                match (fm.value, fm.mask) {
                    (v, None) if v & VLAN_PRESENT != 0 => {
                        let _ = write!(s, "dl_vlan={}", v & 0xfff);
                    }
                    (0, None) => s.push_str("vlan_tci=0x0000"),
                    (v, Some(m)) => {
                        let _ = write!(s, "vlan_tci={v:#06x}/{m:#06x}");
                    }
                    (v, None) => {
                        let _ = write!(s, "vlan_vid={v:#06x}");
                    }
                }
                items.push(s);
                continue;
            }
            _ => {}
        }
        let l4_implied = match fm.field {
            Field::TcpSrc | Field::TcpDst => proto_used && proto == Some(6),
            Field::UdpSrc | Field::UdpDst => proto_used && proto == Some(17),
            _ => false,
        };
        s.push_str(&match_name(fm.field, l4_implied));
        s.push('=');
        let _ = fmt_field_match(&mut s, fm);
        items.push(s);
    }
    for raw in m.raw() {
        let mut s = format!("oxm={:#010x}:", raw.header);
        push_hex(&mut s, &raw.payload);
        items.push(s);
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        fmt_match_items(self, &mut items);
        f.write_str(&items.join(","))
    }
}

/// NXM-style name of a field inside `move`/`ct(zone=...)`, as OVS prints it.
fn subfield_name(field: Field) -> String {
    use Field::*;
    match field {
        InPort => "NXM_OF_IN_PORT".into(),
        EthDst => "NXM_OF_ETH_DST".into(),
        EthSrc => "NXM_OF_ETH_SRC".into(),
        EthType => "NXM_OF_ETH_TYPE".into(),
        VlanVid => "OXM_OF_VLAN_VID".into(),
        IpProto => "NXM_OF_IP_PROTO".into(),
        Ipv4Src => "NXM_OF_IP_SRC".into(),
        Ipv4Dst => "NXM_OF_IP_DST".into(),
        TcpSrc => "NXM_OF_TCP_SRC".into(),
        TcpDst => "NXM_OF_TCP_DST".into(),
        UdpSrc => "NXM_OF_UDP_SRC".into(),
        UdpDst => "NXM_OF_UDP_DST".into(),
        ArpOp => "NXM_OF_ARP_OP".into(),
        ArpSpa => "NXM_OF_ARP_SPA".into(),
        ArpTpa => "NXM_OF_ARP_TPA".into(),
        ArpSha => "NXM_NX_ARP_SHA".into(),
        ArpTha => "NXM_NX_ARP_THA".into(),
        TunnelId => "NXM_NX_TUN_ID".into(),
        TunIpv4Src => "NXM_NX_TUN_IPV4_SRC".into(),
        TunIpv4Dst => "NXM_NX_TUN_IPV4_DST".into(),
        Reg(n) => format!("NXM_NX_REG{n}"),
        CtState => "NXM_NX_CT_STATE".into(),
        CtZone => "NXM_NX_CT_ZONE".into(),
        Metadata => "OXM_OF_METADATA".into(),
    }
}

fn fmt_subfield(f: &mut impl fmt::Write, field: Field, ofs: u16, n_bits: u16) -> fmt::Result {
    f.write_str(&subfield_name(field))?;
    if ofs == 0 && n_bits == field.bits() {
        f.write_str("[]")
    } else if n_bits == 1 {
        write!(f, "[{ofs}]")
    } else {
        // n_bits 0 is no valid subfield, but a decoded message may carry
        // it: printed as the empty range `[ofs..ofs-1]` saturated, never a
        // panic (found by the openflow_decode fuzz target).
        let last = (u32::from(ofs) + u32::from(n_bits)).saturating_sub(1);
        write!(f, "[{ofs}..{last}]")
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output { port: p, max_len } => match *p {
                port::CONTROLLER => write!(f, "CONTROLLER:{max_len}"),
                p if p >= port::MAX => fmt_port(f, p),
                p => write!(f, "output:{p}"),
            },
            Action::SetField { field, value } => {
                f.write_str("set_field:")?;
                fmt_value(f, *field, *value)?;
                write!(f, "->{}", field.name())
            }
            Action::PushVlan { ethertype } => write!(f, "push_vlan:{ethertype:#06x}"),
            Action::PopVlan => f.write_str("pop_vlan"),
            Action::DecTtl => f.write_str("dec_ttl"),
            Action::Resubmit { port: p, table } => {
                f.write_str("resubmit(")?;
                if *p != port::IN_PORT_16 {
                    write!(f, "{p}")?;
                }
                f.write_char(',')?;
                if *table != TABLE_ALL {
                    write!(f, "{table}")?;
                }
                f.write_char(')')
            }
            Action::Ct(ct) => {
                let mut args = Vec::new();
                if ct.commit {
                    args.push("commit".to_string());
                }
                if ct.force {
                    args.push("force".to_string());
                }
                if let Some(t) = ct.table {
                    args.push(format!("table={t}"));
                }
                match ct.zone {
                    CtZone::Imm(0) => {}
                    CtZone::Imm(z) => args.push(format!("zone={z}")),
                    CtZone::Field { field, ofs, n_bits } => {
                        let mut s = "zone=".to_string();
                        fmt_subfield(&mut s, field, ofs, n_bits)?;
                        args.push(s);
                    }
                }
                match ct.alg {
                    0 => {}
                    21 => args.push("alg=ftp".into()),
                    69 => args.push("alg=tftp".into()),
                    n => args.push(format!("alg={n}")),
                }
                if args.is_empty() {
                    f.write_str("ct")
                } else {
                    write!(f, "ct({})", args.join(","))
                }
            }
            Action::Move(m) => {
                f.write_str("move:")?;
                fmt_subfield(f, m.src, m.src_ofs, m.n_bits)?;
                f.write_str("->")?;
                fmt_subfield(f, m.dst, m.dst_ofs, m.n_bits)
            }
            Action::Raw(bytes) => {
                let mut s = String::from("raw:");
                push_hex(&mut s, bytes);
                f.write_str(&s)
            }
        }
    }
}

impl fmt::Display for Instructions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_drop() {
            return f.write_str("drop");
        }
        let mut items: Vec<String> = Vec::new();
        if let Some(m) = self.meter {
            items.push(format!("meter:{m}"));
        }
        items.extend(self.apply.iter().map(|a| a.to_string()));
        for raw in &self.raw {
            let mut s = String::from("raw_instruction:");
            push_hex(&mut s, raw);
            items.push(s);
        }
        if let Some(wm) = self.write_metadata {
            if wm.mask == u64::MAX {
                items.push(format!("write_metadata:{:#x}", wm.value));
            } else {
                items.push(format!("write_metadata:{:#x}/{:#x}", wm.value, wm.mask));
            }
        }
        if let Some(t) = self.goto_table {
            items.push(format!("goto_table:{t}"));
        }
        f.write_str(&items.join(","))
    }
}

fn flow_items(flow: &Flow, items: &mut Vec<String>) {
    if flow.idle_timeout != 0 {
        items.push(format!("idle_timeout={}", flow.idle_timeout));
    }
    if flow.hard_timeout != 0 {
        items.push(format!("hard_timeout={}", flow.hard_timeout));
    }
    fmt_match_items(&flow.matches, items);
}

/// `table=T, priority=P, cookie=0xC, MATCH..., actions=...` (ovs-ofctl add-flow syntax).
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = vec![
            format!("table={}", self.table),
            format!("priority={}", self.priority),
            format!("cookie={:#x}", self.cookie),
        ];
        flow_items(self, &mut items);
        items.push(format!("actions={}", self.instructions));
        f.write_str(&items.join(", "))
    }
}

/// The command, then the flow (`add table=...`); delete-by-cookie prints the
/// cookie mask and no actions.
impl fmt::Display for FlowMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.flow;
        match self.command {
            FlowModCommand::Add => write!(f, "add {flow}"),
            FlowModCommand::Modify => write!(f, "modify {flow}"),
            FlowModCommand::ModifyStrict => write!(f, "modify_strict {flow}"),
            FlowModCommand::Delete | FlowModCommand::DeleteStrict => {
                let strict = self.command == FlowModCommand::DeleteStrict;
                let mut items = vec![if flow.table == TABLE_ALL {
                    "table=all".to_string()
                } else {
                    format!("table={}", flow.table)
                }];
                if strict {
                    items.push(format!("priority={}", flow.priority));
                }
                if self.cookie_mask != 0 {
                    items.push(format!("cookie={:#x}/{:#x}", flow.cookie, self.cookie_mask));
                }
                fmt_match_items(&flow.matches, &mut items);
                let verb = if strict { "delete_strict" } else { "delete" };
                write!(f, "{verb} {}", items.join(", "))
            }
        }
    }
}

/// Like one line of `ovs-ofctl dump-flows`.
impl fmt::Display for FlowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.flow;
        let d = self.duration();
        write!(
            f,
            "cookie={:#x}, duration={}.{:03}s, table={}, n_packets={}, n_bytes={}, ",
            flow.cookie,
            d.as_secs(),
            d.subsec_millis(),
            flow.table,
            self.packet_count,
            self.byte_count
        )?;
        let mut items = vec![format!("priority={}", flow.priority)];
        flow_items(flow, &mut items);
        write!(f, "{} actions={}", items.join(","), flow.instructions)
    }
}

// ---------------------------------------------------------------- parsing

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_num<T: TryFrom<u64>>(what: &'static str, s: &str) -> Result<T, TextError> {
    parse_u64(s)
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| invalid(what, s))
}

fn parse_mac(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    parts.iter().try_fold(0u64, |acc, p| {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        Some((acc << 8) | u64::from(u8::from_str_radix(p, 16).ok()?))
    })
}

fn parse_port(s: &str) -> Option<u32> {
    port::NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|(_, v)| *v)
        .or_else(|| parse_u64(s).and_then(|v| u32::try_from(v).ok()))
}

/// Parses a value (no mask) of `field`.
fn parse_value(field: Field, s: &str) -> Result<u64, TextError> {
    let v = match field.format() {
        ValueFormat::Port => parse_port(s).map(u64::from),
        ValueFormat::Mac => parse_mac(s),
        ValueFormat::Ipv4 => s
            .parse::<Ipv4Addr>()
            .ok()
            .map(|ip| u64::from(u32::from(ip))),
        _ => parse_u64(s),
    };
    v.filter(|v| v & !field.full_mask() == 0)
        .ok_or_else(|| invalid("value", s))
}

fn parse_ct_state(s: &str) -> Result<(u64, u64), TextError> {
    if let Some((v, m)) = s.split_once('/') {
        return Ok((
            parse_u64(v).ok_or_else(|| invalid("ct_state", s))?,
            parse_u64(m).ok_or_else(|| invalid("ct_state", s))?,
        ));
    }
    if let Some(v) = parse_u64(s) {
        return Ok((v, 0xffff_ffff));
    }
    let (mut value, mut mask) = (0, 0);
    let mut rest = s;
    while !rest.is_empty() {
        let set = match rest.as_bytes()[0] {
            b'+' => true,
            b'-' => false,
            _ => return Err(invalid("ct_state", s)),
        };
        rest = &rest[1..];
        let end = rest.find(['+', '-']).unwrap_or(rest.len());
        let name = &rest[..end];
        rest = &rest[end..];
        let bit = ct_state::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| invalid("ct_state flag", name))?;
        mask |= bit;
        if set {
            value |= bit;
        }
    }
    Ok((value, mask))
}

/// Parses `value[/mask]` of a match field.
fn parse_field_match(field: Field, s: &str) -> Result<(u64, Option<u64>), TextError> {
    if field == Field::CtState {
        let (v, m) = parse_ct_state(s)?;
        return Ok((v, Some(m)));
    }
    let Some((v, m)) = s.split_once('/') else {
        return Ok((parse_value(field, s)?, None));
    };
    let value = parse_value(field, v)?;
    let mask = match field.format() {
        ValueFormat::Ipv4 if !m.contains('.') => {
            let bits: u32 = m
                .parse()
                .ok()
                .filter(|b| *b <= 32)
                .ok_or_else(|| invalid("prefix", m))?;
            u64::from(if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            })
        }
        ValueFormat::Port => {
            return Err(TextError::Unsupported(format!("masked {}", field.name())));
        }
        _ => parse_value(field, m)?,
    };
    Ok((value, Some(mask)))
}

/// Field names accepted in matches and `set_field` (OVS names and aliases).
fn field_by_name(name: &str) -> Option<Field> {
    use Field::*;
    Some(match name {
        "in_port" => InPort,
        "dl_src" | "eth_src" => EthSrc,
        "dl_dst" | "eth_dst" => EthDst,
        "dl_type" | "eth_type" => EthType,
        "vlan_vid" => VlanVid,
        "nw_src" | "ip_src" | "ipv4_src" => Ipv4Src,
        "nw_dst" | "ip_dst" | "ipv4_dst" => Ipv4Dst,
        "nw_proto" | "ip_proto" => IpProto,
        "tcp_src" => TcpSrc,
        "tcp_dst" => TcpDst,
        "udp_src" => UdpSrc,
        "udp_dst" => UdpDst,
        "arp_op" => ArpOp,
        "arp_spa" => ArpSpa,
        "arp_tpa" => ArpTpa,
        "arp_sha" => ArpSha,
        "arp_tha" => ArpTha,
        "tun_id" | "tunnel_id" => TunnelId,
        "tun_src" | "tun_ipv4_src" => TunIpv4Src,
        "tun_dst" | "tun_ipv4_dst" => TunIpv4Dst,
        "ct_state" => CtState,
        "ct_zone" => CtZone,
        "metadata" => Metadata,
        _ => {
            let n: u8 = name.strip_prefix("reg")?.parse().ok()?;
            return (n < NUM_REGS).then_some(Reg(n));
        }
    })
}

/// Field names accepted in subfields (`NAME[..]`): NXM/OXM names or OVS names.
fn subfield_field(name: &str) -> Option<Field> {
    if let Some(f) = field_by_name(name) {
        return Some(f);
    }
    Field::all()
        .find(|f| subfield_name(*f) == name)
        .or(match name {
            "OXM_OF_IN_PORT" => Some(Field::InPort),
            "OXM_OF_TUNNEL_ID" => Some(Field::TunnelId),
            _ => None,
        })
}

/// Parses `NAME[]`, `NAME[a..b]`, `NAME[a]` into (field, ofs, n_bits).
fn parse_subfield(s: &str) -> Result<(Field, u16, u16), TextError> {
    let (name, range) = match s.split_once('[') {
        Some((n, r)) => (
            n,
            r.strip_suffix(']').ok_or_else(|| invalid("subfield", s))?,
        ),
        None => (s, ""),
    };
    let field = subfield_field(name).ok_or_else(|| invalid("field", name))?;
    let bits = field.bits();
    let (ofs, n_bits) = if range.is_empty() {
        (0, bits)
    } else if let Some((a, b)) = range.split_once("..") {
        let a: u16 = a.parse().map_err(|_| invalid("subfield", s))?;
        let b: u16 = b.parse().map_err(|_| invalid("subfield", s))?;
        if b < a {
            return Err(invalid("subfield", s));
        }
        (a, b - a + 1)
    } else {
        (range.parse().map_err(|_| invalid("subfield", s))?, 1)
    };
    if u32::from(ofs) + u32::from(n_bits) > u32::from(bits) {
        return Err(invalid("subfield range", s));
    }
    Ok((field, ofs, n_bits))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn parse_hex_bytes(s: &str) -> Result<Bytes, TextError> {
    if !s.len().is_multiple_of(2) || s.len() < 16 {
        return Err(invalid("hex", s));
    }
    let v: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    v.map(Bytes::from).ok_or_else(|| invalid("hex", s))
}

fn parse_ct(args: &str) -> Result<Ct, TextError> {
    let mut ct = Ct::default();
    for arg in split_top_level(args) {
        let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
        match (k, v) {
            ("commit", "") => ct.commit = true,
            ("force", "") => ct.force = true,
            ("table", v) => ct.table = Some(parse_num("ct table", v)?),
            ("zone", v) => {
                ct.zone = match parse_u64(v) {
                    Some(z) => CtZone::Imm(u16::try_from(z).map_err(|_| invalid("ct zone", v))?),
                    None => {
                        let (field, ofs, n_bits) = parse_subfield(v)?;
                        if n_bits > 16 {
                            return Err(invalid("ct zone (at most 16 bits)", v));
                        }
                        CtZone::Field { field, ofs, n_bits }
                    }
                }
            }
            ("alg", "ftp") => ct.alg = 21,
            ("alg", "tftp") => ct.alg = 69,
            ("alg", v) => ct.alg = parse_num("ct alg", v)?,
            _ => return Err(TextError::Unsupported(format!("ct argument `{arg}`"))),
        }
    }
    Ok(ct)
}

impl FromStr for Action {
    type Err = TextError;

    fn from_str(s: &str) -> Result<Self, TextError> {
        let s = s.trim();
        let (key, arg) = match s.split_once(':') {
            Some((k, a)) if !k.contains('(') => (k, Some(a)),
            _ => (s, None),
        };
        match (key, arg) {
            ("output", Some(p)) => {
                let (p, max_len) = match p.split_once(':') {
                    Some((p, m)) => (p, Some(parse_num("max_len", m)?)),
                    None => (p, None),
                };
                let port = parse_port(p).ok_or_else(|| invalid("port", p))?;
                Ok(match max_len {
                    Some(max_len) => Action::Output { port, max_len },
                    None => Action::output(port),
                })
            }
            ("set_field" | "load", Some(a)) => {
                let (v, target) = a.split_once("->").ok_or_else(|| invalid("set_field", s))?;
                let field = if key == "load" {
                    let (field, ofs, n_bits) = parse_subfield(target)?;
                    if ofs != 0 || n_bits != field.bits() {
                        return Err(TextError::Unsupported(format!("partial load `{s}`")));
                    }
                    field
                } else {
                    field_by_name(target).ok_or_else(|| invalid("field", target))?
                };
                Ok(Action::set_field(field, parse_value(field, v)?))
            }
            ("mod_dl_src", Some(v)) => Ok(Action::set_field(
                Field::EthSrc,
                parse_value(Field::EthSrc, v)?,
            )),
            ("mod_dl_dst", Some(v)) => Ok(Action::set_field(
                Field::EthDst,
                parse_value(Field::EthDst, v)?,
            )),
            ("push_vlan", Some(v)) => Ok(Action::PushVlan {
                ethertype: parse_num("ethertype", v)?,
            }),
            ("pop_vlan" | "strip_vlan", None) => Ok(Action::PopVlan),
            ("dec_ttl", None) => Ok(Action::DecTtl),
            ("move", Some(a)) => {
                let (src, dst) = a.split_once("->").ok_or_else(|| invalid("move", s))?;
                let (src, src_ofs, n_bits) = parse_subfield(src)?;
                let (dst, dst_ofs, dst_bits) = parse_subfield(dst)?;
                if n_bits != dst_bits {
                    return Err(invalid("move (source and destination widths differ)", s));
                }
                Ok(Action::Move(RegMove {
                    src,
                    src_ofs,
                    dst,
                    dst_ofs,
                    n_bits,
                }))
            }
            ("resubmit", Some(p)) => Ok(Action::Resubmit {
                port: parse_resubmit_port(p)?,
                table: TABLE_ALL,
            }),
            ("raw", Some(hex)) => Ok(Action::Raw(parse_hex_bytes(hex)?)),
            ("CONTROLLER" | "controller", Some(m)) => Ok(Action::Output {
                port: port::CONTROLLER,
                max_len: parse_num("max_len", m)?,
            }),
            (_, None) => {
                if let Some(args) = s
                    .strip_prefix("resubmit(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    let (p, t) = args.split_once(',').ok_or_else(|| invalid("resubmit", s))?;
                    let port = if p.trim().is_empty() {
                        port::IN_PORT_16
                    } else {
                        parse_resubmit_port(p)?
                    };
                    let table = if t.trim().is_empty() {
                        TABLE_ALL
                    } else {
                        parse_num("table", t)?
                    };
                    return Ok(Action::Resubmit { port, table });
                }
                if s == "ct" {
                    return Ok(Action::Ct(Ct::default()));
                }
                if let Some(args) = s.strip_prefix("ct(").and_then(|r| r.strip_suffix(')')) {
                    return Ok(Action::Ct(parse_ct(args)?));
                }
                match parse_port(s) {
                    Some(p) => Ok(Action::output(p)),
                    None => Err(TextError::UnknownKey(s.to_string())),
                }
            }
            _ => Err(TextError::UnknownKey(s.to_string())),
        }
    }
}

fn parse_resubmit_port(p: &str) -> Result<u16, TextError> {
    let p = p.trim();
    if p.eq_ignore_ascii_case("in_port") {
        return Ok(port::IN_PORT_16);
    }
    parse_num("resubmit port", p)
}

/// Parses the text after `actions=` into instructions.
fn parse_instructions(s: &str) -> Result<Instructions, TextError> {
    let mut ins = Instructions::default();
    let items = split_top_level(s);
    if items == ["drop"] {
        return Ok(ins);
    }
    for item in items {
        if let Some(m) = item.strip_prefix("meter:") {
            ins.meter = Some(parse_num("meter", m)?);
        } else if let Some(t) = item.strip_prefix("goto_table:") {
            ins.goto_table = Some(parse_num("goto_table", t)?);
        } else if let Some(wm) = item.strip_prefix("write_metadata:") {
            let (v, m) = wm.split_once('/').unwrap_or((wm, "0xffffffffffffffff"));
            ins.write_metadata = Some(WriteMetadata {
                value: parse_num("metadata", v)?,
                mask: parse_num("metadata mask", m)?,
            });
        } else if let Some(hex) = item.strip_prefix("raw_instruction:") {
            ins.raw.push(parse_hex_bytes(hex)?);
        } else if item == "drop" {
            return Err(TextError::Invalid {
                what: "actions (drop must stand alone)",
                text: s.into(),
            });
        } else {
            ins.apply.push(item.parse()?);
        }
    }
    Ok(ins)
}

/// Finds `actions=` at the start of a key (start, after ',' or whitespace).
fn find_actions(s: &str) -> Option<usize> {
    s.match_indices("actions=")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || s[..i].ends_with(|c: char| c == ',' || c.is_whitespace()))
}

const IGNORED_KEYS: [&str; 11] = [
    "duration",
    "n_packets",
    "n_bytes",
    "idle_age",
    "hard_age",
    "importance",
    "send_flow_rem",
    "check_overlap",
    "reset_counts",
    "no_packet_counts",
    "no_byte_counts",
];

impl FromStr for Flow {
    type Err = TextError;

    /// Parses `ovs-ofctl add-flow` syntax or one `dump-flows` line.
    fn from_str(s: &str) -> Result<Self, TextError> {
        let at = find_actions(s).ok_or_else(|| invalid("flow (no actions=)", s))?;
        let (head, actions) = (&s[..at], &s[at + "actions=".len()..]);
        let mut flow = Flow {
            priority: 0x8000,
            instructions: parse_instructions(actions.trim())?,
            ..Flow::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut pending_ports: Vec<(&str, &str)> = Vec::new();
        let mut m = Match::new();
        for token in head
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            let (key, value) = match token.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (token, None),
            };
            if IGNORED_KEYS.contains(&key) {
                continue;
            }
            if seen.contains(&key) {
                return Err(TextError::Duplicate(key.to_string()));
            }
            seen.push(key);
            let set_exact = |m: &mut Match, f: Field, v: u64| -> Result<(), TextError> {
                match m.get(f) {
                    Some(old) if old.value != v || old.mask.is_some() => {
                        Err(TextError::Duplicate(f.name()))
                    }
                    _ => {
                        m.set(f, v, None);
                        Ok(())
                    }
                }
            };
            match (key, value) {
                ("table", Some(v)) => flow.table = parse_num("table", v)?,
                ("priority", Some(v)) => flow.priority = parse_num("priority", v)?,
                ("cookie", Some(v)) => flow.cookie = parse_num("cookie", v)?,
                ("idle_timeout", Some(v)) => flow.idle_timeout = parse_num("idle_timeout", v)?,
                ("hard_timeout", Some(v)) => flow.hard_timeout = parse_num("hard_timeout", v)?,
                ("ip", None) => set_exact(&mut m, Field::EthType, ETH_TYPE_IP)?,
                ("arp", None) => set_exact(&mut m, Field::EthType, ETH_TYPE_ARP)?,
                ("tcp" | "udp" | "icmp", None) => {
                    set_exact(&mut m, Field::EthType, ETH_TYPE_IP)?;
                    let proto = match key {
                        "tcp" => 6,
                        "udp" => 17,
                        _ => 1,
                    };
                    set_exact(&mut m, Field::IpProto, proto)?;
                }
                ("tp_src" | "tp_dst", Some(v)) => pending_ports.push((key, v)),
                ("dl_vlan", Some(v)) => {
                    let vid: u64 = parse_num::<u16>("dl_vlan", v)?.into();
                    if vid > 0xfff {
                        return Err(invalid("dl_vlan", v));
                    }
                    m.set(Field::VlanVid, VLAN_PRESENT | vid, None);
                }
                ("vlan_tci", Some(v)) => {
                    let (val, mask) = match v.split_once('/') {
                        Some((a, b)) => (
                            parse_num::<u16>("vlan_tci", a)?,
                            parse_num::<u16>("vlan_tci", b)?,
                        ),
                        None => (parse_num::<u16>("vlan_tci", v)?, 0xffff),
                    };
                    if mask & 0xe000 != 0 && mask != 0xffff {
                        return Err(TextError::Unsupported(format!("VLAN PCP match `{token}`")));
                    }
                    let mask = if mask == 0xffff { 0x1fff } else { mask };
                    m.set(
                        Field::VlanVid,
                        u64::from(val & 0x1fff),
                        Some(u64::from(mask)),
                    );
                }
                (name, Some(v)) => {
                    let field =
                        field_by_name(name).ok_or_else(|| TextError::UnknownKey(name.into()))?;
                    if field != Field::EthType && field != Field::IpProto && m.get(field).is_some()
                    {
                        return Err(TextError::Duplicate(name.into()));
                    }
                    let (value, mask) = parse_field_match(field, v)?;
                    if mask.is_none() && (field == Field::EthType || field == Field::IpProto) {
                        set_exact(&mut m, field, value)?;
                    } else {
                        m.set(field, value, mask);
                    }
                }
                (other, _) => return Err(TextError::UnknownKey(other.into())),
            }
        }
        for (key, v) in pending_ports {
            let src = key == "tp_src";
            let field = match (m.get(Field::IpProto).map(|f| f.value), src) {
                (Some(6), true) => Field::TcpSrc,
                (Some(6), false) => Field::TcpDst,
                (Some(17), true) => Field::UdpSrc,
                (Some(17), false) => Field::UdpDst,
                _ => return Err(TextError::PortWithoutProto(key.into())),
            };
            let (value, mask) = parse_field_match(field, v)?;
            m.set(field, value, mask);
        }
        flow.matches = m;
        Ok(flow)
    }
}

/// Parses the flow lines of `ovs-ofctl dump-flows` output, skipping the
/// `OFPST_FLOW reply` header lines.
pub fn parse_dump_flows(text: &str) -> Result<Vec<Flow>, TextError> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("cookie=") || l.starts_with("table=") || l.starts_with("priority=")
        })
        .map(Flow::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subfield of zero bits (invalid, but decodable from a message)
    /// prints without an arithmetic overflow: the `openflow_decode` fuzz
    /// target's crash, kept in `fuzz/seeds/openflow_decode/`.
    #[test]
    fn zero_bit_subfield_prints() {
        let mut s = String::new();
        fmt_subfield(&mut s, Field::Reg(6), 3, 0).unwrap();
        assert_eq!(s, "NXM_NX_REG6[3..2]");
    }
}
