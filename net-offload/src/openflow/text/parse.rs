//! Parsing ovs-ofctl flow syntax (and `dump-flows` lines) into flows and
//! actions (`FromStr`).

use std::net::Ipv4Addr;
use std::str::FromStr;

use bytes::Bytes;

use crate::openflow::action::{Action, Ct, CtZone, RegMove, port};
use crate::openflow::flow_mod::{Flow, TABLE_ALL};
use crate::openflow::instruction::{Instructions, WriteMetadata};
use crate::openflow::oxm::{Field, Match, NUM_REGS, ValueFormat, ct_state};

use super::{ETH_TYPE_ARP, ETH_TYPE_IP, VLAN_PRESENT, subfield_name};

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
